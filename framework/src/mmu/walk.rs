//! The software guest page walker (KVM's `FNAME(walk_addr_generic)` in paging_tmpl.h) and the
//! reference walk the oracle compares the shadow tables against.
//!
//! The walker reads the guest's own 4-level tables through the gfn → mfn map with atomic
//! loads, accumulates permissions, and on success sets the guest's Accessed bits (and Dirty on
//! the leaf for a write) with `cmpxchg`, restarting the walk if the entry changed underneath,
//! as KVM's `FNAME(update_accessed_dirty_bits)` does. Bad input is handled as hardware would:
//!
//! - a table or final frame outside guest RAM (this includes the shadow pool and the monitor,
//!   which are not guest-physical memory at all), reserved address bits (MAXPHYADDR..51), or PS
//!   set in a PDE/PDPTE/PML4E (4 KiB paging only, see `layout`) give a guest page fault with
//!   the RSVD bit set, never a mapping;
//! - a self-referencing or looping table is simply followed: a walk is always four reads, so a
//!   loop just makes a table serve at several levels (the well-known recursive mapping);
//! - a non-canonical address is not a page fault on x86 but #GP; it is reported as such.

use std::sync::atomic::Ordering;

use shadowlab_abi::layout::{self, is_canonical, pte};

use super::spte::{gpte_access, pferr, Access, ACC_ALL, ACC_WRITE, GPTE_RSVD_ADDR};
use crate::mem::GuestMemory;

/// A fault the guest must see (the VMM injects it or, on sim, stops the vCPU with it).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("guest {} at {gva:#x}, error code {error_code:#x}", if *.general_protection { "#GP (non-canonical address)" } else { "#PF" })]
pub struct GuestFault {
    /// The faulting virtual address (CR2).
    pub gva: u64,
    /// The #PF error code ([`pferr`] bits); 0 for #GP, which hardware raises as #GP(0) for a
    /// non-canonical address.
    pub error_code: u32,
    /// A non-canonical address: #GP on x86, not #PF.
    pub general_protection: bool,
}

impl GuestFault {
    fn pf(gva: u64, error_code: u32) -> Self {
        GuestFault {
            gva,
            error_code,
            general_protection: false,
        }
    }
    /// The #GP(0) a non-canonical address raises. x86 checks canonicality before any TLB
    /// lookup or page walk, so no translation structure is consulted.
    pub const fn non_canonical(gva: u64) -> Self {
        GuestFault {
            gva,
            error_code: 0,
            general_protection: true,
        }
    }
    /// Whether the fault came from a reserved bit (bad input in the guest's tables).
    pub fn is_reserved(&self) -> bool {
        self.error_code & pferr::RSVD != 0
    }
}

/// Why a walk did not produce a translation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WalkFail {
    /// The guest's tables deny the access.
    Fault(GuestFault),
    /// A guest PTE kept changing while the walker tried to set its A/D bits: try again.
    Raced,
}

/// The result of a successful guest walk (KVM's `struct guest_walker`). Arrays are indexed by
/// `level - 1`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GuestWalker {
    /// The address walked.
    pub gva: u64,
    /// The guest frame it translates to.
    pub gfn: u64,
    /// gfn of the guest table read at each level.
    pub table_gfn: [u64; 4],
    /// Guest-physical address of the entry read at each level.
    pub pte_gpa: [u64; 4],
    /// The entry read at each level (with the A/D bits the walker set).
    pub ptes: [u64; 4],
    /// ACC_* bits accumulated down to and including the entry at each level.
    pub pt_access: [u8; 4],
}

impl GuestWalker {
    /// Guest-physical address of `gva`.
    pub fn gpa(&self) -> u64 {
        (self.gfn << 12) | (self.gva & 0xfff)
    }
    /// The final (leaf) permissions.
    pub fn pte_access(&self) -> u8 {
        self.pt_access[0]
    }
    /// Whether the leaf guest PTE is dirty.
    pub fn is_dirty(&self) -> bool {
        self.ptes[0] & pte::D != 0
    }
}

/// Reserved bits of a guest PTE at `level` (KVM's `rsvd_bits_mask`, for our 4 KiB-only
/// layout): physical-address bits above MAXPHYADDR at every level, and PS above level 1.
#[inline]
const fn rsvd_bits(level: u32) -> u64 {
    if level > 1 {
        GPTE_RSVD_ADDR | pte::PS
    } else {
        GPTE_RSVD_ADDR
    }
}

