//! A whole run: build the VM, boot the guest on every vCPU (one thread each), wait under a
//! watchdog, collect reports and KVM's statistics.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use shadowlab_abi::GuestMode;

use super::boot::{self, GuestParams};
use super::elf::ElfImage;
use super::error::KvmError;
use super::guest_image::GUEST_ELF;
use super::hooks::{MmuHooks, NativeMmu};
use super::kick::{self, make_all_cpus_request, VcpuKick, REQ_STOP};
use super::layout::DEFAULT_RAM;
use super::report::{FailureKind, RunResult, VcpuReport};
use super::stats::{self, StatsFd};
use super::vcpu::{run_vcpu, Shared};
use super::vm::{DirectRam, Vm};

/// How the guest's hypercalls reach the VMM.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum HypercallPath {
    /// Port I/O (`out`), as the ABI is specified. On a host that refuses CPL3 port I/O the
    /// `out` arrives as a #GP through the monitor and is emulated by the VMM.
    PortIo,
    /// Stores to the MMIO window (`shadowlab_abi::HYPERCALL_MMIO_GPA`): one exit.
    Mmio,
    /// MMIO on a software-virtualised host (`/sys/module/kvm_pvm`), port I/O elsewhere.
    Auto,
}

impl HypercallPath {
    /// Resolves `Auto` on this host.
    pub fn resolve(self) -> HypercallPath {
        match self {
            HypercallPath::Auto if std::path::Path::new("/sys/module/kvm_pvm").exists() => {
                HypercallPath::Mmio
            }
            HypercallPath::Auto => HypercallPath::PortIo,
            p => p,
        }
    }
}

/// Broken machine state a test may ask for, to exercise the VMM's failure reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultInjection {
    /// Boot the vCPUs with an empty IDT (limit 0): any guest exception becomes a triple fault
    /// (the guest itself cannot break the monitor's IDT: it runs at CPL3).
    NoIdt,
    /// `kvm` backend: handle the MMU's TLB-flush requests without making the host drop its
    /// shadows of the pool, i.e. without the remote/local flush (no replay, no memslot
    /// cycle). Stale translations follow, and the workloads' self-checks must catch them.
    SkipHostFlush,
    /// `kvm` backend, [`HostCoherence::Replay`]: run the replay routine without its stores
    /// (only its CR3 reload), to show that the stores in guest context are what makes the
    /// host drop its stale translations.
    ReplayWithoutStores,
}

/// How the `kvm` backend makes a host that shadows the pool see SPTE changes (`kvm::shadow`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum HostCoherence {
    /// The vCPU re-stores the logged SPTEs in guest context through the monitor's replay
    /// routine, then reloads CR3 (the default).
    #[default]
    Replay,
    /// Delete and re-add the pool's memslot with every vCPU parked (the first design: correct,
    /// about 100 us a flush plus every host shadow page lost; kept for comparison).
    CycleSlot,
}

/// Default of [`RunConfig::replay_page_zap_min`]. Measured on this machine (pt-churn, 200
/// iterations, 65 changed SPTEs a flush, mostly in one pool page): with 1, 2, 4, 8 the
/// replays took 33, 29, 28, 29 ms in all; entry by entry (`usize::MAX`), 127 ms (about
/// 4.5 us a store). A whole-page store costs the host a rebuild of that page's shadow, which
/// is cheap next to a trapped store per entry once a page has a few.
pub const DEFAULT_REPLAY_PAGE_ZAP_MIN: usize = 4;

/// How to run.
#[derive(Clone, Debug, PartialEq)]
pub struct RunConfig {
    /// vCPUs.
    pub nr_vcpus: usize,
    /// Guest RAM in bytes (multiple of 2 MiB).
    pub ram_size: u64,
    /// The watchdog: a run that has not finished by then is stopped and fails.
    pub timeout: Duration,
    /// The hypercall path.
    pub hypercall: HypercallPath,
    /// Deliberately broken state, for tests of the failure reports.
    pub inject: Option<FaultInjection>,
    /// Pages in the shadow pool (`kvm` backend).
    pub pool_pages: u64,
    /// How the `kvm` backend keeps the host coherent with its SPTE changes.
    pub host_coherence: HostCoherence,
    /// [`HostCoherence::Replay`]: a pool page with at least this many changed SPTEs in one
    /// replay is dropped by the host as a whole (one store) rather than entry by entry
    /// (`usize::MAX`: never; 1: always).
    pub replay_page_zap_min: usize,
    /// [`HostCoherence::Replay`]: always enter the replay routine by hand (saved and restored
    /// registers), the fallback normally taken only when an event is already being delivered
    /// to the guest. For tests of that path.
    pub replay_by_hand: bool,
}

