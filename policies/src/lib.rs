//! The shadow-sync policies: the reader side of KVM's shadow MMU "unsync" protocol, and the
//! writer's ordering they pair with.
//!
//! KVM lets a vCPU write a leaf guest page table freely ("unsync") and re-reads it at the guest's
//! next TLB flush or CR3 load. On that flush, `kvm_mmu_sync_roots()` first asks, *without* the MMU
//! lock, whether the root has any unsync page below it (`is_unsync_root()`), and skips the sync if
//! not. The writer side, `mmu_try_to_unsync_pages()`, sets `sp->unsync` and the parents'
//! `unsync_children`, issues `smp_wmb()` (both are [`publish_unsync`]), and only then makes the
//! SPTE that maps the guest page table writable. The question this crate makes a build-time choice is what the lockless reader
//! must do to pair with that `smp_wmb()`:
//!
//! | policy          | lockless check                                   | origin                     |
//! |-----------------|--------------------------------------------------|----------------------------|
//! | [`AcquireLoad`] | `unsync.load(Acquire) \|\| children.load(Acquire)` | KVM 2018, 578e1c4db2213   |
//! | [`RmbFence`]    | `fence(Acquire)` (smp_rmb), relaxed loads        | KVM since Oct 2021        |
//! | [`AlwaysLock`]  | none: take the MMU lock, check under it          | KVM before 2018           |
//! | [`SeqCstFence`] | `fence(SeqCst)`, relaxed loads                   | research extra            |
//! | [`NoBarrier`]   | relaxed loads, no fence — **UNSOUND control**    | research extra            |
//!
//! Every policy is a zero-sized type implementing [`SyncPolicy`]; the shadow MMU is generic over
//! it and monomorphised, so the check inlines to a handful of instructions and nothing
//! dispatches at run time.
//!
//! Both sides of the protocol are written once, here: the reader is
//! [`SyncPolicy::is_unsync_root`], the writer's ordering (flags, then the release fence, then the
//! caller's SPTE.W store) is [`publish_unsync`]. The same generic code runs in the VMM (over
//! [`HostMemory`] and real atomics) and in the loom model ([`model`], over loom's atomics), so
//! what is model-checked is the code that runs, not a copy of it.

#![cfg_attr(not(feature = "model-check"), no_std)]

use core::fmt::Debug;
use core::sync::atomic::Ordering;

mod acquire_load;
mod always_lock;
mod no_barrier;
mod rmb_fence;
mod seqcst_fence;

#[cfg(feature = "model-check")]
pub mod model;

pub use acquire_load::AcquireLoad;
pub use always_lock::AlwaysLock;
pub use no_barrier::NoBarrier;
pub use rmb_fence::RmbFence;
pub use seqcst_fence::SeqCstFence;

/// The two flags of a shadow page that the lockless check reads (KVM's `sp->unsync` and
/// `sp->unsync_children`). The shadow MMU implements this on its `ShadowPage` with real atomics;
/// the loom model implements it on loom atomics that also record the interleaving.
pub trait UnsyncFlags {
    /// Load `unsync` with the given ordering.
    fn load_unsync(&self, order: Ordering) -> bool;
    /// Load `unsync_children` with the given ordering.
    fn load_unsync_children(&self, order: Ordering) -> u32;
}

/// Where a policy's fences go: the host CPU ([`HostMemory`]) or the loom model.
pub trait MemoryModel {
    /// A memory fence (`core::sync::atomic::fence` on the host).
    fn fence(&self, order: Ordering);
}

/// The real machine: fences are `core::sync::atomic::fence`. Zero-sized, so passing it costs
/// nothing.
#[derive(Clone, Copy, Debug, Default)]
pub struct HostMemory;

impl MemoryModel for HostMemory {
    #[inline(always)]
    fn fence(&self, order: Ordering) {
        core::sync::atomic::fence(order)
    }
}

/// Whether a policy is a correct pairing for the writer's `smp_wmb()` under the portable C11 /
/// Linux-kernel memory model, i.e. when nothing but the policy itself orders the reader's load of
/// SPTE.W (done by the page walker) before its loads of the unsync flags.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Soundness {
    /// Correct under C11 whatever the walker's load is.
    Sound,
    /// Correct only where the walker's load of SPTE.W is itself ordered (x86 TSO plus the VM
    /// exit); a C11 data-race-free argument does not hold.
    ArchDependent,
    /// Not a correct pairing under C11 and not meant to be one: a negative control, kept to show
    /// that the model check and the stress tests have teeth. Labelled UNSOUND wherever it appears.
    Unsound,
}

