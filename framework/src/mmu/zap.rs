//! Zapping shadow pages and reclaiming the pool: KVM's `kvm_mmu_prepare_zap_page` /
//! `kvm_mmu_commit_zap_page`, `mmu_page_zap_pte`, `drop_spte`, `rmap_write_protect`,
//! `kvm_mmu_zap_all`, and `make_mmu_pages_available` (`mmu_recycled`).

use std::sync::atomic::Ordering;

use shadowlab_abi::layout;
use shadowlab_policies::SyncPolicy;

use super::page::{MmuState, SpIdx, SpteRef};
use super::spte::{is_present, SPTE_W};
use super::stats::{Counter, CounterBlock};
use super::{Mmu, MmuError, KVM_REQ_MMU_RELOAD};

/// Pages prepared for zapping and whether a remote TLB flush is due (KVM's `invalid_list` plus
/// the `flush` flag its callers carry).
#[derive(Debug, Default)]
pub(super) struct ZapList {
    /// Zapped pages no vCPU uses as a root: freed after the flush.
    pub free: Vec<SpIdx>,
    /// A remote TLB flush is due (an SPTE lost a permission or disappeared).
    pub flush: bool,
}

impl<P: SyncPolicy> Mmu<P> {
    /// KVM's `drop_spte` for a leaf: clears the SPTE and removes it from the rmap.
    pub(super) fn drop_leaf_spte(&self, st: &mut MmuState, r: SpteRef) {
        let old = self.clear_spte(r);
        if is_present(old) {
            if let Some(gfn) = self.leaf_gfn(old) {
                st.rmap_remove(gfn, r);
            }
        }
    }

    /// KVM's `mmu_page_zap_pte`: clears one SPTE of any level, unlinking the child page of a
    /// non-leaf entry (its `parent_ptes` and this page's unsync bit for the entry). Returns
    /// whether it was present.
    pub(super) fn mmu_page_zap_pte(&self, st: &mut MmuState, r: SpteRef) -> bool {
        let old = self.clear_spte(r);
        if !is_present(old) {
            return false;
        }
        if self.sp(r.sp).role().level == 1 {
            if let Some(gfn) = self.leaf_gfn(old) {
                st.rmap_remove(gfn, r);
            }
        } else if let Some(child) = self.sp_of_spte(old) {
            st.remove_parent(child, r);
            self.sp(r.sp).clear_unsync_child_bit(r.index);
        }
        true
    }

    /// KVM's `rmap_write_protect`: clears W in every leaf SPTE mapping `gfn` (keeping
    /// SPTE_MMU_WRITABLE, so an unsync can restore it). Returns whether any SPTE changed (a
    /// remote flush is then due).
    pub(super) fn rmap_write_protect(&self, st: &mut MmuState, c: &CounterBlock, gfn: u64) -> bool {
        let Some(refs) = st.rmap.get(&gfn) else {
            return false;
        };
        let mut changed = false;
        for &r in refs {
            let old = self
                .mem
                .region()
                .fetch_and_u64(self.spte_mpa(r), !SPTE_W, Ordering::AcqRel)
                .unwrap_or(0);
            changed |= old & SPTE_W != 0;
            self.log_spte_change(r, old, old & !SPTE_W);
        }
        if changed {
            c.inc(Counter::write_protects);
        }
        changed
    }

    /// KVM's `kvm_mmu_prepare_zap_page`: unlinks `sp` from its children and parents, drops it
    /// from the hash (its gfn stops being write-tracked if it was the last one) and marks it
    /// invalid. A page no vCPU uses as a root goes on `zap.free`, to be freed by
    /// [`Mmu::commit_zap`] after the remote flush; a root in use stays allocated (its entries
    /// now empty) until its last user drops it, and every vCPU is asked to reload. Unlike
    /// KVM, unsync children are not zapped with their parent: each stays reachable through its
    /// other parents' bitmaps or, if orphaned, is synced when `kvm_mmu_get_page` finds it.
    pub(super) fn kvm_mmu_prepare_zap_page(
        &self,
        st: &mut MmuState,
        c: &CounterBlock,
        sp: SpIdx,
        zap: &mut ZapList,
    ) {
        let p = self.sp(sp);
        if !st.sp[sp.0 as usize].allocated || p.is_invalid() {
            return;
        }
        c.inc(Counter::pages_zapped);
        let level = p.role().level;
        for index in 0..512u16 {
            // The monitor's entry in a root is not a shadow link.
            if level == 4 && index as usize == layout::MONITOR_SLOT {
                continue;
            }
            self.mmu_page_zap_pte(st, SpteRef { sp, index });
        }
        p.clear_all_unsync_children();
        let parents = std::mem::take(&mut st.sp[sp.0 as usize].parent_ptes);
        for r in parents {
            self.clear_spte(r);
            self.sp(r.sp).clear_unsync_child_bit(r.index);
        }
        self.kvm_unlink_unsync_page(sp);
        st.hash_remove(p.gfn(), sp);
        p.set_invalid();
        zap.flush = true;
        if st.sp[sp.0 as usize].root_count == 0 {
            zap.free.push(sp);
        } else {
            self.make_all_cpus_request(KVM_REQ_MMU_RELOAD);
        }
    }

