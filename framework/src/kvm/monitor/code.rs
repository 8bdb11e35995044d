//! The monitor's code, written with iced-x86's code assembler: the per-vector exception stubs
//! and their common tail, the native-op gate, and the replay routine. Each piece is assembled
//! at its fixed VA in the stubs page ([`STUBS_OFF`]), which the IDT's gates point at.

use iced_x86::code_asm::*;
use shadowlab_abi::layout::{DIRECT_MAP_BASE, MONITOR_BASE, MONITOR_SLOT};
use shadowlab_abi::native_op::{INVLPG, LOAD_CR3};
use shadowlab_abi::EXCEPTION_PORT;

use super::layout::*;
use super::replay::{REPLAY_COUNT, REPLAY_ENTRIES};

/// Assembles `body` as 64-bit code at `ip`. The code is fixed (no input but constants), so a
/// failure is a bug in this file, caught by its tests.
fn assemble(ip: u64, body: impl FnOnce(&mut CodeAssembler) -> Result<(), IcedError>) -> Vec<u8> {
    let mut a = CodeAssembler::new(64).expect("64-bit code assembler");
    body(&mut a)
        .and_then(|()| a.assemble(ip))
        .unwrap_or_else(|e| panic!("assembling monitor code at {ip:#x}: {e}"))
}

/// The VA of the stubs page's byte at `off`.
const fn stubs_va(off: u64) -> u64 {
    MONITOR_BASE + STUBS_OFF + off
}

/// The stub of vector `v` (at `v * STUB_STRIDE`): push a zero error code where the CPU pushes
/// none, push the vector, jump to the common tail.
fn vector_stub(v: u8) -> Vec<u8> {
    let at = stubs_va(u64::from(v) * STUB_STRIDE);
    assemble(at, |a| {
        if !ERROR_CODE_VECTORS.contains(&v) {
            a.push(0)?;
        }
        a.push(i32::from(v))?;
        a.jmp(stubs_va(COMMON_OFF))
    })
}

/// The stubs' common tail: saves RAX and RDX, reports the vector with `out EXCEPTION_PORT`
/// (the exit to the VMM, which reads the frame from the IST stack), then pops and `iretq`s.
fn common_tail() -> Vec<u8> {
    assemble(stubs_va(COMMON_OFF), |a| {
        a.push(rax)?;
        a.push(rdx)?;
        a.mov(eax, dword_ptr(rsp + 16))?; // the vector
        a.mov(dx, i32::from(EXCEPTION_PORT))?;
        a.out(dx, eax)?; // exit to the VMM
        a.pop(rdx)?;
        a.pop(rax)?;
        a.add(rsp, 16)?; // vector, error code
        a.iretq()?;
        a.ud2() // never reached
    })
}

/// The native-op gate: dispatch on EAX (see [`NATIVE_GATE_VECTOR`]). The gate clobbers RAX
/// and RDX (the guest's `int3` declares them) and touches no stack: an emulated store would
/// count in the host's `mmu_pte_write` and pollute the `native` statistics
/// ([host notes](crate::kvm#this-host)).
///
/// LOAD_CR3 first links the monitor into the new root (PML4 slot 511, if it is not already
/// there) through the direct map, then loads CR3: the guest's own roots do not carry the
/// monitor (the workloads never copy slot 511), and without it the very `iretq` after the
/// `mov cr3` could not be fetched. This is the `native` counterpart of the VMM linking the
/// monitor into every shadow root. It writes a root page once; the host's MMU sees that write
/// like any guest page-table write.
pub(super) fn native_gate() -> Vec<u8> {
    assemble(stubs_va(NATIVE_OFF), |a| {
        let mut load_cr3 = a.create_label();
        let mut invlpg = a.create_label();
        let mut linked = a.create_label();
        a.cmp(eax, LOAD_CR3 as i32)?;
        a.je(load_cr3)?;
        a.cmp(eax, INVLPG as i32)?;
        a.je(invlpg)?;
        // FLUSH_TLB, and anything else: reload CR3.
        a.mov(rax, cr3)?;
        a.mov(cr3, rax)?;
        a.iretq()?;
        a.set_label(&mut load_cr3)?;
        // The root's slot 511 through the direct map.
        a.mov(rax, DIRECT_MAP_BASE + 8 * MONITOR_SLOT as u64)?;
        a.add(rax, rdi)?;
        a.mov(rdx, pml4_entry())?;
        a.cmp(qword_ptr(rax), rdx)?;
        a.je(linked)?;
        a.mov(qword_ptr(rax), rdx)?;
        a.set_label(&mut linked)?;
        a.mov(cr3, rdi)?;
        a.iretq()?;
        a.set_label(&mut invlpg)?;
        a.invlpg(ptr(rdi))?;
        a.iretq()
    })
}