/// A shadow-sync policy: the reader side of the unsync protocol, chosen at build time.
///
/// Implementors are zero-sized; all that varies between them is [`SyncPolicy::is_unsync_root`]
/// and constants. Callers (the shadow MMU's `kvm_mmu_sync_roots`) are written once:
///
/// ```text
/// if !P::is_unsync_root(&HostMemory, root) { return; }      // lockless fast path
/// let _g = mmu_lock.write();
/// if !unsync_under_lock(root) { return; }                   // re-check, ordered by the lock
/// mmu_sync_children(root);
/// ```
///
/// [`AlwaysLock`] answers `true` without reading anything, so every call takes the lock, which
/// is exactly KVM before 2018. Because `P` is a type parameter and `is_unsync_root` is
/// `#[inline(always)]`, that constant folds and there is no branch on the policy.
pub trait SyncPolicy: Copy + Default + Debug + Send + Sync + 'static {
    /// The policy's name, as used in `policy-<name>` cargo features and in every result.
    const NAME: &'static str;
    /// Whether the check is a correct pairing under C11 (see [`Soundness`]).
    const SOUNDNESS: Soundness;
    /// Whether the policy reads the flags without the lock at all.
    const LOCKLESS: bool;
    /// One line on where the policy comes from.
    const ORIGIN: &'static str;

    /// KVM's `is_unsync_root()`: may the root have an unsync page below it? `false` lets
    /// `kvm_mmu_sync_roots` return without taking the MMU lock; `true` makes it take the lock
    /// and check again under it with [`unsync_under_lock`].
    ///
    /// This is CPU 2 of the race that the writer's fence in [`publish_unsync`] closes:
    ///
    /// ```text
    /// CPU 1 (mmu_try_to_unsync_pages)     CPU 2 (vCPU in the guest, then kvm_mmu_sync_roots)
    /// ---------------------------------------------------------------------------------------
    /// 1.1 stores leaf.unsync = true and
    ///     root.unsync_children += 1
    ///     fence(Release)  [smp_wmb]
    /// 1.2 stores SPTE.W = 1
    ///                                     2.1 the guest writes a gPTE; its page walk loads
    ///                                         SPTE.W = 1, so no fault
    ///                                     2.2 the guest flushes its TLB: a VM exit
    ///                                         (the policy's acquire goes here)
    ///                                     2.3 is_unsync_root() loads root.unsync and
    ///                                         root.unsync_children
    ///                                     2.4 the guest accesses the GVA
    /// ```
    ///
    /// If 2.1 read 1.2, then 2.3 must see 1.1, or it skips the sync and 2.4 uses the stale
    /// translation. Something between 2.1's load and 2.3's loads must pair with the writer's
    /// release fence, and the walker's load is not the policy's to change: an acquire fence
    /// (`rmb-fence`, `seqcst-fence`) or the lock (`always-lock`) does; acquire on the flag
    /// loads (`acquire-load`) orders the wrong load, and `no-barrier` adds nothing. On x86 the
    /// walker's load is itself an acquire (TSO plus the exit), so every policy holds there: the
    /// loom model's second walker column.
    fn is_unsync_root<M: MemoryModel, F: UnsyncFlags + ?Sized>(mem: &M, root: &F) -> bool;
}

/// The writer's stores of the unsync flags: the two halves of KVM's `kvm_unsync_page()`, which
/// [`publish_unsync`] calls for each page it unsyncs. The shadow MMU implements it over its page
/// pool and parent links (`mark_unsync` walks up from every parent SPTE); the loom model over its
/// one leaf, whose only parent is the root. Both are called under the MMU write lock, which is
/// what makes the walk up the parents safe; the lock does not order anything for the lockless
/// reader, which is why [`publish_unsync`] ends with a fence.
///
/// Implementors must store with the ordering they are given: [`publish_unsync`] chooses it, so
/// that the whole ordering of the writer is in one function.
pub trait UnsyncMarker {
    /// Names a shadow page (the MMU's pool index; the model's page).
    type Page: Copy;
    /// `sp->unsync = true`, stored with `order`.
    fn set_unsync(&mut self, sp: Self::Page, order: Ordering);
    /// KVM's `kvm_mmu_mark_parents_unsync()`: every page above `sp`, up to the roots, learns
    /// through `unsync_children` (and its `unsync_child_bitmap`) that it has an unsync page
    /// below it. Every counter that goes up is stored with `order`.
    fn mark_parents_unsync(&mut self, sp: Self::Page, order: Ordering);
}

