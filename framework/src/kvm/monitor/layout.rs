//! Where everything is in the monitor: offsets in its memslot, its VAs (PML4 slot 511), the
//! GDT selectors and the reserved vectors.

use shadowlab_abi::layout::{pte, MONITOR_BASE};
use shadowlab_abi::MAX_VCPUS;

use crate::kvm::layout::MONITOR_GPA;

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

/// Vector of the native-op gate (DPL3): `int3` with EAX = a `shadowlab_abi::native_op`
/// and RDI = its argument runs `mov cr3`/`invlpg`/a CR3 reload at CPL0 in the monitor. A
/// `native` guest runs at CPL3, so this is how its privileged MMU instructions execute.
pub const NATIVE_GATE_VECTOR: u8 = 3;
/// Offset of the native-op gate's code within the stubs page.
pub(super) const NATIVE_OFF: u64 = 0x400;

/// Offset of the replay routine within the stubs page.
pub(super) const REPLAY_CODE_OFF: u64 = 0x600;

/// Vectors for which the CPU pushes an error code.
pub(super) const ERROR_CODE_VECTORS: [u8; 10] = [8, 10, 11, 12, 13, 14, 17, 21, 29, 30];
/// Stride of one per-vector stub.
pub(super) const STUB_STRIDE: u64 = 16;
/// Offset of the common stub tail within the stubs page.
pub(super) const COMMON_OFF: u64 = 32 * STUB_STRIDE;

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

/// The entry point of the replay routine (a monitor VA, CPL0).
pub const fn replay_entry() -> u64 {
    MONITOR_BASE + STUBS_OFF + REPLAY_CODE_OFF
}

/// The monitor VA of vCPU `vcpu`'s replay data page.
pub const fn replay_data_va(vcpu: usize) -> u64 {
    MONITOR_BASE + REPLAY_OFF + vcpu as u64 * 0x1000
}

/// The monitor VA at which the replay routine reaches the SPTE at machine-physical `mpa` of a
/// pool starting at `pool_base` (mapped by [`super::map_pool`]).
pub const fn pool_va(pool_base: u64, mpa: u64) -> u64 {
    POOL_VA + (mpa - (pool_base & !(HUGE - 1)))
}

pub(super) const HUGE: u64 = 2 << 20;
