//! The reference page walker: what a perfect x86-64 MMU makes of the guest's own tables.
//!
//! Pure: it reads guest-physical memory through [`PhysRead`] and never sets A/D bits or caches
//! anything, so the lead's property tests can compare the guest's tables (this walk) with the
//! shadow tables (the sim walk) address by address, and the host-side `MockCpu` can use it as a
//! TLB-less CPU. It follows the layout's rules: 4-level paging, 4 KiB pages only (PS in a PML4E,
//! PDPTE or PDE is a reserved-bit fault), and an entry pointing outside guest RAM is a
//! reserved-bit fault, as the shadow MMU treats it (it never maps such a gpa).

use crate::cpu::Cpu;
use shadowlab_abi::layout::{direct_map, is_canonical, pt_index, pte, PAGE_SIZE};

/// Reads guest-physical memory for the walker.
pub trait PhysRead {
    /// The 8 bytes at guest-physical `gpa` (8-aligned), or `None` if `gpa` is not guest RAM.
    fn read_phys(&mut self, gpa: u64) -> Option<u64>;

    /// Whether the page holding `gpa` is guest RAM (by default: whether its first word reads).
    fn is_ram(&mut self, gpa: u64) -> bool {
        self.read_phys(gpa & !(PAGE_SIZE - 1)).is_some()
    }
}

/// What kind of access is asked for; the walk itself does not check it, see
/// [`Translation::permits`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Access {
    /// A store.
    pub write: bool,
    /// From CPL3.
    pub user: bool,
    /// An instruction fetch.
    pub fetch: bool,
}

impl Access {
    /// A supervisor read.
    pub const READ: Access = Access {
        write: false,
        user: false,
        fetch: false,
    };
    /// A supervisor write.
    pub const WRITE: Access = Access {
        write: true,
        user: false,
        fetch: false,
    };
}

/// Why the walk stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultKind {
    /// The address is not canonical (a #GP on hardware, not a #PF).
    NonCanonical,
    /// An entry on the walk has P clear.
    NotPresent,
    /// An entry on the walk has a reserved bit set (PS above level 1 in this layout) or points
    /// outside guest RAM.
    Reserved,
}

/// A failed walk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WalkFault {
    /// The virtual address walked.
    pub gva: u64,
    /// The level of the entry that stopped the walk (4 = PML4E .. 1 = PTE; 0 for a
    /// non-canonical address, and for a leaf frame outside guest RAM).
    pub level: u32,
    /// Why.
    pub kind: FaultKind,
}

/// A successful walk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Translation {
    /// The guest-physical address `gva` translates to (frame + page offset).
    pub gpa: u64,
    /// Writable at every level (the AND of the W bits).
    pub writable: bool,
    /// User-accessible at every level (the AND of the U bits).
    pub user: bool,
    /// No-execute at some level (the OR of the NX bits).
    pub nx: bool,
    /// The entries read, PML4E first (`entries[0]`) to PTE (`entries[3]`).
    pub entries: [u64; 4],
    /// Guest-physical address of each table walked, PML4 first.
    pub tables: [u64; 4],
}

impl Translation {
    /// The guest-physical frame.
    pub const fn frame(&self) -> u64 {
        self.gpa & pte::ADDR_MASK
    }

    /// The leaf PTE.
    pub const fn leaf(&self) -> u64 {
        self.entries[3]
    }

    /// Whether `access` is allowed, as with CR0.WP = 1, EFER.NXE = 1, no SMEP/SMAP: a write
    /// needs W at every level (supervisor too), a user access needs U at every level, a fetch
    /// needs NX clear everywhere (and U if from user mode).
    pub const fn permits(&self, access: Access) -> bool {
        (!access.write || self.writable)
            && (!access.user || self.user)
            && (!access.fetch || !self.nx)
    }
}

