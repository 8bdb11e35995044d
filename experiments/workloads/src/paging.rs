//! The guest page-table manager: 4-level tables of 4 KiB pages, edited as a kernel edits them.
//!
//! Every entry is read and written through the direct map with [`Cpu::read_u64`] /
//! [`Cpu::write_u64`], so each store meets the shadow MMU's write protection exactly as a real
//! kernel's would (leaf tables go unsync, upper levels are emulated). Table pages come from a
//! [`FrameAlloc`] and are zeroed before they are linked. Changes to present entries are
//! recorded in a [`TlbGather`]; the caller finishes it (INVLPG or flush) before relying on the
//! new translation or reusing a frame.

use crate::cpu::Cpu;
use crate::error::PtError;
use crate::frames::FrameAlloc;
use crate::tlb::TlbGather;
use crate::walk::{walk, CpuPhys, Translation, WalkFault};
use shadowlab_abi::layout::is_canonical;
use shadowlab_abi::layout::{
    direct_map, pt_index, pte, DIRECT_MAP_SLOT, MONITOR_SLOT, PAGE_SIZE, PT_ENTRIES,
};

/// Flags of a non-leaf entry: present, writable, user, accessed. x86 permissions are the AND
/// over the levels, so upper levels grant everything and the leaf decides.
pub const TABLE_FLAGS: u64 = pte::P | pte::W | pte::U | pte::A;

/// Leaf permissions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Flags(pub u64);

impl Flags {
    /// User data, read-write, no-execute; A and D preset (so no walker needs to set them).
    pub const RW: Flags = Flags(pte::P | pte::W | pte::U | pte::NX | pte::A | pte::D);
    /// User data, read-only, no-execute; A preset.
    pub const RO: Flags = Flags(pte::P | pte::U | pte::NX | pte::A);

    /// User code, read-only, executable; A preset (for [`Cpu::fetch`]).
    pub const RX: Flags = Flags(pte::P | pte::U | pte::A);

    /// The flag bits, without the address.
    pub const fn bits(self) -> u64 {
        self.0 & !pte::ADDR_MASK
    }
}

/// Span of virtual memory covered by one entry at `level` (1 = 4 KiB .. 4 = 512 GiB).
const fn span(level: u32) -> u64 {
    PAGE_SIZE << (9 * (level - 1))
}

/// Guest-physical address of the entry for `gva` in the table at `table`.
const fn entry_gpa(table: u64, gva: u64, level: u32) -> u64 {
    table + 8 * pt_index(gva, level) as u64
}

/// The one place page-table entries are stored: through the direct map, as a kernel does.
#[inline]
pub fn write_entry<C: Cpu>(cpu: &mut C, entry_gpa: u64, value: u64) {
    cpu.write_u64(direct_map(entry_gpa), value);
}

/// Reads a page-table entry through the direct map.
#[inline]
pub fn read_entry<C: Cpu>(cpu: &mut C, entry_gpa: u64) -> u64 {
    cpu.read_u64(direct_map(entry_gpa))
}

/// One address space: the tables under one root (PML4) frame.
#[derive(Debug)]
pub struct PageTables {
    root: u64,
    pte_writes: u64,
    tables_allocated: u64,
    tables_freed: u64,
}

impl PageTables {
    /// Manages the existing tables rooted at `root` (e.g. the boot root).
    pub const fn from_root(root: u64) -> Self {
        PageTables {
            root,
            pte_writes: 0,
            tables_allocated: 0,
            tables_freed: 0,
        }
    }

