//! The KVM backends on `/dev/kvm` (rust-vmm's `kvm-ioctls`/`kvm-bindings`).
//!
//! - `native`: the paravirtual guest runs on its own page tables, loaded into CR3 directly, so
//!   the host kernel's in-kernel shadow MMU does the work ([`run_native`]).
//! - `kvm` (integrated by the lead with `crate::mmu`): CR3 always holds a shadow root; guest
//!   page faults reach the VMM through the monitor stubs and the [`MmuHooks`] interface.
//!
//! Pieces: [`vm`] (VM, memslots, vCPU creation in long mode), [`monitor`] (GDT/IDT/TSS and the
//! exception stubs), [`boot`] (guest RAM layout, ELF load, boot page tables, boot-info page),
//! [`exit`] (the exit handler, a plain function), [`ucall`] (the hypercall ABI, validated),
//! [`hooks`] (the MMU interface), [`kick`] (kicks and requests for remote TLB flushes and
//! stops), [`stats`] (KVM's binary statistics), [`vcpu`] (the per-vCPU thread), [`run`] (a
//! whole run with its watchdog).

pub mod boot;
pub mod elf;
pub mod emulate;
pub mod error;
pub mod exit;
pub mod guest_image;
pub mod hooks;
pub mod hostmem;
pub mod kick;
pub mod layout;
pub mod monitor;
pub mod report;
pub mod run;
pub mod stats;
pub mod ucall;
pub mod vcpu;
pub mod vm;

pub use boot::GuestParams;
pub use error::KvmError;
pub use hooks::{FaultOutcome, HookError, MmuHooks, NativeMmu};
pub use kick::{make_all_cpus_request, new_kicks, VcpuKick, REQ_STOP, REQ_TLB_FLUSH};
pub use report::{FailureKind, GuestFailure, RunResult, VcpuReport};
pub use run::{
    run_native, run_native_reports, run_native_with, FaultInjection, HypercallPath, RunConfig,
};
pub use shadowlab_guest_abi::program;

/// Why `/dev/kvm` cannot be used here, or `None` if it can (opened and API version 12).
pub fn kvm_unavailable_reason() -> Option<String> {
    match kvm_ioctls::Kvm::new() {
        Err(e) => Some(format!("opening /dev/kvm: {e}")),
        Ok(k) if k.get_api_version() != 12 => {
            Some(format!("KVM API version {}", k.get_api_version()))
        }
        Ok(_) => None,
    }
}
