//! Prefetch of neighbouring guest PTEs on a fault: KVM's `FNAME(pte_prefetch)`,
//! `FNAME(prefetch_gpte)` and `FNAME(prefetch_invalid_gpte)` (paging_tmpl.h).
//!
//! A guest touching consecutive pages would otherwise take one shadow fault per page; after
//! the fault path sets a leaf SPTE, the up to [`PTE_PREFETCH_NUM`] − 1 other entries of its
//! aligned group in the same shadow page are filled from the guest table too, when the guest
//! PTE is usable as it stands.

use std::sync::atomic::Ordering;

use shadowlab_abi::layout::pte;
use shadowlab_policies::SyncPolicy;

use super::page::{MmuState, SpteRef};
use super::spte::{gpte_access, is_present, make_leaf_spte, ACC_WRITE, GPTE_RSVD_ADDR};
use super::stats::{Counter, CounterBlock};
use super::Mmu;

/// Guest PTEs looked at per prefetch, the faulting one included: an aligned group of this many
/// entries (KVM's `PTE_PREFETCH_NUM`, 8 = one 64-byte cache line of guest PTEs).
pub const PTE_PREFETCH_NUM: u16 = 8;

/// KVM's `FNAME(prefetch_invalid_gpte)` for a 4 KiB guest PTE: whether `gpte` must not be
/// prefetched. Not present, reserved address bits (the walker's level-1 rule: PS is the PAT
/// bit there, not reserved), or not Accessed: a prefetched translation lets the CPU use the
/// entry without a walk, so without a walk to set A it must already be set, or the guest
/// would see a page used whose A bit it never saw set. (The frame's being guest RAM is
/// checked by the caller, as KVM's memslot lookup does.)
///
/// Differs from KVM: KVM also drops the SPTE here; its caller only passes non-present SPTEs,
/// as ours does, so there is nothing to drop.
#[inline]
pub(super) const fn prefetch_invalid_gpte(gpte: u64) -> bool {
    gpte & pte::P == 0 || gpte & pte::A == 0 || gpte & GPTE_RSVD_ADDR != 0
}

impl<P: SyncPolicy> Mmu<P> {
    /// KVM's `FNAME(pte_prefetch)`: after the fault path set the leaf SPTE `r`, fills the other
    /// not-present SPTEs of `r`'s aligned group of [`PTE_PREFETCH_NUM`] entries from the guest
    /// table that shadow page shadows, stopping at the first guest PTE that cannot be
    /// prefetched (KVM's `break`). Present SPTEs and `r` itself are skipped. Write lock held.
    ///
    /// Only a leaf (level-1) page is prefetched into. As in KVM an unsync page is prefetched
    /// into too: each guest PTE is read now, under the lock, so the new SPTE is as current as
    /// the faulting one (a later guest write to an unsync table is the guest's to flush, as for
    /// any SPTE of that page). For a synced page the guest table is write-protected, so a
    /// guest store after the read is emulated under this lock and zaps the SPTE.
    ///
    /// Differs from KVM: KVM reads the group once in `FNAME(gpte_changed)` (under its
    /// `mmu_lock`) into `gw->prefetch_ptes`; here each entry is read with one atomic,
    /// bounds-checked load when it is needed, also under the lock, which is equivalent. No
    /// `mmu_invalidate_in_progress` check (no host MMU notifiers: guest RAM is pinned) and no
    /// direct (`__direct_pte_prefetch`) case (every shadow page shadows a guest table).
    pub(super) fn pte_prefetch(&self, st: &mut MmuState, c: &CounterBlock, r: SpteRef) {
        if self.sp(r.sp).role().level > 1 {
            return;
        }
        let first = r.index & !(PTE_PREFETCH_NUM - 1);
        for index in first..first + PTE_PREFETCH_NUM {
            if index == r.index {
                continue;
            }
            let s = SpteRef { sp: r.sp, index };
            if is_present(self.load_spte(s)) {
                continue;
            }
            if !self.prefetch_gpte(st, c, s) {
                break;
            }
        }
    }

