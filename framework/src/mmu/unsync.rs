//! The writer side of the protocol: `mmu_try_to_unsync_pages`, `kvm_unsync_page`,
//! `kvm_mmu_mark_parents_unsync`.

use std::sync::atomic::{fence, Ordering};

use shadowlab_policies::SyncPolicy;

use super::page::{MmuState, SpIdx, SpteRef};
use super::stats::{Counter, CounterBlock};
use super::Mmu;

impl<P: SyncPolicy> Mmu<P> {
    /// KVM's `mmu_try_to_unsync_pages`: may a leaf SPTE mapping `gfn` be made writable?
    ///
    /// `true` if `gfn` is not shadowed as a page table, or every shadow page of it is a leaf
    /// (level 1) page and `can_unsync`, and, for a `prefetch` (a speculative SPTE, not the
    /// faulting access: [`Mmu::pte_prefetch`]), every one is already unsync (KVM returns
    /// `-EEXIST` there: a prefetch never unsyncs). Those not yet unsync are marked unsync
    /// (with their parents' `unsync_children`), then **`fence(Release)`** (smp_wmb) orders
    /// those flag stores before the caller's store of SPTE.W = 1. A vCPU whose walk then sees
    /// W = 1 and later flushes must see the flags in `is_unsync_root`: that is the pairing the
    /// build's policy provides on the reader side. `false` means the SPTE stays write-protected.
    ///
    /// Differs from KVM: KVM write-tracks the gfns of upper-level shadow pages in its
    /// page-track machinery (`account_shadowed` for `role.level > PG_LEVEL_4K`) and refuses
    /// first if the gfn is tracked ("this guards the role.level == 4K assertion below"); here
    /// the same question is asked of the page hash directly. There is no separate
    /// `mmu_unsync_pages_lock` because the whole call runs under the MMU write lock. Returns a
    /// bool where KVM returns 0 / `-EPERM` / `-EEXIST` (its callers only test for nonzero).
    pub(super) fn mmu_try_to_unsync_pages(
        &self,
        st: &mut MmuState,
        c: &CounterBlock,
        gfn: u64,
        can_unsync: bool,
        prefetch: bool,
    ) -> bool {
        let Some(list) = st.page_hash.get(&gfn) else {
            return true;
        };
        if !can_unsync || list.iter().any(|&sp| self.sp(sp).role().level != 1) {
            return false;
        }
        if prefetch
            && list
                .iter()
                .any(|&sp| !self.sp(sp).unsync.load(Ordering::Relaxed))
        {
            return false;
        }
        let list = list.clone();
        for sp in list {
            if !self.sp(sp).unsync.load(Ordering::Relaxed) {
                self.kvm_unsync_page(st, c, sp);
            }
        }
        // smp_wmb(): sp->unsync and the parents' unsync_children before SPTE.W (the caller's
        // store). Pairs with the policy's check in is_unsync_root().
        fence(Ordering::Release);
        true
    }

    /// KVM's `kvm_unsync_page`.
    fn kvm_unsync_page(&self, st: &mut MmuState, c: &CounterBlock, sp: SpIdx) {
        c.inc(Counter::unsyncs);
        self.sp(sp).unsync.store(true, Ordering::Relaxed);
        self.kvm_mmu_mark_parents_unsync(st, sp);
    }

    /// KVM's `kvm_mmu_mark_parents_unsync`: sets this page's bit in every parent's
    /// `unsync_child_bitmap`, and walks further up from each parent whose `unsync_children`
    /// went from 0 to 1 (above it the path is already marked).
    fn kvm_mmu_mark_parents_unsync(&self, st: &mut MmuState, sp: SpIdx) {
        let parents = st.sp[sp.0 as usize].parent_ptes.clone();
        for r in parents {
            self.mark_unsync(st, r);
        }
    }

    /// KVM's `mark_unsync`: the entry `r` leads to an unsync page.
    pub(super) fn mark_unsync(&self, st: &mut MmuState, r: SpteRef) {
        let mut stack: smallvec::SmallVec<[SpteRef; 8]> = smallvec::smallvec![r];
        while let Some(r) = stack.pop() {
            let p = self.sp(r.sp);
            if p.test_and_set_child(r.index) {
                continue;
            }
            if p.unsync_children.fetch_add(1, Ordering::Relaxed) != 0 {
                continue;
            }
            stack.extend(st.sp[r.sp.0 as usize].parent_ptes.iter().copied());
        }
    }

    /// KVM's `kvm_unlink_unsync_page`.
    pub(super) fn kvm_unlink_unsync_page(&self, sp: SpIdx) {
        self.sp(sp).unsync.store(false, Ordering::Relaxed);
    }
}