    /// KVM's `kvm_mmu_commit_zap_page` / `kvm_mmu_remote_flush_or_zap`: one remote TLB flush
    /// (waiting for vCPUs in guest mode) if due, then the zapped pages go back to the pool.
    /// Only after the flush may a page be reused: before it, a vCPU may still be walking it.
    pub(super) fn commit_zap(&self, st: &mut MmuState, c: &CounterBlock, zap: ZapList) {
        if zap.flush || !zap.free.is_empty() {
            self.kvm_flush_remote_tlbs(c);
        }
        for sp in zap.free {
            self.free_page(st, sp);
        }
    }

    pub(super) fn free_page(&self, st: &mut MmuState, sp: SpIdx) {
        let s = &mut st.sp[sp.0 as usize];
        if s.allocated {
            s.allocated = false;
            s.parent_ptes.clear();
            st.free.push(sp);
        }
    }

    /// KVM's `make_mmu_pages_available` / `kvm_mmu_zap_oldest_mmu_pages`: zaps the oldest pages
    /// (skipping roots in use) until `need` pages are free. Counted as `recycled`. Fails with
    /// [`MmuError::PoolExhausted`] if every remaining page is a pinned root; never panics.
    pub(super) fn make_mmu_pages_available(
        &self,
        st: &mut MmuState,
        c: &CounterBlock,
        need: usize,
    ) -> Result<(), MmuError> {
        if st.free.len() >= need {
            return Ok(());
        }
        let mut zap = ZapList::default();
        let mut budget = st.active.len();
        while st.free.len() + zap.free.len() < need && budget > 0 {
            budget -= 1;
            let Some((sp, gen)) = st.active.pop_front() else {
                break;
            };
            let s = &st.sp[sp.0 as usize];
            if !s.allocated || s.gen != gen || self.sp(sp).is_invalid() {
                continue;
            }
            if s.root_count > 0 {
                st.active.push_back((sp, gen));
                continue;
            }
            self.kvm_mmu_prepare_zap_page(st, c, sp, &mut zap);
            c.inc(Counter::recycled);
        }
        self.commit_zap(st, c, zap);
        if st.free.len() >= need {
            Ok(())
        } else {
            Err(MmuError::PoolExhausted {
                pool: self.pages.len() as u64,
                free: st.free.len(),
            })
        }
    }

    /// KVM's `kvm_mmu_zap_all`: zaps every shadow page. Roots in use become invalid and their
    /// vCPUs reload on next entry.
    pub fn kvm_mmu_zap_all(&self) {
        let c = &self.global;
        let mut st = self.state.write();
        let mut zap = ZapList::default();
        for i in 0..self.pages.len() as u32 {
            self.kvm_mmu_prepare_zap_page(&mut st, c, SpIdx(i), &mut zap);
        }
        self.commit_zap(&mut st, c, zap);
    }

    /// Zaps one shadow page (KVM's `kvm_mmu_prepare_zap_page` + commit, as
    /// `kvm_mmu_zap_oldest_mmu_pages` does for each victim). Returns whether it was live.
    pub fn kvm_mmu_zap_page(&self, sp: SpIdx) -> bool {
        if self.shadow_page(sp).is_none() {
            return false;
        }
        let c = &self.global;
        let mut st = self.state.write();
        let live = st.sp[sp.0 as usize].allocated && !self.sp(sp).is_invalid();
        let mut zap = ZapList::default();
        self.kvm_mmu_prepare_zap_page(&mut st, c, sp, &mut zap);
        self.commit_zap(&mut st, c, zap);
        live
    }

