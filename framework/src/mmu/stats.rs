//! MMU event counters: one cache-line-aligned block of relaxed atomics per vCPU (plus one for
//! work not done on behalf of a vCPU, counted under the MMU write lock), so counting on a hot
//! path is a plain load and store to a line only the vCPU's own thread writes. [`MmuStats`]
//! (defined in `shadowlab-schema`, one field per [`Counter`]) is the serde snapshot, summed.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use shadowlab_schema::LockStats;
pub use shadowlab_schema::MmuStats;

macro_rules! counters {
    ($($name:ident : $doc:literal),* $(,)?) => {
        /// One MMU event kind.
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        #[allow(non_camel_case_types)]
        #[repr(usize)]
        pub enum Counter { $(#[doc = $doc] $name,)* }

        const NR_COUNTERS: usize = [$(Counter::$name),*].len();

        /// The snapshot from the summed counters. `MmuStats` has exactly one field per
        /// `Counter` (the struct literal below does not compile otherwise).
        fn from_sums(sums: &[u64; NR_COUNTERS], lock: LockStats) -> MmuStats {
            MmuStats { $($name: sums[Counter::$name as usize],)* lock }
        }
    };
}

counters! {
    faults: "Shadow page faults handled (`kvm_mmu_page_fault`).",
    guest_faults: "Faults reflected to the guest (its own tables deny the access).",
    fault_retries: "Faults that found a stale walk or an invalid root and asked for a retry.",
    emulations: "Write faults on write-protected guest page tables that need emulation.",
    emulated_writes: "Emulated writes to shadowed guest page tables (`kvm_mmu_track_write`).",
    pte_writes_zapped: "SPTEs zapped by emulated writes.",
    unsyncs: "Shadow pages marked unsync (`kvm_unsync_page`).",
    sync_roots: "Calls of `kvm_mmu_sync_roots`.",
    sync_roots_lockless_skips: "Calls that `is_unsync_root` let return without the lock.",
    syncs: "Runs of `mmu_sync_children` under the lock.",
    pages_synced: "Shadow pages re-read by `kvm_sync_page`.",
    sptes_synced: "Single SPTEs re-read by INVLPG.",
    invlpgs: "INVLPGs (`kvm_mmu_invlpg`).",
    cr3_loads: "CR3 loads (`kvm_mmu_new_pgd`).",
    fast_cr3_switches: "CR3 loads served from the previous-roots cache without the lock.",
    roots_allocated: "Roots looked up or created (`mmu_alloc_root`).",
    pages_created: "Shadow pages allocated (`kvm_mmu_alloc_shadow_page`).",
    pages_zapped: "Shadow pages zapped (`kvm_mmu_prepare_zap_page`).",
    flooded: "Pages zapped for write flooding or misaligned writes (`mmu_flooded`).",
    recycled: "Pages zapped to refill the pool (`mmu_recycled`).",
    remote_tlb_flushes: "Remote TLB flush requests (`kvm_flush_remote_tlbs`).",
    write_protects: "gfns write-protected because they became shadowed or were synced.",
    prefetched: "Leaf SPTEs set from neighbouring guest PTEs on a fault (`FNAME(pte_prefetch)`).",
}

/// One vCPU's counters (or the global block), on its own cache line(s).
#[repr(align(128))]
#[derive(Debug)]
pub struct CounterBlock([AtomicU64; NR_COUNTERS]);

impl Default for CounterBlock {
    fn default() -> Self {
        CounterBlock(std::array::from_fn(|_| AtomicU64::new(0)))
    }
}

impl CounterBlock {
    /// Adds one.
    #[inline(always)]
    pub fn inc(&self, c: Counter) {
        self.add(c, 1)
    }
    /// Adds `n`. Single writer: a vCPU's block is only written by the thread that owns its
    /// `VcpuMmu`, and the global block only under the MMU write lock, so a relaxed load and
    /// store suffice (no locked RMW on the hot path; readers may see a slightly old value).
    #[inline(always)]
    pub fn add(&self, c: Counter, n: u64) {
        let a = &self.0[c as usize];
        a.store(a.load(Relaxed).wrapping_add(n), Relaxed);
    }
    /// The current value of one counter.
    #[cfg(test)]
    pub fn get(&self, c: Counter) -> u64 {
        self.0[c as usize].load(Relaxed)
    }
}

/// Sums the blocks into a snapshot.
pub fn snapshot<'a>(blocks: impl Iterator<Item = &'a CounterBlock>, lock: LockStats) -> MmuStats {
    let mut sums = [0u64; NR_COUNTERS];
    for b in blocks {
        for (s, c) in sums.iter_mut().zip(b.0.iter()) {
            *s += c.load(Relaxed);
        }
    }
    from_sums(&sums, lock)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_sums_blocks() {
        let a = CounterBlock::default();
        let b = CounterBlock::default();
        a.inc(Counter::faults);
        b.add(Counter::faults, 2);
        b.inc(Counter::recycled);
        let s = snapshot([&a, &b].into_iter(), LockStats::default());
        assert_eq!(s.faults, 3);
        assert_eq!(s.recycled, 1);
        assert_eq!(s.unsyncs, 0);
        assert_eq!(a.get(Counter::faults), 1);
        assert_eq!(std::mem::align_of::<CounterBlock>(), 128);
    }
}
