//! The reader side: `kvm_mmu_sync_roots` (with the policy's lockless `is_unsync_root`),
//! `mmu_sync_children`, `kvm_sync_page` / `FNAME(sync_spte)`, and INVLPG.

use std::sync::atomic::Ordering;

use shadowlab_abi::layout::{self, pte};
use shadowlab_policies::{unsync_under_lock, HostMemory, SyncPolicy};

use super::page::{MmuState, SpIdx, SpteRef};
use super::prefetch::prefetch_invalid_gpte;
use super::spte::{
    gpte_access, is_present, make_leaf_spte, needs_flush, ACC_WRITE, SPTE_A, SPTE_D,
};
use super::stats::{Counter, CounterBlock};
use super::vcpu::VcpuMmu;
use super::zap::ZapList;
use super::Mmu;
use shadowlab_abi::layout::is_canonical;

impl<P: SyncPolicy> Mmu<P> {
    /// KVM's `kvm_mmu_sync_roots`: bring the current root's unsync pages up to date with the
    /// guest's tables, on a guest CR3 load or TLB flush.
    ///
    /// First, **without the lock**, `P::is_unsync_root(&HostMemory, root)`: the check whose
    /// barrier the policies differ in. `false` returns at once (the fast path every CR3 switch
    /// without page-table writes takes). Otherwise take the write lock, re-check with
    /// `unsync_under_lock` (the lock orders it), and run `mmu_sync_children`. As in KVM only
    /// the current root is synced; a cached root is synced when it is switched to (the CR3
    /// load that selects it calls this).
    pub fn kvm_mmu_sync_roots(&self, v: &VcpuMmu) {
        let c = self.counters(v.id);
        c.inc(Counter::sync_roots);
        let Some(root) = v.root else {
            return;
        };
        let sp = self.sp(root);
        if !P::is_unsync_root(&HostMemory, sp) {
            c.inc(Counter::sync_roots_lockless_skips);
            return;
        }
        let mut st = self.state.write();
        if sp.is_invalid() || !unsync_under_lock(sp) {
            return;
        }
        self.mmu_sync_children(&mut st, c, root);
    }

    /// The guest flushed its TLB (a CR3 reload of the current root, or a paravirtual flush):
    /// KVM's `kvm_vcpu_flush_tlb_guest`, which is `kvm_mmu_sync_roots` plus the hardware TLB
    /// flush the backend does itself.
    pub fn kvm_mmu_flush_tlb_guest(&self, v: &VcpuMmu) {
        self.kvm_mmu_sync_roots(v)
    }

    /// KVM's `mmu_sync_children`: finds every unsync page below `parent` (a root, or an
    /// upper-level page about to be linked) through the
    /// `unsync_child_bitmap`s (`mmu_unsync_walk`), write-protects their gfns and flushes remote
    /// TLBs (so no vCPU keeps writing the guest tables while they are re-read), clears
    /// `unsync` and re-reads each page (`kvm_sync_page`), then clears the bitmap bits that no
    /// longer lead anywhere (`mmu_pages_clear_parents`). Write lock held.
    pub(super) fn mmu_sync_children(&self, st: &mut MmuState, c: &CounterBlock, parent: SpIdx) {
        c.inc(Counter::syncs);
        let mut pages: Vec<SpIdx> = Vec::new();
        let level = self.sp(parent).role().level as u32;
        self.mmu_unsync_walk(parent, &mut pages, level);
        pages.sort_unstable();
        pages.dedup();
        let mut protected = false;
        for &sp in &pages {
            protected |= self.rmap_write_protect(st, c, self.sp(sp).gfn());
        }
        if protected {
            self.kvm_flush_remote_tlbs(c);
        }
        let mut zap = ZapList::default();
        for &sp in &pages {
            self.kvm_unlink_unsync_page(sp);
            zap.flush |= self.kvm_sync_page(st, c, sp);
        }
        self.clear_synced_bits(parent, level);
        self.commit_zap(st, c, zap);
    }

