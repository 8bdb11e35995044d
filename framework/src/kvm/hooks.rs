//! Where the MMU plugs into the exit handler.
//!
//! The `kvm` backend connects the shadow MMU here; `native` uses [`NativeMmu`], for which the
//! host kernel's MMU does everything and any fault reaching the VMM is a guest bug.

use super::memslot::MemslotError;
use super::monitor::MonitorError;
use super::vcpu_fd::VcpuError;
use crate::mmu::MmuError;

/// What the exit handler does with a guest page fault, as the MMU decided: the MMU's
/// [`crate::mmu::FaultOutcome`] seen from the vCPU loop (its `Retry` is [`PfAction::Fixed`]
/// here: the requests it left are handled before re-entry, then the access re-runs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PfAction {
    /// Fixed (an SPTE was installed, a page unsynced, a write emulated): re-execute.
    Fixed,
    /// A genuine guest fault: the guest's own tables do not allow the access. The guest runtime
    /// has no #PF handler, so the run fails with a report.
    GuestFault,
    /// A store to a write-protected guest page table that must be emulated: the VMM decodes
    /// the faulting instruction (`kvm::emulate`), calls [`MmuHooks::emulated_write`] with the
    /// decoded value at `gpa`, and resumes after the instruction.
    Emulate {
        /// Guest-physical address written.
        gpa: u64,
    },
}

/// An MMU operation failed (a VMM-side error, not a guest one): one variant per source.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum HookError {
    /// The shadow MMU refused the operation.
    #[error(transparent)]
    Mmu(#[from] MmuError),
    /// A vCPU ioctl of the host-coherence replay failed.
    #[error(transparent)]
    Vcpu(#[from] VcpuError),
    /// Filling or finishing a replay data page in the monitor failed.
    #[error("monitor: {0}")]
    Monitor(#[from] MonitorError),
    /// The monitor's replay routine did not end in its completion exit.
    #[error("vCPU {vcpu}: the monitor's SPTE replay routine stopped with {exit}")]
    ReplayStopped {
        /// vCPU index.
        vcpu: usize,
        /// The exit it took instead, as `kvm-ioctls` prints it.
        exit: String,
    },
    /// Cycling the pool's memslot failed.
    #[error(transparent)]
    Memslot(#[from] MemslotError),
    /// The other vCPUs did not leave KVM_RUN in time for a memslot cycle.
    #[error("vCPUs did not leave KVM_RUN for a host flush")]
    ParkTimeout,
    /// `native` mode was asked to emulate a guest page-table store.
    #[error("native mode emulates no writes (gpa {gpa:#x})")]
    NativeEmulatesNoWrites {
        /// Guest-physical address of the store.
        gpa: u64,
    },
}

/// The interface between a vCPU's exit handler and the MMU. All methods take the vCPU index;
/// the implementation keeps per-vCPU state (current root, TLB requests) behind it. Methods take
/// `&self`: one instance is shared by all vCPU threads.
pub trait MmuHooks: Send + Sync {
    /// A guest #PF at `gva` with the hardware error code (reported by the monitor stub).
    fn page_fault(&self, vcpu: usize, gva: u64, error_code: u64) -> Result<PfAction, HookError>;
    /// The guest asked to load CR3 with guest-physical `root` (validated as a page of guest RAM).
    /// Returns the value to put into the hardware CR3 (a shadow root), or `None` if this mode
    /// does not take CR3 loads by hypercall.
    fn load_cr3(&self, vcpu: usize, root: u64) -> Result<Option<u64>, HookError>;
    /// The guest invalidated `gva` (canonical). `Ok(false)`: not supported in this mode.
    fn invlpg(&self, vcpu: usize, gva: u64) -> Result<bool, HookError>;
    /// The guest flushed its TLB. `Ok(false)`: not supported in this mode.
    fn flush_tlb(&self, vcpu: usize) -> Result<bool, HookError>;
    /// A decoded guest store of `len` bytes of `value` to `gpa` that hit a write-protected guest
    /// page table and must be emulated.
    fn emulated_write(&self, vcpu: usize, gpa: u64, value: u64, len: u8) -> Result<(), HookError>;
    /// Called before re-entering the guest after a kick with a pending TLB-flush request (the
    /// remote-flush protocol: `kvm_make_all_cpus_request(KVM_REQ_TLB_FLUSH)` then
    /// `kvm_check_request` before entry). Returns a new hardware CR3 if it must change.
    fn flush_before_entry(&self, vcpu: usize) -> Result<Option<u64>, HookError>;
    /// Called before every KVM_RUN, after [`MmuHooks::flush_before_entry`]: the place for the
    /// MMU's own requests and guest-mode bookkeeping (KVM's `vcpu_enter_guest`). `ctx` runs
    /// monitor code on this vCPU first if the MMU needs it (the host-coherence replay).
    /// Returns a new hardware CR3 if it must change. Nothing by default.
    fn before_entry(
        &self,
        _vcpu: usize,
        _ctx: &mut dyn GuestContext,
    ) -> Result<Option<u64>, HookError> {
        Ok(None)
    }
    /// Called as soon as KVM_RUN returns, before anything else (KVM's guest-mode exit).
    /// Nothing by default.
    fn after_exit(&self, _vcpu: usize) {}
}

/// Monitor code the MMU may have a vCPU run before it re-enters the guest; implemented by the
/// vCPU's thread, which owns the vCPU (outside KVM_RUN when this is called).
pub trait GuestContext {
    /// Runs the monitor's replay routine (`monitor::replay_entry`) on this vCPU: re-stores the
    /// SPTEs at `vas` (monitor VAs in `monitor::POOL_VA`; none: only the CR3 reload) in guest
    /// context, so that a host shadowing the pool zaps its stale copies, then reloads CR3, on
    /// hardware CR3 `cr3` if given (which stays loaded). Returns once the routine completed;
    /// the interrupted guest context resumes at the next entry. `by_hand`: enter the routine
    /// with saved and restored registers even if no event is in flight (for tests).
    fn replay_sptes(
        &mut self,
        vas: &[u64],
        cr3: Option<u64>,
        by_hand: bool,
    ) -> Result<(), HookError>;
}

/// `native` mode: the guest's own page tables are in CR3 and the host's MMU handles them.
#[derive(Clone, Copy, Debug, Default)]
pub struct NativeMmu;

impl MmuHooks for NativeMmu {
    fn page_fault(&self, _vcpu: usize, _gva: u64, _error_code: u64) -> Result<PfAction, HookError> {
        Ok(PfAction::GuestFault)
    }
    fn load_cr3(&self, _vcpu: usize, _root: u64) -> Result<Option<u64>, HookError> {
        Ok(None)
    }
    fn invlpg(&self, _vcpu: usize, _gva: u64) -> Result<bool, HookError> {
        Ok(false)
    }
    fn flush_tlb(&self, _vcpu: usize) -> Result<bool, HookError> {
        Ok(false)
    }
    fn emulated_write(
        &self,
        _vcpu: usize,
        gpa: u64,
        _value: u64,
        _len: u8,
    ) -> Result<(), HookError> {
        Err(HookError::NativeEmulatesNoWrites { gpa })
    }
    fn flush_before_entry(&self, _vcpu: usize) -> Result<Option<u64>, HookError> {
        // The guest's TLB is the host's business in native mode.
        Ok(None)
    }
}