/// The replay routine: makes a host that shadows our shadow pages see SPTE changes the VMM
/// made from userspace (see `mmu::coherence` and `kvm::shadow`).
///
/// Entered through [`REPLAY_VECTOR`]'s gate (the VMM injects the exception; CPL0, interrupts
/// off) from wherever the vCPU stopped: CPL3 guest code, a monitor stub between its `out` and
/// its `iretq`, or this routine. It saves the five registers it uses and finds this vCPU's
/// replay data page from its stack (which lies in the vCPU's IST page, at a fixed distance
/// from the data page). For each entry, a monitor VA in [`POOL_VA`]: `lock or byte [a], 0`, a
/// store by the guest of the byte already there, which the host traps or emulates and hands
/// to `kvm_mmu_track_write`. At an SPTE's first byte ([`super::ReplayEntry::Spte`]) the host zaps
/// its shadow of that one entry (a one-byte write at an entry's start is the one narrow write
/// KVM does not call misaligned); at its second byte ([`super::ReplayEntry::Page`]) the write is
/// "misaligned" and the host zaps every shadow page it has of that pool page. Locked, so an
/// SPTE the VMM rewrites meanwhile on another thread is never put back to an old value. Then
/// `mov cr3` with the current CR3: the host syncs any pool page it chose to unsync rather
/// than write-protect (its `KVM_REQ_MMU_SYNC` on a CR3 load). Then `out` to
/// [`REPLAY_DONE_PORT`]: the VMM learns the replay is complete and sets the round word to 0,
/// or refills the page for another round. With 0 the routine restores the registers and
/// `iretq`s to the interrupted context when the vCPU next runs.
///
/// Integer-only, no calls; every instruction at CPL0 is emulated on this machine's host
/// ([host notes](crate::kvm#this-host)).
pub(super) fn replay_routine() -> Vec<u8> {
    assemble(replay_entry(), |a| {
        let mut again = a.create_label();
        let mut store = a.create_label();
        let mut reload = a.create_label();
        for r in [rax, rcx, rdx, rsi, rdi] {
            a.push(r)?;
        }
        // The data page, from the stack (in the vCPU's IST page).
        a.mov(rsi, rsp)?;
        a.and(rsi, -4096)?;
        a.add(rsi, (REPLAY_OFF - IST_OFF) as i32)?;
        a.set_label(&mut again)?;
        a.mov(rcx, qword_ptr(rsi + REPLAY_COUNT as i32))?; // count + 1
        a.dec(rcx)?; // the count
        a.jz(reload)?;
        a.set_label(&mut store)?;
        // Entries 1..=count.
        a.mov(rdi, qword_ptr(rsi + rcx * 8 + (REPLAY_ENTRIES - 8) as i32))?;
        a.lock().or(byte_ptr(rdi), 0)?;
        a.dec(rcx)?;
        a.jnz(store)?;
        a.set_label(&mut reload)?;
        a.mov(rax, cr3)?;
        a.mov(cr3, rax)?;
        a.mov(edx, u32::from(REPLAY_DONE_PORT))?;
        a.out(dx, eax)?; // exit: the VMM sets the round word
        a.mov(rcx, qword_ptr(rsi + REPLAY_COUNT as i32))?;
        a.test(rcx, rcx)?; // 0: no more rounds
        a.jnz(again)?; // another round, possibly of no entries
        for r in [rdi, rsi, rdx, rcx, rax] {
            a.pop(r)?;
        }
        a.iretq()
    })
}

/// Machine code of the stubs page: 32 per-vector entries, the common tail, the native-op gate
/// and the replay routine, each at its fixed offset; `int3` everywhere else.
pub fn stub_code() -> Vec<u8> {
    let mut code = vec![0xccu8; 4096];
    let mut place = |off: u64, bytes: Vec<u8>, room: u64| {
        assert!(
            bytes.len() as u64 <= room,
            "monitor code at {off:#x}: {} bytes, room for {room}",
            bytes.len()
        );
        code[off as usize..off as usize + bytes.len()].copy_from_slice(&bytes);
    };
    for v in 0u8..32 {
        place(u64::from(v) * STUB_STRIDE, vector_stub(v), STUB_STRIDE);
    }
    place(COMMON_OFF, common_tail(), NATIVE_OFF - COMMON_OFF);
    place(NATIVE_OFF, native_gate(), REPLAY_CODE_OFF - NATIVE_OFF);
    place(REPLAY_CODE_OFF, replay_routine(), 4096 - REPLAY_CODE_OFF);
    code
}
