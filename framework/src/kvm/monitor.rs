//! The VMM-owned monitor: GDT, IDT, per-vCPU TSSes and IST stacks, and the exception stubs that
//! turn a guest exception into an exit.
//!
//! The monitor lives in its own memslot at [`MONITOR_GPA`] and is mapped at
//! [`MONITOR_BASE`] (PML4 slot 511, supervisor-only) by the monitor's own page tables, which the
//! VMM links into every root the vCPU runs on (the guest's own roots in `native` mode, every
//! shadow root in `kvm` mode) — as PVM clones its host entries into each root.
//!
//! The guest runs at CPL3 with IOPL=3 (port I/O allowed): on a software-virtualised host such
//! as this machine's kvm_pvm, CPL0 guest code is run by the host's instruction emulator, which
//! has no SSE, while CPL3 code runs natively. Only the monitor's few stubs run at CPL0. This is
//! also why the monitor is mapped supervisor-only: the guest cannot touch it.
//!
//! Every exception vector 0..32 goes through an interrupt gate with IST1, so the CPU always
//! switches to the vCPU's IST stack in the monitor. The stub pushes a zero error code where the
//! CPU does not, the vector, RAX and RDX, and does `out EXCEPTION_PORT, eax` with the vector:
//! the VMM reads the exception frame straight out of its own monitor memory (no guest-memory
//! translation), CR2 from KVM_GET_SREGS, and decides. When the VMM resumes the vCPU the stub
//! pops and `iretq`s, so a fault the VMM fixed (a shadow-MMU fault) re-executes the faulting
//! instruction.

use shadowlab_guest_abi::{EXCEPTION_PORT, MAX_VCPUS};
use shadowlab_workloads::layout::{pte, MONITOR_BASE};

use super::layout::MONITOR_GPA;
use crate::mem::GuestPhys;
use crate::mem::{MemError, MemRegion};

/// Offset of the GDT.
pub const GDT_OFF: u64 = 0x0000;
/// Offset of the IDT.
pub const IDT_OFF: u64 = 0x1000;
/// Offset of the stub code.
pub const STUBS_OFF: u64 = 0x2000;
/// Offset of the TSS array.
pub const TSS_OFF: u64 = 0x3000;
/// Stride of one TSS.
pub const TSS_STRIDE: u64 = 128;
/// Offset of the monitor's PDPT (PML4 slot 511 points here).
pub const PDPT_OFF: u64 = 0x5000;
/// Offset of the monitor's PD.
pub const PD_OFF: u64 = 0x6000;
/// Offset of the monitor's PT.
pub const PT_OFF: u64 = 0x7000;
/// Offset of the first IST stack (one page per vCPU).
pub const IST_OFF: u64 = 0x8000;
/// Offset of the page directories that map the shadow pool at [`POOL_VA`] (`kvm` backend):
/// PDPT entries 1..=[`POOL_PDS`] point here, one PD (1 GiB of 2 MiB pages) each.
pub const POOL_PD_OFF: u64 = IST_OFF + MAX_VCPUS as u64 * 0x1000;
/// Page directories for the pool: 4 GiB, everything below [`MONITOR_GPA`].
pub const POOL_PDS: u64 = 4;
/// Offset of the first replay data page (one page per vCPU): the SPTE addresses the replay
/// routine re-stores, as monitor VAs ([`REPLAY_CAPACITY`] at most).
pub const REPLAY_OFF: u64 = POOL_PD_OFF + POOL_PDS * 0x1000;
/// Size of the monitor region.
pub const MONITOR_SIZE: u64 = REPLAY_OFF + MAX_VCPUS as u64 * 0x1000;
/// Where the shadow pool is mapped in the monitor's range (PML4 slot 511, supervisor-only,
/// 2 MiB pages): 1 GiB above [`MONITOR_BASE`]. The replay routine stores to SPTEs here.
pub const POOL_VA: u64 = MONITOR_BASE + (1 << 30);
/// Entries one run of the replay routine takes: a data page of 8-byte words is the count, then
/// the entries.
pub const REPLAY_CAPACITY: usize = 511;
/// Offset in a replay data page of the round word: the entry count plus one for a round to
/// run (a round of no entries only reloads CR3), 0 for no more rounds (the VMM writes it).
const REPLAY_COUNT: u64 = 0;
/// Offset in a replay data page of the first entry.
const REPLAY_ENTRIES: u64 = 8;
/// The exception vector the VMM injects to enter the replay routine: 15 is reserved by the
/// architecture, so nothing else ever raises it. Its gate switches stacks only from CPL3 (to
/// RSP0, the top of the vCPU's IST page, free whenever the vCPU runs at CPL3); from CPL0 (a
/// monitor stub, or the routine itself) the frame goes below the current one, so the routine
/// may interrupt anything in the monitor, itself included, without clobbering a frame.
pub const REPLAY_VECTOR: u8 = 15;
/// The port the replay routine's completion `out` uses (monitor ABI, not the guest's: the
/// guest never runs the routine).
pub const REPLAY_DONE_PORT: u16 = 0xe3;
// One PT maps the whole monitor.
const _: () = assert!(MONITOR_SIZE <= 512 * 4096);

