//! The monitor's tests: its code decoded back, its tables read back.

use super::code::{native_gate, replay_routine, stub_code};
use super::layout::*;
use super::replay::{finish_replay, write_replay, ReplayEntry, REPLAY_COUNT, REPLAY_ENTRIES};
use super::tables::{build, idt_gate, map_pool, tss_descriptor};
use super::{read_frame, set_frame_rax, set_frame_rip, MonitorError};
use crate::kvm::hostmem::new_region;
use crate::kvm::layout::MONITOR_GPA;
use crate::mem::GuestPhys;
use iced_x86::{Decoder, DecoderOptions, Mnemonic};
use shadowlab_abi::layout::{pte, MONITOR_BASE};
use shadowlab_abi::MAX_VCPUS;

fn decode(code: &[u8], ip: u64) -> Vec<(u64, Mnemonic, u64)> {
    let mut d = Decoder::with_ip(64, code, ip, DecoderOptions::NONE);
    let mut out = Vec::new();
    while d.can_decode() {
        let i = d.decode();
        out.push((i.ip(), i.mnemonic(), i.near_branch_target()));
        if matches!(i.mnemonic(), Mnemonic::Jmp | Mnemonic::Iretq) {
            break;
        }
    }
    out
}

#[test]
fn every_stub_pushes_vector_and_reaches_the_common_tail() {
    let code = stub_code();
    let base = MONITOR_BASE + STUBS_OFF;
    for v in 0..32u64 {
        let at = (v * STUB_STRIDE) as usize;
        let ins = decode(&code[at..], base + at as u64);
        let pushes = ins.iter().filter(|i| i.1 == Mnemonic::Push).count();
        let expected = if ERROR_CODE_VECTORS.contains(&(v as u8)) {
            1
        } else {
            2
        };
        assert_eq!(pushes, expected, "vector {v}: {ins:?}");
        let last = ins.last().unwrap();
        assert_eq!(last.1, Mnemonic::Jmp, "vector {v}");
        assert_eq!(last.2, base + COMMON_OFF, "vector {v} jumps to the tail");
    }
    let tail = decode(&code[COMMON_OFF as usize..], base + COMMON_OFF);
    let m: Vec<Mnemonic> = tail.iter().map(|i| i.1).collect();
    assert_eq!(
        m,
        [
            Mnemonic::Push,
            Mnemonic::Push,
            Mnemonic::Mov,
            Mnemonic::Mov,
            Mnemonic::Out,
            Mnemonic::Pop,
            Mnemonic::Pop,
            Mnemonic::Add,
            Mnemonic::Iretq
        ]
    );
}

#[test]
fn native_gate_branches_reach_mov_cr3_and_invlpg() {
    let code = stub_code();
    let base = MONITOR_BASE + STUBS_OFF + NATIVE_OFF;
    let gate = &code[NATIVE_OFF as usize..NATIVE_OFF as usize + native_gate().len()];
    let mut d = Decoder::with_ip(64, gate, base, DecoderOptions::NONE);
    let all: Vec<_> = std::iter::from_fn(|| d.can_decode().then(|| d.decode())).collect();
    let at = |ip: u64| all.iter().find(|i| i.ip() == ip).map(|i| i.mnemonic());
    let je: Vec<u64> = all
        .iter()
        .filter(|i| i.mnemonic() == Mnemonic::Je)
        .map(|i| i.near_branch_target())
        .collect();
    assert_eq!(at(je[0]), Some(Mnemonic::Mov), "LOAD_CR3 branch (movabs)");
    assert!(
        all.iter()
            .all(|i| !matches!(i.mnemonic(), Mnemonic::Push | Mnemonic::Pop)),
        "no stack use"
    );
    let mov_cr3: Vec<_> = all
        .iter()
        .filter(|i| i.mnemonic() == Mnemonic::Mov && i.op0_register() == iced_x86::Register::CR3)
        .map(|i| i.op1_register())
        .collect();
    assert_eq!(mov_cr3, [iced_x86::Register::RAX, iced_x86::Register::RDI]);
    assert_eq!(at(je[1]), Some(Mnemonic::Invlpg), "INVLPG branch");
    // The skip over the store lands on the CR3 load.
    assert_eq!(at(je[2]), Some(Mnemonic::Mov));
    let imms: Vec<u64> = all
        .iter()
        .filter(|i| i.code() == iced_x86::Code::Mov_r64_imm64)
        .map(|i| i.immediate64())
        .collect();
    assert_eq!(
        imms,
        [
            shadowlab_abi::layout::DIRECT_MAP_BASE + 511 * 8,
            pml4_entry()
        ]
    );
    assert_eq!(
        all.iter()
            .filter(|i| i.mnemonic() == Mnemonic::Iretq)
            .count(),
        3
    );
    assert!(all.iter().all(|i| i.mnemonic() != Mnemonic::INVALID));
}

