//! The contract between the VMM and the paravirtual guest: I/O ports, the ucall message, the
//! boot-info page, the report block's word encoding, and the address-space [`layout`] (PML4
//! slots, PTE bits, `is_canonical`) that the shadow MMU, the monitor, the guest and the
//! workloads all take from here.
//!
//! `no_std`, depending only on the `x86_64` crate (for the architectural PTE bits): the guest
//! links it, and so does the VMM, so both sides read one definition. Modelled on the KVM selftests' ucall (`tools/testing/selftests/kvm/lib/ucall_common.c`
//! and `lib/x86/ucall.c`): the guest fills a message in its own memory and does one port-I/O
//! write whose 32-bit value is the message's guest-physical address; the VMM reads the message,
//! acts, writes a status back into it and resumes the guest.
//!
//! What differs from the selftests: the selftests pass the message's *virtual* address in RDI
//! (costing a KVM_GET_REGS per ucall) and keep no status; here the value of the `out` itself is
//! the message's guest-physical address (guest RAM is below 4 GiB), so a ucall costs one exit
//! and no register read, and the VMM reports success or failure in [`UcallMsg::ret`].
#![no_std]

pub mod layout;

/// Guest-physical page of the MMIO hypercall window (no memslot behind it, so a store there
/// exits to the VMM as KVM_EXIT_MMIO). A store of 4 bytes at `HYPERCALL_MMIO_GPA + port` is the
/// hypercall `out port, eax`. Used instead of port I/O when the VMM says so in
/// [`BootInfo::hypercall_mmio`]: on this machine's software-virtualised host a CPL3 `out` is
/// refused (#GP) despite IOPL=3, and reflecting that #GP through the monitor costs a dozen
/// emulated instructions, while an MMIO store costs one exit. The guest reaches the window
/// through the direct map (`DIRECT_MAP_BASE + HYPERCALL_MMIO_GPA`), which the VMM maps.
pub const HYPERCALL_MMIO_GPA: u64 = 0xc000_0000;

/// Port of a ucall: `out dx, eax` with `eax` = guest-physical address of a [`UcallMsg`].
pub const UCALL_PORT: u16 = 0xe0;
/// Port of the no-op hypercall: `out dx, eax` with any value. No message, no memory access: the
/// round-trip floor of the backend.
pub const NOP_PORT: u16 = 0xe1;
/// Port the monitor's exception stubs write the vector number to (see the VMM's `monitor`).
pub const EXCEPTION_PORT: u16 = 0xe2;

/// The guest runs at CPL3 (see `shadowlab_abi::layout`). In `native` mode its privileged
/// MMU instructions run in the monitor's CPL0 gate, entered with `int3` (vector 3, a DPL3
/// interrupt gate; `int n` with other vectors is refused by this machine's software-virtualised
/// host) with EAX = one of these operations and RDI = the argument.
pub mod native_op {
    /// `mov cr3, rdi`.
    pub const LOAD_CR3: u32 = 1;
    /// `invlpg [rdi]`.
    pub const INVLPG: u32 = 2;
    /// Reload CR3 (flush non-global TLB entries).
    pub const FLUSH_TLB: u32 = 3;
}

/// Magic at the start of the boot-info page ("SHLABOOT").
pub const BOOT_MAGIC: u64 = 0x544f_4f42_414c_4853;
/// Most vCPUs a guest boots with (the boot-info page has one [`VcpuBoot`] slot per vCPU).
pub const MAX_VCPUS: usize = 64;

/// Guest-physical address of the boot-info page.
pub const BOOT_INFO_GPA: u64 = 0x1000;
/// Guest-physical address the guest image is loaded at; it is linked at
/// `DIRECT_MAP_BASE + GUEST_LOAD_GPA` (see the guest's linker script).
pub const GUEST_LOAD_GPA: u64 = 0x10_0000;

/// Size of [`UcallMsg::text`].
pub const UCALL_TEXT_LEN: usize = 440;

/// The ucall commands. Numbered like the selftests' `UCALL_*` where they exist.
#[repr(u64)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UcallCmd {
    /// No-op through the message path (validates the message, does nothing).
    None = 0,
    /// `GUEST_SYNC(stage, value)`: a checkpoint; args[0] = stage, args[1] = value.
    Sync = 1,
    /// `GUEST_ASSERT`: args[0] = line, args[1] = length of the file name at the start of
    /// `text`; the message follows it, `len` bytes of text in all. The vCPU stops.
    Abort = 2,
    /// `GUEST_PRINTF`: `len` bytes of UTF-8 text.
    Printf = 3,
    /// `GUEST_DONE`: the workload finished; args = its results (see [`DoneArgs`]).
    Done = 4,
    /// MMU hypercall: load CR3 with guest-physical root args[0].
    LoadCr3 = 0x100,
    /// MMU hypercall: invalidate the translation of gva args[0].
    Invlpg = 0x101,
    /// MMU hypercall: flush this vCPU's TLB (reload the current root).
    FlushTlb = 0x102,
}

