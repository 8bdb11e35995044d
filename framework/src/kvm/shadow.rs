//! The `kvm` backend: the vCPU's CR3 always holds a shadow root of [`crate::mmu`]; guest page
//! faults reach [`Mmu::page_fault`] through the monitor's stub; CR3 loads, INVLPG and TLB
//! flushes are hypercalls that end in `kvm_mmu_new_pgd` / `kvm_mmu_sync_roots`; stores to
//! write-protected upper-level guest tables are decoded (`kvm::emulate`) and emulated.
//!
//! Host coherence: the VMM writes shadow PTEs from userspace. A host that itself shadows the
//! guest's page tables does not see those writes except for not-present -> present changes
//! and added permissions ([host notes](super#this-host)). Every other SPTE change in
//! KVM's algorithm is followed by a remote TLB flush (`kvm_flush_remote_tlbs`), which the MMU
//! delivers as `KVM_REQ_TLB_FLUSH` at the next guest entry. Two ways to catch the host up
//! there ([`HostCoherence`]):
//!
//! - **Replay** (default), the way a PVM guest keeps its host coherent: the MMU logs the
//!   address of every such SPTE (`Mmu::take_host_coherence_log`); the vCPU that takes the log
//!   runs the monitor's replay routine (`monitor::replay_entry`, through [`GuestContext`]:
//!   `kvm::vcpu` injects the routine's reserved vector, so the CPU saves the interrupted
//!   context and the routine's `iretq` restores it), which re-stores each SPTE from guest
//!   context through the pool's mapping in the monitor (the host traps or emulates the store
//!   and zaps its own shadow entry: `kvm_mmu_track_write`), then reloads CR3 (the host resyncs
//!   any pool page it unsynced rather than write-protected), then exits once. A pool page
//!   with many changed SPTEs gets one "misaligned" store instead, which makes the host zap its
//!   whole shadow of that page (`RunConfig::replay_page_zap_min`). One vCPU replays at a time
//!   (`replay_lock`): a vCPU whose flush request came after entries were logged either takes
//!   them itself or waits for the vCPU that took them to finish. Every vCPU with a flush
//!   request reloads its own CR3 in guest context (the routine with no entries, if the log
//!   is empty), because the host syncs unsync pages only below the root it reloads. No vCPU
//!   is parked.
//! - **CycleSlot**: delete and re-add the pool's memslot ([`Vm::cycle_pool_slot`]) with every
//!   vCPU parked outside KVM_RUN ([`RunGate`]); the host drops all its shadows of the pool.
//!   Correct, and expensive (about 100 us a flush here, plus every host shadow rebuilt).

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use shadowlab_abi::GuestMode;
use shadowlab_policies::SyncPolicy;

use super::boot::{self, GuestParams};
use super::config::{FaultInjection, HostCoherence, RunConfig};
use super::elf::ElfImage;
use super::error::KvmError;
use super::guest_image::GUEST_ELF;
use super::hooks::{GuestContext, HookError, MmuHooks, PfAction};
use super::kick::{new_kicks, VcpuKick};
use super::monitor;
use super::report::{HostCoherenceStats, RunResult};
use super::run::{first_failure, run_vm, RunParts};
use super::vm::Vm;
use crate::mem::{FrameMap, GuestMemory, MemConfig};
use crate::mmu::{self, Access, Mmu, VcpuMmu, KVM_REQ_MMU_RELOAD, KVM_REQ_TLB_FLUSH};

/// How long a host flush waits for the other vCPUs to leave KVM_RUN.
const PARK_TIMEOUT: Duration = Duration::from_secs(5);

/// Keeps vCPUs out of KVM_RUN while the host's shadows are dropped.
#[derive(Debug, Default)]
pub struct RunGate {
    in_run: AtomicUsize,
    closed: AtomicBool,
}

impl RunGate {
    /// Enters (blocks while the gate is closed). SeqCst: the closer's store of `closed` and
    /// our increment of `in_run` are ordered against each other's loads, so either it sees us
    /// in KVM_RUN and waits, or we see it closed and back off.
    fn enter(&self) {
        loop {
            while self.closed.load(Ordering::SeqCst) {
                std::thread::yield_now();
            }
            self.in_run.fetch_add(1, Ordering::SeqCst);
            if !self.closed.load(Ordering::SeqCst) {
                return;
            }
            self.in_run.fetch_sub(1, Ordering::SeqCst);
        }
    }

