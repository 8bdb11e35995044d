//! The writer side of the protocol: `mmu_try_to_unsync_pages`, `kvm_unsync_page`,
//! `kvm_mmu_mark_parents_unsync`. The ordering (flags, then smp_wmb) is the policies crate's
//! [`publish_unsync`], the function the loom model checks; this file supplies the MMU's side.

use std::sync::atomic::Ordering;

use shadowlab_policies::{publish_unsync, HostMemory, SyncPolicy, UnsyncMarker};

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
    /// The marking and the fence are [`publish_unsync`], the writer's ordering written once in
    /// the policies crate, with the CPU 1 / CPU 2 timeline of the race it closes: the loom
    /// model (`shadowlab verify`) runs that same function, so both sides of the protocol that
    /// is model-checked are the code that runs here. This MMU supplies only its parent walk
    /// ([`UnsyncMarker`] on [`UnsyncPath`]); the caller's SPTE store follows the return.
    ///
    /// Differs from KVM: KVM write-tracks the gfns of upper-level shadow pages in its
    /// page-track machinery (`account_shadowed` for `role.level > PG_LEVEL_4K`) and refuses
    /// first if the gfn is tracked ("this guards the role.level == 4K assertion below"); here
    /// the same question is asked of the page hash directly. There is no separate
    /// `mmu_unsync_pages_lock` because the whole call runs under the MMU write lock. A gfn
    /// that is not shadowed returns before the fence (KVM reaches its `smp_wmb()` with nothing
    /// marked): there is no flag store to order. Returns a bool where KVM returns 0 / `-EPERM`
    /// / `-EEXIST` (its callers only test for nonzero).
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
        // Already-unsync pages are skipped, as KVM's loop does (`if (sp->unsync) continue;`):
        // their flags are set and their parents marked.
        let not_yet_unsync = list
            .into_iter()
            .filter(|&sp| !self.sp(sp).unsync.load(Ordering::Relaxed));
        // Marks them, then smp_wmb(): sp->unsync and the parents' unsync_children before SPTE.W
        // (the caller's store). Pairs with the policy's check in is_unsync_root().
        publish_unsync(
            &HostMemory,
            &mut UnsyncPath { mmu: self, st, c },
            not_yet_unsync,
        );
        true
    }

    /// KVM's `kvm_mmu_mark_parents_unsync`: sets this page's bit in every parent's
    /// `unsync_child_bitmap`, and walks further up from each parent whose `unsync_children`
    /// went from 0 to 1 (above it the path is already marked).
    fn kvm_mmu_mark_parents_unsync(&self, st: &mut MmuState, sp: SpIdx, order: Ordering) {
        let parents = st.sp[sp.0 as usize].parent_ptes.clone();
        for r in parents {
            self.mark_unsync_ordered(st, r, order);
        }
    }

    /// KVM's `mark_unsync`: the entry `r` leads to an unsync page. For `link_shadow_page`,
    /// whose release store of the new link publishes the marks.
    pub(super) fn mark_unsync(&self, st: &mut MmuState, r: SpteRef) {
        self.mark_unsync_ordered(st, r, Ordering::Relaxed);
    }

    /// [`Mmu::mark_unsync`] with the ordering of the `unsync_children` increments given by the
    /// caller ([`publish_unsync`] chooses it on the unsync path).
    fn mark_unsync_ordered(&self, st: &mut MmuState, r: SpteRef, order: Ordering) {
        let mut stack: smallvec::SmallVec<[SpteRef; 8]> = smallvec::smallvec![r];
        while let Some(r) = stack.pop() {
            let p = self.sp(r.sp);
            if p.test_and_set_child(r.index) {
                continue;
            }
            if p.unsync_children.fetch_add(1, order) != 0 {
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

/// The shadow MMU as [`publish_unsync`] sees it: its pages and their parent links, under the
/// MMU write lock (`st` is the state that lock guards). Lives for one call of
/// [`Mmu::mmu_try_to_unsync_pages`]; monomorphised and inlined, so it costs what the direct
/// calls did.
struct UnsyncPath<'a, P: SyncPolicy> {
    mmu: &'a Mmu<P>,
    st: &'a mut MmuState,
    c: &'a CounterBlock,
}

impl<P: SyncPolicy> UnsyncMarker for UnsyncPath<'_, P> {
    type Page = SpIdx;

    /// KVM's `kvm_unsync_page` up to its `kvm_mmu_mark_parents_unsync` call: counts the
    /// unsync (`kvm->stat.mmu_unsync`) and sets `sp->unsync`.
    #[inline]
    fn set_unsync(&mut self, sp: SpIdx, order: Ordering) {
        self.c.inc(Counter::unsyncs);
        self.mmu.sp(sp).unsync.store(true, order);
    }

    #[inline]
    fn mark_parents_unsync(&mut self, sp: SpIdx, order: Ordering) {
        self.mmu.kvm_mmu_mark_parents_unsync(self.st, sp, order);
    }
}
