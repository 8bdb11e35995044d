//! The VMM-owned monitor: GDT, IDT, per-vCPU TSSes and IST stacks, and the exception stubs that
//! turn a guest exception into an exit.
//!
//! The monitor lives in its own memslot at [`MONITOR_GPA`](crate::kvm::layout::MONITOR_GPA) and is mapped at
//! `MONITOR_BASE` (PML4 slot 511, supervisor-only) by the monitor's own page tables, which the
//! VMM links into every root the vCPU runs on (the guest's own roots in `native` mode, every
//! shadow root in `kvm` mode) — as PVM clones its host entries into each root.
//!
//! The guest runs at CPL3 with IOPL=3 (why: the [host notes](super#this-host)); only the
//! monitor's few stubs run at CPL0, and the monitor is mapped supervisor-only: the guest
//! cannot touch it.
//!
//! Every exception vector 0..32 goes through an interrupt gate with IST1, so the CPU always
//! switches to the vCPU's IST stack in the monitor. The stub pushes a zero error code where the
//! CPU does not, the vector, RAX and RDX, and does `out EXCEPTION_PORT, eax` with the vector:
//! the VMM reads the exception frame straight out of its own monitor memory (no guest-memory
//! translation), CR2 from KVM_GET_SREGS, and decides. When the VMM resumes the vCPU the stub
//! pops and `iretq`s, so a fault the VMM fixed (a shadow-MMU fault) re-executes the faulting
//! instruction.
//!
//! Split by job: [`layout`] (offsets, VAs, selectors, vectors), [`tables`] (GDT, TSSes, IDT,
//! page tables, the pool mapping), [`code`] (the stubs, the native-op gate and the replay
//! routine, written with iced-x86's code assembler), [`replay`] (the replay protocol's data
//! pages), [`frame`] (the exception frame a stub leaves), [`error`].

pub mod code;
pub mod error;
pub mod frame;
pub mod layout;
pub mod replay;
pub mod tables;

pub use code::stub_code;
pub use error::MonitorError;
pub use frame::{read_frame, set_frame_rax, set_frame_rip, ExceptionFrame};
pub use layout::*;
pub use replay::{finish_replay, write_replay, ReplayEntry};
pub use tables::{build, map_pool};

#[cfg(test)]
mod tests;
