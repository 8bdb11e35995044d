//! ucalls: the guest side of the hypercall ABI in `shadowlab-abi`.

use core::arch::asm;
use core::fmt::{self, Write};

use core::sync::atomic::{AtomicBool, Ordering};

use shadowlab_abi::{
    status, UcallCmd, UcallMsg, HYPERCALL_MMIO_GPA, NOP_PORT, UCALL_PORT, UCALL_TEXT_LEN,
};
use shadowlab_abi::layout::DIRECT_MAP_BASE;

/// Whether hypercalls go through the MMIO window (set once at boot from the boot-info page,
/// by every vCPU, to the same value).
static HYPERCALL_MMIO: AtomicBool = AtomicBool::new(false);

/// Chooses the hypercall path (see `shadowlab_abi::HYPERCALL_MMIO_GPA`).
pub fn set_hypercall_mmio(on: bool) {
    HYPERCALL_MMIO.store(on, Ordering::Relaxed);
}

/// The hypercall `out port, eax`, through port I/O or the MMIO window; returns EAX afterwards
/// (the VMM sets it to `u32::MAX` when it refuses a ucall's message address).
#[inline(always)]
fn hypercall(port: u16, value: u32) -> u32 {
    let mut eax = value;
    if HYPERCALL_MMIO.load(Ordering::Relaxed) {
        let window = DIRECT_MAP_BASE + HYPERCALL_MMIO_GPA + u64::from(port);
        // SAFETY: a 4-byte store to the VMM's MMIO window, which the VMM maps in the direct map
        // and backs with no memory: it exits to the VMM. Not `nomem`: it is a compiler barrier,
        // so a ucall message's stores happen before it and the VMM's reply is read after it.
        unsafe {
            asm!("mov dword ptr [{w}], eax", w = in(reg) window, inout("eax") eax, options(nostack, preserves_flags));
        }
    } else {
        // SAFETY: port I/O to our own VMM's port; a compiler barrier as above.
        unsafe {
            asm!("out dx, eax", in("dx") port, inout("eax") eax, options(nostack, preserves_flags));
        }
    }
    eax
}

/// What the VMM puts in RAX when it refuses the message address itself (outside guest RAM,
/// misaligned): the message cannot carry a status then.
const REJECTED: u32 = u32::MAX;

/// Sends the raw ucall `out UCALL_PORT, gpa` and returns the status: the VMM's
/// [`UcallMsg::ret`], or `BAD_ARGUMENT` when the VMM refused the address.
///
/// # Safety
/// If `gpa` is the address of a message, the caller must not hold a reference to it across the
/// call (the VMM writes its `ret`).
pub unsafe fn raw_ucall(gpa: u32) -> Option<u32> {
    let eax = hypercall(UCALL_PORT, gpa);
    if eax == REJECTED && gpa != REJECTED {
        None
    } else {
        Some(eax)
    }
}

/// Sends `msg` and returns the status the VMM wrote.
pub fn ucall(msg: &mut UcallMsg) -> u64 {
    msg.ret = status::PENDING;
    let gva = msg as *mut UcallMsg as u64;
    let gpa = gva.wrapping_sub(DIRECT_MAP_BASE);
    let Ok(gpa32) = u32::try_from(gpa) else {
        return status::BAD_ARGUMENT;
    };
    // SAFETY: `msg` is a live message in guest RAM reached through the direct map (the stack or
    // static data), so `gpa` names it; we go through a raw pointer afterwards.
    match unsafe { raw_ucall(gpa32) } {
        // SAFETY: `msg` is valid; volatile because the VMM wrote it behind the compiler's back.
        Some(_) => unsafe { core::ptr::addr_of!(msg.ret).read_volatile() },
        None => status::BAD_ARGUMENT,
    }
}

/// The no-op hypercall: one `out` to [`NOP_PORT`], no message.
#[inline(always)]
pub fn nop() {
    hypercall(NOP_PORT, 0);
}

/// A `fmt::Write` into a message's text, truncating at the end of the buffer.
struct TextWriter<'a> {
    msg: &'a mut UcallMsg,
}