/// KVM's `FNAME(walk_addr_generic)`: translates `gva` through the guest tables rooted at
/// guest-physical `cr3` for `access`. With `set_ad`, marks the entries Accessed (and the leaf
/// Dirty on a write) as the hardware would; without it the walk is a pure read (the oracle's
/// reference walk). Differences from KVM: 4-level 4 KiB paging only, no PKU/SMEP/SMAP, CR0.WP
/// and EFER.NXE taken as set.
pub fn walk_addr(
    mem: &GuestMemory,
    cr3: u64,
    gva: u64,
    access: Access,
    set_ad: bool,
) -> Result<GuestWalker, WalkFail> {
    if !is_canonical(gva) {
        return Err(WalkFail::Fault(GuestFault::non_canonical(gva)));
    }
    let rsvd = |gva| {
        WalkFail::Fault(GuestFault::pf(
            gva,
            pferr::PRESENT | pferr::RSVD | access.pfec(),
        ))
    };
    let mut w = GuestWalker {
        gva,
        gfn: 0,
        table_gfn: [0; 4],
        pte_gpa: [0; 4],
        ptes: [0; 4],
        pt_access: [0; 4],
    };
    let mut table = cr3 & pte::ADDR_MASK;
    if table & GPTE_RSVD_ADDR != 0 {
        return Err(rsvd(gva));
    }
    let mut acc = ACC_ALL;
    for level in (1..=4u32).rev() {
        let i = (level - 1) as usize;
        let pte_gpa = table + layout::pt_index(gva, level) as u64 * 8;
        // A table outside guest RAM reads as nothing usable: reserved-bit fault (hardware
        // reading unbacked physical memory sees all-ones, which has reserved bits set).
        let gpte = mem
            .read_gpa_u64(pte_gpa, Ordering::Acquire)
            .map_err(|_| rsvd(gva))?;
        if gpte & pte::P == 0 {
            return Err(WalkFail::Fault(GuestFault::pf(gva, access.pfec())));
        }
        if gpte & rsvd_bits(level) != 0 {
            return Err(rsvd(gva));
        }
        acc &= gpte_access(gpte);
        w.table_gfn[i] = table >> 12;
        w.pte_gpa[i] = pte_gpa;
        w.ptes[i] = gpte;
        w.pt_access[i] = acc;
        table = gpte & pte::ADDR_MASK;
        // The next table (or the final frame) must be guest RAM; a PTE pointing at the pool,
        // the monitor or beyond RAM is never mapped.
        if mem.gfn_to_mfn(table >> 12).is_none() {
            return Err(rsvd(gva));
        }
    }
    w.gfn = table >> 12;
    if !access.permitted_by(acc) {
        return Err(WalkFail::Fault(GuestFault::pf(
            gva,
            pferr::PRESENT | access.pfec(),
        )));
    }
    if set_ad {
        update_accessed_dirty_bits(mem, &mut w, access)?;
    }
    Ok(w)
}

/// KVM's `FNAME(update_accessed_dirty_bits)`: sets A at every level and D on the leaf for a
/// write, each with a `cmpxchg` against the value the walk used; a mismatch means the guest
/// changed the entry under us and the walk must be redone ([`WalkFail::Raced`]).
fn update_accessed_dirty_bits(
    mem: &GuestMemory,
    w: &mut GuestWalker,
    access: Access,
) -> Result<(), WalkFail> {
    for i in (0..4).rev() {
        let mut want = pte::A;
        if i == 0 && access.is_write() && w.pt_access[0] & ACC_WRITE != 0 {
            want |= pte::D;
        }
        let old = w.ptes[i];
        if old & want == want {
            continue;
        }
        match mem.cmpxchg_gpa_u64(w.pte_gpa[i], old, old | want, Ordering::AcqRel) {
            Ok(Ok(_)) => {
                // A self-referencing table reads the same entry at several levels: they all
                // see the update (as they would on hardware, which re-reads memory).
                let gpa = w.pte_gpa[i];
                for j in 0..4 {
                    if w.pte_gpa[j] == gpa {
                        w.ptes[j] = old | want;
                    }
                }
            }
            Ok(Err(_)) | Err(_) => return Err(WalkFail::Raced),
        }
    }
    Ok(())
}

/// The oracle's reference translation: what the guest's own tables say about `gva`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GuestTranslation {
    /// Guest-physical address of the page.
    pub gpa_page: u64,
    /// ACC_* permissions granted by the guest tables.
    pub access: u8,
}