    fn leave(&self) {
        self.in_run.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The replay routine's entries (monitor VAs) for `log` (sorted SPTE addresses of a pool at
/// `pool_base`): one whole-page store for a pool page with at least `page_zap_min` of them,
/// one store per SPTE otherwise. Returns them and the number of whole-page stores.
fn replay_plan(log: &[u64], pool_base: u64, page_zap_min: usize) -> (Vec<u64>, u64) {
    let mut vas = Vec::with_capacity(log.len());
    let mut pages = 0;
    // The log is sorted: SPTEs of one pool page are adjacent.
    for page in log.chunk_by(|a, b| a >> 12 == b >> 12) {
        if page.len() >= page_zap_min {
            vas.push(monitor::ReplayEntry::Page(page[0]).va(pool_base));
            pages += 1;
        } else {
            vas.extend(
                page.iter()
                    .map(|&mpa| monitor::ReplayEntry::Spte(mpa).va(pool_base)),
            );
        }
    }
    (vas, pages)
}

/// [`MmuHooks`] over the shadow MMU.
pub struct ShadowHooks<'a, P: SyncPolicy> {
    mmu: &'a Mmu<P>,
    vm: &'a Vm,
    vcpus: Box<[Mutex<VcpuMmu>]>,
    kicks: &'a [VcpuKick],
    gate: RunGate,
    flush_lock: Mutex<()>,
    replay_lock: Mutex<()>,
    mode: HostCoherence,
    flushes: AtomicU64,
    host_flushes: AtomicU64,
    replay_runs: AtomicU64,
    cr3_only_runs: AtomicU64,
    sptes_replayed: AtomicU64,
    pages_replayed: AtomicU64,
    replay_stores: AtomicU64,
    page_zap_min: usize,
    replay_by_hand: bool,
    replay_without_stores: bool,
    flush_ns: AtomicU64,
    skip_host_flush: bool,
}

impl<'a, P: SyncPolicy> ShadowHooks<'a, P> {
    /// Hooks for the vCPUs of `vm` (one kick state each) on `mmu`, keeping the host coherent
    /// as `config` says (`host_coherence`, `replay_*`, `inject`).
    pub fn new(
        mmu: &'a Mmu<P>,
        vm: &'a Vm,
        kicks: &'a [VcpuKick],
        config: &RunConfig,
    ) -> Result<Self, KvmError> {
        let vcpus = (0..kicks.len())
            .map(|i| mmu.vcpu(i).map(Mutex::new))
            .collect::<Result<Vec<_>, _>>()?
            .into_boxed_slice();
        Ok(Self {
            mmu,
            vm,
            vcpus,
            kicks,
            gate: RunGate::default(),
            flush_lock: Mutex::new(()),
            replay_lock: Mutex::new(()),
            mode: config.host_coherence,
            flushes: AtomicU64::new(0),
            host_flushes: AtomicU64::new(0),
            replay_runs: AtomicU64::new(0),
            cr3_only_runs: AtomicU64::new(0),
            sptes_replayed: AtomicU64::new(0),
            pages_replayed: AtomicU64::new(0),
            replay_stores: AtomicU64::new(0),
            page_zap_min: config.replay_page_zap_min.max(1),
            replay_by_hand: config.replay_by_hand,
            replay_without_stores: config.inject == Some(FaultInjection::ReplayWithoutStores),
            flush_ns: AtomicU64::new(0),
            skip_host_flush: config.inject == Some(FaultInjection::SkipHostFlush),
        })
    }

    fn v(&self, vcpu: usize) -> MutexGuard<'_, VcpuMmu> {
        // Only vCPU `vcpu`'s own thread takes it: never contended, never poisoned in practice.
        self.vcpus[vcpu].lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Loads vCPU `vcpu`'s boot CR3 and returns the shadow root to start on.
    pub fn boot_cr3(&self, vcpu: usize, root: u64) -> Result<u64, KvmError> {
        let mut v = self.v(vcpu);
        self.mmu.kvm_mmu_new_pgd(&mut v, root)?;
        v.root_hpa().ok_or(KvmError::NoShadowRoot { vcpu })
    }

    /// Host flushes done (pool memslot cycles).
    pub fn host_flushes(&self) -> u64 {
        self.host_flushes.load(Ordering::Relaxed)
    }

    /// What was done for host coherence so far.
    pub fn host_coherence_stats(&self) -> HostCoherenceStats {
        let r = |a: &AtomicU64| a.load(Ordering::Relaxed);
        HostCoherenceStats {
            mode: self.mode,
            flushes: r(&self.flushes),
            slot_cycles: r(&self.host_flushes),
            replay_runs: r(&self.replay_runs),
            cr3_only_runs: r(&self.cr3_only_runs),
            sptes_replayed: r(&self.sptes_replayed),
            pages_replayed: r(&self.pages_replayed),
            replay_stores: r(&self.replay_stores),
            flush_ns: r(&self.flush_ns),
        }
    }

