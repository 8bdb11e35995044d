//! [`SimCpu`]: one software vCPU. Every access goes through its software TLB and, on a miss,
//! a hardware-like walk of the shadow tables in the pool; a walk that fails enters the same
//! [`Mmu::page_fault`] the KVM backend calls on a #PF exit.

use std::ops::Range;
use std::panic::resume_unwind;
use std::sync::atomic::Ordering;

use shadowlab_abi::layout::is_canonical;
use shadowlab_policies::SyncPolicy;
use shadowlab_workloads::{Cpu, RET};

use super::tlb::{SoftTlb, TlbEntry};
use super::{SimAbort, SimFault, SimVm};
use crate::mmu::spte::SPTE_D;
use crate::mmu::{
    guest_translate, shadow_walk, Access, FaultOutcome, GuestFault, GuestTranslation, Mmu,
    ShadowMiss, ShadowTranslation, VcpuMmu, KVM_REQ_MMU_RELOAD, KVM_REQ_TLB_FLUSH,
};

/// Consecutive faults on one access after which the vCPU stops with
/// [`SimFault::Livelock`] instead of spinning forever.
const MAX_FAULTS_PER_ACCESS: u32 = 10_000;

/// The privilege a simulated vCPU's accesses run at (the U/S bit of the #PF error code).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub enum Privilege {
    /// CPL3, as the `kvm` and `native` guests run their workloads: every access needs U at
    /// every level of the walk.
    #[default]
    User,
    /// CPL0: U is not needed (SMEP/SMAP are off); W still is (CR0.WP is set).
    Supervisor,
}

#[derive(Clone, Copy, Debug)]
enum Op {
    Read,
    Write(u64),
    FetchAdd(u64),
    /// An instruction fetch of the one byte at the address.
    Fetch,
}

impl Op {
    /// The access as the #PF error code describes it: W for stores, I/D for fetches, U from
    /// CPL3 (what hardware puts in the error code, and what the software TLB and the shadow
    /// walk check against the permissions they hold).
    fn access(self, privilege: Privilege) -> Access {
        let a = match self {
            Op::Read => Access::READ,
            Op::Write(_) | Op::FetchAdd(_) => Access::WRITE,
            Op::Fetch => Access::FETCH,
        };
        match privilege {
            Privilege::User => a.user(),
            Privilege::Supervisor => a,
        }
    }
}

/// Per-vCPU counters of the software TLB and the access path (defined in the result schema).
pub use shadowlab_schema::SimCpuStats;

/// A simulated vCPU: what `sim::run`'s closure receives. Implements [`Cpu`] (for the
/// workloads: a guest-fatal error stops the vCPU, see [`super::run`]) and offers the same
/// operations as `try_*` methods that return errors instead (for tests).
pub struct SimCpu<'a, P: SyncPolicy> {
    vm: &'a SimVm<P>,
    id: usize,
    v: VcpuMmu,
    tlb: SoftTlb,
    stats: SimCpuStats,
    privilege: Privilege,
}

impl<'a, P: SyncPolicy> SimCpu<'a, P> {
    pub(super) fn new(vm: &'a SimVm<P>, id: usize) -> Result<Self, SimFault> {
        let mut v = vm.mmu().vcpu(id)?;
        vm.mmu().kvm_mmu_new_pgd(&mut v, vm.boot().roots[id])?;
        Ok(SimCpu {
            vm,
            id,
            v,
            tlb: SoftTlb::default(),
            stats: SimCpuStats::default(),
            privilege: Privilege::default(),
        })
    }