/// Walks the 4-level tables rooted at guest-physical `root` for `gva`.
///
/// Mirrors the permission accumulation of KVM's `FNAME(walk_addr_generic)` (paging_tmpl.h), for
/// 64-bit guests with 4 KiB pages only; unlike it, sets no A/D bits and checks no access (the
/// caller uses [`Translation::permits`]).
pub fn walk<M: PhysRead + ?Sized>(
    mem: &mut M,
    root: u64,
    gva: u64,
) -> Result<Translation, WalkFault> {
    if !is_canonical(gva) {
        return Err(WalkFault {
            gva,
            level: 0,
            kind: FaultKind::NonCanonical,
        });
    }
    let mut table = root & pte::ADDR_MASK;
    let mut t = Translation {
        gpa: 0,
        writable: true,
        user: true,
        nx: false,
        entries: [0; 4],
        tables: [0; 4],
    };
    for level in (1..=4u32).rev() {
        let i = 4 - level as usize;
        t.tables[i] = table;
        let entry_gpa = table + 8 * pt_index(gva, level) as u64;
        let Some(entry) = mem.read_phys(entry_gpa) else {
            // The table itself is outside RAM: the entry above pointed there.
            return Err(WalkFault {
                gva,
                level: level + 1,
                kind: FaultKind::Reserved,
            });
        };
        t.entries[i] = entry;
        if entry & pte::P == 0 {
            return Err(WalkFault {
                gva,
                level,
                kind: FaultKind::NotPresent,
            });
        }
        if level > 1 && entry & pte::PS != 0 {
            return Err(WalkFault {
                gva,
                level,
                kind: FaultKind::Reserved,
            });
        }
        t.writable &= entry & pte::W != 0;
        t.user &= entry & pte::U != 0;
        t.nx |= entry & pte::NX != 0;
        table = entry & pte::ADDR_MASK;
    }
    if !mem.is_ram(table) {
        return Err(WalkFault {
            gva,
            level: 1,
            kind: FaultKind::Reserved,
        });
    }
    t.gpa = table | (gva & (PAGE_SIZE - 1));
    Ok(t)
}

/// Guest-side [`PhysRead`]: reads guest-physical memory through the direct map with
/// [`Cpu::read_u64`]. It cannot know the size of guest RAM, so it treats every gpa the direct
/// map can reach as RAM; an out-of-RAM gpa faults in the guest instead (the guest only walks
/// tables it built).
pub struct CpuPhys<'a, C: Cpu>(pub &'a mut C);

/// Bytes of guest-physical space the direct map (one PML4 slot) can reach.
const DIRECT_MAP_SPAN: u64 = 1 << 39;