    /// The replay half of the protocol (see the module docs): under `replay_lock`, takes the
    /// MMU's host coherence log and has this vCPU re-store those SPTEs and reload CR3 (on
    /// `cr3`, the root the vCPU is about to run on, if it changes). The log is taken under
    /// the lock, so a vCPU that finds it empty knows that whoever took the entries logged
    /// before its flush request has finished replaying them.
    fn host_replay(&self, ctx: &mut dyn GuestContext, cr3: Option<u64>) -> Result<(), HookError> {
        let _one = self.replay_lock.lock().unwrap_or_else(|e| e.into_inner());
        let log = self.mmu.take_host_coherence_log();
        let base = self.mmu.mem().pool_base();
        let (mut vas, pages) = replay_plan(&log, base, self.page_zap_min);
        if self.replay_without_stores {
            vas.clear();
        }
        ctx.replay_sptes(&vas, cr3, self.replay_by_hand)?;
        self.pages_replayed.fetch_add(pages, Ordering::Relaxed);
        let runs = vas.len().div_ceil(monitor::REPLAY_CAPACITY).max(1) as u64;
        self.replay_runs.fetch_add(runs, Ordering::Relaxed);
        if vas.is_empty() {
            self.cr3_only_runs.fetch_add(1, Ordering::Relaxed);
        }
        self.sptes_replayed
            .fetch_add(log.len() as u64, Ordering::Relaxed);
        self.replay_stores
            .fetch_add(vas.len() as u64, Ordering::Relaxed);
        Ok(())
    }

    /// Makes the host drop its shadows of the pool, with every other vCPU parked.
    fn host_flush(&self, me: usize) -> Result<(), HookError> {
        let _one = self.flush_lock.lock().unwrap_or_else(|e| e.into_inner());
        self.gate.closed.store(true, Ordering::SeqCst);
        let start = Instant::now();
        let result = loop {
            if self.gate.in_run.load(Ordering::SeqCst) == 0 {
                break self.vm.cycle_pool_slot().map_err(HookError::from);
            }
            if start.elapsed() > PARK_TIMEOUT {
                break Err(HookError::ParkTimeout);
            }
            for (i, k) in self.kicks.iter().enumerate() {
                if i != me {
                    k.make_request_and_kick(0);
                }
            }
            std::thread::sleep(Duration::from_micros(20));
        };
        self.gate.closed.store(false, Ordering::SeqCst);
        self.host_flushes.fetch_add(1, Ordering::Relaxed);
        result
    }
}

impl<P: SyncPolicy> MmuHooks for ShadowHooks<'_, P> {
    fn page_fault(&self, vcpu: usize, gva: u64, error_code: u64) -> Result<PfAction, HookError> {
        let mut v = self.v(vcpu);
        match self
            .mmu
            .page_fault(&mut v, gva, Access::from_pfec(error_code as u32))?
        {
            // Retry: the requests it left are handled before re-entry, then the access re-runs.
            mmu::FaultOutcome::Fixed | mmu::FaultOutcome::Retry => Ok(PfAction::Fixed),
            mmu::FaultOutcome::GuestFault(_) => Ok(PfAction::GuestFault),
            mmu::FaultOutcome::Emulate { gpa } => Ok(PfAction::Emulate { gpa }),
        }
    }

    fn load_cr3(&self, vcpu: usize, root: u64) -> Result<Option<u64>, HookError> {
        let mut v = self.v(vcpu);
        self.mmu.kvm_mmu_new_pgd(&mut v, root)?;
        Ok(v.root_hpa())
    }

    fn invlpg(&self, vcpu: usize, gva: u64) -> Result<bool, HookError> {
        self.mmu.kvm_mmu_invlpg(&self.v(vcpu), gva);
        Ok(true)
    }

    fn flush_tlb(&self, vcpu: usize) -> Result<bool, HookError> {
        self.mmu.kvm_mmu_flush_tlb_guest(&self.v(vcpu));
        Ok(true)
    }

    fn emulated_write(&self, vcpu: usize, gpa: u64, value: u64, len: u8) -> Result<(), HookError> {
        let bytes = value.to_le_bytes();
        Ok(self
            .mmu
            .emulate_write(&self.v(vcpu), gpa, &bytes[..len as usize])?)
    }

    fn flush_before_entry(&self, _vcpu: usize) -> Result<Option<u64>, HookError> {
        // The MMU posts its own requests (handled in before_entry); kicks only force exits.
        Ok(None)
    }

