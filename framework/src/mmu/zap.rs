//! Zapping shadow pages and reclaiming the pool: KVM's `kvm_mmu_prepare_zap_page` /
//! `kvm_mmu_commit_zap_page`, `mmu_page_zap_pte`, `drop_spte`, `rmap_write_protect`,
//! `kvm_mmu_zap_all`, and `make_mmu_pages_available` (`mmu_recycled`).

use std::sync::atomic::Ordering;

use shadowlab_policies::SyncPolicy;
use shadowlab_workloads::layout;

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
