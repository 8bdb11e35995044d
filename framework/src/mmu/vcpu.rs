//! The vCPU side of the MMU: each vCPU's roots (`VcpuMmu`, owned by its thread), its request
//! flags and guest-mode marker (`VcpuShared`, shared), and remote TLB flushes.
//!
//! Requests follow KVM's `kvm_make_request`/`kvm_check_request` and `vcpu->mode` protocol:
//!
//! ```text
//! vCPU thread (backend)                      requester (another thread, holding mmu_lock)
//! mode = IN_GUEST_MODE        (SeqCst)       requests |= REQ           (SeqCst)
//! if requests != 0 { leave, handle, retry }  if mode == IN_GUEST_MODE { kick; wait until it
//! ... run: TLB lookups, shadow walks ...                                 leaves guest mode }
//! mode = OUTSIDE_GUEST_MODE; exits += 1
//! ```
//!
//! Either the vCPU sees the request before it runs, or the requester sees it in guest mode and
//! waits for it to leave; so when `kvm_flush_remote_tlbs` returns, no vCPU can still use a
//! translation from before the call, and a zapped page can be reused (KVM's
//! `KVM_REQUEST_WAIT` plus the IPI acknowledgement).

use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering};

use super::page::SpIdx;
use super::stats::CounterBlock;

/// Flush this vCPU's TLB before it next runs (KVM_REQ_TLB_FLUSH).
pub const KVM_REQ_TLB_FLUSH: u32 = 1 << 0;
/// This vCPU's root (or a cached root) was zapped: call [`super::Mmu::kvm_mmu_reload`] before
/// it next runs (KVM_REQ_MMU_FREE_OBSOLETE_ROOTS + KVM_REQ_MMU_RELOAD).
pub const KVM_REQ_MMU_RELOAD: u32 = 1 << 1;

const OUTSIDE_GUEST_MODE: u8 = 0;
const IN_GUEST_MODE: u8 = 1;

/// Number of cached previous roots (KVM's `KVM_MMU_NUM_PREV_ROOTS`).
pub const KVM_MMU_NUM_PREV_ROOTS: usize = 3;

/// A cached root: the guest CR3 it shadows and its shadow page.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CachedRoot {
    /// Guest-physical address of the guest's PML4.
    pub pgd: u64,
    pub(crate) sp: SpIdx,
}

/// One vCPU's MMU context (KVM's `vcpu->arch.mmu` root fields). Owned by the vCPU's thread and
/// passed to every MMU call that acts for that vCPU.
#[derive(Debug)]
pub struct VcpuMmu {
    pub(crate) id: usize,
    pub(crate) pgd: Option<u64>,
    pub(crate) root: Option<SpIdx>,
    pub(crate) root_hpa: u64,
    pub(crate) prev_roots: [Option<CachedRoot>; KVM_MMU_NUM_PREV_ROOTS],
}

impl VcpuMmu {
    pub(crate) fn new(id: usize) -> Self {
        VcpuMmu {
            id,
            pgd: None,
            root: None,
            root_hpa: 0,
            prev_roots: [None; KVM_MMU_NUM_PREV_ROOTS],
        }
    }

    /// The vCPU's index.
    pub fn id(&self) -> usize {
        self.id
    }

    /// The guest CR3 last loaded (guest-physical), if any.
    pub fn pgd(&self) -> Option<u64> {
        self.pgd
    }

    /// Machine-physical address of the current shadow root: what the hardware CR3 must hold
    /// (KVM's `root.hpa`). `None` before the first CR3 load.
    pub fn root_hpa(&self) -> Option<u64> {
        self.root.map(|_| self.root_hpa)
    }

    /// The cached previous roots, most recent first.
    pub fn prev_roots(&self) -> impl Iterator<Item = &CachedRoot> {
        self.prev_roots.iter().flatten()
    }
}

/// What other threads may touch of a vCPU.
#[derive(Debug, Default)]
pub(crate) struct VcpuShared {
    pub requests: AtomicU32,
    mode: AtomicU8,
    exits: AtomicU64,
    pub counters: CounterBlock,
}

impl VcpuShared {
    /// Enters guest mode; returns the pending requests (taken) if there are any, in which case
    /// the vCPU is left outside guest mode and must handle them and try again.
    #[inline]
    pub fn enter_guest(&self) -> u32 {
        self.mode.store(IN_GUEST_MODE, Ordering::SeqCst);
        if self.requests.load(Ordering::SeqCst) == 0 {
            return 0;
        }
        self.exit_guest();
        self.requests.swap(0, Ordering::AcqRel)
    }

    /// Leaves guest mode.
    #[inline]
    pub fn exit_guest(&self) {
        self.mode.store(OUTSIDE_GUEST_MODE, Ordering::SeqCst);
        self.exits.fetch_add(1, Ordering::Release);
    }

    /// Takes the pending requests (outside guest mode).
    #[inline]
    pub fn take_requests(&self) -> u32 {
        if self.requests.load(Ordering::Relaxed) == 0 {
            return 0;
        }
        self.requests.swap(0, Ordering::AcqRel)
    }

    /// Sets a request; returns whether the vCPU is in guest mode and the exit count seen.
    #[inline]
    pub fn make_request(&self, req: u32) -> Option<u64> {
        self.requests.fetch_or(req, Ordering::SeqCst);
        let exits = self.exits.load(Ordering::SeqCst);
        (self.mode.load(Ordering::SeqCst) == IN_GUEST_MODE).then_some(exits)
    }

    /// Whether the vCPU has left guest mode since `exits` was read.
    #[inline]
    pub fn left_guest_since(&self, exits: u64) -> bool {
        self.mode.load(Ordering::SeqCst) != IN_GUEST_MODE
            || self.exits.load(Ordering::Acquire) != exits
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_seen_at_entry_and_waiters_see_exits() {
        let s = VcpuShared::default();
        assert_eq!(s.enter_guest(), 0);
        let seen = s.make_request(KVM_REQ_TLB_FLUSH).expect("in guest mode");
        assert!(!s.left_guest_since(seen));
        s.exit_guest();
        assert!(s.left_guest_since(seen));
        assert_eq!(s.enter_guest(), KVM_REQ_TLB_FLUSH);
        assert_eq!(s.take_requests(), 0);
        assert_eq!(s.make_request(KVM_REQ_MMU_RELOAD), None);
        assert_eq!(s.take_requests(), KVM_REQ_MMU_RELOAD);
    }
}
