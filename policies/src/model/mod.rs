//! A loom model of the unsync protocol, run over the code the shadow MMU runs on both sides:
//! the policies' own `is_unsync_root` and the shared writer [`publish_unsync`].
//!
//! [`check`] explores every interleaving (and every value a relaxed load may return) of two
//! vCPUs: one runs the writer side of `mmu_try_to_unsync_pages()` ([`publish_unsync`], then the
//! store of SPTE.W = 1), the other walks its page table, writes its guest PTE through the
//! now-writable mapping, flushes, and runs `kvm_mmu_sync_roots()` with the policy under test. A
//! *violation* is an execution in which the flush skipped the sync, so the guest goes on with a
//! stale translation.
//!
//! The walker's own load of SPTE.W is modelled two ways ([`WalkerModel`]): relaxed, which is all
//! the portable C11 / LKMM reading grants, and acquire, which is what x86 TSO plus the VM exit
//! between the walk and the check provide. [`EXPECTED`] is the verdict matrix that the 2021 patch
//! argues for; the test suite and `shadowlab verify` hold the model to it.

mod protocol;

use std::time::{Duration, Instant};

#[cfg(doc)]
use crate::publish_unsync;
use crate::{AcquireLoad, AlwaysLock, NoBarrier, PolicyInfo, RmbFence, SeqCstFence, SyncPolicy};

/// How the reader's page walker loads SPTE.W.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum WalkerModel {
    /// A relaxed load: the portable C11 reading, in which nothing orders the walk before the
    /// check except what the policy adds.
    Relaxed,
    /// An acquire load: x86 TSO (every load is an acquire) plus the VM exit between the walk
    /// and the check.
    Acquire,
}

impl WalkerModel {
    /// Both models, in the order the matrix shows them.
    pub const ALL: [WalkerModel; 2] = [WalkerModel::Relaxed, WalkerModel::Acquire];

    /// The column heading.
    pub fn name(self) -> &'static str {
        match self {
            WalkerModel::Relaxed => "relaxed walker (C11)",
            WalkerModel::Acquire => "acquire walker (x86 TSO + exit)",
        }
    }

    pub(crate) fn ordering(self) -> core::sync::atomic::Ordering {
        match self {
            WalkerModel::Relaxed => core::sync::atomic::Ordering::Relaxed,
            WalkerModel::Acquire => core::sync::atomic::Ordering::Acquire,
        }
    }
}

/// Which paths of the protocol the explored executions took: evidence that a `Correct` verdict
/// is not vacuous (the race window was reached, both with and without the lock).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Coverage {
    /// The walk loaded SPTE.W = 0, so the guest's store would fault (handled under the lock).
    pub write_faulted: u64,
    /// The walk loaded SPTE.W = 1 and the flush synced the root under the lock.
    pub synced: u64,
    /// The walk loaded SPTE.W = 1 and the lockless check skipped the sync.
    pub skipped: u64,
}

/// What one model check found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// No execution skipped a needed sync.
    Correct {
        /// Executions loom explored.
        executions: u64,
        /// Paths taken.
        coverage: Coverage,
    },
    /// At least one execution skipped a needed sync.
    Violation {
        /// Executions loom explored.
        executions: u64,
        /// Paths taken.
        coverage: Coverage,
        /// How many of them were violations.
        violating: u64,
        /// The first violating execution, one event per line, in the order loom ran them.
        interleaving: Vec<String>,
    },
}

impl Verdict {
    /// The verdict without its counts, for comparing with [`EXPECTED`].
    pub fn outcome(&self) -> Outcome {
        match self {
            Verdict::Correct { .. } => Outcome::Correct,
            Verdict::Violation { .. } => Outcome::Violation,
        }
    }

    /// Executions loom explored.
    pub fn executions(&self) -> u64 {
        match self {
            Verdict::Correct { executions, .. } | Verdict::Violation { executions, .. } => {
                *executions
            }
        }
    }

    /// Paths taken.
    pub fn coverage(&self) -> Coverage {
        match self {
            Verdict::Correct { coverage, .. } | Verdict::Violation { coverage, .. } => *coverage,
        }
    }

    /// The matrix cell: `correct (N executions)` or `VIOLATION (k of N executions)`.
    pub fn cell(&self) -> String {
        match self {
            Verdict::Correct { executions, .. } => format!("correct ({executions} executions)"),
            Verdict::Violation {
                executions,
                violating,
                ..
            } => format!("VIOLATION ({violating} of {executions} executions)"),
        }
    }
}

/// A verdict without counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// No execution skips a needed sync.
    Correct,
    /// Some execution skips a needed sync.
    Violation,
}

