//! `callgrind.json`: the exact instruction counts of a run, one per (arm, sim workload).
//!
//! `shadowlab run` runs each policy's worker, and the cross-layout build, once under callgrind
//! ([`crate::callgrind::count`]) on every `sim` workload of its matrix, with 1 vCPU, the seed
//! [`SEED`] and the fixed iterations of [`ITERS`]: a deterministic run, so every count is exact
//! and needs no statistics. Where valgrind is missing the record says so ([`Valgrind`]), and
//! where one count fails its entry says why ([`CountOutcome::Failed`]).
//!
//! ```text
//! { "valgrind": { "status": "available", "version": "valgrind-3.19.0" },
//!   "backend": "sim", "vcpus": 1,
//!   "entries": [ { "arm": "rmb-fence", "policy": "rmb-fence", "layout_pad": 0, "sha256": "…",
//!                  "workload": "cr3-switch", "seed": 1, "iters": 3000,
//!                  "outcome": "counted", "ops": 3000, "instructions": 13064070,
//!                  "instructions_per_op": 4354.69, "sync_roots": 3010 }, … ] }
//! ```

use serde::{Deserialize, Serialize};
use shadowlab_schema::Backend;

/// The file's name in a run folder.
pub const FILE: &str = "callgrind.json";

/// The seed of every counted run: the worker's default, the one the timed runs use.
pub const SEED: u64 = 1;

/// Iterations of each workload's counted run. A count is exact at any length, so these only
/// have to make the steady state outweigh the first iterations (the first touch of each page
/// and table) and keep the pass short: under callgrind a run is ~50x slower than natively, plus
/// ~1 s of start-up, so each is ~1-2 s (a few ms of native work).
pub const ITERS: [(&str, u64); 7] = [
    ("cr3-switch", 3_000),
    ("pt-churn", 200),
    ("unsync-race", 1_000),
    ("mmap-churn", 100),
    ("fault-storm", 50),
    ("exit-floor", 10_000),
    ("relink-race", 200),
];

/// The iterations of `workload`'s counted run (none: a workload this table does not know).
pub fn iters_of(workload: &str) -> Option<u64> {
    ITERS.iter().find(|(w, _)| *w == workload).map(|(_, n)| *n)
}

/// Whether valgrind ran on the host that made the record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "kebab-case")]
pub enum Valgrind {
    /// It did.
    Available {
        /// `valgrind --version`.
        version: String,
    },
    /// It is not installed or does not run: no counts.
    NotAvailable {
        /// Why (what starting `valgrind --version` gave).
        reason: String,
    },
}

/// How one count ended.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "kebab-case")]
pub enum CountOutcome {
    /// Counted.
    Counted {
        /// Ops the worker reported.
        ops: u64,
        /// Instructions executed in the measured region (callgrind's total `Ir`).
        instructions: u64,
        /// `instructions / ops`.
        instructions_per_op: f64,
        /// The worker's `kvm_mmu_sync_roots` calls (one lockless check each), when reported.
        sync_roots: Option<u64>,
    },
    /// The worker under callgrind failed, or the run was interrupted.
    Failed {
        /// Why.
        reason: String,
    },
}

/// One arm's count on one workload.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CallgrindEntry {
    /// The arm (`rmb-fence`, `acquire-load`, …, `rmb-fence-xl`).
    pub arm: String,
    /// The policy its binary was built with.
    pub policy: String,
    /// The binary's layout pad (bytes ahead of the MMU).
    pub layout_pad: u64,
    /// The binary's sha256 (as in the manifest).
    pub sha256: String,
    /// The workload.
    pub workload: String,
    /// `--seed`.
    pub seed: u64,
    /// `--iters`.
    pub iters: u64,
    /// The count, or why there is none.
    #[serde(flatten)]
    pub outcome: CountOutcome,
}

impl CallgrindEntry {
    /// Instructions per op, if counted.
    pub fn per_op(&self) -> Option<f64> {
        match self.outcome {
            CountOutcome::Counted {
                instructions_per_op,
                ..
            } => Some(instructions_per_op),
            CountOutcome::Failed { .. } => None,
        }
    }
}