impl UcallCmd {
    /// Decodes a command number, `None` for an unknown one.
    pub const fn from_u64(v: u64) -> Option<Self> {
        Some(match v {
            0 => Self::None,
            1 => Self::Sync,
            2 => Self::Abort,
            3 => Self::Printf,
            4 => Self::Done,
            0x100 => Self::LoadCr3,
            0x101 => Self::Invlpg,
            0x102 => Self::FlushTlb,
            _ => return None,
        })
    }
}

/// Status the VMM writes into [`UcallMsg::ret`].
pub mod status {
    /// Not yet handled (the guest writes this before the `out`).
    pub const PENDING: u64 = u64::MAX;
    /// Done.
    pub const OK: u64 = 0;
    /// Unknown command.
    pub const BAD_COMMAND: u64 = 1;
    /// An argument was out of range (address outside guest RAM, misaligned, too long...).
    pub const BAD_ARGUMENT: u64 = 2;
    /// The operation is not available in this backend mode.
    pub const UNSUPPORTED: u64 = 3;
}

/// A ucall message, in guest memory, naturally aligned to its size so it never crosses a page.
#[repr(C, align(512))]
#[derive(Clone, Copy)]
pub struct UcallMsg {
    /// A [`UcallCmd`] number.
    pub cmd: u64,
    /// Arguments, by command.
    pub args: [u64; 6],
    /// Written by the VMM: a [`status`] code.
    pub ret: u64,
    /// Bytes of `text` in use.
    pub len: u64,
    /// Text payload (file name and message, printf text).
    pub text: [u8; UCALL_TEXT_LEN],
}

/// Size of [`UcallMsg`] in guest memory.
pub const UCALL_MSG_SIZE: usize = core::mem::size_of::<UcallMsg>();
/// Byte offset of [`UcallMsg::cmd`].
pub const UCALL_OFF_CMD: u64 = 0;
/// Byte offset of [`UcallMsg::args`].
pub const UCALL_OFF_ARGS: u64 = 8;
/// Byte offset of [`UcallMsg::ret`].
pub const UCALL_OFF_RET: u64 = 56;
/// Byte offset of [`UcallMsg::len`].
pub const UCALL_OFF_LEN: u64 = 64;
/// Byte offset of [`UcallMsg::text`].
pub const UCALL_OFF_TEXT: u64 = 72;

const _: () = {
    assert!(UCALL_MSG_SIZE == 512);
    assert!(core::mem::offset_of!(UcallMsg, args) == UCALL_OFF_ARGS as usize);
    assert!(core::mem::offset_of!(UcallMsg, ret) == UCALL_OFF_RET as usize);
    assert!(core::mem::offset_of!(UcallMsg, len) == UCALL_OFF_LEN as usize);
    assert!(core::mem::offset_of!(UcallMsg, text) == UCALL_OFF_TEXT as usize);
};

impl UcallMsg {
    /// An empty message.
    pub const fn new() -> Self {
        Self {
            cmd: 0,
            args: [0; 6],
            ret: status::PENDING,
            len: 0,
            text: [0; UCALL_TEXT_LEN],
        }
    }
}

impl Default for UcallMsg {
    fn default() -> Self {
        Self::new()
    }
}

/// Indexes of [`UcallMsg::args`] in a `Done` message.
pub mod done_args {
    /// Operations the workload performed.
    pub const OPS: usize = 0;
    /// TSC at the start of the measured loop.
    pub const TSC_START: usize = 1;
    /// TSC at the end of the measured loop.
    pub const TSC_END: usize = 2;
    /// Workload-specific extra value.
    pub const EXTRA: usize = 3;
    /// Guest-physical address of a workload report block ([`crate::report_words`]), or 0.
    pub const REPORT_GPA: usize = 4;
    /// Length in bytes of the report block (`report_words::TOTAL * 8`), or 0.
    pub const REPORT_LEN: usize = 5;
}

