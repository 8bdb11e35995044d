//! The [`Cpu`] trait: what a workload may do, and nothing more.
//!
//! A workload is paravirtual-guest code. It reads and writes guest-virtual addresses (through
//! whatever translation the backend really uses: hardware walking shadow tables on `kvm`, the
//! host's shadow MMU on `native`, the software walker and TLB on `sim`), and it asks for the
//! MMU operations a kernel performs: CR3 load, INVLPG, TLB flush. On `kvm` those are hypercalls
//! that end in `kvm_mmu_sync_roots()`; on `native` real instructions; on `sim` calls into the
//! same shadow MMU.
//!
//! Page-table maintenance is not in the trait: the workload writes its own page tables through
//! the direct map ([`shadowlab_abi::layout::DIRECT_MAP_BASE`]) with [`Cpu::write_u64`], exactly as a
//! kernel does, so those stores meet the shadow MMU's write protection.

use core::ops::Range;

/// Why a workload stopped: its own self-check failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CheckFailed {
    /// What was checked.
    pub what: &'static str,
    /// The virtual address involved.
    pub gva: u64,
    /// The value expected.
    pub expected: u64,
    /// The value read.
    pub found: u64,
}

/// The x86 `ret` opcode: what [`Cpu::fetch`] executes.
pub const RET: u8 = 0xc3;

/// One guest vCPU as a workload sees it.
pub trait Cpu {
    /// This vCPU's index, `0..nr_vcpus()`.
    fn id(&self) -> usize;
    /// How many vCPUs run the workload.
    fn nr_vcpus(&self) -> usize;

    /// Guest-physical frames this vCPU may allocate from (page-aligned, disjoint between vCPUs,
    /// all inside guest RAM). Frames used at boot are not in it.
    fn free_frames(&self) -> Range<u64>;
    /// Guest-physical address of the root (PML4) this vCPU booted on. It maps the direct map and
    /// nothing in the user half.
    fn boot_root(&self) -> u64;
    /// Guest-physical address of one page shared by every vCPU of the run, for cross-vCPU
    /// coordination (barriers, hand-offs of table addresses). It is in guest RAM (so reachable
    /// through the direct map), in no vCPU's `free_frames()`, and **zero-filled when the
    /// workload starts** on any vCPU.
    ///
    /// Why the trait needs it: `free_frames()` are disjoint per vCPU and nothing else names a
    /// location every vCPU knows, so without it multi-vCPU workloads (`unsync-race`) have no
    /// place to meet. The same page on every vCPU; single-vCPU runs may use it too.
    fn shared_page(&self) -> u64;

    /// Loads 8 bytes at `gva` (naturally aligned), with acquire semantics.
    fn read_u64(&mut self, gva: u64) -> u64;
    /// Stores 8 bytes at `gva` (naturally aligned), with release semantics.
    fn write_u64(&mut self, gva: u64, value: u64);
    /// Atomically adds to the 8 bytes at `gva` and returns the old value (sequentially
    /// consistent). For cross-vCPU coordination.
    fn fetch_add_u64(&mut self, gva: u64, value: u64) -> u64;
    /// Executes the instruction at `gva`, which must be a one-byte `ret` ([`RET`]) the workload
    /// stored there (through the direct map): an **instruction fetch** through the current
    /// tables, at the workload's privilege (CPL3 in a `kvm`/`native` guest, user by default on
    /// `sim`). It needs the page executable (NX clear at every level, EFER.NXE is set) and, from
    /// user mode, U at every level; otherwise it takes a #PF with the I/D bit in the error code.
    /// On `kvm` and `native` this is a real indirect `call`; on `sim` a fetch access through the
    /// software TLB and shadow tables that decodes the byte.
    fn fetch(&mut self, gva: u64);
    /// A spin-wait hint (`pause` in a guest, a yield in sim).
    fn pause(&mut self);

    /// Switches to the page tables rooted at guest-physical `root` (a MOV to CR3 with a flush
    /// of non-global entries).
    fn load_cr3(&mut self, root: u64);
    /// Invalidates the translation of `gva` in this vCPU's TLB (INVLPG).
    fn invlpg(&mut self, gva: u64);
    /// Flushes this vCPU's whole TLB (a CR3 reload of the current root).
    fn flush_tlb(&mut self);

    /// A no-op round trip to the VMM: the backend's floor cost (`exit-floor`).
    fn hypercall_nop(&mut self);
    /// A monotonic timestamp in arbitrary units (TSC in a guest), for the workloads' own
    /// per-op latency samples.
    fn timestamp(&mut self) -> u64;
}