/// The writer side of the unsync protocol, KVM's `mmu_try_to_unsync_pages()` from its
/// `kvm_unsync_page()` calls to its `smp_wmb()`: marks each of `pages` unsync and its parents'
/// `unsync_children`, with relaxed stores, then issues a **release fence** (smp_wmb) through
/// `mem`. The caller's store of SPTE.W = 1 must follow the return, and may be relaxed: the fence
/// orders every flag store before it. The shadow MMU calls this from `mmu_try_to_unsync_pages`
/// with [`HostMemory`]; the loom model calls it with loom's fence, so the model checks the
/// writer the VMM runs, as it checks the reader ([`SyncPolicy::is_unsync_root`]).
///
/// The race the fence closes (KVM's comment at this `smp_wmb()`, in this crate's names). Without
/// it the SPTE store may become visible before the flag stores:
///
/// ```text
/// CPU 1 (mmu_try_to_unsync_pages)     CPU 2 (vCPU in the guest, then kvm_mmu_sync_roots)
/// ---------------------------------------------------------------------------------------
/// 1.2 stores SPTE.W = 1: the guest
///     page table is now writable
///                                     2.1 the guest writes a gPTE for GVA X in that table;
///                                         its page walk loads SPTE.W = 1, so no fault
///                                     2.2 the guest flushes its TLB: a VM exit
///                                     2.3 is_unsync_root() loads root.unsync_children = 0
///                                         (and unsync = false) and skips the sync, lockless
///                                     2.4 the guest accesses GVA X through the shadow PTE
///                                         that was never re-read: the old translation
/// 1.1 stores leaf.unsync = true and
///     root.unsync_children += 1
/// ```
///
/// The fence puts 1.1 before 1.2 for any CPU that sees 1.2, so 2.4 cannot happen, provided the
/// reader pairs with it: an acquire between 2.1's load of SPTE.W and 2.3's loads. Providing that
/// acquire is the build's [`SyncPolicy`] (see [`SyncPolicy::is_unsync_root`]).
///
/// Differs from KVM: the caller's SPTE store is not part of this function (it is built and
/// stored by `mmu_set_spte` / `sync_spte` / the prefetch, as in KVM, where `smp_wmb()` is also
/// the last thing `mmu_try_to_unsync_pages()` does). KVM issues the `smp_wmb()` also when the gfn
/// is not shadowed at all; the shadow MMU returns before calling this then, since there is no
/// flag to publish. KVM's `mmu_unsync_pages_lock` (for the TDP MMU, which faults under the read
/// lock) has no counterpart: every caller holds the MMU write lock.
#[inline(always)]
pub fn publish_unsync<M, U>(mem: &M, marker: &mut U, pages: impl IntoIterator<Item = U::Page>)
where
    M: MemoryModel,
    U: UnsyncMarker + ?Sized,
{
    for sp in pages {
        // kvm_unsync_page(). Relaxed: nothing reads these stores before the fence below
        // publishes them, except under the MMU lock, whose release/acquire orders them anyway.
        marker.set_unsync(sp, Ordering::Relaxed);
        marker.mark_parents_unsync(sp, Ordering::Relaxed);
    }
    // smp_wmb(): steps 1.1 before 1.2 above. Pairs with the acquire the policy puts between the
    // walker's load of SPTE.W and its loads of the flags in is_unsync_root().
    mem.fence(Ordering::Release);
}

/// The check under the MMU lock (KVM's `mmu_sync_children` starting point). The lock's
/// acquire/release already orders it after the writer's stores, so relaxed loads suffice.
#[inline(always)]
pub fn unsync_under_lock<F: UnsyncFlags + ?Sized>(root: &F) -> bool {
    root.load_unsync(Ordering::Relaxed) || root.load_unsync_children(Ordering::Relaxed) != 0
}

/// Run-time description of a policy, for the driver, reports and `--version`. Not used on any
/// hot path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PolicyInfo {
    /// [`SyncPolicy::NAME`].
    pub name: &'static str,
    /// [`SyncPolicy::SOUNDNESS`].
    pub soundness: Soundness,
    /// [`SyncPolicy::LOCKLESS`].
    pub lockless: bool,
    /// [`SyncPolicy::ORIGIN`].
    pub origin: &'static str,
}

impl PolicyInfo {
    /// The description of `P`.
    pub const fn of<P: SyncPolicy>() -> Self {
        PolicyInfo {
            name: P::NAME,
            soundness: P::SOUNDNESS,
            lockless: P::LOCKLESS,
            origin: P::ORIGIN,
        }
    }

    /// The cargo feature that selects this policy on the framework.
    pub fn feature(&self) -> &'static str {
        match self.name {
            "acquire-load" => "policy-acquire-load",
            "rmb-fence" => "policy-rmb-fence",
            "always-lock" => "policy-always-lock",
            "seqcst-fence" => "policy-seqcst-fence",
            "no-barrier" => "policy-no-barrier",
            _ => "policy-unknown",
        }
    }

    /// A label that carries the unsound warning wherever the policy's name is shown.
    pub fn label(&self) -> &'static str {
        match self.soundness {
            Soundness::Unsound => match self.name {
                "no-barrier" => "no-barrier (UNSOUND control)",
                _ => "UNSOUND",
            },
            _ => self.name,
        }
    }
}