    /// A new, zeroed root that shares the direct-map PML4 entry of `template` (so the guest's
    /// code, data and tables stay reachable after a CR3 load), plus its entries at
    /// `shared_slots` (sharing whole subtrees between address spaces, as kernels share the
    /// kernel half). The monitor slot is never copied: the VMM links it into shadow roots.
    pub fn new_root<C: Cpu>(
        cpu: &mut C,
        frames: &mut FrameAlloc,
        template: u64,
        shared_slots: &[usize],
    ) -> Result<Self, PtError> {
        if let Some(&slot) = shared_slots
            .iter()
            .find(|&&s| s >= PT_ENTRIES || s == MONITOR_SLOT)
        {
            return Err(PtError::BadSlot { slot });
        }
        let root = frames.alloc_zeroed(cpu)?;
        let mut pt = PageTables::from_root(root);
        pt.tables_allocated = 1;
        for &slot in core::iter::once(&DIRECT_MAP_SLOT).chain(shared_slots) {
            let e = read_entry(cpu, template + 8 * slot as u64);
            if e != 0 {
                write_entry(cpu, root + 8 * slot as u64, e);
                pt.pte_writes += 1;
            }
        }
        Ok(pt)
    }

    /// Guest-physical address of the root, for [`Cpu::load_cr3`].
    pub const fn root(&self) -> u64 {
        self.root
    }

    /// Entries stored so far (leaf and upper level, including the entries [`PageTables::new_root`]
    /// copies), not counting the zeroing of new table pages.
    pub const fn pte_writes(&self) -> u64 {
        self.pte_writes
    }

    /// Table pages allocated (root included) and freed so far.
    pub const fn tables(&self) -> (u64, u64) {
        (self.tables_allocated, self.tables_freed)
    }

    /// A workload address: canonical, page-aligned, in the user half (PML4 slots 1..=255; slot
    /// 0 keeps null faulting, and slots 256 and 511 belong to the direct map and the monitor).
    fn check_gva(gva: u64) -> Result<(), PtError> {
        let slot = pt_index(gva, 4);
        if !is_canonical(gva) || gva % PAGE_SIZE != 0 || slot == 0 || slot >= DIRECT_MAP_SLOT {
            return Err(PtError::BadAddress { gva });
        }
        Ok(())
    }

    /// Guest-physical address of the leaf entry for `gva`, allocating and linking missing
    /// tables when `frames` is given.
    fn leaf_entry_gpa<C: Cpu>(
        &mut self,
        cpu: &mut C,
        mut frames: Option<&mut FrameAlloc>,
        gva: u64,
    ) -> Result<u64, PtError> {
        Self::check_gva(gva)?;
        let mut table = self.root;
        for level in (2..=4).rev() {
            let slot = entry_gpa(table, gva, level);
            let e = read_entry(cpu, slot);
            table = if e & pte::P == 0 {
                let Some(frames) = frames.as_deref_mut() else {
                    return Err(PtError::NotMapped { gva });
                };
                // Zero the new table before linking it: the link makes it walkable.
                let t = frames.alloc_zeroed(cpu)?;
                write_entry(cpu, slot, t | TABLE_FLAGS);
                self.pte_writes += 1;
                self.tables_allocated += 1;
                t
            } else if e & pte::PS != 0 {
                return Err(PtError::LargePage { gva, level });
            } else {
                e & pte::ADDR_MASK
            };
        }
        Ok(entry_gpa(table, gva, 1))
    }

    /// Guest-physical address of the page table (level 1) that maps `gva`, if its tables exist.
    /// Lets another vCPU write leaf entries of this address space through the direct map.
    pub fn leaf_table<C: Cpu>(&mut self, cpu: &mut C, gva: u64) -> Result<u64, PtError> {
        Ok(self.leaf_entry_gpa(cpu, None, gva)? & !(PAGE_SIZE - 1))
    }

    /// Maps `gva` to frame `gpa` with `flags`, creating missing tables. The leaf must be
    /// absent. Needs no invalidation (a not-present entry is never cached).
    pub fn map<C: Cpu>(
        &mut self,
        cpu: &mut C,
        frames: &mut FrameAlloc,
        gva: u64,
        gpa: u64,
        flags: Flags,
    ) -> Result<(), PtError> {
        let slot = self.leaf_entry_gpa(cpu, Some(frames), gva)?;
        if read_entry(cpu, slot) & pte::P != 0 {
            return Err(PtError::AlreadyMapped { gva });
        }
        write_entry(cpu, slot, (gpa & pte::ADDR_MASK) | flags.bits());
        self.pte_writes += 1;
        Ok(())
    }

