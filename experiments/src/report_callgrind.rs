//! The exact column of the report: instructions per op for each arm on each `sim` workload, from
//! a run's `callgrind.json` ([`shadowlab_experiments::callgrind_record`]), with the difference
//! to `rmb-fence` in instructions per op, in percent, and per lockless check (`sync_roots`
//! call): `instructions-per-op.md` and `instructions-per-op.tex`.

use std::path::{Path, PathBuf};

use shadowlab_experiments::callgrind_record::{
    self, CallgrindEntry, CallgrindRecord, CountOutcome, Valgrind,
};

use crate::matrix::BASELINE;
use crate::piece::Piece;

/// Why a run's instruction counts could not be read.
#[derive(Debug, thiserror::Error)]
pub enum CallgrindReportError {
    /// The run folder is not a folder.
    #[error("{0}: not a folder")]
    NotAFolder(PathBuf),
    /// `callgrind.json` could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// `callgrind.json` is not a record.
    #[error("{path} is not a callgrind record: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What serde said.
        source: serde_json::Error,
    },
}

/// The instruction counts of run folder `dir`: none where it has no `callgrind.json` (a run
/// made with `--no-callgrind`, or before the counts existed). The one reader of the file: the
/// report's tables and the claims both take the record from here.
pub fn read(dir: &Path) -> Result<Option<CallgrindRecord>, CallgrindReportError> {
    if !dir.is_dir() {
        return Err(CallgrindReportError::NotAFolder(dir.to_path_buf()));
    }
    let path = dir.join(callgrind_record::FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(CallgrindReportError::Read { path, source }),
    };
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|source| CallgrindReportError::Parse { path, source })
}

/// `instructions-per-op.md` and `instructions-per-op.tex` of `record`.
pub fn pieces(record: &CallgrindRecord) -> Vec<Piece> {
    let rows = rows(record);
    vec![
        Piece {
            name: "instructions-per-op.md",
            bytes: markdown(record, &rows).into_bytes(),
        },
        Piece {
            name: "instructions-per-op.tex",
            bytes: latex(record, &rows).into_bytes(),
        },
    ]
}

/// One table row: an arm on a workload, with its differences to the baseline.
struct Row<'a> {
    /// The entry.
    entry: &'a CallgrindEntry,
    /// Instructions per op.
    per_op: Option<f64>,
    /// Instructions per op minus the baseline's (none for the baseline, or without a count).
    delta: Option<f64>,
    /// `delta` in percent of the baseline's.
    delta_pct: Option<f64>,
    /// The difference in total instructions per `sync_roots` call (one lockless check each).
    delta_per_check: Option<f64>,
    /// `sync_roots` calls per op.
    checks_per_op: Option<f64>,
}

fn rows(record: &CallgrindRecord) -> Vec<Row<'_>> {
    let mut out = Vec::new();
    for w in record.workloads() {
        let base = record.entry(w, BASELINE);
        for arm in record.arms() {
            let Some(entry) = record.entry(w, arm) else {
                continue;
            };
            let per_op = entry.per_op();
            let checks = match entry.outcome {
                CountOutcome::Counted {
                    ops, sync_roots, ..
                } => sync_roots.map(|c| (c, ops)),
                CountOutcome::Failed { .. } => None,
            };
            let delta = match (per_op, base.and_then(CallgrindEntry::per_op)) {
                (Some(p), Some(b)) if arm != BASELINE => Some((p, b)),
                _ => None,
            };
            out.push(Row {
                entry,
                per_op,
                delta: delta.map(|(p, b)| p - b),
                delta_pct: delta.map(|(p, b)| 100.0 * (p - b) / b),
                delta_per_check: delta.and_then(|(p, b)| {
                    let (c, ops) = checks?;
                    (c > 0).then(|| (p - b) * ops as f64 / c as f64)
                }),
                checks_per_op: checks.and_then(|(c, ops)| (ops > 0).then(|| c as f64 / ops as f64)),
            });
        }
    }
    out
}

/// `v` formatted, or `none` where there is no value.
fn num(v: Option<f64>, none: &str, fmt: impl Fn(f64) -> String) -> String {
    v.map_or_else(|| none.to_string(), fmt)
}

/// The arm as the tables name it: the cross-layout build with its pad.
fn arm_label(e: &CallgrindEntry) -> String {
    if e.layout_pad == 0 {
        e.arm.clone()
    } else {
        format!("{} (pad {} B)", e.arm, e.layout_pad)
    }
}

/// What was run, in words: the same for both formats.
fn about(record: &CallgrindRecord) -> String {
    let iters: Vec<String> = record
        .workloads()
        .iter()
        .filter_map(|w| {
            record
                .entries
                .iter()
                .find(|e| e.workload == *w)
                .map(|e| format!("{w} {}", e.iters))
        })
        .collect();
    let seed = record
        .entries
        .first()
        .map_or(callgrind_record::SEED, |e| e.seed);
    let version = match &record.valgrind {
        Valgrind::Available { version } => version.as_str(),
        Valgrind::NotAvailable { .. } => "-",
    };
    format!(
        "Exact instruction counts: each arm's worker run once on `{}` with {} vCPU, seed {seed}, \
         under valgrind's callgrind ({version}) collecting only the measured region, divided \
         by the ops the worker reports. Iterations: {}. Δ is against `{BASELINE}`; Δ/check \
         divides the difference in total instructions by the `sync_roots` calls (one lockless \
         `is_unsync_root` check each).",
        record.backend.name(),
        record.vcpus,
        iters.join(", ")
    )
}