/// The workload report block a `Done` message may point to: `TOTAL` little-endian u64 words,
/// 8-byte aligned, in guest RAM (a copy of `shadowlab_workloads::Report`).
pub mod report_words {
    /// vCPU index.
    pub const VCPU: usize = 0;
    /// Operations.
    pub const OPS: usize = 1;
    /// Self-checks passed.
    pub const CHECKS: usize = 2;
    /// PTE stores.
    pub const PTE_WRITES: usize = 3;
    /// CR3 loads.
    pub const CR3_LOADS: usize = 4;
    /// INVLPGs.
    pub const INVLPGS: usize = 5;
    /// TLB flushes.
    pub const TLB_FLUSHES: usize = 6;
    /// No-op hypercalls.
    pub const HYPERCALLS: usize = 7;
    /// Latency samples.
    pub const LAT_COUNT: usize = 8;
    /// Sum of latency samples (TSC ticks).
    pub const LAT_SUM: usize = 9;
    /// Smallest sample.
    pub const LAT_MIN: usize = 10;
    /// Largest sample.
    pub const LAT_MAX: usize = 11;
    /// First of the latency histogram's buckets (`shadowlab_workloads::Histogram::buckets`:
    /// log-linear, 32 per power of two).
    pub const LAT_BUCKETS: usize = 12;
    /// Number of histogram buckets (`shadowlab_workloads::hist::BUCKETS`; the guest and the
    /// VMM each check the two agree at compile time).
    pub const NR_BUCKETS: usize = 1920;
    /// Words in the block.
    pub const TOTAL: usize = LAT_BUCKETS + NR_BUCKETS;
}

/// How the guest's MMU operations reach the MMU.
#[repr(u64)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GuestMode {
    /// `native`: the guest's own page tables are loaded into CR3; `mov cr3`/`invlpg` run
    /// directly and the host kernel's shadow MMU handles them.
    Native = 1,
    /// `kvm`: CR3 holds a shadow root of the VMM's MMU; CR3 loads, INVLPG and flushes are
    /// hypercalls.
    Shadow = 2,
}

/// What the guest runs: built-in test programs of the runtime (below 0x100) or a workload of
/// `shadowlab-workloads` (0x100 and up, see [`WORKLOAD_BASE_ID`]).
pub mod program {
    /// Built-in: a no-op hypercall loop (`iters` times) through the `Cpu` trait, then DONE.
    pub const NOP_LOOP: u64 = 1;
    /// Built-in: GUEST_ASSERT fails on purpose (tests the ASSERT path).
    pub const ASSERT_FAIL: u64 = 2;
    /// Built-in: executes `ud2`. With the monitor's IDT the VMM reports #UD; booted with no
    /// IDT (the VMM's `FaultInjection::NoIdt`) the #UD cannot be delivered: a triple fault.
    pub const UD2: u64 = 3;
    /// Built-in: issues ucalls with bad arguments and checks each fails with a status.
    pub const BAD_HYPERCALL: u64 = 4;
    /// Built-in: touches an unmapped address (a guest #PF the monitor reports).
    pub const PAGE_FAULT: u64 = 5;
    /// Built-in: SYNC and PRINTF, then DONE (tests the message path).
    pub const SYNC_PRINTF: u64 = 6;
    /// Built-in: spins forever without exiting (tests the watchdog and kicks).
    pub const SPIN: u64 = 7;
    /// Built-in: probes whether the host notices page-table entries rewritten by the VMM from
    /// userspace. Maps a page, reads it, then asks (SYNC stage [`COHERENCE_STAGE`], value = the
    /// leaf PTE's gpa; the shared page holds the new PTE) for the PTE to be retargeted, and reads
    /// it again after INVLPG, after a flush and after a CR3 switch away and back. DONE args:
    /// the four values read (0xAAAA: old page, 0xBBBB: new page).
    pub const COHERENCE_PROBE: u64 = 8;
    /// The SYNC stage of [`COHERENCE_PROBE`]'s request.
    pub const COHERENCE_STAGE: u64 = 0xc0de;
    /// Built-in: privilege and no-execute through the MMU, at CPL3. Stores a `ret` in a fresh
    /// frame, maps it at `WORKLOAD_BASE` user and executable, calls it (`Cpu::fetch`) and
    /// reports SYNC [`FETCH_STAGE`] with value 1. Then it takes one permission away, INVLPGs,
    /// and touches the page again: `iters` = [`FETCH_NX`]: NX set, a read (which must work, so
    /// the translation is cached read-only), then a call, which must #PF with P|U|I/D;
    /// `iters` = [`FETCH_SUPERVISOR`]: U clear, a read, which must #PF with P|U. The monitor
    /// reports the #PF; DONE means the permission was not enforced.
    pub const FETCH_PROBE: u64 = 9;
    /// The SYNC stage of [`FETCH_PROBE`] (value 1: the first call returned; value 2: the
    /// read of the NX page returned).
    pub const FETCH_STAGE: u64 = 0xfe7c;
    /// [`FETCH_PROBE`]'s `iters` for the no-execute case.
    pub const FETCH_NX: u64 = 0;
    /// [`FETCH_PROBE`]'s `iters` for the supervisor-only case.
    pub const FETCH_SUPERVISOR: u64 = 1;
}