impl Default for RunConfig {
    fn default() -> Self {
        Self {
            nr_vcpus: 1,
            ram_size: DEFAULT_RAM,
            timeout: Duration::from_secs(60),
            hypercall: HypercallPath::Auto,
            inject: None,
            pool_pages: 4096,
            host_coherence: HostCoherence::Replay,
            replay_page_zap_min: DEFAULT_REPLAY_PAGE_ZAP_MIN,
            replay_by_hand: false,
        }
    }
}

/// Runs the guest in `native` mode: its own page tables in CR3, the host's MMU doing the
/// shadowing. `Ok` only if every vCPU reported DONE; a guest failure is
/// [`KvmError::GuestFailed`] with the first failing vCPU's report (assert file/line/message,
/// exception, triple fault, timeout), registers and last message.
pub fn run_native(config: &RunConfig, params: &GuestParams) -> Result<RunResult, KvmError> {
    let result = run_native_reports(config, params)?;
    first_failure(&result)?;
    Ok(result)
}

/// Like [`run_native`] but returns the reports even when vCPUs failed.
pub fn run_native_reports(config: &RunConfig, params: &GuestParams) -> Result<RunResult, KvmError> {
    let kicks = kick::new_kicks(config.nr_vcpus);
    run_native_with(config, params, &NativeMmu, &kicks)
}

/// The guest on its own page tables with a caller's MMU hooks and kick state (`kicks[i]` is
/// vCPU `i`'s; the hooks may hold them to request remote TLB flushes). Returns the reports
/// even when vCPUs failed.
pub fn run_native_with<H: MmuHooks + ?Sized>(
    config: &RunConfig,
    params: &GuestParams,
    mmu: &H,
    kicks: &[VcpuKick],
) -> Result<RunResult, KvmError> {
    let vm = Vm::new(config.ram_size, config.nr_vcpus)?;
    let image = ElfImage::parse(GUEST_ELF)?;
    let mmio = config.hypercall.resolve() == HypercallPath::Mmio;
    let plan = boot::prepare(
        vm.ram(),
        &image,
        config.nr_vcpus,
        GuestMode::Native,
        params,
        mmio,
    )?;
    let roots: Vec<u64> = plan.vcpus.iter().map(|v| v.boot_root).collect();
    let mem = DirectRam(vm.ram());
    let backend = Backend {
        cr3s: &roots,
        mem: &mem,
        mmu,
        kicks,
        name: "native",
    };
    run_vm(&vm, config, &plan, backend)
}

/// The error for the first vCPU that failed on its own (not merely stopped because another
/// failed), if any.
pub fn first_failure(result: &RunResult) -> Result<(), KvmError> {
    let failed = |own: bool| {
        result.vcpus.iter().find_map(|v| match &v.outcome {
            Err(f) if own != matches!(f.kind, FailureKind::Stopped(_)) => Some((v.vcpu, f.clone())),
            _ => None,
        })
    };
    match failed(true).or_else(|| failed(false)) {
        Some((vcpu, f)) => Err(KvmError::GuestFailed {
            vcpu,
            failure: Box::new(f),
        }),
        None => Ok(()),
    }
}

/// What a backend brings to [`run_vm`].
pub struct Backend<'a, M: ?Sized, H: ?Sized> {
    /// The hardware CR3 each vCPU starts on (the guest's boot roots in `native`, shadow roots
    /// in `kvm`).
    pub cr3s: &'a [u64],
    /// Guest RAM as the exit handler sees it.
    pub mem: &'a M,
    /// The MMU.
    pub mmu: &'a H,
    /// Each vCPU's kick state.
    pub kicks: &'a [VcpuKick],
    /// Its name in results.
    pub name: &'static str,
}