    /// KVM's `__mmu_unsync_walk`: collects the unsync leaf pages reachable from `sp` through
    /// set bitmap bits; clears bits whose entry is gone or whose child has nothing unsync.
    fn mmu_unsync_walk(&self, sp: SpIdx, out: &mut Vec<SpIdx>, depth: u32) {
        let p = self.sp(sp);
        for index in p.unsync_child_indices() {
            let spte = self.load_spte(SpteRef { sp, index });
            let child = match self.sp_of_spte(spte) {
                Some(ch) if is_present(spte) && depth > 1 => ch,
                _ => {
                    p.clear_unsync_child_bit(index);
                    continue;
                }
            };
            let ch = self.sp(child);
            if ch.unsync_children.load(Ordering::Relaxed) != 0 {
                self.mmu_unsync_walk(child, out, depth - 1);
            } else if ch.unsync.load(Ordering::Relaxed) {
                out.push(child);
            } else {
                p.clear_unsync_child_bit(index);
            }
        }
    }

    /// After a sync: clears every bit below `sp` whose child is now clean.
    fn clear_synced_bits(&self, sp: SpIdx, depth: u32) {
        let p = self.sp(sp);
        for index in p.unsync_child_indices() {
            let spte = self.load_spte(SpteRef { sp, index });
            let Some(child) = self
                .sp_of_spte(spte)
                .filter(|_| is_present(spte) && depth > 1)
            else {
                p.clear_unsync_child_bit(index);
                continue;
            };
            let ch = self.sp(child);
            if ch.unsync_children.load(Ordering::Relaxed) != 0 {
                self.clear_synced_bits(child, depth - 1);
            }
            if ch.unsync_children.load(Ordering::Relaxed) == 0 && !ch.unsync.load(Ordering::Relaxed)
            {
                p.clear_unsync_child_bit(index);
            }
        }
    }

    /// KVM's `kvm_sync_page`: re-reads every present SPTE of leaf page `sp` from the guest
    /// table (`FNAME(sync_spte)` for each). Returns whether a remote flush is needed.
    pub(super) fn kvm_sync_page(&self, st: &mut MmuState, c: &CounterBlock, sp: SpIdx) -> bool {
        c.inc(Counter::pages_synced);
        let mut flush = false;
        for index in 0..512u16 {
            flush |= self.sync_spte(st, c, SpteRef { sp, index });
        }
        flush
    }

    /// KVM's `FNAME(sync_spte)`: brings one leaf SPTE in line with its guest PTE. An invalid
    /// guest PTE (not present, A clear, reserved bits, frame outside RAM: `prefetch_invalid_gpte`) or
    /// one that now maps another frame zaps the SPTE (the next access faults and walks);
    /// otherwise the permissions are recomputed, with W only if the frame is not a shadowed
    /// page table (`can_unsync = false`) and the guest PTE is dirty. Returns whether the change
    /// needs a remote flush.
    fn sync_spte(&self, st: &mut MmuState, c: &CounterBlock, r: SpteRef) -> bool {
        let old = self.load_spte(r);
        if !is_present(old) {
            return false;
        }
        let p = self.sp(r.sp);
        let gpte_gpa = (p.gfn() << 12) + r.index as u64 * 8;
        let gpte = self
            .mem
            .read_gpa_u64(gpte_gpa, Ordering::Acquire)
            .unwrap_or(0);
        let gfn = (gpte & pte::ADDR_MASK) >> 12;
        let mfn = self.mem.gfn_to_mfn(gfn);
        // As KVM (FNAME(sync_spte) -> FNAME(prefetch_invalid_gpte)): a guest PTE whose A bit
        // the guest cleared is dropped too, so the next access faults and the walker sets A
        // again, as hardware would; keeping the SPTE would let the guest use the page unseen.
        let valid = !prefetch_invalid_gpte(gpte) && mfn.is_some();
        let (Some(mfn), true) = (mfn, valid) else {
            self.drop_leaf_spte(st, r);
            return true;
        };
        if self.leaf_gfn(old) != Some(gfn) {
            self.drop_leaf_spte(st, r);
            return true;
        }
        let pte_access = p.role().access & gpte_access(gpte);
        let writable = pte_access & ACC_WRITE != 0
            && gpte & pte::D != 0
            && self.mmu_try_to_unsync_pages(st, c, gfn, false, false);
        let new = make_leaf_spte(mfn, pte_access, writable) | (old & (SPTE_A | SPTE_D));
        if new == old {
            return false;
        }
        self.store_spte(r, new);
        needs_flush(old, new)
    }

