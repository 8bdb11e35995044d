use core::sync::atomic::Ordering;

use crate::{MemoryModel, Soundness, SyncPolicy, UnsyncFlags};

/// `rmb-fence`: `smp_rmb()` (an acquire fence), then relaxed loads of both flags. The default,
/// because it is what KVM ships today.
///
/// **Origin.** Lai Jiangshan's patch "KVM: X86: Use smp_rmb() to pair with smp_wmb() in
/// mmu_try_to_unsync_pages()" (October 2021), which introduced `is_unsync_root()` in this form.
///
/// **Compiles to.** x86-64: nothing but a compiler barrier (`smp_rmb()` is `barrier()`; an
/// acquire fence emits no instruction under TSO), then two plain `mov` loads. AArch64: `dmb
/// ishld`, then two plain `ldr`.
///
/// **C11.** Correct. The acquire fence sits *after* the walker's load of SPTE.W and before the
/// flag loads; if the walker read the writer's SPTE.W = 1, the writer's release fence
/// synchronises with this acquire fence (C11 fence-fence synchronisation), so both flag stores
/// are visible.
#[derive(Clone, Copy, Debug, Default)]
pub struct RmbFence;

impl SyncPolicy for RmbFence {
    const NAME: &'static str = "rmb-fence";
    const SOUNDNESS: Soundness = Soundness::Sound;
    const LOCKLESS: bool = true;
    const ORIGIN: &'static str =
        "KVM since the 2021 patch (Lai Jiangshan): smp_rmb() in is_unsync_root()";

    #[inline(always)]
    fn is_unsync_root<M: MemoryModel, F: UnsyncFlags + ?Sized>(mem: &M, root: &F) -> bool {
        // Pairs with the smp_wmb() in mmu_try_to_unsync_pages(): the load of SPTE.W, done by
        // the page walker before the exit that brought us here, is ordered before the loads
        // below by this fence, not by anything on the loads themselves.
        mem.fence(Ordering::Acquire);
        root.load_unsync(Ordering::Relaxed) || root.load_unsync_children(Ordering::Relaxed) != 0
    }
}