/// Kernel (CPL0) code segment selector: the monitor's stubs run here.
pub const CODE_SEL: u16 = 0x08;
/// Kernel data segment selector.
pub const DATA_SEL: u16 = 0x10;
/// User (CPL3) data segment selector, RPL 3: the guest's SS/DS/ES.
pub const USER_DATA_SEL: u16 = 0x18 | 3;
/// User (CPL3) 64-bit code segment selector, RPL 3: the guest's CS.
pub const USER_CODE_SEL: u16 = 0x20 | 3;
/// First TSS selector; vCPU `i` uses `TSS_SEL0 + 16 * i`.
pub const TSS_SEL0: u16 = 0x28;
/// Bytes in the GDT.
pub const GDT_LIMIT: u16 = (5 * 8 + MAX_VCPUS * 16 - 1) as u16;

/// Vector of the native-op gate (DPL3): `int3` with EAX = a `shadowlab_guest_abi::native_op`
/// and RDI = its argument runs `mov cr3`/`invlpg`/a CR3 reload at CPL0 in the monitor. A
/// `native` guest runs at CPL3, so this is how its privileged MMU instructions execute.
pub const NATIVE_GATE_VECTOR: u8 = 3;
/// Offset of the native-op gate's code within the stubs page.
const NATIVE_OFF: u64 = 0x400;

/// Offset of the replay routine within the stubs page.
const REPLAY_CODE_OFF: u64 = 0x600;

/// Vectors for which the CPU pushes an error code.
const ERROR_CODE_VECTORS: [u8; 10] = [8, 10, 11, 12, 13, 14, 17, 21, 29, 30];
/// Stride of one per-vector stub.
const STUB_STRIDE: u64 = 16;
/// Offset of the common stub tail within the stubs page.
const COMMON_OFF: u64 = 32 * STUB_STRIDE;

/// The PML4 entry that links the monitor into a root: present, writable, supervisor-only.
pub const fn pml4_entry() -> u64 {
    (MONITOR_GPA + PDPT_OFF) | pte::P | pte::W
}

/// Top of vCPU `vcpu`'s IST stack, as an offset into the monitor.
pub const fn ist_top_off(vcpu: usize) -> u64 {
    IST_OFF + (vcpu as u64 + 1) * 0x1000
}

/// The stack the VMM gives the replay routine when it enters it by hand (see `kvm::vcpu`):
/// the middle of the vCPU's IST page, below anything a stub or a parked routine keeps at its
/// top.
pub const fn hand_stack_top_off(vcpu: usize) -> u64 {
    IST_OFF + vcpu as u64 * 0x1000 + 0x800
}

/// Machine code of the stubs page: 32 per-vector entries, then the common tail.
pub fn stub_code() -> Vec<u8> {
    let mut code = vec![0xccu8; 4096]; // int3 padding
    for v in 0u8..32 {
        let at = (u64::from(v) * STUB_STRIDE) as usize;
        let mut s = Vec::with_capacity(16);
        if !ERROR_CODE_VECTORS.contains(&v) {
            s.extend_from_slice(&[0x6a, 0x00]); // push 0 (error code)
        }
        s.extend_from_slice(&[0x6a, v]); // push vector
        let next = at + s.len() + 5;
        let rel = (COMMON_OFF as i64 - next as i64) as i32;
        s.push(0xe9); // jmp rel32 common
        s.extend_from_slice(&rel.to_le_bytes());
        code[at..at + s.len()].copy_from_slice(&s);
    }
    let port = EXCEPTION_PORT.to_le_bytes();
    let common: [u8; 21] = [
        0x50, // push rax
        0x52, // push rdx
        0x8b, 0x44, 0x24, 0x10, // mov eax, [rsp+16]  (the vector)
        0x66, 0xba, port[0], port[1], // mov dx, EXCEPTION_PORT
        0xef,    // out dx, eax        -> exit to the VMM
        0x5a,    // pop rdx
        0x58,    // pop rax
        0x48, 0x83, 0xc4, 0x10, // add rsp, 16        (vector, error code)
        0x48, 0xcf, // iretq
        0x0f, 0x0b, // ud2 (never reached)
    ];
    code[COMMON_OFF as usize..COMMON_OFF as usize + common.len()].copy_from_slice(&common);
    let gate = native_gate();
    code[NATIVE_OFF as usize..NATIVE_OFF as usize + gate.len()].copy_from_slice(&gate);
    let replay = replay_routine();
    code[REPLAY_CODE_OFF as usize..REPLAY_CODE_OFF as usize + replay.len()]
        .copy_from_slice(&replay);
    code
}

