//! The guest's address-space conventions, shared by every backend and the guest runtime.
//!
//! All paging is 4-level, 4 KiB pages only (no PS bit: the shadow MMU shadows 4 KiB guest pages;
//! a guest PDE/PDPTE with PS set is treated as reserved and gets a guest page fault).
//!
//! ```text
//! PML4 slot 0..=255   user half: workload mappings (WORKLOAD_BASE and up)
//! PML4 slot 256       DIRECT_MAP_BASE + gpa  <->  gpa, for every guest RAM frame (RW, NX clear)
//!                     The guest's code, data, stacks and page tables are reached through it.
//! PML4 slot 511       reserved for the VMM's monitor (GDT/IDT/TSS/stubs); the guest may not
//!                     use it, the VMM links it supervisor-only into every shadow root.
//! ```

/// Size of a page.
pub const PAGE_SIZE: u64 = 4096;
/// log2 of [`PAGE_SIZE`].
pub const PAGE_SHIFT: u32 = 12;
/// Entries in one page table.
pub const PT_ENTRIES: usize = 512;

/// Base of the direct map of guest RAM (PML4 slot 256).
pub const DIRECT_MAP_BASE: u64 = 0xffff_8000_0000_0000;
/// PML4 slot of the direct map.
pub const DIRECT_MAP_SLOT: usize = 256;
/// PML4 slot reserved for the VMM's monitor.
pub const MONITOR_SLOT: usize = 511;
/// Base of the monitor's virtual range (PML4 slot 511).
pub const MONITOR_BASE: u64 = 0xffff_ff80_0000_0000;
/// Where workloads put their own mappings (PML4 slot 1 and up; slot 0 stays unused so that a
/// null pointer faults).
pub const WORKLOAD_BASE: u64 = 0x0000_0080_0000_0000;

/// x86-64 page-table entry bits used by the guest and the shadow MMU.
pub mod pte {
    /// Present.
    pub const P: u64 = 1 << 0;
    /// Writable.
    pub const W: u64 = 1 << 1;
    /// User-accessible.
    pub const U: u64 = 1 << 2;
    /// Accessed.
    pub const A: u64 = 1 << 5;
    /// Dirty (leaf only).
    pub const D: u64 = 1 << 6;
    /// Page size (large page) in a PDE/PDPTE; unsupported, treated as reserved.
    pub const PS: u64 = 1 << 7;
    /// No-execute.
    pub const NX: u64 = 1 << 63;
    /// The physical-address field (bits 12..=51).
    pub const ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;
}

/// Guest virtual address of guest-physical address `gpa` in the direct map.
#[inline(always)]
pub const fn direct_map(gpa: u64) -> u64 {
    DIRECT_MAP_BASE + gpa
}

/// Index into the page table at `level` (4 = PML4 .. 1 = PT) for `gva`.
#[inline(always)]
pub const fn pt_index(gva: u64, level: u32) -> usize {
    ((gva >> (PAGE_SHIFT + 9 * (level - 1))) & 0x1ff) as usize
}