/// Creates the vCPUs, runs them to the end under the watchdog, and reports. Generic over the
/// MMU so that the `kvm` backend plugs in its shadow MMU.
pub fn run_vm<M, H>(
    vm: &Vm,
    config: &RunConfig,
    plan: &boot::BootPlan,
    backend: Backend<'_, M, H>,
) -> Result<RunResult, KvmError>
where
    M: super::ucall::GuestPhys + Sync + ?Sized,
    H: MmuHooks + ?Sized,
{
    kick::install_handler().map_err(KvmError::SignalHandler)?;
    let Backend {
        cr3s,
        mem,
        mmu,
        kicks,
        name: backend,
    } = backend;
    let n = config.nr_vcpus;
    if kicks.len() != n || plan.vcpus.len() != n || cr3s.len() != n {
        return Err(KvmError::Config(format!(
            "{n} vCPUs but {} kick states, {} boot plans, {} CR3s",
            kicks.len(),
            plan.vcpus.len(),
            cr3s.len()
        )));
    }
    let mut vcpus = Vec::with_capacity(n);
    let mut vcpu_stats = Vec::with_capacity(n);
    for (i, boot) in plan.vcpus.iter().enumerate() {
        let fd = vm.create_vcpu(i, plan.entry, boot, cr3s[i])?;
        if config.inject == Some(FaultInjection::NoIdt) {
            let mut s = fd
                .get_sregs()
                .map_err(|source| KvmError::GetSregs { vcpu: i, source })?;
            s.idt.limit = 0;
            fd.set_sregs(&s)
                .map_err(|source| KvmError::SetSregs { vcpu: i, source })?;
        }
        vcpu_stats.push(StatsFd::open(&fd).ok());
        vcpus.push(fd);
    }
    let vm_stats = StatsFd::open(vm.fd()).ok();
    let vm_before = vm_stats.as_ref().and_then(|s| s.snapshot().ok());
    let vcpu_before: Vec<_> = vcpu_stats
        .iter()
        .map(|s| s.as_ref().and_then(|s| s.snapshot().ok()))
        .collect();

    let timed_out = AtomicBool::new(false);
    let shared = Shared {
        mem,
        monitor: vm.monitor(),
        mmu,
        kicks,
        timed_out: &timed_out,
        timeout_ms: config.timeout.as_millis() as u64,
    };
    let start = Instant::now();
    let reports = std::thread::scope(|s| -> Result<Vec<VcpuReport>, KvmError> {
        let (tx, rx) = mpsc::channel::<usize>();
        let mut handles = Vec::with_capacity(n);
        for (i, fd) in vcpus.into_iter().enumerate() {
            let tx = tx.clone();
            let shared = &shared;
            let h = std::thread::Builder::new()
                .name(format!("vcpu{i}"))
                .spawn_scoped(s, move || {
                    let r = run_vcpu(fd, i, shared);
                    let _ = tx.send(i);
                    r
                })
                .map_err(|source| KvmError::SpawnThread { vcpu: i, source });
            match h {
                Ok(h) => handles.push(h),
                Err(e) => {
                    make_all_cpus_request(kicks, REQ_STOP, None);
                    return Err(e);
                }
            }
        }
        drop(tx);
        // The watchdog: wait for every vCPU until the deadline, then stop the rest.
        let deadline = start + config.timeout;
        let mut finished = 0;
        while finished < n {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(_) => finished += 1,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    timed_out.store(true, Ordering::Release);
                    make_all_cpus_request(kicks, REQ_STOP, None);
                    break;
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
        }
        let mut reports = Vec::with_capacity(n);
        for (i, h) in handles.into_iter().enumerate() {
            match h.join() {
                Ok(r) => reports.push(r?),
                Err(_) => return Err(KvmError::VcpuThreadPanicked(i)),
            }
        }
        Ok(reports)
    })?;
    let elapsed = start.elapsed();

    let mut kvm_vm_stats = stats::Snapshot::new();
    if let (Some(s), Some(before)) = (&vm_stats, &vm_before) {
        if let Ok(after) = s.snapshot() {
            kvm_vm_stats = s.delta(before, &after);
        }
    }
    let mut kvm_vcpu_stats = stats::Snapshot::new();
    for (s, before) in vcpu_stats.iter().zip(&vcpu_before) {
        if let (Some(s), Some(before)) = (s, before) {
            if let Ok(after) = s.snapshot() {
                stats::accumulate(&mut kvm_vcpu_stats, &s.delta(before, &after));
            }
        }
    }
    Ok(RunResult {
        backend,
        nr_vcpus: n,
        host_cpus: std::thread::available_parallelism()
            .map(|p| p.get())
            .unwrap_or(1),
        elapsed_ns: elapsed.as_nanos() as u64,
        vcpus: reports,
        kvm_vm_stats,
        kvm_vcpu_stats,
        mmu_stats: None,
        host_flushes: None,
        host_coherence: None,
    })
}