    /// Zaps every shadow page of guest frame `gfn` (KVM's `kvm_mmu_unprotect_gfn_and_retry`
    /// zap): the gfn stops being write-protected. Returns whether any page was zapped.
    pub fn kvm_mmu_zap_gfn(&self, gfn: u64) -> bool {
        let c = &self.global;
        let mut st = self.state.write();
        let mut zap = ZapList::default();
        let list = st.page_hash.get(&gfn).cloned().unwrap_or_default();
        for &sp in &list {
            self.kvm_mmu_prepare_zap_page(&mut st, c, sp, &mut zap);
        }
        self.commit_zap(&mut st, c, zap);
        !list.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mmu::testutil::{Rig, GVA};
    use crate::mmu::{
        Access, FaultOutcome, KVM_MMU_NUM_PREV_ROOTS, KVM_REQ_TLB_FLUSH, MIN_FREE_PAGES,
    };
    use shadowlab_abi::layout::pte;
    use std::sync::atomic::AtomicBool;
    use std::sync::Arc;

    #[test]
    fn a_tiny_pool_recycles_instead_of_failing() {
        let pool = (KVM_MMU_NUM_PREV_ROOTS + 1 + MIN_FREE_PAGES) as u64;
        let mut r = Rig::with(4096, pool, 1);
        let d = r.g.frame();
        // 40 gvas in 40 different 1 GiB regions: each needs its own PDPT entry, PD and PT.
        let gvas: Vec<u64> = (0..40u64).map(|i| GVA + (i << 30)).collect();
        for &g in &gvas {
            r.g.map(r.root, g, d, pte::P | pte::D);
        }
        let mut v = r.vcpu(0);
        for &g in &gvas {
            assert_eq!(r.fault(&mut v, g, Access::READ), FaultOutcome::Fixed);
            assert_eq!(r.mmu.shadow_translate(&v, g).unwrap().gpa_page, Some(d));
            r.audit();
        }
        assert!(r.mmu.stats().recycled > 30);
        // Recycling also works with the vCPU's whole previous-roots cache pinned.
        for _ in 0..KVM_MMU_NUM_PREV_ROOTS {
            let b = r.g.frame();
            r.mmu.kvm_mmu_new_pgd(&mut v, b).unwrap();
        }
        r.mmu.kvm_mmu_new_pgd(&mut v, r.root).unwrap();
        for &g in &gvas[..5] {
            assert_eq!(r.fault(&mut v, g, Access::READ), FaultOutcome::Fixed);
        }
        r.audit();
    }

    #[test]
    fn a_pool_too_small_for_the_vcpus_is_an_error() {
        let g = crate::mmu::walk::tests::TestGuest::new(64, 10);
        let e = crate::mmu::Mmu::<crate::BuildPolicy>::new(Arc::clone(&g.mem), 2).unwrap_err();
        assert!(matches!(e, MmuError::PoolTooSmall { vcpus: 2, .. }), "{e}");
        assert!(crate::mmu::Mmu::<crate::BuildPolicy>::new(Arc::clone(&g.mem), 0).is_err());
    }

    #[test]
    fn shadowing_a_mapped_frame_write_protects_it_and_flushes_remote_tlbs() {
        let mut r = Rig::new(2);
        let p = r.g.frame(); // an ordinary data page, for now
        r.direct_map_page(p);
        let mut v0 = r.vcpu(0);
        let mut v1 = r.vcpu(1);
        let via_p = layout::direct_map(p);
        assert_eq!(r.fault(&mut v1, via_p, Access::WRITE), FaultOutcome::Fixed);
        assert_ne!(r.mmu.shadow_translate(&v1, via_p).unwrap().spte & SPTE_W, 0);
        let _ = r.mmu.vcpu_take_requests(1);
        // v0 starts using p as a page table (a PT for some gva).
        let d = r.g.frame();
        let gva = GVA + (7 << 21);
        let pde = {
            r.g.map(r.root, gva, d, pte::P);
            r.g.entry(r.root, gva, 2)
        };
        r.g.set(p + layout::pt_index(gva, 1) as u64 * 8, d | pte::P);
        r.g.set(pde, p | pte::P | pte::W | pte::U);
        let flushes = r.mmu.stats().remote_tlb_flushes;
        assert_eq!(r.fault(&mut v0, gva, Access::READ), FaultOutcome::Fixed);
        assert_eq!(r.mmu.shadow_translate(&v1, via_p).unwrap().spte & SPTE_W, 0);
        assert!(r.mmu.stats().remote_tlb_flushes > flushes);
        assert_ne!(r.mmu.vcpu_take_requests(1) & KVM_REQ_TLB_FLUSH, 0);
        r.audit();
    }

    #[test]
    fn zap_one_page_unlinks_it_and_the_next_access_rebuilds() {
        let mut r = Rig::new(1);
        let d = r.g.frame();
        r.g.map(r.root, GVA, d, pte::P | pte::D);
        let mut v = r.vcpu(0);
        assert_eq!(r.fault(&mut v, GVA, Access::READ), FaultOutcome::Fixed);
        // The PT's shadow page is the one the leaf lives in: find it via the PD entry.
        let root = r.mmu.root_page(&v).unwrap().spt();
        let walk = |table: u64, level: u32| {
            r.g.mem
                .region()
                .load_u64(
                    table + layout::pt_index(GVA, level) as u64 * 8,
                    Ordering::Relaxed,
                )
                .unwrap()
                & crate::mmu::spte::SPTE_ADDR
        };
        let pt = walk(walk(walk(root, 4), 3), 2);
        let idx = SpIdx(r.g.mem.pool_index(pt).unwrap());
        assert!(r.mmu.kvm_mmu_zap_page(idx));
        assert!(!r.mmu.kvm_mmu_zap_page(idx));
        assert!(!r.mmu.kvm_mmu_zap_page(SpIdx(u32::MAX)));
        assert!(r.mmu.shadow_translate(&v, GVA).is_err());
        r.audit();
        assert_eq!(r.fault(&mut v, GVA, Access::READ), FaultOutcome::Fixed);
        r.audit();
    }

    #[test]
    fn mmu_is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<crate::mmu::Mmu<crate::BuildPolicy>>();
        check::<crate::mmu::VcpuMmu>();
    }

