//! The callgrind pass of `shadowlab run`: each policy's worker, and the cross-layout build, run
//! once under callgrind on every `sim` workload of the matrix (1 vCPU, a fixed seed, fixed
//! iterations: deterministic), written to `callgrind.json`
//! ([`shadowlab_experiments::callgrind_record`]).
//!
//! A sharded run counts in shard 1 only (for the whole matrix's sim workloads), and `merge`
//! carries shard 1's record: one host, one valgrind, the binaries of one manifest entry.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};

use shadowlab_experiments::callgrind::{self, CallgrindError};
use shadowlab_experiments::callgrind_record::{
    self, CallgrindEntry, CallgrindRecord, CountOutcome, Valgrind,
};
use shadowlab_schema::Backend;

use crate::build::BinaryRecord;
use crate::matrix::{binary_of, binary_policy, MatrixSpec, Shard, UNSOUND, XL_ARM};

/// Whether the run (or this shard of it) makes the record: unsharded, or shard 1.
pub fn counts_here(shard: Option<Shard>) -> bool {
    shard.is_none_or(|s| s.k == 1)
}

/// The arms counted: every policy of the matrix; the unsound control `no-barrier` too when the
/// matrix has every sound policy (a preset's matrix: it is timed only with
/// `--with-unsound-control`, but its count is the reference an x86 build of the lockless check
/// must equal, which the paper's claims check); and the cross-layout build when the matrix has
/// it (`rmb-fence-aa` runs the `rmb-fence` binary: the same count).
pub fn arms(spec: &MatrixSpec) -> Vec<String> {
    let mut arms = spec.policies.clone();
    let every_sound = shadowlab_policies::ALL
        .iter()
        .filter(|p| p.name != UNSOUND)
        .all(|p| arms.iter().any(|a| a == p.name));
    if every_sound && !arms.iter().any(|a| a == UNSOUND) {
        arms.push(UNSOUND.into());
    }
    if spec.cross_layout {
        arms.push(XL_ARM.into());
    }
    arms
}

/// The `sim` workloads of the matrix, each once, in the matrix's order.
pub fn workloads(spec: &MatrixSpec) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for g in spec.groups.iter().filter(|g| g.backend == Backend::Sim) {
        if !out.contains(&g.workload) {
            out.push(g.workload.clone());
        }
    }
    out
}

/// The builds the pass needs (by [`binary_of`] name): none when the matrix has no sim group.
pub fn binaries_needed(spec: &MatrixSpec) -> Vec<String> {
    if workloads(spec).is_empty() {
        return Vec::new();
    }
    arms(spec)
        .iter()
        .map(|a| binary_of(a).to_string())
        .collect()
}