/// Per-vCPU boot parameters, in the boot-info page.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct VcpuBoot {
    /// Guest-physical address of the root this vCPU boots on.
    pub boot_root: u64,
    /// First guest-physical frame address this vCPU may allocate.
    pub free_start: u64,
    /// End (exclusive) of this vCPU's free frames.
    pub free_end: u64,
    /// Top of this vCPU's stack (a direct-map virtual address).
    pub stack_top: u64,
}

/// The boot-info page at [`BOOT_INFO_GPA`], written by the VMM before the vCPUs start and read
/// (only) by the guest.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct BootInfo {
    /// [`BOOT_MAGIC`].
    pub magic: u64,
    /// A [`GuestMode`] number.
    pub mode: u64,
    /// vCPUs running the program.
    pub nr_vcpus: u64,
    /// The program id ([`program`]).
    pub program: u64,
    /// Iterations.
    pub iters: u64,
    /// Seed.
    pub seed: u64,
    /// Program-specific parameters.
    pub params: [u64; 4],
    /// Size of guest RAM in bytes (guest RAM is `0..ram_size`).
    pub ram_size: u64,
    /// A word in guest RAM the vCPUs may use as a start barrier (guest-physical).
    pub shared_gpa: u64,
    /// Non-zero: make hypercalls through the MMIO window ([`HYPERCALL_MMIO_GPA`]) instead of
    /// port I/O.
    pub hypercall_mmio: u64,
    /// Per-vCPU parameters, `nr_vcpus` of them used.
    pub vcpus: [VcpuBoot; MAX_VCPUS],
}

const _: () = assert!(core::mem::size_of::<BootInfo>() <= 4096);

/// Offsets of [`BootInfo`] fields, for the VMM's bounds-checked writes.
pub mod boot_off {
    /// `magic`
    pub const MAGIC: u64 = 0;
    /// `mode`
    pub const MODE: u64 = 8;
    /// `nr_vcpus`
    pub const NR_VCPUS: u64 = 16;
    /// `program`
    pub const PROGRAM: u64 = 24;
    /// `iters`
    pub const ITERS: u64 = 32;
    /// `seed`
    pub const SEED: u64 = 40;
    /// `params`
    pub const PARAMS: u64 = 48;
    /// `ram_size`
    pub const RAM_SIZE: u64 = 80;
    /// `shared_gpa`
    pub const SHARED_GPA: u64 = 88;
    /// `hypercall_mmio`
    pub const HYPERCALL_MMIO: u64 = 96;
    /// `vcpus`
    pub const VCPUS: u64 = 104;
    /// Size of one `VcpuBoot`.
    pub const VCPU_SIZE: u64 = 32;
}

const _: () = {
    assert!(core::mem::offset_of!(BootInfo, mode) == boot_off::MODE as usize);
    assert!(core::mem::offset_of!(BootInfo, program) == boot_off::PROGRAM as usize);
    assert!(core::mem::offset_of!(BootInfo, params) == boot_off::PARAMS as usize);
    assert!(core::mem::offset_of!(BootInfo, ram_size) == boot_off::RAM_SIZE as usize);
    assert!(core::mem::offset_of!(BootInfo, shared_gpa) == boot_off::SHARED_GPA as usize);
    assert!(core::mem::offset_of!(BootInfo, hypercall_mmio) == boot_off::HYPERCALL_MMIO as usize);
    assert!(core::mem::offset_of!(BootInfo, vcpus) == boot_off::VCPUS as usize);
    assert!(core::mem::size_of::<VcpuBoot>() == boot_off::VCPU_SIZE as usize);
};

/// Id of the first workload program: `WORKLOAD_BASE_ID + n` runs the workload numbered `n` by
/// the workloads crate.
pub const WORKLOAD_BASE_ID: u64 = 0x100;