    /// The leaf SPTE on `root`'s path for `gva`, if the path reaches a leaf page.
    fn leaf_spte_on_path(&self, root: SpIdx, gva: u64) -> Option<SpteRef> {
        let mut sp = root;
        for level in (2..=4u32).rev() {
            let spte = self.load_spte(SpteRef {
                sp,
                index: layout::pt_index(gva, level) as u16,
            });
            if !is_present(spte) {
                return None;
            }
            sp = self.sp_of_spte(spte)?;
        }
        Some(SpteRef {
            sp,
            index: layout::pt_index(gva, 1) as u16,
        })
    }

    /// KVM's `kvm_mmu_invlpg` (`__kvm_mmu_invalidate_addr`): the guest invalidated `gva`, so
    /// if the leaf shadow page mapping it in the current or a cached root is unsync, re-read
    /// that one SPTE (the page stays unsync: other entries may still be stale). The backend
    /// also drops `gva` from its own TLB.
    ///
    /// Differs from KVM: a read-locked pre-check finds whether any root's path has an unsync
    /// leaf, so the common INVLPG of a synced mapping never takes the write lock (KVM takes
    /// it unconditionally).
    pub fn kvm_mmu_invlpg(&self, v: &VcpuMmu, gva: u64) {
        let c = self.counters(v.id);
        c.inc(Counter::invlpgs);
        if !is_canonical(gva) || layout::pt_index(gva, 4) == layout::MONITOR_SLOT {
            return;
        }
        let roots: smallvec::SmallVec<[SpIdx; 4]> = v
            .root
            .into_iter()
            .chain(v.prev_roots.iter().flatten().map(|r| r.sp))
            .collect();
        let unsync_leaf = |this: &Self, root: SpIdx| {
            this.leaf_spte_on_path(root, gva)
                .filter(|r| this.sp(r.sp).unsync.load(Ordering::Relaxed))
        };
        {
            let _g = self.state.read();
            if !roots.iter().any(|&r| unsync_leaf(self, r).is_some()) {
                return;
            }
        }
        let mut st = self.state.write();
        let mut zap = ZapList::default();
        for &root in &roots {
            if self.sp(root).is_invalid() {
                continue;
            }
            if let Some(r) = unsync_leaf(self, root) {
                c.inc(Counter::sptes_synced);
                zap.flush |= self.sync_spte(&mut st, c, r);
            }
        }
        self.commit_zap(&mut st, c, zap);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mmu::spte::{ACC_WRITE, SPTE_W};
    use crate::mmu::testutil::{Rig, GVA};
    use crate::mmu::{Access, FaultOutcome};
    use crate::BuildPolicy;

    /// Maps GVA → d1 and GVA+4K → d1, faults both in, and unsyncs their PT by writing it
    /// through the direct map. Returns (leaf PTE gpa of GVA, PT page's direct-map gva).
    fn unsynced_rig() -> (Rig, crate::mmu::VcpuMmu, u64, u64, u64) {
        let mut r = Rig::new(1);
        let d1 = r.g.frame();
        let leaf = r.g.map(r.root, GVA, d1, pte::P | pte::W | pte::D);
        r.g.map(r.root, GVA + 4096, d1, pte::P | pte::W | pte::D);
        let pt = leaf & !0xfff;
        r.direct_map_page(pt);
        let mut v = r.vcpu(0);
        assert_eq!(r.fault(&mut v, GVA, Access::READ), FaultOutcome::Fixed);
        assert_eq!(
            r.fault(&mut v, GVA + 4096, Access::READ),
            FaultOutcome::Fixed
        );
        let via_pt = layout::direct_map(pt);
        assert_eq!(r.fault(&mut v, via_pt, Access::WRITE), FaultOutcome::Fixed);
        assert_eq!(r.mmu.stats().unsyncs, 1);
        (r, v, leaf, via_pt, d1)
    }

    #[test]
    fn flush_syncs_an_unsync_page_and_write_protects_it_again() {
        let (mut r, mut v, leaf, via_pt, d1) = unsynced_rig();
        let d2 = r.g.frame();
        // The guest writes its (now writable) PT: repoint GVA, make GVA+4K read-only.
        r.g.set(leaf, d2 | pte::P | pte::W | pte::A | pte::D);
        r.g.set(leaf + 8, d1 | pte::P | pte::A | pte::D);
        // Before the flush the stale translation may be used, as on hardware.
        assert_eq!(r.mmu.shadow_translate(&v, GVA).unwrap().gpa_page, Some(d1));
        r.mmu.kvm_mmu_flush_tlb_guest(&v);
        // Repointed entry: zapped (refaults to d2). Downgraded entry: W gone.
        assert!(r.mmu.shadow_translate(&v, GVA).is_err());
        let t = r.mmu.shadow_translate(&v, GVA + 4096).unwrap();
        assert_eq!(
            (t.gpa_page, t.access & ACC_WRITE, t.mmu_writable),
            (Some(d1), 0, false)
        );
        assert_eq!(r.fault(&mut v, GVA, Access::READ), FaultOutcome::Fixed);
        assert_eq!(r.mmu.shadow_translate(&v, GVA).unwrap().gpa_page, Some(d2));
        // The PT is write-protected again and the root is clean.
        assert_eq!(r.mmu.shadow_translate(&v, via_pt).unwrap().spte & SPTE_W, 0);
        let root = r.mmu.root_page(&v).unwrap();
        assert!(!unsync_under_lock(root));
        let s = r.mmu.stats();
        assert_eq!((s.syncs, s.pages_synced), (1, 1));
        // The next write unsyncs it again.
        assert_eq!(r.fault(&mut v, via_pt, Access::WRITE), FaultOutcome::Fixed);
        assert_eq!(r.mmu.stats().unsyncs, 2);
        r.audit();
    }

    #[test]
    fn a_gpte_whose_accessed_bit_the_guest_cleared_is_dropped_by_the_sync() {
        let (r, mut v, leaf, _, d1) = unsynced_rig();
        // Page aging: the guest clears A in its (unsync) table and flushes. The SPTE must go,
        // so that the next access faults and the walker sets A again, as hardware would.
        r.g.set(leaf + 8, d1 | pte::P | pte::W | pte::D);
        r.mmu.kvm_mmu_flush_tlb_guest(&v);
        assert!(r.mmu.shadow_translate(&v, GVA + 4096).is_err());
        assert_eq!(
            r.fault(&mut v, GVA + 4096, Access::READ),
            FaultOutcome::Fixed
        );
        assert_ne!(r.g.get(leaf + 8) & pte::A, 0, "the walker set A again");
        r.audit();
    }

    #[test]
    fn clean_root_takes_the_lock_only_under_always_lock() {
        let (r, v, ..) = unsynced_rig();
        r.mmu.kvm_mmu_flush_tlb_guest(&v);
        let before = r.mmu.stats();
        for _ in 0..10 {
            r.mmu.kvm_mmu_sync_roots(&v);
        }
        let after = r.mmu.stats();
        let writes = after.lock.write_acquisitions - before.lock.write_acquisitions;
        let skips = after.sync_roots_lockless_skips - before.sync_roots_lockless_skips;
        if <BuildPolicy as SyncPolicy>::LOCKLESS {
            assert_eq!((writes, skips), (0, 10));
        } else {
            assert_eq!((writes, skips), (10, 0));
        }
        assert_eq!(after.syncs, before.syncs, "nothing to sync on a clean root");
    }

    #[test]
    fn invlpg_syncs_one_spte_and_leaves_the_page_unsync() {
        let (r, v, leaf, _, d1) = unsynced_rig();
        r.g.set(leaf, d1 | pte::P | pte::A | pte::D);
        r.g.set(leaf + 8, d1 | pte::P | pte::A | pte::D);
        r.mmu.kvm_mmu_invlpg(&v, GVA);
        assert!(!r.mmu.shadow_translate(&v, GVA).unwrap().mmu_writable);
        assert!(
            r.mmu.shadow_translate(&v, GVA + 4096).unwrap().mmu_writable,
            "untouched until a flush"
        );
        assert!(unsync_under_lock(r.mmu.root_page(&v).unwrap()));
        assert_eq!(r.mmu.stats().sptes_synced, 1);
        r.mmu.kvm_mmu_flush_tlb_guest(&v);
        assert!(!r.mmu.shadow_translate(&v, GVA + 4096).unwrap().mmu_writable);
        r.audit();
    }

    #[test]
    fn invlpg_of_a_synced_mapping_takes_only_the_read_lock() {
        let (r, v, ..) = unsynced_rig();
        r.mmu.kvm_mmu_flush_tlb_guest(&v);
        let before = r.mmu.stats().lock;
        r.mmu.kvm_mmu_invlpg(&v, GVA);
        r.mmu.kvm_mmu_invlpg(&v, layout::MONITOR_BASE);
        let after = r.mmu.stats().lock;
        assert_eq!(after.write_acquisitions, before.write_acquisitions);
        assert_eq!(after.read_acquisitions, before.read_acquisitions + 1);
    }

    #[test]
    fn linking_a_page_with_unsync_children_syncs_it_first() {
        // Two guest roots share one PDPT; the PT below it is unsync under root A and the
        // guest has changed it since. When root B first links the shared PDPT (after B's
        // CR3 load already synced B), the stale entry must not become visible through B.
        let (mut r, mut v, leaf, _, d1) = unsynced_rig();
        let d2 = r.g.frame();
        r.g.set(leaf + 8, d2 | pte::P | pte::D);
        let root_b = r.g.frame();
        let pml4e = r.g.get(r.g.entry(r.root, GVA, 4));
        r.g.set(root_b + layout::pt_index(GVA, 4) as u64 * 8, pml4e);
        r.mmu.kvm_mmu_new_pgd(&mut v, root_b).unwrap();
        let syncs = r.mmu.stats().syncs;
        assert_eq!(r.fault(&mut v, GVA, Access::READ), FaultOutcome::Fixed);
        assert_eq!(r.mmu.stats().syncs, syncs + 1);
        assert_eq!(r.mmu.shadow_translate(&v, GVA).unwrap().gpa_page, Some(d1));
        if let Ok(t) = r.mmu.shadow_translate(&v, GVA + 4096) {
            assert_eq!(
                t.gpa_page,
                Some(d2),
                "stale entry exposed through the new link"
            );
        }
        assert!(!unsync_under_lock(r.mmu.root_page(&v).unwrap()));
        r.audit();
    }

    #[test]
    fn bad_ptes_written_while_unsync_are_never_mapped_by_a_sync() {
        // While a PT is unsync the guest writes it freely: whatever it writes, the sync (and
        // INVLPG's single-entry sync) must zap, not map, entries that point outside RAM or
        // into the pool, or that have reserved bits.
        let (r, mut v, leaf, _, d1) = unsynced_rig();
        let bad = [
            r.g.mem.pool_base() | pte::P | pte::W | pte::D,
            r.g.mem.ram_bytes() | pte::P | pte::D,
            d1 | pte::P | pte::D | (1 << 50),
        ];
        for (i, b) in bad.into_iter().enumerate() {
            r.g.set(leaf, b);
            r.g.set(leaf + 8, b);
            if i % 2 == 0 {
                r.mmu.kvm_mmu_flush_tlb_guest(&v);
            } else {
                r.mmu.kvm_mmu_invlpg(&v, GVA);
                r.mmu.kvm_mmu_invlpg(&v, GVA + 4096);
            }
            for g in [GVA, GVA + 4096] {
                assert!(r.mmu.shadow_translate(&v, g).is_err(), "entry {i} mapped");
                match r.fault(&mut v, g, Access::READ) {
                    FaultOutcome::GuestFault(f) => assert!(f.is_reserved()),
                    o => panic!("{o:?}"),
                }
            }
            r.audit();
            // Make it valid again and re-establish both mappings (and the unsync state).
            r.g.set(leaf, d1 | pte::P | pte::W | pte::D);
            r.g.set(leaf + 8, d1 | pte::P | pte::W | pte::D);
            r.mmu.kvm_mmu_flush_tlb_guest(&v);
            assert_eq!(r.fault(&mut v, GVA, Access::READ), FaultOutcome::Fixed);
            assert_eq!(
                r.fault(&mut v, GVA + 4096, Access::READ),
                FaultOutcome::Fixed
            );
            let via_pt = layout::direct_map(leaf & !0xfff);
            assert_eq!(r.fault(&mut v, via_pt, Access::WRITE), FaultOutcome::Fixed);
        }
    }
}