/// Counts every (sim workload, arm) of `spec` with the builds in `binaries` (keyed by
/// [`binary_of`] name). Stops counting at Ctrl-C: the entries not run say so.
pub fn count_all(
    spec: &MatrixSpec,
    binaries: &BTreeMap<String, BinaryRecord>,
    interrupted: &AtomicBool,
    log: &mut dyn FnMut(&str),
) -> CallgrindRecord {
    let mut record = CallgrindRecord {
        valgrind: match callgrind::valgrind_version() {
            Ok(version) => Valgrind::Available { version },
            Err(e) => {
                let reason = match e {
                    CallgrindError::NotAvailable { reason } => reason,
                    other => other.to_string(),
                };
                log(&format!(
                    "instruction counts: not available (valgrind: {reason}); callgrind.json says so"
                ));
                Valgrind::NotAvailable { reason }
            }
        },
        backend: Backend::Sim,
        vcpus: 1,
        entries: Vec::new(),
    };
    if matches!(record.valgrind, Valgrind::NotAvailable { .. }) {
        return record;
    }
    let scratch = std::env::temp_dir();
    for workload in workloads(spec) {
        for arm in arms(spec) {
            let Some(bin) = binaries.get(binary_of(&arm)) else {
                continue;
            };
            let iters = callgrind_record::iters_of(&workload);
            let outcome = if interrupted.load(Ordering::SeqCst) {
                CountOutcome::Failed {
                    reason: "not run: interrupted".into(),
                }
            } else if let Some(iters) = iters {
                let mut args: Vec<String> = [
                    "--backend",
                    "sim",
                    "--workload",
                    &workload,
                    "--vcpus",
                    "1",
                    "--seed",
                    &callgrind_record::SEED.to_string(),
                    "--iters",
                    &iters.to_string(),
                ]
                .map(String::from)
                .to_vec();
                if binary_policy(&arm) == UNSOUND {
                    args.push("--allow-unsound".into());
                }
                match callgrind::count(&bin.path, &args, &scratch) {
                    Ok(c) => CountOutcome::Counted {
                        ops: c.ops,
                        instructions: c.instructions,
                        instructions_per_op: c.per_op(),
                        sync_roots: c.sync_roots,
                    },
                    Err(e) => CountOutcome::Failed {
                        reason: e.to_string(),
                    },
                }
            } else {
                CountOutcome::Failed {
                    reason: format!("no counted iteration count for workload {workload}"),
                }
            };
            log(&match &outcome {
                CountOutcome::Counted {
                    instructions_per_op,
                    ..
                } => format!(
                    "callgrind {arm} sim {workload}: {instructions_per_op:.2} instructions/op"
                ),
                CountOutcome::Failed { reason } => {
                    format!("callgrind {arm} sim {workload}: {reason}")
                }
            });
            record.entries.push(CallgrindEntry {
                arm: arm.clone(),
                policy: bin.policy.clone(),
                layout_pad: bin.layout_pad,
                sha256: bin.sha256.clone(),
                workload: workload.clone(),
                seed: callgrind_record::SEED,
                iters: iters.unwrap_or(0),
                outcome,
            });
        }
    }
    record
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::matrix::Group;

    fn spec(cross_layout: bool) -> MatrixSpec {
        let g = |backend, workload: &str, vcpus| Group {
            backend,
            workload: workload.into(),
            vcpus,
        };
        MatrixSpec {
            policies: vec!["rmb-fence".into(), "seqcst-fence".into()],
            groups: vec![
                g(Backend::Sim, "cr3-switch", 2),
                g(Backend::Kvm, "pt-churn", 1),
                g(Backend::Sim, "pt-churn", 1),
                g(Backend::Sim, "cr3-switch", 1),
            ],
            iters: vec![0; 4],
            reps: 1,
            seed: 1,
            pin: true,
            cross_layout,
        }
    }

    #[test]
    fn every_sim_workload_once_and_every_build_but_the_aa_arm() {
        let s = spec(true);
        assert_eq!(workloads(&s), ["cr3-switch", "pt-churn"]);
        assert_eq!(arms(&s), ["rmb-fence", "seqcst-fence", "rmb-fence-xl"]);
        assert_eq!(
            binaries_needed(&s),
            ["rmb-fence", "seqcst-fence", "rmb-fence-xl"]
        );
        assert_eq!(arms(&spec(false)), ["rmb-fence", "seqcst-fence"]);
        // Every sound policy: the unsound control is counted too (not timed).
        let mut all = spec(false);
        all.policies = ["rmb-fence", "acquire-load", "always-lock", "seqcst-fence"]
            .map(String::from)
            .to_vec();
        assert_eq!(arms(&all).last().map(String::as_str), Some("no-barrier"));
        let mut kvm_only = spec(true);
        kvm_only.groups.retain(|g| g.backend != Backend::Sim);
        assert!(binaries_needed(&kvm_only).is_empty());
    }

    #[test]
    fn only_shard_one_counts() {
        assert!(counts_here(None));
        assert!(counts_here(Some(Shard { k: 1, n: 3 })));
        assert!(!counts_here(Some(Shard { k: 2, n: 3 })));
    }
}