    /// Replaces the present leaf of `gva` by `new(old)`; records the invalidation.
    fn update_leaf<C: Cpu>(
        &mut self,
        cpu: &mut C,
        gva: u64,
        tlb: &mut TlbGather,
        new: impl FnOnce(u64) -> u64,
    ) -> Result<u64, PtError> {
        let slot = self.leaf_entry_gpa(cpu, None, gva)?;
        let old = read_entry(cpu, slot);
        if old & pte::P == 0 {
            return Err(PtError::NotMapped { gva });
        }
        write_entry(cpu, slot, new(old));
        self.pte_writes += 1;
        tlb.page(gva);
        Ok(old)
    }

    /// Unmaps `gva`; returns the old leaf entry (its frame is `old & pte::ADDR_MASK`, to be
    /// freed only after the gather is finished).
    pub fn unmap<C: Cpu>(
        &mut self,
        cpu: &mut C,
        gva: u64,
        tlb: &mut TlbGather,
    ) -> Result<u64, PtError> {
        self.update_leaf(cpu, gva, tlb, |_| 0)
    }

    /// Changes the permissions of the mapped page `gva`, keeping its frame (e.g. fork's
    /// write-protect). Returns the old entry.
    pub fn protect<C: Cpu>(
        &mut self,
        cpu: &mut C,
        gva: u64,
        flags: Flags,
        tlb: &mut TlbGather,
    ) -> Result<u64, PtError> {
        self.update_leaf(cpu, gva, tlb, |old| (old & pte::ADDR_MASK) | flags.bits())
    }

    /// Points the mapped page `gva` at another frame with `flags` (e.g. a COW break). Returns
    /// the old entry.
    pub fn remap<C: Cpu>(
        &mut self,
        cpu: &mut C,
        gva: u64,
        gpa: u64,
        flags: Flags,
        tlb: &mut TlbGather,
    ) -> Result<u64, PtError> {
        self.update_leaf(cpu, gva, tlb, |_| (gpa & pte::ADDR_MASK) | flags.bits())
    }

    /// Unlinks and frees (after the gather's flush) every table page that maps only addresses
    /// inside `[floor, ceiling)`, like Linux's `free_pgd_range`: the caller guarantees nothing
    /// is mapped there any more (leaves left behind are dropped, their frames not freed).
    /// Tables that also cover addresses outside the range stay. `floor` and `ceiling` must be
    /// workload addresses (`ceiling` may be the end of the user half).
    pub fn free_tables<C: Cpu>(
        &mut self,
        cpu: &mut C,
        frames: &mut FrameAlloc,
        floor: u64,
        ceiling: u64,
        tlb: &mut TlbGather,
    ) -> Result<(), PtError> {
        Self::check_gva(floor)?;
        let user_end = (DIRECT_MAP_SLOT as u64) << 39;
        if ceiling <= floor || ceiling % PAGE_SIZE != 0 || ceiling > user_end {
            return Err(PtError::BadAddress { gva: ceiling });
        }
        self.free_level(cpu, frames, self.root, 4, 0, floor, ceiling, tlb)
    }

    /// Frees the tables below the entries of `table` (at `level`, covering from `base`) that
    /// overlap `[floor, ceiling)`. Recursion depth is at most 3.
    #[allow(clippy::too_many_arguments)]
    fn free_level<C: Cpu>(
        &mut self,
        cpu: &mut C,
        frames: &mut FrameAlloc,
        table: u64,
        level: u32,
        base: u64,
        floor: u64,
        ceiling: u64,
        tlb: &mut TlbGather,
    ) -> Result<(), PtError> {
        let size = span(level);
        let first = floor.max(base);
        let mut va = first - (first - base) % size;
        while va < ceiling && va < base + size * PT_ENTRIES as u64 {
            let slot = entry_gpa(table, va, level);
            let e = read_entry(cpu, slot);
            if e & pte::P != 0 && e & pte::PS == 0 && level > 1 {
                let child = e & pte::ADDR_MASK;
                if va >= floor && va + size <= ceiling {
                    // Whole subtree inside the range: unlink it, free every table in it.
                    write_entry(cpu, slot, 0);
                    self.pte_writes += 1;
                    tlb.unlinked_table();
                    self.free_subtree(cpu, frames, child, level - 1, tlb)?;
                } else {
                    self.free_level(cpu, frames, child, level - 1, va, floor, ceiling, tlb)?;
                }
            }
            va += size;
        }
        Ok(())
    }