    fn mmu(&self) -> &'a Mmu<P> {
        self.vm.mmu()
    }

    /// The VM this vCPU belongs to.
    pub fn vm(&self) -> &'a SimVm<P> {
        self.vm
    }

    /// This vCPU's MMU context (current root, cached roots).
    pub fn vcpu_mmu(&self) -> &VcpuMmu {
        &self.v
    }

    /// The guest CR3 (guest-physical) currently loaded.
    pub fn cr3(&self) -> u64 {
        self.v.pgd().unwrap_or(0)
    }

    /// The privilege this vCPU's accesses run at ([`Privilege::User`] unless set).
    pub fn privilege(&self) -> Privilege {
        self.privilege
    }

    /// Switches the privilege of later accesses (a CPL change). The software TLB is kept, as
    /// hardware keeps its TLB across a privilege change: each entry holds the permissions
    /// it was filled with (U included), and every hit is checked against them.
    pub fn set_privilege(&mut self, privilege: Privilege) {
        self.privilege = privilege;
    }

    /// The access-path counters.
    pub fn stats(&self) -> SimCpuStats {
        self.stats
    }

    /// The software TLB's entry for `gva`, if any (for tests of staleness).
    pub fn tlb_entry(&self, gva: u64) -> Option<TlbEntry> {
        self.tlb.lookup(gva)
    }

    /// The oracle's reference: `gva` through the guest's own tables under the current CR3.
    pub fn guest_translate(&self, gva: u64) -> Result<GuestTranslation, GuestFault> {
        guest_translate(self.vm.mem(), self.cr3(), gva)
    }

    /// The oracle's other side: `gva` through the current shadow root.
    pub fn shadow_translate(&self, gva: u64) -> Result<ShadowTranslation, ShadowMiss> {
        self.mmu().shadow_translate(&self.v, gva)
    }

    /// Handles requests taken at guest entry (KVM's `vcpu_enter_guest` request loop).
    fn handle_requests(&mut self, req: u32) -> Result<(), SimFault> {
        if req & KVM_REQ_MMU_RELOAD != 0 {
            self.stats.reloads += 1;
            self.mmu().kvm_mmu_reload(&mut self.v)?;
            self.tlb.flush();
            self.stats.tlb_flushes += 1;
        }
        if req & KVM_REQ_TLB_FLUSH != 0 {
            self.stats.remote_flushes_seen += 1;
            self.tlb.flush();
            self.stats.tlb_flushes += 1;
        }
        Ok(())
    }

    /// One access: TLB, else shadow walk (setting shadow A/D), else fault handler; the data
    /// access itself happens in guest mode, so a remote flush waits for it.
    ///
    /// A non-canonical `gva` raises #GP before anything else, as on hardware: the TLB is
    /// keyed by page number and the walk indexes bits 12..47 only, so either would otherwise
    /// translate it through its canonical twin.
    fn access(&mut self, gva: u64, op: Op) -> Result<u64, SimFault> {
        if !is_canonical(gva) {
            return Err(SimFault::Guest(GuestFault::non_canonical(gva)));
        }
        // Data accesses are whole aligned words; a fetch reads one byte of one.
        if gva % 8 != 0 && !matches!(op, Op::Fetch) {
            return Err(SimFault::Misaligned(gva));
        }
        if self.vm.aborted() {
            return Err(SimFault::OtherVcpuFailed);
        }
        self.stats.accesses += 1;
        let acc = op.access(self.privilege);
        let region = self.vm.mem().region();
        let mut faults = 0u32;
        loop {
            let req = self.mmu().vcpu_enter_guest(self.id);
            if req != 0 {
                self.handle_requests(req)?;
                continue;
            }
            // In guest mode from here to vcpu_exit_guest. A hit must be permitted by the
            // permissions the entry was filled with (U, W, X): hardware checks its TLB entry,
            // so an entry filled by a supervisor access to a U=0 page denies a user access.
            let hit = self
                .tlb
                .lookup(gva)
                .filter(|e| acc.permitted_by(e.access) && (!acc.is_write() || e.dirty));
            let mpa_page = match hit {
                Some(e) => {
                    self.stats.tlb_hits += 1;
                    Some(e.mpa_page)
                }
                None => {
                    self.stats.walks += 1;
                    let root = self.v.root_hpa();
                    match root.map(|r| shadow_walk(self.vm.mem(), r, gva, acc, true)) {
                        Some(Ok(t)) => {
                            self.tlb.fill(
                                gva,
                                TlbEntry {
                                    mpa_page: t.mpa_page,
                                    access: t.access,
                                    dirty: acc.is_write() || t.spte & SPTE_D != 0,
                                },
                            );
                            Some(t.mpa_page)
                        }
                        _ => None,
                    }
                }
            };
            let Some(mpa_page) = mpa_page else {
                self.mmu().vcpu_exit_guest(self.id);
                // A #PF invalidates the faulting translation.
                self.tlb.invalidate(gva);
                self.stats.shadow_faults += 1;
                faults += 1;
                if faults > MAX_FAULTS_PER_ACCESS {
                    return Err(SimFault::Livelock { gva });
                }
                match self.mmu().page_fault(&mut self.v, gva, acc)? {
                    FaultOutcome::Fixed | FaultOutcome::Retry => continue,
                    FaultOutcome::GuestFault(f) => return Err(SimFault::Guest(f)),
                    FaultOutcome::Emulate { gpa } => return self.emulate(gpa, op),
                }
            };
            let mpa = mpa_page + (gva & 0xff8);
            let r = match op {
                Op::Read => region.load_u64(mpa, Ordering::Acquire),
                Op::Fetch => region
                    .load_u64(mpa, Ordering::Acquire)
                    .map(|w| (w >> (8 * (gva & 7))) & 0xff),
                Op::Write(val) => region.store_u64(mpa, val, Ordering::Release).map(|_| 0),
                Op::FetchAdd(val) => region.fetch_add_u64(mpa, val, Ordering::SeqCst),
            };
            self.mmu().vcpu_exit_guest(self.id);
            return r.map_err(|e| SimFault::Mmu(e.into()));
        }
    }

    /// The instruction emulator's store to a write-protected guest page table.
    fn emulate(&mut self, gpa: u64, op: Op) -> Result<u64, SimFault> {
        self.stats.emulated += 1;
        let v = &self.v;
        match op {
            Op::Write(val) => self
                .mmu()
                .emulate_write(v, gpa, &val.to_le_bytes())
                .map(|_| 0)
                .map_err(SimFault::Mmu),
            Op::FetchAdd(val) => self
                .mmu()
                .emulate_rmw_u64(v, gpa, |x| x.wrapping_add(val))
                .map_err(SimFault::Mmu),
            Op::Read | Op::Fetch => Err(SimFault::UnexpectedEmulation { gpa }),
        }
    }

    /// [`Cpu::read_u64`], returning errors.
    pub fn try_read_u64(&mut self, gva: u64) -> Result<u64, SimFault> {
        self.access(gva, Op::Read)
    }

    /// [`Cpu::write_u64`], returning errors.
    pub fn try_write_u64(&mut self, gva: u64, value: u64) -> Result<(), SimFault> {
        self.access(gva, Op::Write(value)).map(|_| ())
    }

    /// [`Cpu::fetch_add_u64`], returning errors.
    pub fn try_fetch_add_u64(&mut self, gva: u64, value: u64) -> Result<u64, SimFault> {
        self.access(gva, Op::FetchAdd(value))
    }

    /// [`Cpu::fetch`], returning errors: an instruction fetch at `gva` (any alignment) through
    /// the TLB and shadow tables, then the decode of the byte, which must be `ret`.
    pub fn try_fetch(&mut self, gva: u64) -> Result<(), SimFault> {
        let byte = self.access(gva, Op::Fetch)? as u8;
        if byte != RET {
            return Err(SimFault::NotRet { gva, byte });
        }
        Ok(())
    }

    /// [`Cpu::load_cr3`], returning errors: `kvm_mmu_new_pgd` (root switch + sync roots),
    /// then the TLB flush a CR3 write implies.
    pub fn try_load_cr3(&mut self, root: u64) -> Result<(), SimFault> {
        let r = self.mmu().kvm_mmu_new_pgd(&mut self.v, root);
        self.tlb.flush();
        self.stats.tlb_flushes += 1;
        r.map_err(SimFault::Mmu)
    }

    /// Drops every pending request (outside guest mode), as the exit path does.
    fn service_requests(&mut self) -> Result<(), SimFault> {
        let req = self.mmu().vcpu_take_requests(self.id);
        if req != 0 {
            self.handle_requests(req)?;
        }
        Ok(())
    }

    fn abort(&self, f: SimFault) -> ! {
        self.vm.set_aborted();
        resume_unwind(Box::new(SimAbort(f)))
    }
}