/// The verdicts the model must reach, written out rather than derived so that a change to a
/// policy's code or to its declared soundness that moves a cell fails loudly.
///
/// With a relaxed walker, `acquire-load` (acquire on the wrong load) and `no-barrier` are
/// violations; `rmb-fence`, `always-lock` and `seqcst-fence` are correct. With an acquire walker
/// all five are correct: the writer's release fence pairs with the walker's own acquire, which
/// is why the 2021 patch "fixes nothing" on x86.
pub const EXPECTED: [(&str, [Outcome; 2]); 5] = [
    ("acquire-load", [Outcome::Violation, Outcome::Correct]),
    ("rmb-fence", [Outcome::Correct, Outcome::Correct]),
    ("always-lock", [Outcome::Correct, Outcome::Correct]),
    ("seqcst-fence", [Outcome::Correct, Outcome::Correct]),
    ("no-barrier", [Outcome::Violation, Outcome::Correct]),
];

/// The expected outcome for a policy (by name) under a walker model.
pub fn expected(policy: &str, walker: WalkerModel) -> Option<Outcome> {
    let column = WalkerModel::ALL.iter().position(|w| *w == walker)?;
    EXPECTED
        .iter()
        .find(|(name, _)| *name == policy)
        .map(|(_, row)| row[column])
}

/// Model-checks policy `P` under `walker`, exhaustively (no preemption bound: the model is
/// small enough).
pub fn check<P: SyncPolicy>(walker: WalkerModel) -> Verdict {
    protocol::explore::<P>(walker, false)
}

/// [`check`] for a policy named at run time (the driver's entry point; not a hot path).
pub fn check_by_name(name: &str, walker: WalkerModel) -> Option<Verdict> {
    Some(match name {
        "acquire-load" => check::<AcquireLoad>(walker),
        "rmb-fence" => check::<RmbFence>(walker),
        "always-lock" => check::<AlwaysLock>(walker),
        "seqcst-fence" => check::<SeqCstFence>(walker),
        "no-barrier" => check::<NoBarrier>(walker),
        _ => return None,
    })
}

/// One cell of the matrix, with its timing.
#[derive(Clone, Debug)]
pub struct Cell {
    /// The policy.
    pub policy: PolicyInfo,
    /// The walker model.
    pub walker: WalkerModel,
    /// What the model found.
    pub verdict: Verdict,
    /// What [`EXPECTED`] says.
    pub expected: Outcome,
    /// Wall time of this check.
    pub elapsed: Duration,
}

impl Cell {
    /// Whether the verdict is the expected one.
    pub fn as_expected(&self) -> bool {
        self.verdict.outcome() == self.expected
    }
}

/// Checks every policy under both walker models: the whole matrix, row by row.
pub fn verdict_matrix() -> Vec<Cell> {
    let mut cells = Vec::new();
    for policy in crate::ALL {
        for walker in WalkerModel::ALL {
            let start = Instant::now();
            let verdict =
                check_by_name(policy.name, walker).expect("ALL lists only known policies");
            cells.push(Cell {
                policy,
                walker,
                expected: expected(policy.name, walker).expect("EXPECTED covers every policy"),
                verdict,
                elapsed: start.elapsed(),
            });
        }
    }
    cells
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The writer is model-checked too, not assumed: with the release fence of the shared
    /// writer skipped (and the model's relaxed SPTE.W store), every lockless policy loses its
    /// pairing under both walker models (an acquire walker has no release to synchronise with),
    /// while `always-lock` still holds because the MMU lock orders the writer's stores for it.
    fn assert_without_writer_fence<P: SyncPolicy>(expected: Outcome) {
        for walker in WalkerModel::ALL {
            let verdict = protocol::explore::<P>(walker, true);
            assert_eq!(
                verdict.outcome(),
                expected,
                "{} under {} without the writer's fence: {}",
                P::NAME,
                walker.name(),
                verdict.cell()
            );
            if let Verdict::Violation { interleaving, .. } = &verdict {
                let text = interleaving.join("\n");
                assert!(text.contains("fence(Release) ELIDED  [smp_wmb]"), "{text}");
                assert!(text.contains("sync SKIPPED"), "{text}");
                assert!(text.contains("STALE"), "{text}");
            }
        }
    }

    #[test]
    fn without_the_writers_fence_every_lockless_policy_violates() {
        assert_without_writer_fence::<AcquireLoad>(Outcome::Violation);
        assert_without_writer_fence::<RmbFence>(Outcome::Violation);
        assert_without_writer_fence::<SeqCstFence>(Outcome::Violation);
        assert_without_writer_fence::<NoBarrier>(Outcome::Violation);
        assert_without_writer_fence::<AlwaysLock>(Outcome::Correct);
    }

    #[test]
    fn the_writers_fence_is_in_every_trace() {
        // The writer of the model is the shared one: its fence is logged as smp_wmb between the
        // flag stores and SPTE.W = 1 in the counterexample.
        let Verdict::Violation { interleaving, .. } = check::<NoBarrier>(WalkerModel::Relaxed)
        else {
            panic!("no-barrier must violate under a relaxed walker");
        };
        let at = |needle: &str| {
            interleaving
                .iter()
                .position(|e| e.contains(needle))
                .unwrap_or_else(|| panic!("no '{needle}' in {interleaving:#?}"))
        };
        let fence = at("fence(Release)  [smp_wmb]");
        assert!(at("store leaf.unsync = true") < fence);
        assert!(at("store root.unsync_children = 1") < fence);
        assert!(fence < at("store SPTE.W = 1"));
    }
}