/// The entry point of the replay routine (a monitor VA, CPL0).
pub const fn replay_entry() -> u64 {
    MONITOR_BASE + STUBS_OFF + REPLAY_CODE_OFF
}

/// The monitor VA of vCPU `vcpu`'s replay data page.
pub const fn replay_data_va(vcpu: usize) -> u64 {
    MONITOR_BASE + REPLAY_OFF + vcpu as u64 * 0x1000
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
/// to `kvm_mmu_track_write`. At an SPTE's first byte ([`ReplayEntry::Spte`]) the host zaps
/// its shadow of that one entry (a one-byte write at an entry's start is the one narrow write
/// KVM does not call misaligned); at its second byte ([`ReplayEntry::Page`]) the write is
/// "misaligned" and the host zaps every shadow page it has of that pool page. Locked, so an
/// SPTE the VMM rewrites meanwhile on another thread is never put back to an old value. Then
/// `mov cr3` with the current CR3: the host syncs any pool page it chose to unsync rather
/// than write-protect (its `KVM_REQ_MMU_SYNC` on a CR3 load). Then `out` to
/// [`REPLAY_DONE_PORT`]: the VMM learns the replay is complete and sets the round word to 0,
/// or refills the page for another round. With 0 the routine restores the registers and
/// `iretq`s to the interrupted context when the vCPU next runs.
///
/// Integer-only, no calls; every instruction at CPL0 is emulated on this machine's host.
fn replay_routine() -> [u8; 70] {
    let delta = ((REPLAY_OFF - IST_OFF) as u32).to_le_bytes();
    let port = u32::from(REPLAY_DONE_PORT).to_le_bytes();
    let mut g = [0u8; 70];
    let parts: [&[u8]; 22] = [
        &[0x50, 0x51, 0x52, 0x56, 0x57], // 0:  push rax, rcx, rdx, rsi, rdi
        &[0x48, 0x89, 0xe6],             // 5:  mov rsi, rsp
        &[0x48, 0x81, 0xe6, 0x00, 0xf0, 0xff, 0xff], // 8: and rsi, -4096 (the IST page)
        &[0x48, 0x81, 0xc6],             // 15: add rsi, REPLAY_OFF - IST_OFF (the data page)
        &delta,
        &[0x48, 0x8b, 0x0e], // 22: mov rcx, [rsi]            (again: count + 1)
        &[0x48, 0xff, 0xc9], // 25: dec rcx                   (the count)
        &[0x74, 0x0d],       // 28: jz 43
        &[0x48, 0x8b, 0x3c, 0xce], // 30: mov rdi, [rsi + rcx*8]    (entries 1..=count)
        &[0xf0, 0x80, 0x0f, 0x00], // 34: lock or byte [rdi], 0
        &[0x48, 0xff, 0xc9], // 38: dec rcx
        &[0x75, 0xf3],       // 41: jnz 30
        &[0x0f, 0x20, 0xd8], // 43: mov rax, cr3
        &[0x0f, 0x22, 0xd8], // 46: mov cr3, rax
        &[0xba],             // 49: mov edx, REPLAY_DONE_PORT
        &port,
        &[0xef],                         // 54: out dx, eax -> exit: the VMM sets the count
        &[0x48, 0x8b, 0x0e],             // 55: mov rcx, [rsi]
        &[0x48, 0x85, 0xc9],             // 58: test rcx, rcx            (0: no more rounds)
        &[0x75, 0xd7],                   // 61: jnz 22 (another round, possibly of no entries)
        &[0x5f, 0x5e, 0x5a, 0x59, 0x58], // 63: pop rdi, rsi, rdx, rcx, rax
        &[0x48, 0xcf],                   // 68: iretq
    ];
    let mut at = 0;
    for p in parts {
        g[at..at + p.len()].copy_from_slice(p);
        at += p.len();
    }
    debug_assert_eq!(at, g.len());
    g
}

/// What one replayed store makes the host drop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReplayEntry {
    /// Its shadow of the SPTE at this machine-physical address.
    Spte(u64),
    /// Every shadow page it has of the pool page containing this machine-physical address.
    Page(u64),
}