#[test]
fn replay_routine_restores_each_spte_then_reloads_cr3_exits_and_returns() {
    use iced_x86::{Code, MemorySize, Register};
    let code = stub_code();
    let base = replay_entry();
    let r = &code[REPLAY_CODE_OFF as usize..REPLAY_CODE_OFF as usize + replay_routine().len()];
    let mut d = Decoder::with_ip(64, r, base, DecoderOptions::NONE);
    let all: Vec<_> = std::iter::from_fn(|| d.can_decode().then(|| d.decode())).collect();
    let codes: Vec<Code> = all.iter().map(|i| i.code()).collect();
    use Code::*;
    assert_eq!(
        codes,
        [
            Push_r64,
            Push_r64,
            Push_r64,
            Push_r64,
            Push_r64, // save
            Mov_rm64_r64,
            And_rm64_imm32,
            Add_rm64_imm32, // the data page
            Mov_r64_rm64,
            Dec_rm64,
            Je_rel8_64, // again: the count
            Mov_r64_rm64,
            Or_rm8_imm8,
            Dec_rm64,
            Jne_rel8_64, // the stores
            Mov_r64_cr,
            Mov_cr_r64,
            Mov_r32_imm32,
            Out_DX_EAX, // CR3 reload, done
            Mov_r64_rm64,
            Test_rm64_r64,
            Jne_rel8_64, // another round?
            Pop_r64,
            Pop_r64,
            Pop_r64,
            Pop_r64,
            Pop_r64,
            Iretq,
        ]
    );
    let at = |ip: u64| all.iter().position(|i| i.ip() == ip).expect("a target");
    // Branches: empty -> CR3 reload; loop -> next store; another round -> count reload.
    assert_eq!(at(all[10].near_branch_target()), 15);
    assert_eq!(at(all[14].near_branch_target()), 11);
    assert_eq!(at(all[21].near_branch_target()), 8);
    // Registers restored in reverse order of their saving.
    let pushed: Vec<Register> = all[..5].iter().map(|i| i.op0_register()).collect();
    let mut popped: Vec<Register> = all[22..27].iter().map(|i| i.op0_register()).collect();
    popped.reverse();
    assert_eq!(pushed, popped);
    assert_eq!(
        pushed,
        [
            Register::RAX,
            Register::RCX,
            Register::RDX,
            Register::RSI,
            Register::RDI
        ]
    );
    // The data page is found from the stack, whichever way the routine was entered: from
    // CPL3 (RSP0 = the IST top), from a stub's IST frame, nested in itself, or by hand.
    assert_eq!(all[6].immediate32to64(), -4096);
    for v in [0, 5, MAX_VCPUS - 1] {
        let top = MONITOR_BASE + ist_top_off(v);
        for rsp in [
            top - 40 - 40,
            top - 72 - 40 - 40,
            top - 72 - 3 * 80,
            MONITOR_BASE + hand_stack_top_off(v) - 40,
        ] {
            let page = (rsp & !0xfff).wrapping_add(all[7].immediate32to64() as u64);
            assert_eq!(page, replay_data_va(v), "vCPU {v} rsp {rsp:#x}");
        }
    }
    // Count + 1 at [rsi]; entry k (k = count..1) at [rsi + k*8], i.e. the entries array.
    assert_eq!(
        (all[8].memory_base(), all[8].memory_displacement64()),
        (Register::RSI, REPLAY_COUNT)
    );
    let ld = &all[11];
    assert_eq!(
        (
            ld.op0_register(),
            ld.memory_base(),
            ld.memory_index(),
            ld.memory_index_scale(),
            ld.memory_displacement64() + 8
        ),
        (
            Register::RDI,
            Register::RSI,
            Register::RCX,
            8,
            REPLAY_ENTRIES
        )
    );
    // The store: a locked OR of 0 into one byte.
    let or = &all[12];
    assert!(or.has_lock_prefix());
    assert_eq!(
        (or.memory_base(), or.memory_size(), or.immediate8()),
        (Register::RDI, MemorySize::UInt8, 0)
    );
    assert_eq!(all[16].op0_register(), Register::CR3);
    assert_eq!(all[17].immediate32(), u32::from(REPLAY_DONE_PORT));
}

