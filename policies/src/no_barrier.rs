use core::sync::atomic::Ordering;

use crate::{MemoryModel, Soundness, SyncPolicy, UnsyncFlags};

/// `no-barrier` — **UNSOUND, a negative control.** Relaxed loads of both flags and no fence.
///
/// **Origin.** Not in KVM. It exists so that the model check and the stress tests can show they
/// detect a missing barrier; the driver refuses to run it unless a flag names it explicitly.
///
/// **Compiles to.** x86-64: two `mov` — the same instructions as [`crate::RmbFence`] and
/// [`crate::AcquireLoad`], but the compiler is free to hoist the loads. AArch64: two plain `ldr`
/// with nothing ordering them after the walker's load.
///
/// **C11.** Incorrect: nothing orders the flag loads after the walker's load of SPTE.W unless
/// the walker's load is itself an acquire (x86 TSO plus the VM exit).
#[derive(Clone, Copy, Debug, Default)]
pub struct NoBarrier;

impl SyncPolicy for NoBarrier {
    const NAME: &'static str = "no-barrier";
    const SOUNDNESS: Soundness = Soundness::Unsound;
    const LOCKLESS: bool = true;
    const ORIGIN: &'static str =
        "research extra, UNSOUND negative control: relaxed loads, no fence";

    #[inline(always)]
    fn is_unsync_root<M: MemoryModel, F: UnsyncFlags + ?Sized>(_mem: &M, root: &F) -> bool {
        root.load_unsync(Ordering::Relaxed) || root.load_unsync_children(Ordering::Relaxed) != 0
    }
}
