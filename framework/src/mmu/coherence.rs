//! The host coherence log: the machine-physical addresses of SPTEs whose change takes
//! something away (clear, write-protect, new frame, a root link dropped), for a backend whose
//! host shadows our shadow tables and cannot see the VMM's own stores to them. Why such a host
//! needs them and how the `kvm` backend replays them on the MMU's `KVM_REQ_TLB_FLUSH` is
//! explained once, in [This host](crate::kvm#this-host); a change that only adds is not
//! logged ([`needs_flush`]).
//!
//! Not in KVM (KVM is the host; it has no host above it). Off by default ([`Mmu::new`]), so
//! the `sim` backend, whose software TLB is coherent by construction, pays one load of an
//! empty `OnceLock` per SPTE store.

use std::sync::Mutex;

use shadowlab_policies::SyncPolicy;

use super::page::SpteRef;
use super::spte::needs_flush;
use super::Mmu;

/// The log itself: addresses in store order, with duplicates (removed when taken).
#[derive(Debug, Default)]
pub(super) struct CoherenceLog {
    addrs: Mutex<Vec<u64>>,
}

impl<P: SyncPolicy> Mmu<P> {
    /// Starts recording SPTE changes for the host ([`Mmu::take_host_coherence_log`]). Call
    /// before the first guest runs; later calls have no effect. Only a backend whose host
    /// shadows the pool needs it (`kvm`).
    pub fn enable_host_coherence_log(&self) {
        let _ = self.host_log.set(CoherenceLog::default());
    }

    /// Whether SPTE changes are being recorded.
    pub fn host_coherence_log_enabled(&self) -> bool {
        self.host_log.get().is_some()
    }

    /// Takes the recorded SPTE addresses (machine-physical, sorted, without duplicates),
    /// leaving the log empty. Empty if recording is off.
    pub fn take_host_coherence_log(&self) -> Vec<u64> {
        let Some(log) = self.host_log.get() else {
            return Vec::new();
        };
        let mut v = std::mem::take(&mut *log.addrs.lock().unwrap_or_else(|e| e.into_inner()));
        v.sort_unstable();
        v.dedup();
        v
    }

    /// Records the SPTE at `r` if going from `old` to `new` hides something from the host:
    /// a present SPTE cleared, a permission taken away, or the frame changed
    /// ([`needs_flush`], which for a non-leaf entry means the link changed).
    #[inline]
    pub(super) fn log_spte_change(&self, r: SpteRef, old: u64, new: u64) {
        if let Some(log) = self.host_log.get() {
            if needs_flush(old, new) {
                log.addrs
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(self.spte_mpa(r));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use shadowlab_abi::layout::{self, pte};

    use crate::mmu::testutil::{Rig, GVA};
    use crate::mmu::{Access, FaultOutcome};

    /// Faults GVA in, unsyncs its PT by a write through the direct map, repoints GVA in the
    /// guest and flushes. Returns the log after the faults and after the flush.
    fn fault_unsync_repoint_flush(enable: bool) -> (Rig, Vec<u64>, Vec<u64>) {
        let mut r = Rig::new(1);
        if enable {
            r.mmu.enable_host_coherence_log();
        }
        let d1 = r.g.frame();
        let d2 = r.g.frame();
        let leaf = r.g.map(r.root, GVA, d1, pte::P | pte::W | pte::D);
        let pt = leaf & !0xfff;
        r.direct_map_page(pt);
        let mut v = r.vcpu(0);
        assert_eq!(r.fault(&mut v, GVA, Access::READ), FaultOutcome::Fixed);
        let via_pt = layout::direct_map(pt);
        assert_eq!(r.fault(&mut v, via_pt, Access::WRITE), FaultOutcome::Fixed);
        let after_faults = r.mmu.take_host_coherence_log();
        r.g.set(leaf, d2 | pte::P | pte::W | pte::D);
        r.mmu.kvm_mmu_flush_tlb_guest(&v);
        let after_flush = r.mmu.take_host_coherence_log();
        (r, after_faults, after_flush)
    }

    #[test]
    fn only_changes_that_remove_something_are_logged_once_each() {
        let (r, after_faults, after_flush) = fault_unsync_repoint_flush(true);
        // Installing SPTEs and unsyncing (W added) hide nothing from the host.
        assert!(after_faults.is_empty(), "{after_faults:x?}");
        // The sync drops GVA's SPTE (repointed) and write-protects the PT's direct-map SPTE.
        assert_eq!(after_flush.len(), 2, "{after_flush:x?}");
        let region = r.mmu.mem().region();
        for &a in &after_flush {
            assert!(r.mmu.mem().pool_index(a).is_some(), "{a:#x} is in the pool");
            let spte = region
                .load_u64(a, std::sync::atomic::Ordering::Relaxed)
                .unwrap();
            assert_eq!(spte & pte::W, 0, "{a:#x}: {spte:#x} lost W or P");
        }
        assert!(r.mmu.take_host_coherence_log().is_empty(), "taken");
        r.audit();
    }

    #[test]
    fn nothing_is_recorded_unless_enabled() {
        let (r, after_faults, after_flush) = fault_unsync_repoint_flush(false);
        assert!(!r.mmu.host_coherence_log_enabled());
        assert!(after_faults.is_empty() && after_flush.is_empty());
        assert_eq!(r.mmu.stats().pages_synced, 1, "the same work was done");
    }
}