#[test]
fn the_replay_vector_enters_the_routine_without_an_ist_and_counts_read_back() {
    let mon = new_region(MONITOR_SIZE).unwrap();
    build(&mon, 3).unwrap();
    let lo = mon
        .read_u64(IDT_OFF + u64::from(REPLAY_VECTOR) * 16)
        .unwrap();
    let hi = mon
        .read_u64(IDT_OFF + u64::from(REPLAY_VECTOR) * 16 + 8)
        .unwrap();
    let handler = (lo & 0xffff) | (((lo >> 48) & 0xffff) << 16) | (hi << 32);
    assert_eq!(handler, replay_entry());
    assert_eq!((lo >> 32) & 7, 0, "no IST: nested entries stack up");
    assert_eq!((lo >> 45) & 3, 0, "DPL0: the guest cannot raise it");
    // From CPL3 the CPU switches to RSP0, the vCPU's IST top.
    let mut rsp0 = [0u8; 8];
    mon.read_bytes(TSS_OFF + 2 * TSS_STRIDE + 4, &mut rsp0)
        .unwrap();
    assert_eq!(u64::from_le_bytes(rsp0), MONITOR_BASE + ist_top_off(2));
    // Count and entries; finishing zeroes the count.
    write_replay(&mon, 2, &[0xaa, 0xbb]).unwrap();
    let page = REPLAY_OFF + 2 * 0x1000;
    assert_eq!(mon.read_u64(page + REPLAY_COUNT).unwrap(), 3, "count + 1");
    assert_eq!(mon.read_u64(page + REPLAY_ENTRIES + 8).unwrap(), 0xbb);
    finish_replay(&mon, 2).unwrap();
    assert_eq!(mon.read_u64(page + REPLAY_COUNT).unwrap(), 0);
    // A round of no entries (only the CR3 reload) is still a round.
    write_replay(&mon, 2, &[]).unwrap();
    assert_eq!(mon.read_u64(page + REPLAY_COUNT).unwrap(), 1);
}

