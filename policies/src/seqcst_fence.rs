use core::sync::atomic::Ordering;

use crate::{MemoryModel, Soundness, SyncPolicy, UnsyncFlags};

/// `seqcst-fence`: a full `fence(SeqCst)` (smp_mb), then relaxed loads. A research extra: an
/// over-strong barrier, to price what "just use a full fence" would cost.
///
/// **Origin.** Not in KVM; the conservative choice a reviewer might ask for.
///
/// **Compiles to.** x86-64: `mfence` (or a locked RMW on the stack, as Linux's `smp_mb`), then
/// two `mov`. AArch64: `dmb ish`, then two `ldr`.
///
/// **C11.** Correct: a SeqCst fence is also an acquire fence, so it pairs with the writer's
/// release fence exactly as [`crate::RmbFence`] does.
#[derive(Clone, Copy, Debug, Default)]
pub struct SeqCstFence;

impl SyncPolicy for SeqCstFence {
    const NAME: &'static str = "seqcst-fence";
    const SOUNDNESS: Soundness = Soundness::Sound;
    const LOCKLESS: bool = true;
    const ORIGIN: &'static str = "research extra: smp_mb() before relaxed loads (over-strong)";

    #[inline(always)]
    fn is_unsync_root<M: MemoryModel, F: UnsyncFlags + ?Sized>(mem: &M, root: &F) -> bool {
        mem.fence(Ordering::SeqCst);
        root.load_unsync(Ordering::Relaxed) || root.load_unsync_children(Ordering::Relaxed) != 0
    }
}