/// The failures, one line each.
fn failures<'a>(rows: &'a [Row<'a>]) -> Vec<(&'a CallgrindEntry, &'a str)> {
    rows.iter()
        .filter_map(|r| match &r.entry.outcome {
            CountOutcome::Failed { reason } => Some((r.entry, reason.as_str())),
            CountOutcome::Counted { .. } => None,
        })
        .collect()
}

fn markdown(record: &CallgrindRecord, rows: &[Row<'_>]) -> String {
    let mut s = String::from(
        "<!-- generated by `shadowlab report` from a run's callgrind.json; do not edit -->\n\
         # Instructions per op (exact, callgrind)\n\n",
    );
    if let Valgrind::NotAvailable { reason } = &record.valgrind {
        s.push_str(&format!(
            "Not available: valgrind did not run on the host of this run ({reason}).\n"
        ));
        return s;
    }
    s.push_str(&about(record));
    s.push_str("\n\n| workload | arm | instructions/op | Δ/op | Δ % | Δ/check | checks/op |\n");
    s.push_str("| --- | --- | ---: | ---: | ---: | ---: | ---: |\n");
    let mut last = "";
    for r in rows {
        let w = if r.entry.workload == last {
            ""
        } else {
            &r.entry.workload
        };
        last = &r.entry.workload;
        s.push_str(&format!(
            "| {w} | {} | {} | {} | {} | {} | {} |\n",
            arm_label(r.entry),
            match r.per_op {
                Some(p) => format!("{p:.2}"),
                None => "failed".into(),
            },
            num(r.delta, "—", |d| format!("{d:+.3}")),
            num(r.delta_pct, "—", |d| format!("{d:+.4}%")),
            num(r.delta_per_check, "—", |d| format!("{d:+.3}")),
            num(r.checks_per_op, "—", |c| format!("{c:.3}")),
        ));
    }
    let failed = failures(rows);
    if !failed.is_empty() {
        s.push('\n');
        for (e, reason) in failed {
            s.push_str(&format!("- {} on {}: {reason}\n", e.arm, e.workload));
        }
    }
    s
}

/// LaTeX-escapes the characters the names and reasons can hold.
fn tex(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '_' | '%' | '&' | '#' | '$' | '{' | '}' => {
                out.push('\\');
                out.push(c);
            }
            '\\' => out.push_str("\\textbackslash{}"),
            '~' => out.push_str("\\textasciitilde{}"),
            '^' => out.push_str("\\textasciicircum{}"),
            'Δ' => out.push_str("$\\Delta$"),
            '`' => {}
            c => out.push(c),
        }
    }
    out
}

