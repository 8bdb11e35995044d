use crate::{MemoryModel, Soundness, SyncPolicy, UnsyncFlags};

/// `always-lock`: no lockless check; every sync request takes the MMU lock and checks under it.
///
/// **Origin.** KVM before 2018: `kvm_mmu_sync_roots()` took `mmu_lock` unconditionally and let
/// `mmu_sync_children()` find nothing to do on a clean root.
///
/// **Compiles to.** Nothing here: `is_unsync_root` is the constant `true`, so the caller always
/// takes the lock (a locked RMW on x86-64; `ldaxr`/`stlxr` or LSE `casa` on AArch64) and reads
/// the flags under it.
///
/// **C11.** Correct: the writer sets the flags and SPTE.W inside its critical section, so a
/// reader that saw SPTE.W = 1 acquires the lock after the writer released it and sees the flags.
#[derive(Clone, Copy, Debug, Default)]
pub struct AlwaysLock;

impl SyncPolicy for AlwaysLock {
    const NAME: &'static str = "always-lock";
    const SOUNDNESS: Soundness = Soundness::Sound;
    const LOCKLESS: bool = false;
    const ORIGIN: &'static str = "KVM before 2018: kvm_mmu_sync_roots() always takes mmu_lock";

    #[inline(always)]
    fn is_unsync_root<M: MemoryModel, F: UnsyncFlags + ?Sized>(_mem: &M, _root: &F) -> bool {
        // No lockless answer: "maybe", so the caller takes the lock and uses
        // `unsync_under_lock`.
        true
    }
}