#[test]
fn the_pool_is_mapped_supervisor_only_with_2m_pages_and_addresses_agree() {
    let mon = new_region(MONITOR_SIZE).unwrap();
    build(&mon, 2).unwrap();
    let base = 64 << 20;
    map_pool(&mon, base, 4096 * 4096 + 4096).unwrap();
    // 16 MiB + 4 KiB: nine 2 MiB pages in the first PD.
    assert_eq!(
        mon.read_u64(PDPT_OFF + 8).unwrap(),
        (MONITOR_GPA + POOL_PD_OFF) | pte::P | pte::W
    );
    assert_eq!(mon.read_u64(PDPT_OFF + 16).unwrap(), 0);
    for i in 0..9 {
        let e = mon.read_u64(POOL_PD_OFF + i * 8).unwrap();
        assert_eq!(e & pte::ADDR_MASK, base + i * HUGE);
        assert_eq!(
            e & (pte::P | pte::PS | pte::U | pte::NX),
            pte::P | pte::PS | pte::NX
        );
    }
    assert_eq!(mon.read_u64(POOL_PD_OFF + 9 * 8).unwrap(), 0);
    // The VA of an SPTE walks (PML4 511, PDPT 1, PD i, 2 MiB offset) back to its mpa.
    let mpa = base + 5 * HUGE + 0x1238;
    let va = pool_va(base, mpa);
    assert_eq!((va >> 39) & 511, 511);
    assert_eq!((va >> 30) & 511, 1);
    let pde = mon.read_u64(POOL_PD_OFF + ((va >> 21) & 511) * 8).unwrap();
    assert_eq!((pde & pte::ADDR_MASK) + (va & (HUGE - 1)), mpa);
    // A pool beyond 4 GiB, or an overflowing one, is refused.
    assert!(matches!(
        map_pool(&mon, 0, 5 << 30),
        Err(MonitorError::PoolTooLarge { .. })
    ));
    assert!(map_pool(&mon, u64::MAX - 4096, 8192).is_err());
    assert!(matches!(
        write_replay(&mon, 0, &[0; REPLAY_CAPACITY + 1]),
        Err(MonitorError::ReplayTooLong(_))
    ));
    // An SPTE entry stores to the SPTE's first byte, a page entry to the page's second.
    assert_eq!(ReplayEntry::Spte(mpa).va(base), va & !7);
    assert_eq!(ReplayEntry::Page(mpa).va(base), (va & !0xfff) + 1);
    write_replay(&mon, 1, &[va, va + 8]).unwrap();
    assert_eq!(
        mon.read_u64(REPLAY_OFF + 0x1000 + REPLAY_ENTRIES + 8)
            .unwrap(),
        va + 8
    );
}

#[test]
fn idt_gate_and_tss_descriptor_encode_their_base() {
    let h = 0xffff_ff80_0000_2010u64;
    let [lo, hi] = idt_gate(h);
    assert_eq!(lo & 0xffff, h & 0xffff);
    assert_eq!((lo >> 48) & 0xffff, (h >> 16) & 0xffff);
    assert_eq!(hi, h >> 32);
    assert_eq!((lo >> 32) & 7, 1, "IST1");
    let b = 0xffff_ff80_0000_3080u64;
    let [lo, hi] = tss_descriptor(b, 103);
    let rebuilt = ((lo >> 16) & 0xff_ffff) | (((lo >> 56) & 0xff) << 24) | (hi << 32);
    assert_eq!(rebuilt, b);
}

#[test]
fn monitor_fits_and_frame_reads_back() {
    let mon = new_region(MONITOR_SIZE).unwrap();
    build(&mon, MAX_VCPUS).unwrap();
    let top = ist_top_off(3);
    for (i, v) in [0xd, 0xa, 14u64, 0x6, 0x1234, 0x8, 0x202, 0x5000]
        .iter()
        .enumerate()
    {
        mon.write_u64(top - 72 + 8 * i as u64, *v).unwrap();
    }
    let f = read_frame(&mon, 3).unwrap();
    assert_eq!(
        (f.vector, f.error_code, f.rip, f.cs, f.rflags, f.rsp),
        (14, 6, 0x1234, 8, 0x202, 0x5000)
    );
    assert_eq!((f.rax, f.rdx), (0xa, 0xd));
    set_frame_rip(&mon, 3, 0x1235).unwrap();
    set_frame_rax(&mon, 3, 7).unwrap();
    let f = read_frame(&mon, 3).unwrap();
    assert_eq!((f.rip, f.rax), (0x1235, 7));
}