impl ReplayEntry {
    /// The byte the routine stores to, as a monitor VA, for a pool at `pool_base`.
    pub const fn va(self, pool_base: u64) -> u64 {
        match self {
            ReplayEntry::Spte(mpa) => pool_va(pool_base, mpa & !7),
            ReplayEntry::Page(mpa) => pool_va(pool_base, mpa & !0xfff) + 1,
        }
    }
}

/// The monitor VA at which the replay routine reaches the SPTE at machine-physical `mpa` of a
/// pool starting at `pool_base` (mapped by [`map_pool`]).
pub const fn pool_va(pool_base: u64, mpa: u64) -> u64 {
    POOL_VA + (mpa - (pool_base & !(HUGE - 1)))
}

const HUGE: u64 = 2 << 20;

/// Maps the shadow pool (`pool_bytes` at guest-physical `pool_base`) at [`POOL_VA`] with
/// 2 MiB pages in the monitor's own tables: supervisor-only, writable, not executable. These
/// are VMM-owned tables the host walks, written once before any vCPU runs.
pub fn map_pool(mon: &MemRegion, pool_base: u64, pool_bytes: u64) -> Result<(), MonitorError> {
    let start = pool_base & !(HUGE - 1);
    let end = pool_base
        .checked_add(pool_bytes)
        .and_then(|e| e.checked_add(HUGE - 1))
        .ok_or(MonitorError::PoolTooLarge { pool_bytes })?
        & !(HUGE - 1);
    let chunks = (end - start) / HUGE;
    if chunks > POOL_PDS * 512 {
        return Err(MonitorError::PoolTooLarge { pool_bytes });
    }
    for pd in 0..chunks.div_ceil(512) {
        mon.write_u64(
            PDPT_OFF + (1 + pd) * 8,
            (MONITOR_GPA + POOL_PD_OFF + pd * 0x1000) | pte::P | pte::W,
        )?;
    }
    for i in 0..chunks {
        mon.write_u64(
            POOL_PD_OFF + i * 8,
            (start + i * HUGE) | pte::P | pte::W | pte::PS | pte::A | pte::D | pte::NX,
        )?;
    }
    Ok(())
}

/// Fills vCPU `vcpu`'s replay data page with `vas` (at most [`REPLAY_CAPACITY`] monitor VAs,
/// possibly none) and the round word, which the routine reads when it (re)starts.
pub fn write_replay(mon: &MemRegion, vcpu: usize, vas: &[u64]) -> Result<(), MonitorError> {
    if vas.len() > REPLAY_CAPACITY {
        return Err(MonitorError::ReplayTooLong(vas.len()));
    }
    let page = REPLAY_OFF + vcpu as u64 * 0x1000;
    let bytes: Vec<u8> = vas.iter().flat_map(|v| v.to_le_bytes()).collect();
    mon.write_bytes(page + REPLAY_ENTRIES, &bytes)?;
    mon.write_u64(page + REPLAY_COUNT, vas.len() as u64 + 1)?;
    Ok(())
}

/// After the routine's completion exit: nothing more, so it returns to the interrupted context
/// when the vCPU next runs.
pub fn finish_replay(mon: &MemRegion, vcpu: usize) -> Result<(), MonitorError> {
    mon.write_u64(REPLAY_OFF + vcpu as u64 * 0x1000 + REPLAY_COUNT, 0)?;
    Ok(())
}

/// A monitor set-up step that failed.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum MonitorError {
    /// The pool does not fit the monitor's pool mapping.
    #[error("shadow pool of {pool_bytes} bytes does not fit the monitor's mapping (4 GiB)")]
    PoolTooLarge {
        /// Pool size.
        pool_bytes: u64,
    },
    /// More SPTE addresses than one replay data page holds.
    #[error("{0} SPTE addresses for one replay (at most {REPLAY_CAPACITY})")]
    ReplayTooLong(usize),
    /// Writing the monitor failed.
    #[error("monitor memory: {0}")]
    Mem(#[from] MemError),
}

