//! A loom model of the unsync protocol, run over the policies' own `is_unsync_root` code.
//!
//! [`check`] explores every interleaving (and every value a relaxed load may return) of two
//! vCPUs: one runs the writer side of `mmu_try_to_unsync_pages()`, the other walks its page
//! table, writes its guest PTE through the now-writable mapping, flushes, and runs
//! `kvm_mmu_sync_roots()` with the policy under test. A *violation* is an execution in which the
//! flush skipped the sync, so the guest goes on with a stale translation.
//!
//! The walker's own load of SPTE.W is modelled two ways ([`WalkerModel`]): relaxed, which is all
//! the portable C11 / LKMM reading grants, and acquire, which is what x86 TSO plus the VM exit
//! between the walk and the check provide. [`EXPECTED`] is the verdict matrix that the 2021 patch
//! argues for; the test suite and `shadowlab verify` hold the model to it.

mod protocol;

use std::time::{Duration, Instant};

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

/// What one model check found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// No execution skipped a needed sync.
    Correct {
        /// Executions loom explored.
        executions: u64,
    },
    /// At least one execution skipped a needed sync.
    Violation {
        /// Executions loom explored.
        executions: u64,
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
            Verdict::Correct { executions } | Verdict::Violation { executions, .. } => *executions,
        }
    }

    /// The matrix cell: `correct (N executions)` or `VIOLATION (k of N executions)`.
    pub fn cell(&self) -> String {
        match self {
            Verdict::Correct { executions } => format!("correct ({executions} executions)"),
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
    protocol::explore::<P>(walker)
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