impl<P: SyncPolicy> Cpu for SimCpu<'_, P> {
    fn id(&self) -> usize {
        self.id
    }

    fn nr_vcpus(&self) -> usize {
        self.vm.nr_vcpus()
    }

    fn free_frames(&self) -> Range<u64> {
        self.vm.boot().free[self.id].clone()
    }

    fn boot_root(&self) -> u64 {
        self.vm.boot().roots[self.id]
    }

    fn shared_page(&self) -> u64 {
        self.vm.boot().shared
    }

    fn read_u64(&mut self, gva: u64) -> u64 {
        self.try_read_u64(gva).unwrap_or_else(|f| self.abort(f))
    }

    fn write_u64(&mut self, gva: u64, value: u64) {
        if let Err(f) = self.try_write_u64(gva, value) {
            self.abort(f)
        }
    }

    fn fetch_add_u64(&mut self, gva: u64, value: u64) -> u64 {
        self.try_fetch_add_u64(gva, value)
            .unwrap_or_else(|f| self.abort(f))
    }

    fn fetch(&mut self, gva: u64) {
        if let Err(f) = self.try_fetch(gva) {
            self.abort(f)
        }
    }

    fn pause(&mut self) {
        if self.vm.aborted() {
            self.abort(SimFault::OtherVcpuFailed)
        }
        std::hint::spin_loop();
        std::thread::yield_now();
    }

    fn load_cr3(&mut self, root: u64) {
        if let Err(f) = self.try_load_cr3(root) {
            self.abort(f)
        }
    }

    /// KVM's INVLPG exit: `kvm_mmu_invlpg` (syncs the SPTE if its page is unsync), then the
    /// TLB entry goes.
    fn invlpg(&mut self, gva: u64) {
        self.mmu().kvm_mmu_invlpg(&self.v, gva);
        self.tlb.invalidate(gva);
    }

    /// A guest TLB flush: `kvm_mmu_sync_roots` (the lockless check), then the TLB flush.
    fn flush_tlb(&mut self) {
        self.mmu().kvm_mmu_flush_tlb_guest(&self.v);
        self.tlb.flush();
        self.stats.tlb_flushes += 1;
    }

    fn hypercall_nop(&mut self) {
        self.stats.hypercalls += 1;
        if let Err(f) = self.service_requests() {
            self.abort(f)
        }
    }

    fn timestamp(&mut self) -> u64 {
        self.vm.elapsed_ns()
    }
}

impl<P: SyncPolicy> Drop for SimCpu<'_, P> {
    fn drop(&mut self) {
        self.mmu().kvm_mmu_unload(&mut self.v);
    }
}