/// Every policy, in the order the paper presents them: the three the user asked for, then the
/// research extras.
pub const ALL: [PolicyInfo; 5] = [
    PolicyInfo::of::<AcquireLoad>(),
    PolicyInfo::of::<RmbFence>(),
    PolicyInfo::of::<AlwaysLock>(),
    PolicyInfo::of::<SeqCstFence>(),
    PolicyInfo::of::<NoBarrier>(),
];

/// Looks a policy up by name.
pub fn by_name(name: &str) -> Option<PolicyInfo> {
    ALL.iter().copied().find(|p| p.name == name)
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use core::sync::atomic::{AtomicBool, AtomicU32};
    use std::format;

    struct Flags {
        unsync: AtomicBool,
        children: AtomicU32,
    }
    impl UnsyncFlags for Flags {
        fn load_unsync(&self, o: Ordering) -> bool {
            self.unsync.load(o)
        }
        fn load_unsync_children(&self, o: Ordering) -> u32 {
            self.children.load(o)
        }
    }

    fn flags(unsync: bool, children: u32) -> Flags {
        Flags {
            unsync: AtomicBool::new(unsync),
            children: AtomicU32::new(children),
        }
    }

    fn check_single_threaded<P: SyncPolicy>() {
        let clean = flags(false, 0);
        // A lockless policy must let a clean root skip the lock; always-lock never may.
        assert_eq!(P::is_unsync_root(&HostMemory, &clean), !P::LOCKLESS);
        assert!(!unsync_under_lock(&clean));
        for f in [flags(true, 0), flags(false, 1), flags(true, 3)] {
            assert!(
                P::is_unsync_root(&HostMemory, &f),
                "{} missed an unsync root",
                P::NAME
            );
            assert!(unsync_under_lock(&f));
        }
    }

    #[test]
    fn every_policy_sees_a_sequentially_visible_unsync_root() {
        check_single_threaded::<AcquireLoad>();
        check_single_threaded::<RmbFence>();
        check_single_threaded::<AlwaysLock>();
        check_single_threaded::<SeqCstFence>();
        check_single_threaded::<NoBarrier>();
    }

    /// One log of what the shared writer asks of the MMU (the marker) and of the memory model,
    /// in the order it asks.
    type Log = core::cell::RefCell<std::vec::Vec<(&'static str, u32, Ordering)>>;
    struct Recorder<'a>(&'a Log);
    impl UnsyncMarker for Recorder<'_> {
        type Page = u32;
        fn set_unsync(&mut self, sp: u32, order: Ordering) {
            self.0.borrow_mut().push(("unsync", sp, order));
        }
        fn mark_parents_unsync(&mut self, sp: u32, order: Ordering) {
            self.0.borrow_mut().push(("parents", sp, order));
        }
    }
    impl MemoryModel for Recorder<'_> {
        fn fence(&self, order: Ordering) {
            self.0.borrow_mut().push(("fence", 0, order));
        }
    }

    #[test]
    fn publish_unsync_marks_every_page_then_fences_once() {
        let (r, rel) = (Ordering::Relaxed, Ordering::Release);
        let log = Log::default();
        publish_unsync(&Recorder(&log), &mut Recorder(&log), [7, 9]);
        assert_eq!(
            *log.borrow(),
            [
                ("unsync", 7, r),
                ("parents", 7, r),
                ("unsync", 9, r),
                ("parents", 9, r),
                ("fence", 0, rel),
            ]
        );
        // No page left to unsync: still the fence, as KVM's smp_wmb() after an empty loop.
        let log = Log::default();
        publish_unsync(&Recorder(&log), &mut Recorder(&log), []);
        assert_eq!(*log.borrow(), [("fence", 0, rel)]);
    }

    #[test]
    fn policies_are_zero_sized_and_named_uniquely() {
        assert_eq!(core::mem::size_of::<AcquireLoad>(), 0);
        assert_eq!(core::mem::size_of::<RmbFence>(), 0);
        assert_eq!(core::mem::size_of::<AlwaysLock>(), 0);
        assert_eq!(core::mem::size_of::<SeqCstFence>(), 0);
        assert_eq!(core::mem::size_of::<NoBarrier>(), 0);
        for (i, a) in ALL.iter().enumerate() {
            assert_eq!(by_name(a.name), Some(*a));
            assert_eq!(a.feature(), format!("policy-{}", a.name));
            for b in &ALL[i + 1..] {
                assert_ne!(a.name, b.name);
            }
        }
        assert_eq!(by_name("bogus"), None);
        assert!(by_name("no-barrier").unwrap().label().contains("UNSOUND"));
    }
}
