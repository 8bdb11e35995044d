//! What a vCPU runs: the runtime's built-in test programs, or a workload.

use core::arch::asm;

use shadowlab_abi::{
    program, report_words, status, BootInfo, UcallCmd, UcallMsg, WORKLOAD_BASE_ID,
};
use shadowlab_abi::layout::{direct_map, pt_index, pte};
use shadowlab_abi::layout::{DIRECT_MAP_BASE, WORKLOAD_BASE};
use shadowlab_workloads::{
    Cpu, Flags, FrameAlloc, PageTables, Params, PtError, Run, TlbGather, Workload, RET,
};

use crate::cpu::GuestCpu;
use crate::{guest_assert, guest_printf, ucall};

/// Runs the program named in the boot-info page on this vCPU; never returns.
pub fn run(cpu: &mut GuestCpu, info: &BootInfo) -> ! {
    match info.program {
        program::NOP_LOOP => nop_loop(cpu, info.iters),
        program::ASSERT_FAIL => {
            let two = core::hint::black_box(1u64) + 1;
            guest_assert!(two == 3, "deliberate failure: 1 + 1 = {two}, not 3");
            ucall::done([0; 6])
        }
        program::UD2 => ud2(),
        program::BAD_HYPERCALL => bad_hypercalls(info),
        program::PAGE_FAULT => {
            // Nothing is mapped in the user half at boot.
            let v = cpu.read_u64(WORKLOAD_BASE);
            guest_assert!(false, "read of unmapped {WORKLOAD_BASE:#x} returned {v:#x}");
            ucall::done([0; 6])
        }
        program::SYNC_PRINTF => {
            ucall::sync(1, cpu.id() as u64);
            guest_printf!("hello from vCPU {} of {}", cpu.id(), cpu.nr_vcpus());
            ucall::sync(2, 42);
            ucall::done([3, 0, 0, 0, 0, 0])
        }
        program::COHERENCE_PROBE => coherence_probe(cpu),
        program::FETCH_PROBE => fetch_probe(cpu, info.iters),
        program::SPIN => loop {
            cpu.pause()
        },
        id if id >= WORKLOAD_BASE_ID => run_workload(cpu, info, (id - WORKLOAD_BASE_ID) as usize),
        other => {
            guest_assert!(false, "unknown program {other:#x}");
            ucall::done([0; 6])
        }
    }
}

/// Runs workload `index` of `Workload::ALL` with the boot-info parameters (iters, seed,
/// size = params[0]) and reports its `Report` in a DONE; a failed self-check or any other
/// workload error becomes GUEST_ASSERT with the error's message.
fn run_workload(cpu: &mut GuestCpu, info: &BootInfo, index: usize) -> ! {
    let Some(w) = Workload::ALL.get(index) else {
        ucall::abort(file!(), line!(), format_args!("no workload number {index}"))
    };
    let w = w.with_params(Params {
        iters: info.iters,
        seed: info.seed,
        size: info.params[0],
    });
    let t0 = cpu.timestamp();
    let result = w.run(cpu);
    let t1 = cpu.timestamp();
    let r = match result {
        Ok(r) => r,
        Err(e) => ucall::abort(
            file!(),
            line!(),
            format_args!("workload {} failed on vCPU {}: {e}", w.name(), cpu.id()),
        ),
    };
    // The block (15 KiB, most of it the histogram's 1920 buckets) sits beside the Report in
    // this frame, with the workloads inlined; the vCPU stack is 256 KiB
    // (kvm::layout::STACK_SIZE; an overflow hits the guard page below it).
    let mut block = [0u64; report_words::TOTAL];
    r.to_words(&mut block);
    ucall::done_with_report([r.ops, t0, t1, 0, 0, 0], &block)
}

/// See `program::FETCH_PROBE`.
fn fetch_probe(cpu: &mut GuestCpu, case: u64) -> ! {
    let mut frames = FrameAlloc::for_cpu(cpu);
    let boot = cpu.boot_root();
    let built = (|| -> Result<PageTables, PtError> {
        let mut pt = PageTables::new_root(cpu, &mut frames, boot, &[])?;
        let code = frames.alloc(cpu)?;
        cpu.write_u64(direct_map(code), u64::from(RET));
        pt.map(cpu, &mut frames, WORKLOAD_BASE, code, Flags::RX)?;
        Ok(pt)
    })();
    let mut pt = match built {
        Ok(pt) => pt,
        Err(e) => ucall::abort(file!(), line!(), format_args!("fetch probe setup: {e}")),
    };
    cpu.load_cr3(pt.root());
    cpu.fetch(WORKLOAD_BASE);
    ucall::sync(program::FETCH_STAGE, 1);
    let taken = match case {
        program::FETCH_NX => Flags::RO,
        program::FETCH_SUPERVISOR => Flags(Flags::RX.bits() & !pte::U),
        other => ucall::abort(file!(), line!(), format_args!("fetch probe case {other}")),
    };
    let mut gather = TlbGather::new();
    if let Err(e) = pt.protect(cpu, WORKLOAD_BASE, taken, &mut gather) {
        ucall::abort(file!(), line!(), format_args!("fetch probe protect: {e}"))
    }
    cpu.invlpg(WORKLOAD_BASE);
    let byte = cpu.read_u64(WORKLOAD_BASE);
    ucall::sync(program::FETCH_STAGE, 2);
    guest_assert!(byte == u64::from(RET), "read {byte:#x}, not the ret stored");
    cpu.fetch(WORKLOAD_BASE);
    guest_assert!(false, "the call through a page with {taken:?} returned");
    ucall::done([0; 6])
}