/// Walks the guest tables for `gva` without touching them (no A/D updates): the reference the
/// property tests compare [`super::Mmu::shadow_translate`] against. `Err` carries the fault a
/// read would take.
pub fn guest_translate(
    mem: &GuestMemory,
    cr3: u64,
    gva: u64,
) -> Result<GuestTranslation, GuestFault> {
    match walk_addr(mem, cr3, gva, Access::READ, false) {
        Ok(w) => Ok(GuestTranslation {
            gpa_page: w.gfn << 12,
            access: w.pte_access(),
        }),
        Err(WalkFail::Fault(f)) => Err(f),
        // Without A/D updates nothing can race.
        Err(WalkFail::Raced) => Err(GuestFault::pf(gva, 0)),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::mem::{FrameMap, MemConfig};
    use crate::mmu::spte::{ACC_EXEC, ACC_USER};

    pub(crate) const PAGE: u64 = 4096;

    /// A small guest: RAM of `frames`, a bump allocator and helpers to build 4-level tables.
    pub(crate) struct TestGuest {
        pub mem: std::sync::Arc<GuestMemory>,
        next: u64,
    }

    impl TestGuest {
        pub fn new(frames: u64, pool: u64) -> Self {
            TestGuest {
                mem: std::sync::Arc::new(
                    GuestMemory::new(MemConfig {
                        ram_bytes: frames * PAGE,
                        pool_pages: pool,
                        frame_map: FrameMap::Permuted { seed: 99 },
                    })
                    .unwrap(),
                ),
                next: 1,
            }
        }
        /// A zeroed guest frame (gpa).
        pub fn frame(&mut self) -> u64 {
            let g = self.next * PAGE;
            self.next += 1;
            g
        }
        pub fn set(&self, gpa: u64, v: u64) {
            self.mem.write_gpa_u64(gpa, v, Ordering::Release).unwrap();
        }
        pub fn get(&self, gpa: u64) -> u64 {
            self.mem.read_gpa_u64(gpa, Ordering::Acquire).unwrap()
        }
        /// Maps `gva` → `gpa_page` in the tables rooted at `root`, creating tables with
        /// P|W|U; the leaf gets `flags`. Returns the leaf PTE's gpa.
        pub fn map(&mut self, root: u64, gva: u64, gpa_page: u64, flags: u64) -> u64 {
            let mut table = root;
            for level in (2..=4).rev() {
                let e = table + layout::pt_index(gva, level) as u64 * 8;
                let v = self.get(e);
                table = if v & pte::P != 0 {
                    v & pte::ADDR_MASK
                } else {
                    let t = self.frame();
                    self.set(e, t | pte::P | pte::W | pte::U);
                    t
                };
            }
            let e = table + layout::pt_index(gva, 1) as u64 * 8;
            self.set(e, gpa_page | flags);
            e
        }
        /// The gpa of the entry for `gva` at `level` (tables must exist above it).
        pub fn entry(&self, root: u64, gva: u64, level: u32) -> u64 {
            let mut table = root;
            for l in ((level + 1)..=4).rev() {
                table = self.get(table + layout::pt_index(gva, l) as u64 * 8) & pte::ADDR_MASK;
            }
            table + layout::pt_index(gva, level) as u64 * 8
        }
    }

    const GVA: u64 = layout::WORKLOAD_BASE + 0x1234_5000;

    #[test]
    fn walk_translates_accumulates_and_sets_accessed_dirty() {
        let mut g = TestGuest::new(64, 8);
        let root = g.frame();
        let data = g.frame();
        let leaf = g.map(root, GVA, data, pte::P | pte::W | pte::NX);
        let w = walk_addr(&g.mem, root, GVA + 8, Access::READ, true).unwrap();
        assert_eq!(w.gpa(), data + 8);
        assert_eq!(w.pte_access(), ACC_WRITE);
        assert_eq!(w.pte_gpa[0], leaf);
        assert_eq!(w.table_gfn[3], root >> 12);
        assert_eq!(g.get(leaf) & (pte::A | pte::D), pte::A);
        for l in 2..=4 {
            assert_ne!(g.get(g.entry(root, GVA, l)) & pte::A, 0);
        }
        walk_addr(&g.mem, root, GVA, Access::WRITE, true).unwrap();
        assert_ne!(g.get(leaf) & pte::D, 0);
        // The pure walk leaves A/D alone.
        let leaf2 = g.map(root, GVA + PAGE, data, pte::P | pte::U);
        let t = guest_translate(&g.mem, root, GVA + PAGE).unwrap();
        assert_eq!(
            t,
            GuestTranslation {
                gpa_page: data,
                access: ACC_USER | ACC_EXEC
            }
        );
        assert_eq!(g.get(leaf2) & pte::A, 0);
    }

    #[test]
    fn permission_and_not_present_faults_have_x86_error_codes() {
        let mut g = TestGuest::new(64, 8);
        let root = g.frame();
        let data = g.frame();
        g.map(root, GVA, data, pte::P); // read-only, supervisor, executable
        let f = |a| match walk_addr(&g.mem, root, GVA, a, true) {
            Err(WalkFail::Fault(f)) => f.error_code,
            other => panic!("expected a fault, got {other:?}"),
        };
        assert_eq!(f(Access::WRITE), pferr::PRESENT | pferr::WRITE);
        assert_eq!(f(Access::READ.user()), pferr::PRESENT | pferr::USER);
        let e = walk_addr(&g.mem, root, GVA + PAGE, Access::WRITE, true).unwrap_err();
        assert_eq!(e, WalkFail::Fault(GuestFault::pf(GVA + PAGE, pferr::WRITE)));
        // A denied walk sets no A bit on the leaf.
        assert_eq!(g.get(g.entry(root, GVA, 1)) & pte::A, 0);
    }

    fn expect_rsvd(g: &TestGuest, root: u64, gva: u64) {
        match walk_addr(&g.mem, root, gva, Access::READ, true) {
            Err(WalkFail::Fault(f)) => {
                assert!(f.is_reserved(), "{f:?}");
                assert_eq!(f.error_code, pferr::PRESENT | pferr::RSVD);
            }
            other => panic!("expected a reserved-bit fault, got {other:?}"),
        }
    }

    #[test]
    fn pte_pointing_outside_ram_or_into_the_pool_is_a_reserved_fault() {
        let mut g = TestGuest::new(64, 8);
        let root = g.frame();
        let data = g.frame();
        let leaf = g.map(root, GVA, data, pte::P | pte::W);
        // Leaf frame just past RAM, in the pool, on the monitor page, far away.
        for bad in [
            64 * PAGE,
            g.mem.pool_base(),
            g.mem.pool_base() + 3 * PAGE,
            g.mem.monitor_mpa(),
            1 << 40,
        ] {
            g.set(leaf, bad | pte::P | pte::W);
            expect_rsvd(&g, root, GVA);
        }
        // An upper-level entry pointing into the pool.
        let pde = g.entry(root, GVA, 2);
        let saved = g.get(pde);
        g.set(pde, g.mem.pool_base() | pte::P | pte::W);
        expect_rsvd(&g, root, GVA);
        g.set(pde, saved);
        // A CR3 outside RAM.
        expect_rsvd(&g, g.mem.pool_base(), GVA);
        expect_rsvd(&g, 1 << 50, GVA);
        // Sanity: the original mapping still walks.
        g.set(leaf, data | pte::P);
        assert!(walk_addr(&g.mem, root, GVA, Access::READ, true).is_ok());
    }

    #[test]
    fn reserved_bits_and_ps_are_reserved_faults() {
        let mut g = TestGuest::new(64, 8);
        let root = g.frame();
        let data = g.frame();
        let leaf = g.map(root, GVA, data, pte::P);
        g.set(leaf, data | pte::P | (1 << 47));
        expect_rsvd(&g, root, GVA);
        g.set(leaf, data | pte::P | pte::PS); // PAT bit at level 1: allowed
        assert!(walk_addr(&g.mem, root, GVA, Access::READ, true).is_ok());
        for level in 2..=4 {
            let e = g.entry(root, GVA, level);
            let v = g.get(e);
            g.set(e, v | pte::PS);
            expect_rsvd(&g, root, GVA);
            g.set(e, v);
        }
    }

    #[test]
    fn self_mapping_tables_walk_like_hardware() {
        let mut g = TestGuest::new(64, 8);
        let root = g.frame();
        // PML4[5] → PML4 itself: the recursive slot. gva with all four indices 5 reads the
        // PML4 at every level, so it translates to the PML4 frame itself.
        g.set(root + 5 * 8, root | pte::P | pte::W);
        let rec = (5u64 << 39) | (5 << 30) | (5 << 21) | (5 << 12);
        let w = walk_addr(&g.mem, root, rec + 16, Access::READ, true).unwrap();
        assert_eq!(w.gpa(), root + 16);
        assert_eq!(w.table_gfn, [root >> 12; 4]);
        // A two-table loop: PML4[6] → T, T[6] → PML4. Walk alternates and ends on a frame.
        let t = g.frame();
        g.set(root + 6 * 8, t | pte::P | pte::W);
        g.set(t + 6 * 8, root | pte::P | pte::W);
        let lp = (6u64 << 39) | (6 << 30) | (6 << 21) | (6 << 12);
        let w = walk_addr(&g.mem, root, lp, Access::READ, true).unwrap();
        assert_eq!(w.gfn, root >> 12);
        assert_eq!(w.table_gfn, [t >> 12, root >> 12, t >> 12, root >> 12]);
    }

    #[test]
    fn non_canonical_is_general_protection() {
        let mut g = TestGuest::new(16, 1);
        let root = g.frame();
        match walk_addr(&g.mem, root, 0x0000_8000_0000_0000, Access::READ, true) {
            Err(WalkFail::Fault(f)) => {
                assert_eq!(f, GuestFault::non_canonical(0x0000_8000_0000_0000))
            }
            other => panic!("{other:?}"),
        }
        assert!(is_canonical(layout::DIRECT_MAP_BASE));
        assert!(is_canonical(layout::WORKLOAD_BASE));
    }
}