    fn before_entry(
        &self,
        vcpu: usize,
        ctx: &mut dyn GuestContext,
    ) -> Result<Option<u64>, HookError> {
        let mut cr3 = None;
        loop {
            let req = self.mmu.vcpu_enter_guest(vcpu);
            if req == 0 {
                break;
            }
            if req & KVM_REQ_MMU_RELOAD != 0 {
                let mut v = self.v(vcpu);
                self.mmu.kvm_mmu_reload(&mut v)?;
                cr3 = v.root_hpa();
            }
            if req & KVM_REQ_TLB_FLUSH != 0 && !self.skip_host_flush {
                self.flushes.fetch_add(1, Ordering::Relaxed);
                let t0 = Instant::now();
                match self.mode {
                    HostCoherence::Replay => {
                        // The routine runs on the new root and leaves it loaded.
                        self.host_replay(ctx, cr3.take())?;
                    }
                    HostCoherence::CycleSlot => self.host_flush(vcpu)?,
                }
                self.flush_ns
                    .fetch_add(t0.elapsed().as_nanos() as u64, Ordering::Relaxed);
            }
        }
        self.gate.enter();
        Ok(cr3)
    }

    fn after_exit(&self, vcpu: usize) {
        self.gate.leave();
        self.mmu.vcpu_exit_guest(vcpu);
    }
}

/// Runs the guest on the shadow MMU (`--backend kvm`) with the build's policy. Guest RAM sits
/// behind a seeded, non-identity gfn -> backing-frame map. `Ok` only if every vCPU reported
/// DONE.
pub fn run_kvm(config: &RunConfig, params: &GuestParams) -> Result<RunResult, KvmError> {
    let result = run_kvm_reports::<crate::BuildPolicy>(config, params)?;
    first_failure(&result)?;
    Ok(result)
}

/// [`run_kvm`] with policy `P`, returning the reports even when vCPUs failed.
pub fn run_kvm_reports<P: SyncPolicy>(
    config: &RunConfig,
    params: &GuestParams,
) -> Result<RunResult, KvmError> {
    let n = config.nr_vcpus;
    let mem = Arc::new(GuestMemory::new(MemConfig {
        ram_bytes: config.ram_size,
        pool_pages: config.pool_pages,
        frame_map: FrameMap::Permuted {
            seed: params.seed ^ 0x5eed_f4a3,
        },
    })?);
    let vm = Vm::with_guest_memory(mem.clone(), n)?;
    let image = ElfImage::parse(GUEST_ELF)?;
    let ram: &GuestMemory = &mem;
    // Port I/O hypercalls: the MMIO window is not guest RAM, and the shadow MMU maps nothing else.
    let plan = boot::prepare(ram, &image, n, GuestMode::Shadow, params, false)?;
    let mmu = Mmu::<P>::new(mem.clone(), n)?;
    mmu.link_monitor(monitor::pml4_entry());
    if config.host_coherence == HostCoherence::Replay {
        mmu.enable_host_coherence_log();
    }
    let kicks: Arc<[VcpuKick]> = new_kicks(n).into();
    {
        let k = kicks.clone();
        mmu.set_kicker(move |i| {
            if let Some(x) = k.get(i) {
                x.make_request_and_kick(0);
            }
        });
    }
    let hooks = ShadowHooks::new(&mmu, &vm, &kicks, config)?;
    let cr3s = plan
        .vcpus
        .iter()
        .enumerate()
        .map(|(i, b)| hooks.boot_cr3(i, b.boot_root))
        .collect::<Result<Vec<_>, _>>()?;
    let parts = RunParts {
        cr3s: &cr3s,
        mem: ram,
        mmu: &hooks,
        kicks: &kicks,
        mode: GuestMode::Shadow,
    };
    let mut result = run_vm(&vm, config, &plan, parts)?;
    result.mmu_stats = Some(mmu.stats());
    result.host_flushes = Some(hooks.host_flushes());
    result.host_coherence = Some(hooks.host_coherence_stats());
    Ok(result)
}

#[cfg(test)]
mod tests {
    use super::replay_plan;
    use crate::kvm::monitor::{pool_va, POOL_VA};

    #[test]
    fn a_page_with_enough_changed_sptes_is_one_misaligned_store() {
        let base = 64 << 20;
        let p0 = base;
        let p3 = base + 3 * 4096;
        let log = [p0 + 8, p0 + 16, p0 + 4088, p3 + 40];
        // Threshold 3: page 0 whole (its second byte), page 3 entry by entry.
        let (vas, pages) = replay_plan(&log, base, 3);
        assert_eq!(pages, 1);
        assert_eq!(vas, [POOL_VA + 1, pool_va(base, p3 + 40)]);
        // Never whole: one store per SPTE, each at the SPTE's first byte.
        let (vas, pages) = replay_plan(&log, base, usize::MAX);
        assert_eq!(pages, 0);
        assert_eq!(vas, log.map(|a| pool_va(base, a)));
        assert!(vas.iter().all(|va| va % 8 == 0));
        // Always whole: one store per page.
        let (vas, pages) = replay_plan(&log, base, 1);
        assert_eq!((vas.len(), pages), (2, 2));
        assert_eq!(vas[1], pool_va(base, p3) + 1);
        assert_eq!(replay_plan(&[], base, 1), (vec![], 0));
    }
}