/// See `program::COHERENCE_PROBE`.
fn coherence_probe(cpu: &mut GuestCpu) -> ! {
    let mut frames = FrameAlloc::for_cpu(cpu);
    let boot = cpu.boot_root();
    let built = (|| -> Result<(u64, u64, u64), PtError> {
        let mut pt = PageTables::new_root(cpu, &mut frames, boot, &[])?;
        let a = frames.alloc(cpu)?;
        let b = frames.alloc(cpu)?;
        cpu.write_u64(direct_map(a), 0xaaaa);
        cpu.write_u64(direct_map(b), 0xbbbb);
        pt.map(cpu, &mut frames, WORKLOAD_BASE, a, Flags::RW)?;
        let leaf = pt.leaf_table(cpu, WORKLOAD_BASE)? + 8 * pt_index(WORKLOAD_BASE, 1) as u64;
        Ok((pt.root(), leaf, b | Flags::RW.bits()))
    })();
    let (root, leaf, new_pte) = match built {
        Ok(v) => v,
        Err(e) => ucall::abort(file!(), line!(), format_args!("coherence probe setup: {e}")),
    };
    cpu.load_cr3(root);
    let before = cpu.read_u64(WORKLOAD_BASE);
    cpu.write_u64(direct_map(cpu.shared_page()), new_pte);
    ucall::sync(program::COHERENCE_STAGE, leaf);
    cpu.invlpg(WORKLOAD_BASE);
    let after_invlpg = cpu.read_u64(WORKLOAD_BASE);
    cpu.flush_tlb();
    let after_flush = cpu.read_u64(WORKLOAD_BASE);
    cpu.load_cr3(boot);
    cpu.load_cr3(root);
    let after_switch = cpu.read_u64(WORKLOAD_BASE);
    cpu.load_cr3(boot);
    ucall::done([before, after_invlpg, after_flush, after_switch, 0, 0])
}

/// `iters` no-op hypercalls through the `Cpu` trait, timed with the TSC.
fn nop_loop(cpu: &mut GuestCpu, iters: u64) -> ! {
    let t0 = cpu.timestamp();
    for _ in 0..iters {
        cpu.hypercall_nop();
    }
    let t1 = cpu.timestamp();
    ucall::done([iters, t0, t1, 0, 0, 0])
}

/// Executes `ud2`.
fn ud2() -> ! {
    // SAFETY: raises #UD on purpose; the VMM stops this vCPU on it.
    unsafe { asm!("ud2", options(noreturn)) }
}

/// Issues ucalls with bad arguments; each must fail with a status, never succeed and never
/// hurt the VMM. Reports the number of checks in DONE.
fn bad_hypercalls(info: &BootInfo) -> ! {
    let mut checks = 0u64;

    // A message address beyond guest RAM.
    if let Ok(gpa) = u32::try_from(info.ram_size + 0x1000) {
        // SAFETY: no message of ours is at that address.
        let r = unsafe { ucall::raw_ucall(gpa) };
        guest_assert!(
            r.is_none(),
            "ucall at gpa {gpa:#x} outside RAM was accepted: {r:?}"
        );
        checks += 1;
    }

    // A misaligned message address (it would straddle two messages' worth of memory).
    let mut msg = UcallMsg::new();
    msg.cmd = UcallCmd::Sync as u64;
    let gpa = (&raw mut msg as u64 - DIRECT_MAP_BASE) as u32 + 8;
    // SAFETY: the VMM must refuse the address; nothing holds a reference to `msg` across it.
    let r = unsafe { ucall::raw_ucall(gpa) };
    guest_assert!(r.is_none(), "misaligned ucall at gpa {gpa:#x} was accepted");
    checks += 1;

    // An unknown command.
    let mut msg = UcallMsg::new();
    msg.cmd = 0x999;
    let st = ucall::ucall(&mut msg);
    guest_assert!(st == status::BAD_COMMAND, "unknown command: status {st}");
    checks += 1;

    // Text longer than the buffer.
    let mut msg = UcallMsg::new();
    msg.cmd = UcallCmd::Printf as u64;
    msg.len = 1 << 40;
    let st = ucall::ucall(&mut msg);
    guest_assert!(st == status::BAD_ARGUMENT, "oversized printf: status {st}");
    checks += 1;

    // A CR3 root outside guest RAM, and a misaligned one.
    for root in [info.ram_size, 1u64 << 51, 0x1234] {
        let st = ucall::mmu(UcallCmd::LoadCr3, root);
        guest_assert!(
            st == status::BAD_ARGUMENT,
            "LOAD_CR3({root:#x}): status {st}"
        );
        checks += 1;
    }

    // A non-canonical INVLPG address.
    let st = ucall::mmu(UcallCmd::Invlpg, 0x0000_8000_0000_0000);
    guest_assert!(
        st == status::BAD_ARGUMENT,
        "INVLPG(non-canonical): status {st}"
    );
    checks += 1;

    // A well-formed call still works afterwards.
    ucall::sync(1, checks);
    ucall::done([checks, 0, 0, 0, 0, 0])
}
