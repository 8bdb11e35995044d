//! The guest's address-space conventions, shared by every backend and the guest runtime.
//!
//! All paging is 4-level, 4 KiB pages only (no PS bit: the shadow MMU shadows 4 KiB guest pages;
//! a guest PDE/PDPTE with PS set is treated as reserved and gets a guest page fault).
//!
//! ```text
//! PML4 slot 0         unused (null pointers fault)
//! PML4 slot 1..=254   workload mappings (WORKLOAD_BASE and up)
//! PML4 slot 255       DIRECT_MAP_BASE + gpa  <->  gpa, for every guest RAM frame (RW, U, NX clear)
//!                     The guest's code, data, stacks and page tables are reached through it.
//! PML4 slot 256..=510 unused
//! PML4 slot 511       reserved for the VMM's monitor (GDT/IDT/TSS/stubs); the guest may not
//!                     use it, the VMM links it supervisor-only into every shadow root.
//! ```
//!
//! The guest runs at CPL3 (with IOPL=3 for its port-I/O hypercalls), so every guest mapping,
//! at every level, has the U bit. Why CPL3 and why the direct map is in the lower half: on a
//! software-virtualised host (this machine's `kvm_pvm`) CPL0 guest code is run by the host's
//! instruction emulator, which has no SSE (and rustc's x86-64 code, `core` included, uses SSE),
//! while CPL3 code runs natively but may only reach the lower half of the address space. Only
//! the VMM's monitor stubs run at CPL0, in slot 511.

/// Size of a page.
pub const PAGE_SIZE: u64 = 4096;
/// log2 of [`PAGE_SIZE`].
pub const PAGE_SHIFT: u32 = 12;
/// Entries in one page table.
pub const PT_ENTRIES: usize = 512;

/// Base of the direct map of guest RAM (PML4 slot 255, the top of the lower half).
pub const DIRECT_MAP_BASE: u64 = 0x0000_7f80_0000_0000;
/// PML4 slot of the direct map.
pub const DIRECT_MAP_SLOT: usize = 255;
/// PML4 slot reserved for the VMM's monitor.
pub const MONITOR_SLOT: usize = 511;
/// Base of the monitor's virtual range (PML4 slot 511).
pub const MONITOR_BASE: u64 = 0xffff_ff80_0000_0000;
/// Where workloads put their own mappings (PML4 slot 1 and up; slot 0 stays unused so that a
/// null pointer faults).
pub const WORKLOAD_BASE: u64 = 0x0000_0080_0000_0000;

/// x86-64 page-table entry bits used by the guest and the shadow MMU, taken from the `x86_64`
/// crate's [`PageTableFlags`](x86_64::structures::paging::PageTableFlags) (as `u64`, the form
/// the tables are read and written in).
pub mod pte {
    use x86_64::structures::paging::PageTableFlags as F;

    /// Present.
    pub const P: u64 = F::PRESENT.bits();
    /// Writable.
    pub const W: u64 = F::WRITABLE.bits();
    /// User-accessible.
    pub const U: u64 = F::USER_ACCESSIBLE.bits();
    /// Accessed.
    pub const A: u64 = F::ACCESSED.bits();
    /// Dirty (leaf only).
    pub const D: u64 = F::DIRTY.bits();
    /// Page size (large page) in a PDE/PDPTE; unsupported, treated as reserved.
    pub const PS: u64 = F::HUGE_PAGE.bits();
    /// No-execute.
    pub const NX: u64 = F::NO_EXECUTE.bits();
    /// The physical-address field (bits 12..=51).
    pub const ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;

    // The architectural bit positions, checked at build time.
    const _: () = assert!(P == 1 << 0 && W == 1 << 1 && U == 1 << 2 && A == 1 << 5);
    const _: () = assert!(D == 1 << 6 && PS == 1 << 7 && NX == 1 << 63);
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

/// Whether `gva` is canonical for 48-bit virtual addresses (bits 63..=47 all equal). A
/// non-canonical access raises #GP, not #PF, before any TLB lookup or page walk.
#[inline(always)]
pub const fn is_canonical(gva: u64) -> bool {
    let top = gva >> 47;
    top == 0 || top == 0x1_ffff
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_addresses_are_the_two_ends_of_the_space() {
        assert!(is_canonical(0));
        assert!(is_canonical(0x0000_7fff_ffff_ffff));
        assert!(!is_canonical(0x0000_8000_0000_0000));
        assert!(!is_canonical(0xffff_7fff_ffff_ffff));
        assert!(is_canonical(0xffff_8000_0000_0000));
        assert!(is_canonical(MONITOR_BASE));
        assert!(is_canonical(direct_map(0x1000)));
    }

    #[test]
    fn table_indices_take_nine_bits_per_level() {
        let gva = (3u64 << 39) | (5 << 30) | (7 << 21) | (9 << 12) | 0x123;
        assert_eq!(
            [
                pt_index(gva, 4),
                pt_index(gva, 3),
                pt_index(gva, 2),
                pt_index(gva, 1)
            ],
            [3, 5, 7, 9]
        );
        assert_eq!(pt_index(DIRECT_MAP_BASE, 4), DIRECT_MAP_SLOT);
        assert_eq!(pt_index(MONITOR_BASE, 4), MONITOR_SLOT);
    }
}