/// The native-op gate: dispatch on EAX (see [`NATIVE_GATE_VECTOR`]). The gate clobbers RAX
/// and RDX (the guest's `int3` declares them) and touches no stack: on a software-virtualised
/// host its instructions are emulated, and every emulated store counts as a guest page-table
/// write in the host's `mmu_pte_write` while shadow pages exist, which would pollute the
/// `native` statistics.
///
/// LOAD_CR3 first links the monitor into the new root (PML4 slot 511, if it is not already
/// there) through the direct map, then loads CR3: the guest's own roots do not carry the
/// monitor (the workloads never copy slot 511), and without it the very `iretq` after the
/// `mov cr3` could not be fetched. This is the `native` counterpart of the VMM linking the
/// monitor into every shadow root. It writes a root page once; the host's MMU sees that write
/// like any guest page-table write.
fn native_gate() -> [u8; 59] {
    use shadowlab_guest_abi::native_op::{INVLPG, LOAD_CR3};
    use shadowlab_workloads::layout::DIRECT_MAP_BASE;
    let slot =
        (DIRECT_MAP_BASE + 8 * shadowlab_workloads::layout::MONITOR_SLOT as u64).to_le_bytes();
    let pml4e = pml4_entry().to_le_bytes();
    let mut g = [0u8; 59];
    let parts: [&[u8]; 19] = [
        &[0x83, 0xf8, LOAD_CR3 as u8], // 0:  cmp eax, LOAD_CR3
        &[0x74, 0x0d],                 // 3:  je 18
        &[0x83, 0xf8, INVLPG as u8],   // 5:  cmp eax, INVLPG
        &[0x74, 0x2c],                 // 8:  je 54
        &[0x0f, 0x20, 0xd8],           // 10: mov rax, cr3     (FLUSH_TLB, and anything else)
        &[0x0f, 0x22, 0xd8],           // 13: mov cr3, rax
        &[0x48, 0xcf],                 // 16: iretq
        &[0x48, 0xb8],                 // 18: movabs rax, DIRECT_MAP_BASE + 8 * 511
        &slot,
        &[0x48, 0x01, 0xf8], // 28: add rax, rdi     (the root's slot 511 in the direct map)
        &[0x48, 0xba],       // 31: movabs rdx, pml4_entry()
        &pml4e,
        &[0x48, 0x39, 0x10], // 41: cmp [rax], rdx
        &[0x74, 0x03],       // 44: je 49
        &[0x48, 0x89, 0x10], // 46: mov [rax], rdx
        &[0x0f, 0x22, 0xdf], // 49: mov cr3, rdi
        &[0x48, 0xcf],       // 52: iretq
        &[0x0f, 0x01, 0x3f], // 54: invlpg [rdi]
        &[0x48, 0xcf],       // 57: iretq
    ];
    let mut at = 0;
    for p in parts {
        g[at..at + p.len()].copy_from_slice(p);
        at += p.len();
    }
    debug_assert_eq!(at, g.len());
    g
}

fn gdt_code64() -> u64 {
    // base 0, limit 0xfffff, G, L, P, DPL0, S, type 0xb (execute/read, accessed).
    0x00af_9b00_0000_ffff
}

fn gdt_data() -> u64 {
    // base 0, limit 0xfffff, G, D/B, P, DPL0, S, type 0x3 (read/write, accessed).
    0x00cf_9300_0000_ffff
}

fn gdt_user_data() -> u64 {
    // As gdt_data with DPL3.
    0x00cf_f300_0000_ffff
}

fn gdt_user_code64() -> u64 {
    // As gdt_code64 with DPL3.
    0x00af_fb00_0000_ffff
}

/// A 16-byte 64-bit TSS descriptor (busy, as KVM_SET_SREGS loads TR).
fn tss_descriptor(base: u64, limit: u32) -> [u64; 2] {
    let lo = u64::from(limit & 0xffff)
        | ((base & 0xff_ffff) << 16)
        | (0xb << 40) // type: busy 64-bit TSS
        | (1 << 47) // present
        | (u64::from((limit >> 16) & 0xf) << 48)
        | (((base >> 24) & 0xff) << 56);
    [lo, base >> 32]
}

/// A 16-byte interrupt gate to `handler`, IST1, DPL0 (exceptions only).
fn idt_gate(handler: u64) -> [u64; 2] {
    idt_gate_dpl(handler, 0)
}

/// A 16-byte interrupt gate to `handler`, IST1, with the given DPL (3: `int n` from CPL3).
fn idt_gate_dpl(handler: u64, dpl: u64) -> [u64; 2] {
    idt_gate_ist(handler, dpl, 1)
}