/// `callgrind.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CallgrindRecord {
    /// valgrind's version, or why there are no counts.
    pub valgrind: Valgrind,
    /// The backend of every count (`sim`: the deterministic one).
    pub backend: Backend,
    /// vCPUs of every count (1: deterministic).
    pub vcpus: u32,
    /// Per (workload, arm), in the matrix's order.
    pub entries: Vec<CallgrindEntry>,
}

impl CallgrindRecord {
    /// The entry of `arm` on `workload`.
    pub fn entry(&self, workload: &str, arm: &str) -> Option<&CallgrindEntry> {
        self.entries
            .iter()
            .find(|e| e.workload == workload && e.arm == arm)
    }

    /// The workloads counted, in order of first appearance.
    pub fn workloads(&self) -> Vec<&str> {
        let mut out: Vec<&str> = Vec::new();
        for e in &self.entries {
            if !out.contains(&e.workload.as_str()) {
                out.push(&e.workload);
            }
        }
        out
    }

    /// The arms counted, in order of first appearance.
    pub fn arms(&self) -> Vec<&str> {
        let mut out: Vec<&str> = Vec::new();
        for e in &self.entries {
            if !out.contains(&e.arm.as_str()) {
                out.push(&e.arm);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(arm: &str, workload: &str, instructions: u64) -> CallgrindEntry {
        CallgrindEntry {
            arm: arm.into(),
            policy: "rmb-fence".into(),
            layout_pad: 0,
            sha256: "00".into(),
            workload: workload.into(),
            seed: SEED,
            iters: 10,
            outcome: CountOutcome::Counted {
                ops: 10,
                instructions,
                instructions_per_op: instructions as f64 / 10.0,
                sync_roots: Some(11),
            },
        }
    }

    #[test]
    fn every_workload_has_its_counted_iterations() {
        for w in shadowlab_workloads::Workload::names() {
            assert!(iters_of(w).is_some_and(|n| n > 0), "{w}");
        }
        assert_eq!(iters_of("no-such-workload"), None);
    }

    #[test]
    fn the_record_round_trips_through_json_with_flat_entries() {
        let mut failed = entry("acquire-load", "pt-churn", 0);
        failed.outcome = CountOutcome::Failed {
            reason: "worker under callgrind exited with 1".into(),
        };
        let r = CallgrindRecord {
            valgrind: Valgrind::Available {
                version: "valgrind-3.19.0".into(),
            },
            backend: Backend::Sim,
            vcpus: 1,
            entries: vec![entry("rmb-fence", "cr3-switch", 43_000), failed],
        };
        let json = serde_json::to_string(&r).unwrap();
        assert!(json.contains("\"outcome\":\"counted\""), "{json}");
        assert!(json.contains("\"instructions\":43000"), "{json}");
        assert!(json.contains("\"status\":\"available\""), "{json}");
        let back: CallgrindRecord = serde_json::from_str(&json).unwrap();
        assert_eq!(back, r);
        assert_eq!(back.workloads(), ["cr3-switch", "pt-churn"]);
        assert_eq!(back.arms(), ["rmb-fence", "acquire-load"]);
        assert_eq!(
            back.entry("cr3-switch", "rmb-fence").unwrap().per_op(),
            Some(4300.0)
        );
        assert_eq!(
            back.entry("pt-churn", "acquire-load").unwrap().per_op(),
            None
        );
        let none = CallgrindRecord {
            valgrind: Valgrind::NotAvailable {
                reason: "No such file or directory (os error 2)".into(),
            },
            entries: vec![],
            ..r
        };
        let json = serde_json::to_string(&none).unwrap();
        assert!(json.contains("\"status\":\"not-available\""), "{json}");
        assert_eq!(
            serde_json::from_str::<CallgrindRecord>(&json).unwrap(),
            none
        );
    }
}