fn latex(record: &CallgrindRecord, rows: &[Row<'_>]) -> String {
    let mut s = String::from(
        "% generated by `shadowlab report` from a run's callgrind.json; do not edit\n",
    );
    if let Valgrind::NotAvailable { reason } = &record.valgrind {
        s.push_str(&format!(
            "Instruction counts not available: valgrind did not run on the host of this run ({}).\n",
            tex(reason)
        ));
        return s;
    }
    s.push_str(&tex(&about(record)));
    s.push_str(
        "\n\n\\begin{tabular}{llrrrrr}\n\\toprule\nworkload & arm & instr./op & $\\Delta$/op & \
         $\\Delta$ \\% & $\\Delta$/check & checks/op \\\\\n\\midrule\n",
    );
    let mut last = "";
    for r in rows {
        let w = if r.entry.workload == last {
            String::new()
        } else {
            format!("\\texttt{{{}}}", tex(&r.entry.workload))
        };
        last = &r.entry.workload;
        s.push_str(&format!(
            "{w} & \\texttt{{{}}} & {} & {} & {} & {} & {} \\\\\n",
            tex(&arm_label(r.entry)),
            match r.per_op {
                Some(p) => format!("{p:.2}"),
                None => "failed".into(),
            },
            num(r.delta, "---", |d| format!("{d:+.3}")),
            num(r.delta_pct, "---", |d| format!("{d:+.4}\\%")),
            num(r.delta_per_check, "---", |d| format!("{d:+.3}")),
            num(r.checks_per_op, "---", |c| format!("{c:.3}")),
        ));
    }
    s.push_str("\\bottomrule\n\\end{tabular}\n");
    let failed = failures(rows);
    if !failed.is_empty() {
        s.push_str("\\begin{itemize}\n");
        for (e, reason) in failed {
            s.push_str(&format!(
                "\\item \\texttt{{{}}} on \\texttt{{{}}}: {}\n",
                tex(&e.arm),
                tex(&e.workload),
                tex(reason)
            ));
        }
        s.push_str("\\end{itemize}\n");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use shadowlab_schema::Backend;

    fn entry(arm: &str, workload: &str, instructions: u64, pad: u64) -> CallgrindEntry {
        CallgrindEntry {
            arm: arm.into(),
            policy: if arm.starts_with("rmb-fence") {
                "rmb-fence".into()
            } else {
                arm.into()
            },
            layout_pad: pad,
            sha256: "ab".into(),
            workload: workload.into(),
            seed: 1,
            iters: 1000,
            outcome: CountOutcome::Counted {
                ops: 1000,
                instructions,
                instructions_per_op: instructions as f64 / 1000.0,
                sync_roots: Some(1010),
            },
        }
    }

    fn record() -> CallgrindRecord {
        let mut failed = entry("always-lock", "pt-churn", 0, 0);
        failed.outcome = CountOutcome::Failed {
            reason: "worker under callgrind exited with 1: no_way".into(),
        };
        CallgrindRecord {
            valgrind: Valgrind::Available {
                version: "valgrind-3.19.0".into(),
            },
            backend: Backend::Sim,
            vcpus: 1,
            entries: vec![
                entry("rmb-fence", "cr3-switch", 4_354_690, 0),
                entry("seqcst-fence", "cr3-switch", 4_355_700, 0),
                entry("always-lock", "cr3-switch", 4_400_000, 0),
                entry("rmb-fence-xl", "cr3-switch", 4_354_690, 1536),
                entry("rmb-fence", "pt-churn", 407_119_193, 0),
                failed,
            ],
        }
    }

    #[test]
    fn the_table_gives_each_arm_its_difference_to_the_baseline() {
        let r = record();
        let md = String::from_utf8(pieces(&r)[0].bytes.clone()).unwrap();
        // seqcst-fence: 1010 more instructions over 1000 ops and 1010 checks.
        assert!(
            md.contains("| seqcst-fence | 4355.70 | +1.010 | +0.0232% | +1.000 | 1.010 |"),
            "{md}"
        );
        assert!(
            md.contains("| cr3-switch | rmb-fence | 4354.69 | — | — | — | 1.010 |"),
            "{md}"
        );
        assert!(
            md.contains("| rmb-fence-xl (pad 1536 B) | 4354.69 | +0.000 | +0.0000% |"),
            "{md}"
        );
        assert!(md.contains("| always-lock | failed | — |"), "{md}");
        assert!(
            md.contains("- always-lock on pt-churn: worker under callgrind"),
            "{md}"
        );
        assert!(
            md.contains("valgrind-3.19.0") && md.contains("pt-churn 1000"),
            "{md}"
        );
        let tex = String::from_utf8(pieces(&r)[1].bytes.clone()).unwrap();
        assert!(
            tex.contains(
                "& \\texttt{seqcst-fence} & 4355.70 & +1.010 & +0.0232\\% & +1.000 & 1.010 \\\\"
            ),
            "{tex}"
        );
        assert!(tex.contains("no\\_way"), "{tex}");
        assert!(
            tex.contains("\\texttt{rmb-fence} & 4354.69 & --- & --- & --- & 1.010"),
            "{tex}"
        );
        assert!(!tex.contains('—'), "{tex}");
        assert_eq!(tex.matches("\\begin{tabular}").count(), 1);
        assert_eq!(pieces(&r)[0].name, "instructions-per-op.md");
        assert_eq!(pieces(&r)[1].name, "instructions-per-op.tex");
    }

    #[test]
    fn a_host_without_valgrind_says_so() {
        let r = CallgrindRecord {
            valgrind: Valgrind::NotAvailable {
                reason: "No such file or directory (os error 2)".into(),
            },
            entries: vec![],
            ..record()
        };
        for p in pieces(&r) {
            let s = String::from_utf8(p.bytes).unwrap();
            assert!(
                s.contains("not available") || s.contains("Not available"),
                "{s}"
            );
            assert!(s.contains("os error 2"), "{s}");
        }
    }

    #[test]
    fn a_run_folder_without_counts_gives_no_pieces_and_a_bad_one_an_error() {
        let from_run = |d: &Path| read(d).map(|r| r.map_or_else(Vec::new, |r| pieces(&r)));
        let dir = tempfile::tempdir().unwrap();
        assert!(from_run(dir.path()).unwrap().is_empty());
        std::fs::write(dir.path().join(callgrind_record::FILE), "{\"valgrind\": 3").unwrap();
        let e = from_run(dir.path()).unwrap_err();
        assert!(e.to_string().contains("not a callgrind record"), "{e}");
        let ok = serde_json::to_string(&record()).unwrap();
        std::fs::write(dir.path().join(callgrind_record::FILE), ok).unwrap();
        assert_eq!(from_run(dir.path()).unwrap(), pieces(&record()));
        assert!(matches!(
            from_run(&dir.path().join("absent")),
            Err(CallgrindReportError::NotAFolder(_))
        ));
    }
}