    /// KVM's `FNAME(prefetch_gpte)`: maps the not-present leaf SPTE `r` from its guest PTE if
    /// that is valid ([`prefetch_invalid_gpte`]) and maps guest RAM (never the pool, the
    /// monitor or beyond RAM: the walker's rule). Access is the shadow page's (the walk's
    /// accumulated upper-level access, `sp->role.access`) and the guest PTE's own; W is
    /// granted only if that allows writes, the guest PTE is dirty (`protect_clean_gpte`: the
    /// first write must fault so the walker sets D) and
    /// [`Mmu::mmu_try_to_unsync_pages`] with `prefetch` agrees, which it never does by
    /// unsyncing (a shadowed table's gfn stays read-only unless its pages are already
    /// unsync). The rmap entry is added as the fault path adds it. Returns whether the SPTE
    /// was set (`false` stops the prefetch).
    ///
    /// Differs from KVM: a clean guest PTE keeps `SPTE_MMU_WRITABLE` (the guest allows writes)
    /// with W withheld, as our fault path does, where KVM drops `ACC_WRITE` altogether; the
    /// next write faults either way. KVM leaves a prefetched SPTE's Accessed bit clear for
    /// host page aging (`mark_spte_for_access_track`); there is no host page aging here.
    fn prefetch_gpte(&self, st: &mut MmuState, c: &CounterBlock, r: SpteRef) -> bool {
        let p = self.sp(r.sp);
        let gpte_gpa = (p.gfn() << 12) + r.index as u64 * 8;
        // The shadowed table is guest RAM (kvm_mmu_get_page only shadows walked tables), but
        // an unreadable entry is simply not prefetched.
        let Ok(gpte) = self.mem.read_gpa_u64(gpte_gpa, Ordering::Acquire) else {
            return false;
        };
        if prefetch_invalid_gpte(gpte) {
            return false;
        }
        let gfn = (gpte & pte::ADDR_MASK) >> 12;
        let Some(mfn) = self.mem.gfn_to_mfn(gfn) else {
            return false;
        };
        let pte_access = p.role().access & gpte_access(gpte);
        let writable = pte_access & ACC_WRITE != 0
            && gpte & pte::D != 0
            && self.mmu_try_to_unsync_pages(st, c, gfn, true, true);
        // Not-present before: nothing to flush, and nothing hidden from the host.
        self.store_spte(r, make_leaf_spte(mfn, pte_access, writable));
        st.rmap_add(gfn, r);
        c.inc(Counter::prefetched);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mmu::spte::{Access, SPTE_W};
    use crate::mmu::testutil::{Rig, GVA};
    use crate::mmu::FaultOutcome;
    use shadowlab_abi::layout;

    const PAGE: u64 = 4096;
    /// A gva at the start of an aligned group of 8 leaf entries.
    const BASE: u64 = GVA;

    /// Maps `n` consecutive pages from BASE to fresh frames with `flags`; returns the frames
    /// and the leaf gPTE addresses.
    fn map_run(r: &mut Rig, n: u64, flags: u64) -> (Vec<u64>, Vec<u64>) {
        let root = r.root;
        (0..n)
            .map(|i| {
                let f = r.g.frame();
                (f, r.g.map(root, BASE + i * PAGE, f, flags))
            })
            .unzip()
    }

    fn mapped(r: &Rig, v: &crate::mmu::VcpuMmu, gva: u64) -> bool {
        r.mmu.shadow_translate(v, gva).is_ok()
    }

    #[test]
    fn invalid_gpte_follows_the_walkers_level_1_rules() {
        let ok = 0x5000 | pte::P | pte::A;
        assert!(!prefetch_invalid_gpte(ok));
        assert!(
            !prefetch_invalid_gpte(ok | pte::PS),
            "bit 7 is PAT in a 4 KiB PTE"
        );
        assert!(!prefetch_invalid_gpte(
            ok | pte::NX | pte::W | pte::U | pte::D
        ));
        assert!(prefetch_invalid_gpte(ok & !pte::P));
        assert!(prefetch_invalid_gpte(ok & !pte::A));
        assert!(prefetch_invalid_gpte(ok | 1 << 51));
        assert!(prefetch_invalid_gpte(
            ok | 1 << crate::mmu::spte::GUEST_MAXPHYADDR
        ));
    }

    #[test]
    fn group_index_is_aligned() {
        assert_eq!(layout::pt_index(BASE, 1) % PTE_PREFETCH_NUM as usize, 0);
    }

    #[test]
    fn a_sequential_read_of_eight_pages_takes_one_fault() {
        let mut r = Rig::new(1);
        let (frames, _) = map_run(&mut r, 8, pte::P | pte::W | pte::A | pte::D);
        let mut v = r.vcpu(0);
        for (i, &f) in frames.iter().enumerate() {
            let gva = BASE + i as u64 * PAGE;
            if !mapped(&r, &v, gva) {
                assert_eq!(r.fault(&mut v, gva, Access::READ), FaultOutcome::Fixed);
            }
            let t = r.mmu.shadow_translate(&v, gva).unwrap();
            assert_eq!(t.gpa_page, Some(f));
            assert_ne!(t.spte & SPTE_W, 0, "dirty and writable: W granted");
            let g = crate::mmu::guest_translate(&r.g.mem, r.root, gva);
            crate::mmu::check_translation(gva, &g, &Ok(t)).unwrap();
        }
        let s = r.mmu.stats();
        assert_eq!(s.faults, 1);
        assert_eq!(s.prefetched, 7);
        r.audit();
    }

    #[test]
    fn the_group_is_the_aligned_eight_around_the_fault() {
        let mut r = Rig::new(1);
        map_run(&mut r, 16, pte::P | pte::A);
        let mut v = r.vcpu(0);
        // Fault in the middle of the second group: exactly that group is filled.
        assert_eq!(
            r.fault(&mut v, BASE + 11 * PAGE, Access::READ),
            FaultOutcome::Fixed
        );
        for i in 0..16 {
            assert_eq!(mapped(&r, &v, BASE + i * PAGE), i >= 8, "page {i}");
        }
        assert_eq!(r.mmu.stats().prefetched, 7);
        r.audit();
    }

    #[test]
    fn invalid_gptes_are_never_prefetched_and_stop_the_group() {
        let probe = Rig::new(1);
        let mem = &probe.g.mem;
        let bad = [
            0,                                 // not present
            pte::P | pte::A | (1 << 47),       // reserved address bit
            mem.ram_bytes() | pte::P | pte::A, // beyond RAM
            mem.pool_base() | pte::P | pte::A, // the shadow pool
            (mem.pool_base() + PAGE) | pte::P | pte::A,
            mem.monitor_mpa() | pte::P | pte::A, // the monitor
        ];
        for b in bad {
            let mut r = Rig::new(1);
            let (_, leaves) = map_run(&mut r, 8, pte::P | pte::W | pte::A | pte::D);
            // Entry 3 is bad: the fault at 0 prefetches 1 and 2 and stops at 3 (KVM's
            // break), though 4..8 are fine.
            r.g.set(leaves[3], b);
            let mut v = r.vcpu(0);
            assert_eq!(r.fault(&mut v, BASE, Access::READ), FaultOutcome::Fixed);
            let got: Vec<bool> = (0..8).map(|i| mapped(&r, &v, BASE + i * PAGE)).collect();
            assert_eq!(
                got,
                [true, true, true, false, false, false, false, false],
                "bad gPTE {b:#x}"
            );
            assert_eq!(r.mmu.stats().prefetched, 2);
            r.audit();
        }
    }

    #[test]
    fn a_gpte_without_accessed_is_not_prefetched() {
        let mut r = Rig::new(1);
        let (_, leaves) = map_run(&mut r, 8, pte::P | pte::W | pte::A | pte::D);
        r.g.set(leaves[1], r.g.get(leaves[1]) & !pte::A);
        let mut v = r.vcpu(0);
        assert_eq!(r.fault(&mut v, BASE, Access::READ), FaultOutcome::Fixed);
        assert!(!mapped(&r, &v, BASE + PAGE));
        assert!(
            !mapped(&r, &v, BASE + 2 * PAGE),
            "the group stops at the first"
        );
        assert_eq!(
            r.g.get(leaves[1]) & pte::A,
            0,
            "prefetch sets no guest A bit"
        );
        // Its own fault walks it, which sets A, and then the rest of the group follows.
        assert_eq!(
            r.fault(&mut v, BASE + PAGE, Access::READ),
            FaultOutcome::Fixed
        );
        assert_ne!(r.g.get(leaves[1]) & pte::A, 0);
        assert!((0..8).all(|i| mapped(&r, &v, BASE + i * PAGE)));
        assert_eq!(r.mmu.stats().prefetched, 6);
        r.audit();
    }

    #[test]
    fn a_clean_gpte_is_prefetched_read_only_and_the_first_write_sets_d() {
        let mut r = Rig::new(1);
        let (_, leaves) = map_run(&mut r, 2, pte::P | pte::W | pte::A);
        let mut v = r.vcpu(0);
        assert_eq!(r.fault(&mut v, BASE, Access::READ), FaultOutcome::Fixed);
        let t = r.mmu.shadow_translate(&v, BASE + PAGE).unwrap();
        assert_eq!(t.spte & SPTE_W, 0, "clean: no W");
        assert!(t.mmu_writable, "but the guest allows writes");
        assert_eq!(r.g.get(leaves[1]) & pte::D, 0);
        assert_eq!(
            r.fault(&mut v, BASE + PAGE, Access::WRITE),
            FaultOutcome::Fixed
        );
        assert_ne!(r.g.get(leaves[1]) & pte::D, 0, "the walker set D");
        let t = r.mmu.shadow_translate(&v, BASE + PAGE).unwrap();
        assert_ne!(t.spte & SPTE_W, 0);
        r.audit();
    }

    #[test]
    fn access_is_the_upper_levels_and_the_gptes_own() {
        let mut r = Rig::new(1);
        let (_, leaves) = map_run(&mut r, 2, pte::P | pte::W | pte::U | pte::A | pte::D);
        // The neighbour is supervisor-only and no-execute.
        r.g.set(leaves[1], r.g.get(leaves[1]) & !pte::U | pte::NX);
        // The PDE denies writes: nothing below it is writable.
        let pde = r.g.entry(r.root, BASE, 2);
        r.g.set(pde, r.g.get(pde) & !pte::W);
        let mut v = r.vcpu(0);
        assert_eq!(r.fault(&mut v, BASE, Access::READ), FaultOutcome::Fixed);
        let t = r.mmu.shadow_translate(&v, BASE + PAGE).unwrap();
        assert_eq!(t.access, 0, "no W (PDE), no U, no X (gPTE)");
        assert!(!t.mmu_writable);
        let g = crate::mmu::guest_translate(&r.g.mem, r.root, BASE + PAGE);
        crate::mmu::check_translation(BASE + PAGE, &g, &Ok(t)).unwrap();
        r.audit();
    }

    #[test]
    fn a_shadowed_page_table_is_prefetched_read_only_unless_already_unsync() {
        let mut r = Rig::new(1);
        let (_, leaves) = map_run(&mut r, 1, pte::P | pte::W | pte::A | pte::D);
        let pt = leaves[0] & !0xfff;
        let pd = r.g.entry(r.root, BASE, 2) & !0xfff;
        // Neighbours 1 and 2 map the guest's own PT (a leaf table) and PD (an upper table).
        let root = r.root;
        r.g.map(root, BASE + PAGE, pt, pte::P | pte::W | pte::A | pte::D);
        r.g.map(root, BASE + 2 * PAGE, pd, pte::P | pte::W | pte::A | pte::D);
        let mut v = r.vcpu(0);
        assert_eq!(r.fault(&mut v, BASE, Access::READ), FaultOutcome::Fixed);
        for i in 1..=2 {
            let t = r.mmu.shadow_translate(&v, BASE + i * PAGE).unwrap();
            assert_eq!(
                t.spte & SPTE_W,
                0,
                "page {i}: shadowed table stays read-only"
            );
            assert!(t.mmu_writable);
        }
        assert_eq!(r.mmu.stats().unsyncs, 0, "prefetch never unsyncs");
        r.audit();
        // A write through the PT's mapping unsyncs it (the fault path may).
        assert_eq!(
            r.fault(&mut v, BASE + PAGE, Access::WRITE),
            FaultOutcome::Fixed
        );
        assert_eq!(r.mmu.stats().unsyncs, 1);
        // An already-unsync PT may be prefetched writable. The guest clears entry 1 (the PT
        // is unsync: a plain store) and INVLPGs it, which drops its SPTE; then it restores
        // the entry, maps page 3 and touches it: the prefetch refills entry 1.
        r.g.set(leaves[0] + 8, 0);
        r.mmu.kvm_mmu_invlpg(&v, BASE + PAGE);
        assert!(!mapped(&r, &v, BASE + PAGE));
        r.g.set(leaves[0] + 8, pt | pte::P | pte::W | pte::A | pte::D);
        let data = r.g.frame();
        r.g.map(root, BASE + 3 * PAGE, data, pte::P | pte::A);
        assert_eq!(
            r.fault(&mut v, BASE + 3 * PAGE, Access::READ),
            FaultOutcome::Fixed
        );
        let t = r.mmu.shadow_translate(&v, BASE + PAGE).unwrap();
        assert_ne!(t.spte & SPTE_W, 0, "the PT is unsync: W may be granted");
        assert_eq!(r.mmu.stats().unsyncs, 1);
        // The PD is an upper table: never writable.
        let t = r.mmu.shadow_translate(&v, BASE + 2 * PAGE).unwrap();
        assert_eq!(t.spte & SPTE_W, 0);
        r.audit();
    }

    #[test]
    fn present_sptes_are_left_alone() {
        let mut r = Rig::new(1);
        let (frames, _) = map_run(&mut r, 2, pte::P | pte::W | pte::A);
        let mut v = r.vcpu(0);
        assert_eq!(
            r.fault(&mut v, BASE + PAGE, Access::WRITE),
            FaultOutcome::Fixed
        );
        let before = r.mmu.shadow_translate(&v, BASE + PAGE).unwrap();
        assert_ne!(before.spte & SPTE_W, 0);
        assert_eq!(r.mmu.stats().prefetched, 1, "page 0 was prefetched");
        assert_eq!(r.fault(&mut v, BASE, Access::WRITE), FaultOutcome::Fixed);
        assert_eq!(
            r.mmu.stats().prefetched,
            1,
            "page 1 is present: not re-prefetched"
        );
        let after = r.mmu.shadow_translate(&v, BASE + PAGE).unwrap();
        assert_eq!(after.spte, before.spte);
        assert_eq!(after.gpa_page, Some(frames[1]));
        r.audit();
    }
}