impl<C: Cpu> PhysRead for CpuPhys<'_, C> {
    fn read_phys(&mut self, gpa: u64) -> Option<u64> {
        // Entries hold at most 52-bit addresses, beyond the direct map's reach: refuse rather
        // than wrap into the monitor's slot or overflow.
        if gpa >= DIRECT_MAP_SPAN {
            return None;
        }
        Some(self.0.read_u64(direct_map(gpa)))
    }

    fn is_ram(&mut self, gpa: u64) -> bool {
        gpa < DIRECT_MAP_SPAN
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::vec;
    use std::vec::Vec;

    /// 64 KiB of flat guest RAM.
    struct Flat(Vec<u64>);

    impl PhysRead for Flat {
        fn read_phys(&mut self, gpa: u64) -> Option<u64> {
            self.0.get(usize::try_from(gpa / 8).ok()?).copied()
        }
    }

    impl Flat {
        fn set(&mut self, gpa: u64, v: u64) {
            self.0[(gpa / 8) as usize] = v;
        }
    }

    const GVA: u64 = 0x0000_0080_1234_5678;

    /// Tables at frames 1..=4, data at frame 5.
    fn mapped(leaf_flags: u64) -> Flat {
        let mut m = Flat(vec![0; 16 * 512]);
        let tbl = pte::P | pte::W | pte::U;
        m.set(0x1000 + 8 * pt_index(GVA, 4) as u64, 0x2000 | tbl);
        m.set(0x2000 + 8 * pt_index(GVA, 3) as u64, 0x3000 | tbl);
        m.set(0x3000 + 8 * pt_index(GVA, 2) as u64, 0x4000 | tbl);
        m.set(0x4000 + 8 * pt_index(GVA, 1) as u64, 0x5000 | leaf_flags);
        m
    }

    #[test]
    fn translates_with_accumulated_permissions() {
        let mut m = mapped(pte::P | pte::U | pte::NX);
        let t = walk(&mut m, 0x1000, GVA).unwrap();
        assert_eq!(t.gpa, 0x5678);
        assert_eq!(t.frame(), 0x5000);
        assert_eq!(t.tables, [0x1000, 0x2000, 0x3000, 0x4000]);
        assert!(!t.writable && t.user && t.nx);
        assert!(t.permits(Access::READ));
        assert!(!t.permits(Access::WRITE));
        assert!(!t.permits(Access {
            fetch: true,
            ..Access::READ
        }));

        // W cleared at an upper level removes it from the translation.
        let mut m = mapped(pte::P | pte::W);
        m.set(0x2000 + 8 * pt_index(GVA, 3) as u64, 0x3000 | pte::P);
        let t = walk(&mut m, 0x1000, GVA).unwrap();
        assert!(!t.writable && !t.user && !t.nx);
    }

    #[test]
    fn faults() {
        let mut m = mapped(pte::P);
        assert_eq!(
            walk(&mut m, 0x1000, 0x0000_8000_0000_0000)
                .unwrap_err()
                .kind,
            FaultKind::NonCanonical
        );
        let e = walk(&mut m, 0x1000, GVA + 0x1000).unwrap_err();
        assert_eq!((e.level, e.kind), (1, FaultKind::NotPresent));
        let e = walk(&mut m, 0x1000, 0x0000_0100_0000_0000).unwrap_err();
        assert_eq!((e.level, e.kind), (4, FaultKind::NotPresent));

        // PS in a PDE is reserved in this layout.
        m.set(
            0x3000 + 8 * pt_index(GVA, 2) as u64,
            0x4000 | pte::P | pte::PS,
        );
        let e = walk(&mut m, 0x1000, GVA).unwrap_err();
        assert_eq!((e.level, e.kind), (2, FaultKind::Reserved));

        // A table outside RAM, and a leaf frame outside RAM.
        let mut m = mapped(pte::P);
        m.set(0x3000 + 8 * pt_index(GVA, 2) as u64, 0x100_0000 | pte::P);
        let e = walk(&mut m, 0x1000, GVA).unwrap_err();
        assert_eq!((e.level, e.kind), (2, FaultKind::Reserved));
        let mut m = mapped(pte::P);
        m.set(0x4000 + 8 * pt_index(GVA, 1) as u64, 0x100_0000 | pte::P);
        let e = walk(&mut m, 0x1000, GVA).unwrap_err();
        assert_eq!((e.level, e.kind), (1, FaultKind::Reserved));
    }

    #[test]
    fn guest_side_reader_refuses_gpas_beyond_the_direct_map() {
        let m = crate::mock::Machine::new(4, 1);
        let mut cpu = m.cpu(0);
        let root = cpu.boot_root();
        let mut phys = CpuPhys(&mut cpu);
        assert_eq!(
            phys.read_phys(root + 8 * shadowlab_abi::layout::DIRECT_MAP_SLOT as u64)
                .map(|e| e & pte::P),
            Some(pte::P)
        );
        assert_eq!(phys.read_phys(DIRECT_MAP_SPAN), None);
        assert_eq!(phys.read_phys(pte::ADDR_MASK), None);
        assert!(!phys.is_ram(DIRECT_MAP_SPAN));
    }

    #[test]
    fn self_mapping_table_walks_like_hardware() {
        // A PML4 entry pointing at the PML4 itself (recursive mapping): hardware walks it as
        // the next level; the walk is bounded at 4 levels, no loop.
        let mut m = Flat(vec![0; 16 * 512]);
        let slot = pt_index(GVA, 4) as u64;
        m.set(0x1000 + 8 * slot, 0x1000 | pte::P | pte::W);
        let e = walk(&mut m, 0x1000, GVA).unwrap_err();
        assert_eq!(e.kind, FaultKind::NotPresent);
        // gva whose every index is `slot` resolves to the PML4 frame itself.
        let rec = (slot << 39) | (slot << 30) | (slot << 21) | (slot << 12);
        let t = walk(&mut m, 0x1000, rec).unwrap();
        assert_eq!(t.frame(), 0x1000);
    }
}