    #[test]
    fn zap_gfn_stops_write_protection() {
        let mut r = Rig::new(1);
        let d = r.g.frame();
        r.g.map(r.root, GVA, d, pte::P | pte::D);
        let pd = r.g.entry(r.root, GVA, 2) & !0xfff;
        r.direct_map_page(pd);
        let mut v = r.vcpu(0);
        assert_eq!(r.fault(&mut v, GVA, Access::READ), FaultOutcome::Fixed);
        let via_pd = layout::direct_map(pd);
        assert_eq!(
            r.fault(&mut v, via_pd, Access::WRITE),
            FaultOutcome::Emulate { gpa: pd }
        );
        assert!(r.mmu.kvm_mmu_zap_gfn(pd >> 12));
        assert!(!r.mmu.kvm_mmu_zap_gfn(pd >> 12));
        assert_eq!(r.fault(&mut v, via_pd, Access::WRITE), FaultOutcome::Fixed);
        assert_ne!(r.mmu.shadow_translate(&v, via_pd).unwrap().spte & SPTE_W, 0);
        r.audit();
    }

    #[test]
    fn remote_flush_waits_for_a_vcpu_in_guest_mode() {
        let r = Arc::new(Rig::new(2));
        let _v = r.vcpu(0); // a root to zap
        let left = Arc::new(AtomicBool::new(false));
        let entered = Arc::new(AtomicBool::new(false));
        let t = {
            let (r, left, entered) = (Arc::clone(&r), Arc::clone(&left), Arc::clone(&entered));
            std::thread::spawn(move || {
                while r.mmu.vcpu_enter_guest(1) != 0 {}
                entered.store(true, Ordering::SeqCst);
                std::thread::sleep(std::time::Duration::from_millis(50));
                left.store(true, Ordering::SeqCst);
                r.mmu.vcpu_exit_guest(1);
            })
        };
        while !entered.load(Ordering::SeqCst) {
            std::hint::spin_loop();
        }
        r.mmu.kvm_mmu_zap_all();
        assert!(
            left.load(Ordering::SeqCst),
            "the flush returned while vCPU 1 was in guest mode"
        );
        t.join().unwrap();
        assert_ne!(r.mmu.vcpu_take_requests(1) & KVM_REQ_TLB_FLUSH, 0);
    }
}