/// The handler address of IDT entry `v` in a built monitor.
fn idt_handler(mon: &crate::mem::MemRegion, v: u64) -> u64 {
    let lo = mon.read_u64(IDT_OFF + v * 16).unwrap();
    let hi = mon.read_u64(IDT_OFF + v * 16 + 8).unwrap();
    (lo & 0xffff) | (((lo >> 48) & 0xffff) << 16) | (hi << 32)
}

#[test]
fn every_idt_gate_enters_assembled_code_that_reports_its_vector() {
    use iced_x86::{Code, Decoder, DecoderOptions, Instruction, Register};
    let mon = new_region(MONITOR_SIZE).unwrap();
    build(&mon, 2).unwrap();
    let base = MONITOR_BASE + STUBS_OFF;
    let mut page = vec![0u8; 4096];
    mon.read_bytes(STUBS_OFF, &mut page).unwrap();
    assert_eq!(page, stub_code(), "the stubs page holds the assembled code");
    let decode_at = |va: u64, n: usize| -> Vec<Instruction> {
        let off = (va - base) as usize;
        let mut d = Decoder::with_ip(64, &page[off..], va, DecoderOptions::NONE);
        (0..n).map(|_| d.decode()).collect()
    };
    let tail = base + COMMON_OFF;
    for v in 0..32u64 {
        let handler = idt_handler(&mon, v);
        if v == u64::from(REPLAY_VECTOR) {
            assert_eq!(handler, replay_entry());
            continue;
        }
        if v == u64::from(NATIVE_GATE_VECTOR) {
            assert_eq!(handler, base + NATIVE_OFF);
            assert_eq!(decode_at(handler, 1)[0].code(), Code::Cmp_EAX_imm32);
            continue;
        }
        assert_eq!(handler, base + v * STUB_STRIDE, "vector {v}'s gate");
        let has_error = ERROR_CODE_VECTORS.contains(&(v as u8));
        let ins = decode_at(handler, if has_error { 2 } else { 3 });
        let (pushes, jmp) = ins.split_at(ins.len() - 1);
        let pushed: Vec<(Code, i64)> = pushes
            .iter()
            .map(|i| (i.code(), i.immediate8to64()))
            .collect();
        let mut expected = vec![(Code::Pushq_imm8, v as i64)];
        if !has_error {
            expected.insert(0, (Code::Pushq_imm8, 0));
        }
        assert_eq!(pushed, expected, "vector {v}: [0,] vector");
        assert!(
            matches!(jmp[0].code(), Code::Jmp_rel8_64 | Code::Jmp_rel32_64),
            "vector {v}: {:?}",
            jmp[0].code()
        );
        assert_eq!(
            jmp[0].near_branch_target(),
            tail,
            "vector {v} jumps to the tail"
        );
        assert!(
            jmp[0].next_ip() <= base + (v + 1) * STUB_STRIDE,
            "vector {v} fits"
        );
    }
    // The tail: save, load the vector, report it on EXCEPTION_PORT, restore, return.
    let t = decode_at(tail, 10);
    let codes: Vec<Code> = t.iter().map(|i| i.code()).collect();
    assert_eq!(
        codes,
        [
            Code::Push_r64,
            Code::Push_r64,
            Code::Mov_r32_rm32,
            Code::Mov_r16_imm16,
            Code::Out_DX_EAX,
            Code::Pop_r64,
            Code::Pop_r64,
            Code::Add_rm64_imm8,
            Code::Iretq,
            Code::Ud2,
        ]
    );
    assert_eq!(
        [
            t[0].op0_register(),
            t[1].op0_register(),
            t[5].op0_register(),
            t[6].op0_register()
        ],
        [Register::RAX, Register::RDX, Register::RDX, Register::RAX]
    );
    assert_eq!(
        (t[2].memory_base(), t[2].memory_displacement64()),
        (Register::RSP, 16),
        "the vector, above the saved RAX and RDX"
    );
    assert_eq!(t[3].immediate16(), shadowlab_abi::EXCEPTION_PORT);
    assert_eq!(t[7].immediate8to64(), 16, "drops the vector and error code");
}