impl Write for TextWriter<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let used = self.msg.len as usize;
        let room = UCALL_TEXT_LEN - used;
        let n = s.len().min(room);
        self.msg.text[used..used + n].copy_from_slice(&s.as_bytes()[..n]);
        self.msg.len = (used + n) as u64;
        Ok(())
    }
}

/// `GUEST_PRINTF`.
pub fn printf(args: fmt::Arguments<'_>) {
    let mut msg = UcallMsg::new();
    msg.cmd = UcallCmd::Printf as u64;
    let _ = TextWriter { msg: &mut msg }.write_fmt(args);
    ucall(&mut msg);
}

/// `GUEST_SYNC(stage, value)`.
pub fn sync(stage: u64, value: u64) {
    let mut msg = UcallMsg::new();
    msg.cmd = UcallCmd::Sync as u64;
    msg.args[0] = stage;
    msg.args[1] = value;
    ucall(&mut msg);
}

/// `GUEST_DONE` with the program's results. If the VMM refuses them (a bad report block), the
/// refusal becomes a GUEST_ASSERT.
pub fn done(args: [u64; 6]) -> ! {
    let mut msg = UcallMsg::new();
    msg.cmd = UcallCmd::Done as u64;
    msg.args = args;
    let st = ucall(&mut msg);
    abort(
        file!(),
        line!(),
        format_args!("GUEST_DONE refused by the VMM: status {st}"),
    )
}

/// `GUEST_DONE` with a workload report block (`shadowlab_abi::report_words`), which stays
/// alive (borrowed) across the ucall.
pub fn done_with_report(mut args: [u64; 6], block: &[u64]) -> ! {
    use shadowlab_abi::done_args::{REPORT_GPA, REPORT_LEN};
    args[REPORT_GPA] = (block.as_ptr() as u64).wrapping_sub(DIRECT_MAP_BASE);
    args[REPORT_LEN] = core::mem::size_of_val(block) as u64;
    let mut msg = UcallMsg::new();
    msg.cmd = UcallCmd::Done as u64;
    msg.args = args;
    let st = ucall(&mut msg);
    core::hint::black_box(block);
    abort(
        file!(),
        line!(),
        format_args!("GUEST_DONE refused by the VMM: status {st}"),
    )
}

/// `GUEST_ASSERT` failure: reports file, line and message; the VMM stops this vCPU.
pub fn abort(file: &str, line: u32, args: fmt::Arguments<'_>) -> ! {
    let mut msg = UcallMsg::new();
    msg.cmd = UcallCmd::Abort as u64;
    msg.args[0] = u64::from(line);
    {
        let mut w = TextWriter { msg: &mut msg };
        let _ = w.write_str(file);
    }
    msg.args[1] = msg.len;
    let _ = TextWriter { msg: &mut msg }.write_fmt(args);
    ucall(&mut msg);
    halt_forever()
}

/// An MMU hypercall; returns the VMM's status.
pub fn mmu(cmd: UcallCmd, arg: u64) -> u64 {
    let mut msg = UcallMsg::new();
    msg.cmd = cmd as u64;
    msg.args[0] = arg;
    ucall(&mut msg)
}

/// Halts for good (the VMM does not resume a vCPU that reported DONE or an abort; `hlt` exits
/// to it anyway if it did).
pub fn halt_forever() -> ! {
    loop {
        // SAFETY: hlt has no memory effects; with no interrupt controller it exits to the VMM.
        unsafe { asm!("hlt", options(nomem, nostack)) };
    }
}

/// `GUEST_ASSERT(cond, fmt, ...)`: on failure reports file/line/message and stops the vCPU.
#[macro_export]
macro_rules! guest_assert {
    ($cond:expr, $($fmt:tt)+) => {
        if !$cond {
            $crate::ucall::abort(file!(), line!(), format_args!($($fmt)+))
        }
    };
}

/// `GUEST_PRINTF(fmt, ...)`.
#[macro_export]
macro_rules! guest_printf {
    ($($fmt:tt)+) => {
        $crate::ucall::printf(format_args!($($fmt)+))
    };
}
