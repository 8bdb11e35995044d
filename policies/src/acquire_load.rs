use core::sync::atomic::Ordering;

use crate::{MemoryModel, Soundness, SyncPolicy, UnsyncFlags};

/// `acquire-load`: both flags loaded with `Acquire`, no fence.
///
/// **Origin.** KVM commit 578e1c4db2213 ("kvm: x86: Avoid taking MMU lock in kvm_mmu_sync_roots
/// if no sync is needed", 2018): `!smp_load_acquire(&sp->unsync) &&
/// !smp_load_acquire(&sp->unsync_children)`.
///
/// **Compiles to.** x86-64: two plain `mov` loads (every x86 load is an acquire under TSO).
/// AArch64: two `ldar` (load-acquire) instructions.
///
/// **C11.** Not a correct pairing. The writer's `smp_wmb()` orders its flag stores before its
/// store to SPTE.W; to pair with it the reader needs an acquire on *its load of SPTE.W* (done by
/// the page walker) or a read barrier after it. An acquire on the flag loads orders what comes
/// after them, not the walker's earlier load, so a relaxed walker may see SPTE.W = 1 and the
/// flags still clear. This is the argument of the 2021 patch ("the acquire sat on the wrong
/// load"); the loom model in [`crate::model`] exhibits the interleaving.
#[derive(Clone, Copy, Debug, Default)]
pub struct AcquireLoad;

impl SyncPolicy for AcquireLoad {
    const NAME: &'static str = "acquire-load";
    const SOUNDNESS: Soundness = Soundness::ArchDependent;
    const LOCKLESS: bool = true;
    const ORIGIN: &'static str = "KVM 2018, commit 578e1c4db2213: smp_load_acquire() on both flags";

    #[inline(always)]
    fn is_unsync_root<M: MemoryModel, F: UnsyncFlags + ?Sized>(_mem: &M, root: &F) -> bool {
        root.load_unsync(Ordering::Acquire) || root.load_unsync_children(Ordering::Acquire) != 0
    }
}
