//! The exception frame a stub leaves on the vCPU's IST stack: read by the VMM to decide, and
//! patched (RIP, RAX) before the stub's `iretq` when the VMM emulated the instruction.

use super::layout::ist_top_off;
use crate::mem::{GuestPhys, MemError, MemRegion};

/// The exception frame a stub left on vCPU `vcpu`'s IST stack.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct ExceptionFrame {
    /// The vector.
    pub vector: u64,
    /// The error code (0 where the CPU pushes none).
    pub error_code: u64,
    /// Faulting RIP.
    pub rip: u64,
    /// CS at the fault.
    pub cs: u64,
    /// RFLAGS at the fault.
    pub rflags: u64,
    /// RSP at the fault.
    pub rsp: u64,
    /// RAX at the fault (saved by the stub).
    pub rax: u64,
    /// RDX at the fault (saved by the stub).
    pub rdx: u64,
}

/// Offset (below the IST top) of the frame's RIP.
const FRAME_RIP: u64 = 40;
/// Offset (below the IST top) of the stub's saved RAX.
const FRAME_RAX: u64 = 64;

/// Sets the RIP the stub's `iretq` returns to (to skip an instruction the VMM emulated).
pub fn set_frame_rip(mon: &MemRegion, vcpu: usize, rip: u64) -> Result<(), MemError> {
    mon.write_u64(ist_top_off(vcpu) - FRAME_RIP, rip)
}

/// Sets the RAX the stub restores.
pub fn set_frame_rax(mon: &MemRegion, vcpu: usize, rax: u64) -> Result<(), MemError> {
    mon.write_u64(ist_top_off(vcpu) - FRAME_RAX, rax)
}

/// Reads the frame of the exception vCPU `vcpu` is reporting.
pub fn read_frame(mon: &MemRegion, vcpu: usize) -> Result<ExceptionFrame, MemError> {
    let top = ist_top_off(vcpu);
    // The CPU aligns the IST top (already 16-aligned) and pushes SS, RSP, RFLAGS, CS, RIP,
    // [error]; the stub pushes [0], the vector, RAX, RDX.
    Ok(ExceptionFrame {
        rsp: mon.read_u64(top - 16)?,
        rflags: mon.read_u64(top - 24)?,
        cs: mon.read_u64(top - 32)?,
        rip: mon.read_u64(top - FRAME_RIP)?,
        error_code: mon.read_u64(top - 48)?,
        vector: mon.read_u64(top - 56)?,
        rax: mon.read_u64(top - FRAME_RAX)?,
        rdx: mon.read_u64(top - 72)?,
    })
}