    /// Frees `table` (at `level`) and every table below it, after the gather's flush.
    fn free_subtree<C: Cpu>(
        &mut self,
        cpu: &mut C,
        frames: &mut FrameAlloc,
        table: u64,
        level: u32,
        tlb: &mut TlbGather,
    ) -> Result<(), PtError> {
        if level > 1 {
            for i in 0..PT_ENTRIES as u64 {
                let e = read_entry(cpu, table + 8 * i);
                if e & pte::P != 0 && e & pte::PS == 0 {
                    self.free_subtree(cpu, frames, e & pte::ADDR_MASK, level - 1, tlb)?;
                }
            }
        }
        self.tables_freed += 1;
        tlb.free_after_flush(cpu, frames, table)
    }

    /// Walks this address space's tables for `gva` with the reference walker, reading them
    /// through the direct map: the translation the guest *asked for*.
    pub fn translate<C: Cpu>(&self, cpu: &mut C, gva: u64) -> Result<Translation, WalkFault> {
        walk(&mut CpuPhys(cpu), self.root, gva)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mock::Machine;
    use crate::walk::{walk, FaultKind};
    use shadowlab_abi::layout::WORKLOAD_BASE;

    const VA: u64 = WORKLOAD_BASE + 0x1234_5000;

    #[test]
    fn map_protect_remap_unmap() {
        let m = Machine::new(8, 1);
        let mut cpu = m.cpu(0);
        let mut frames = FrameAlloc::for_cpu(&cpu);
        let boot = cpu.boot_root();
        let mut pt = PageTables::new_root(&mut cpu, &mut frames, boot, &[]).unwrap();
        let (a, b) = (
            frames.alloc(&mut cpu).unwrap(),
            frames.alloc(&mut cpu).unwrap(),
        );
        let mut tlb = TlbGather::new();

        pt.map(&mut cpu, &mut frames, VA, a, Flags::RW).unwrap();
        assert_eq!(pt.tables(), (4, 0));
        let t = walk(&mut &*m, pt.root(), VA + 8).unwrap();
        assert_eq!((t.gpa, t.writable, t.user, t.nx), (a + 8, true, true, true));
        assert_eq!(pt.translate(&mut cpu, VA).unwrap().frame(), a);
        assert_eq!(
            pt.map(&mut cpu, &mut frames, VA, b, Flags::RW),
            Err(PtError::AlreadyMapped { gva: VA })
        );

        let old = pt.protect(&mut cpu, VA, Flags::RO, &mut tlb).unwrap();
        assert_eq!(old & pte::ADDR_MASK, a);
        let t = walk(&mut &*m, pt.root(), VA).unwrap();
        assert_eq!((t.frame(), t.writable), (a, false));

        pt.remap(&mut cpu, VA, b, Flags::RW, &mut tlb).unwrap();
        assert_eq!(walk(&mut &*m, pt.root(), VA).unwrap().frame(), b);

        let old = pt.unmap(&mut cpu, VA, &mut tlb).unwrap();
        assert_eq!(old & pte::ADDR_MASK, b);
        assert_eq!(
            walk(&mut &*m, pt.root(), VA).unwrap_err().kind,
            FaultKind::NotPresent
        );
        assert_eq!(
            pt.unmap(&mut cpu, VA, &mut tlb),
            Err(PtError::NotMapped { gva: VA })
        );
        let far = VA + (1 << 30);
        assert_eq!(
            pt.protect(&mut cpu, far, Flags::RO, &mut tlb),
            Err(PtError::NotMapped { gva: far })
        );
        // Three changes of a present entry: three INVLPGs.
        tlb.finish(&mut cpu, &mut frames).unwrap();
        assert_eq!(cpu.invlpgs(), 3);
        // The direct map still translates in the new root.
        assert_eq!(walk(&mut &*m, pt.root(), direct_map(a)).unwrap().frame(), a);
    }

    #[test]
    fn bad_addresses_and_slots() {
        let m = Machine::new(4, 1);
        let mut cpu = m.cpu(0);
        let mut frames = FrameAlloc::for_cpu(&cpu);
        let boot = cpu.boot_root();
        let mut pt = PageTables::new_root(&mut cpu, &mut frames, boot, &[]).unwrap();
        for gva in [
            0,
            0x1000,
            VA + 8,
            direct_map(0),
            shadowlab_abi::layout::MONITOR_BASE,
            0x0000_8000_0000_0000,
        ] {
            assert_eq!(
                pt.map(&mut cpu, &mut frames, gva, 0x1000, Flags::RW),
                Err(PtError::BadAddress { gva })
            );
        }
        assert_eq!(
            PageTables::new_root(&mut cpu, &mut frames, boot, &[MONITOR_SLOT]).unwrap_err(),
            PtError::BadSlot { slot: MONITOR_SLOT }
        );
        assert_eq!(
            PageTables::new_root(&mut cpu, &mut frames, boot, &[512]).unwrap_err(),
            PtError::BadSlot { slot: 512 }
        );
    }

    #[test]
    fn shared_slot_shares_the_subtree() {
        let m = Machine::new(8, 1);
        let mut cpu = m.cpu(0);
        let mut frames = FrameAlloc::for_cpu(&cpu);
        let boot = cpu.boot_root();
        let mut a = PageTables::new_root(&mut cpu, &mut frames, boot, &[]).unwrap();
        let f = frames.alloc(&mut cpu).unwrap();
        a.map(&mut cpu, &mut frames, VA, f, Flags::RO).unwrap();
        let b = PageTables::new_root(&mut cpu, &mut frames, a.root(), &[pt_index(VA, 4)]).unwrap();
        let (ta, tb) = (
            walk(&mut &*m, a.root(), VA).unwrap(),
            walk(&mut &*m, b.root(), VA).unwrap(),
        );
        assert_eq!(ta.frame(), f);
        assert_eq!(ta.tables[1..], tb.tables[1..]);
        assert_ne!(ta.tables[0], tb.tables[0]);
        let mut b = b;
        assert_eq!(b.leaf_table(&mut cpu, VA).unwrap(), ta.tables[3]);
    }

    #[test]
    fn free_tables_frees_only_covered_tables() {
        let m = Machine::new(8, 1);
        let mut cpu = m.cpu(0);
        let mut frames = FrameAlloc::for_cpu(&cpu);
        let boot = cpu.boot_root();
        let mut pt = PageTables::new_root(&mut cpu, &mut frames, boot, &[]).unwrap();
        let gb = 1u64 << 30;
        let (lo, hi) = (WORKLOAD_BASE, WORKLOAD_BASE + gb);
        let f = frames.alloc(&mut cpu).unwrap();
        pt.map(&mut cpu, &mut frames, lo, f, Flags::RW).unwrap();
        pt.map(&mut cpu, &mut frames, hi, f, Flags::RW).unwrap();
        assert_eq!(pt.tables(), (6, 0)); // root, PDPT, 2 x (PD, PT)
        let avail = frames.available();
        let mut tlb = TlbGather::new();
        pt.unmap(&mut cpu, lo, &mut tlb).unwrap();
        pt.free_tables(&mut cpu, &mut frames, lo, lo + gb, &mut tlb)
            .unwrap();
        tlb.finish(&mut cpu, &mut frames).unwrap();
        // The PD and PT under `lo` went; the PDPT (shared with `hi`) stayed.
        assert_eq!(pt.tables(), (6, 2));
        assert_eq!(frames.available(), avail + 2);
        assert_eq!(cpu.flushes(), 1);
        assert_eq!(walk(&mut &*m, pt.root(), lo).unwrap_err().level, 3);
        assert_eq!(walk(&mut &*m, pt.root(), hi).unwrap().frame(), f);
        assert_eq!(
            pt.free_tables(&mut cpu, &mut frames, lo, lo, &mut tlb),
            Err(PtError::BadAddress { gva: lo })
        );
    }
}