/// A 16-byte interrupt gate to `handler` with the given DPL and IST index.
fn idt_gate_ist(handler: u64, dpl: u64, ist: u64) -> [u64; 2] {
    let lo = (handler & 0xffff)
        | (u64::from(CODE_SEL) << 16)
        | (ist << 32)
        | ((0x8e | (dpl << 5)) << 40) // present, DPL, 64-bit interrupt gate
        | (((handler >> 16) & 0xffff) << 48);
    [lo, handler >> 32]
}

/// Writes the monitor for `nr_vcpus` vCPUs into `mon` (a [`MONITOR_SIZE`] mapping).
pub fn build(mon: &MemRegion, nr_vcpus: usize) -> Result<(), MemError> {
    // GDT: null, code, data, (unused), then one TSS descriptor per vCPU.
    mon.write_u64(GDT_OFF, 0)?;
    mon.write_u64(GDT_OFF + 8, gdt_code64())?;
    mon.write_u64(GDT_OFF + 16, gdt_data())?;
    mon.write_u64(GDT_OFF + 24, gdt_user_data())?;
    mon.write_u64(GDT_OFF + 32, gdt_user_code64())?;
    for i in 0..nr_vcpus {
        let tss = MONITOR_BASE + TSS_OFF + i as u64 * TSS_STRIDE;
        let [lo, hi] = tss_descriptor(tss, 103);
        let at = GDT_OFF + u64::from(TSS_SEL0) + 16 * i as u64;
        mon.write_u64(at, lo)?;
        mon.write_u64(at + 8, hi)?;
        // TSS: RSP0 and IST1 both point at this vCPU's IST stack; no I/O bitmap.
        let toff = TSS_OFF + i as u64 * TSS_STRIDE;
        let top = MONITOR_BASE + ist_top_off(i);
        mon.write_bytes(toff + 4, &top.to_le_bytes())?; // RSP0
        mon.write_bytes(toff + 36, &top.to_le_bytes())?; // IST1
        mon.write_bytes(toff + 102, &104u16.to_le_bytes())?; // I/O map base: none
    }
    // IDT: vectors 0..32 to their stubs; the rest not present (#GP -> vector 13's stub).
    for v in 0..32u64 {
        let [lo, hi] = idt_gate(MONITOR_BASE + STUBS_OFF + v * STUB_STRIDE);
        mon.write_u64(IDT_OFF + v * 16, lo)?;
        mon.write_u64(IDT_OFF + v * 16 + 8, hi)?;
    }
    let [lo, hi] = idt_gate_ist(replay_entry(), 0, 0);
    mon.write_u64(IDT_OFF + u64::from(REPLAY_VECTOR) * 16, lo)?;
    mon.write_u64(IDT_OFF + u64::from(REPLAY_VECTOR) * 16 + 8, hi)?;
    let [lo, hi] = idt_gate_dpl(MONITOR_BASE + STUBS_OFF + NATIVE_OFF, 3);
    mon.write_u64(IDT_OFF + u64::from(NATIVE_GATE_VECTOR) * 16, lo)?;
    mon.write_u64(IDT_OFF + u64::from(NATIVE_GATE_VECTOR) * 16 + 8, hi)?;
    mon.write_bytes(STUBS_OFF, &stub_code())?;
    // Page tables of slot 511: PDPT[0] -> PD[0] -> PT, PT[i] -> monitor page i.
    mon.write_u64(PDPT_OFF, (MONITOR_GPA + PD_OFF) | pte::P | pte::W)?;
    mon.write_u64(PD_OFF, (MONITOR_GPA + PT_OFF) | pte::P | pte::W)?;
    for page in 0..MONITOR_SIZE / 4096 {
        let off = page * 4096;
        let flags = if off == STUBS_OFF {
            pte::P | pte::A // read-only, executable
        } else {
            pte::P | pte::W | pte::A | pte::D | pte::NX
        };
        mon.write_u64(PT_OFF + page * 8, (MONITOR_GPA + off) | flags)?;
    }
    Ok(())
}

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kvm::hostmem::new_region;
    use iced_x86::{Decoder, DecoderOptions, Mnemonic};

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
            .filter(|i| {
                i.mnemonic() == Mnemonic::Mov && i.op0_register() == iced_x86::Register::CR3
            })
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
                shadowlab_workloads::layout::DIRECT_MAP_BASE + 511 * 8,
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
}
