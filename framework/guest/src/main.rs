//! shadowlab's paravirtual guest runtime.
//!
//! Booted by the VMM directly in 64-bit long mode (no firmware, no real mode): each vCPU enters
//! [`entry`]'s `_start` with RDI = its index and RSI = the direct-map address of the boot-info
//! page, on a stack the VMM prepared, on page tables the VMM built (the direct map of guest RAM
//! plus the monitor). It runs the program the boot-info page names, then reports through a ucall
//! and halts.
#![no_std]
#![no_main]

mod cpu;
mod entry;
mod mem;
mod programs;
mod ucall;

use core::panic::PanicInfo;

/// A failed self-check or a bug in the runtime becomes a GUEST_ASSERT (ucall `Abort`) carrying
/// the panic's file, line and message; the VMM stops the vCPU on it.
#[panic_handler]
fn panic(info: &PanicInfo<'_>) -> ! {
    let (file, line) = match info.location() {
        Some(l) => (l.file(), l.line()),
        None => ("<unknown>", 0),
    };
    ucall::abort(file, line, format_args!("{}", info.message()))
}

/// The prebuilt `core` for the host target is compiled with unwinding tables that name the
/// personality routine; with `panic=abort` nothing unwinds, so it is never called.
#[no_mangle]
extern "C" fn rust_eh_personality() {}
