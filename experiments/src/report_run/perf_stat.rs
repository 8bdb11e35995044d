//! The per-cell counter report in the manner of `perf stat`: `perf-stat.md` (every cell in
//! full) and `perf-stat.tex` (compact: the counted counters per op, one row per cell).
//!
//! Per block, a cell's rows (one per vCPU) are combined as `perf stat` combines threads: the
//! `vcpu.perf.<counter>` values, `time_enabled_ns` and `time_running_ns` are summed over the
//! vCPUs; run-wide columns (`result.ops`, `backend.kvm_*_stats.*`, `mmu.*`) are taken once.
//! Then each figure is the median over the cell's passing blocks: the value, the value per op,
//! and the share of time the counter ran (`time_running / time_enabled`, below 100% when the
//! PMU was multiplexed). A counter the host could not open (`status` `not-supported`) is
//! `<not supported>`, never 0.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use shadowlab_stats::median;

use crate::results::{Outcome, Sample};
use crate::summary::GroupSummary;

use super::fmt::{self, tex};
use super::{cell_of, group_title, sorted_cells, RunInput};

const PERF: &str = "vcpu.perf.";

/// One counter of one cell.
#[derive(Clone, Debug, PartialEq)]
pub enum Counter {
    /// Counted in every block: medians over blocks.
    Counted {
        /// The value (summed over vCPUs).
        value: f64,
        /// The value per op.
        per_op: f64,
        /// `time_running / time_enabled`.
        running: f64,
    },
    /// Not counted in some block: that block's status (`not-supported`, ...) and reason.
    Not {
        /// The status column's value.
        status: String,
        /// The reason column's value.
        reason: String,
    },
}

/// One cell's report.
#[derive(Clone, Debug)]
pub struct CellStat {
    /// The arm.
    pub arm: String,
    /// Passing blocks.
    pub blocks: usize,
    /// Median ops per block (all vCPUs).
    pub ops: f64,
    /// The perf counters, by name (`task_clock_ns`, `cycles`, ...).
    pub perf: BTreeMap<String, Counter>,
    /// KVM's binary stats (`kvm_vm_stats.*`, `kvm_vcpu_stats.*`): median over blocks, those
    /// non-zero in some block.
    pub kvm: BTreeMap<String, f64>,
    /// Our MMU's counters (`mmu.*`): median over blocks, those non-zero in some block.
    pub mmu: BTreeMap<String, f64>,
    /// The `mmu.*` counters zero in every block.
    pub mmu_zero: Vec<String>,
}

fn num(s: &Sample, c: &str) -> Option<f64> {
    s.counters.get(c).and_then(|v| v.parse::<f64>().ok())
}

fn med(xs: &[f64]) -> f64 {
    median(xs).unwrap_or(f64::NAN)
}

/// The report of one cell from its samples.
pub fn cell_stat(arm: &str, samples: &[&Sample]) -> CellStat {
    let mut blocks: BTreeMap<u32, Vec<&Sample>> = BTreeMap::new();
    let mut failed = BTreeSet::new();
    for s in samples {
        if s.key.outcome != Outcome::Pass {
            failed.insert(s.key.block);
        }
        blocks.entry(s.key.block).or_default().push(s);
    }
    blocks.retain(|b, _| !failed.contains(b));
    let counters: BTreeSet<String> = blocks
        .values()
        .flatten()
        .flat_map(|s| s.counters.keys())
        .filter_map(|k| k.strip_prefix(PERF)?.strip_suffix(".status"))
        .map(str::to_string)
        .collect();
    let ops: Vec<f64> = blocks
        .values()
        .filter_map(|rows| num(rows[0], "result.ops"))
        .collect();
    let mut perf = BTreeMap::new();
    for c in &counters {
        let status = format!("{PERF}{c}.status");
        let not = blocks
            .values()
            .flatten()
            .find(|s| s.counters.get(&status).map(String::as_str) != Some("counted"));
        if let Some(s) = not {
            perf.insert(
                c.clone(),
                Counter::Not {
                    status: s.counters.get(&status).cloned().unwrap_or_default(),
                    reason: s
                        .counters
                        .get(&format!("{PERF}{c}.reason"))
                        .cloned()
                        .unwrap_or_default(),
                },
            );
            continue;
        }
        let (mut v, mut per, mut run) = (Vec::new(), Vec::new(), Vec::new());
        for rows in blocks.values() {
            let sum = |field: &str| -> f64 {
                rows.iter()
                    .filter_map(|r| num(r, &format!("{PERF}{c}.{field}")))
                    .sum()
            };
            let value = sum("value");
            let (en, ru) = (sum("time_enabled_ns"), sum("time_running_ns"));
            v.push(value);
            if let Some(o) = num(rows[0], "result.ops").filter(|o| *o > 0.0) {
                per.push(value / o);
            }
            if en > 0.0 {
                run.push(ru / en);
            }
        }
        perf.insert(
            c.clone(),
            Counter::Counted {
                value: med(&v),
                per_op: med(&per),
                running: med(&run),
            },
        );
    }
    let run_wide = |prefixes: &[&str]| -> (BTreeMap<String, f64>, Vec<String>) {
        let names: BTreeSet<&String> = blocks
            .values()
            .flat_map(|rows| rows[0].counters.keys())
            .filter(|k| prefixes.iter().any(|p| k.starts_with(p)))
            .collect();
        let mut nonzero = BTreeMap::new();
        let mut zero = Vec::new();
        for n in names {
            let xs: Vec<f64> = blocks.values().filter_map(|rows| num(rows[0], n)).collect();
            if xs.is_empty() {
                continue;
            }
            if xs.iter().any(|x| *x != 0.0) {
                nonzero.insert(n.clone(), med(&xs));
            } else {
                zero.push(n.clone());
            }
        }
        (nonzero, zero)
    };
    let (kvm, _) = run_wide(&["backend.kvm_vm_stats.", "backend.kvm_vcpu_stats."]);
    let (mmu, mmu_zero) = run_wide(&["mmu."]);
    CellStat {
        arm: arm.into(),
        blocks: blocks.len(),
        ops: med(&ops),
        perf,
        kvm,
        mmu,
        mmu_zero,
    }
}

/// Every cell of every group, in group and arm order.
pub fn cells(input: &RunInput) -> Vec<(&GroupSummary, CellStat)> {
    let mut out = Vec::new();
    for g in &input.groups {
        for c in sorted_cells(g) {
            let cell = cell_of(g, &c.arm);
            let samples: Vec<&Sample> = input.samples_of(&cell).collect();
            out.push((g, cell_stat(&c.arm, &samples)));
        }
    }
    out
}

/// `task_clock_ns` -> `task-clock (ns)`, `branch_misses` -> `branch-misses`.
pub fn counter_name(c: &str) -> String {
    match c.strip_suffix("_ns") {
        Some(base) => format!("{} (ns)", base.replace('_', "-")),
        None => c.replace('_', "-"),
    }
}

/// One cell in the manner of `perf stat`, as plain text lines.
pub fn perf_text(g: &GroupSummary, c: &CellStat) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        " Performance counter stats for {} on {} ({} blocks; median over blocks, summed over vCPU threads; {} ops per block):\n",
        c.arm,
        group_title(g),
        c.blocks,
        fmt::num(c.ops)
    );
    for (name, k) in &c.perf {
        match k {
            Counter::Counted {
                value,
                per_op,
                running,
            } => {
                let _ = writeln!(
                    s,
                    "{:>20}      {:<22} # {:>14} per op   ({})",
                    fmt::num(*value),
                    counter_name(name),
                    fmt::num(*per_op),
                    fmt::pct(*running)
                );
            }
            Counter::Not { status, reason } => {
                let shown = if status == "not-supported" {
                    "<not supported>".to_string()
                } else {
                    format!("<{status}>")
                };
                let _ = writeln!(s, "{shown:>20}      {:<22} # {reason}", counter_name(name));
            }
        }
    }
    block(
        &mut s,
        "KVM binary stats (non-zero; kvm_vcpu_stats summed over vCPUs)",
        &c.kvm,
        c.ops,
        "backend.",
    );
    block(
        &mut s,
        "shadowlab MMU counters (non-zero)",
        &c.mmu,
        c.ops,
        "",
    );
    if !c.mmu_zero.is_empty() {
        let names: Vec<&str> = c
            .mmu_zero
            .iter()
            .map(|n| n.trim_start_matches("mmu."))
            .collect();
        let _ = writeln!(s, "\n zero: {}", names.join(", "));
    }
    s
}

fn block(s: &mut String, title: &str, values: &BTreeMap<String, f64>, ops: f64, strip: &str) {
    let _ = writeln!(s, "\n {title}:\n");
    if values.is_empty() {
        let _ = writeln!(s, "{:>20}", "<none>");
    }
    for (n, v) in values {
        let per = if ops > 0.0 {
            fmt::num(v / ops)
        } else {
            "-".into()
        };
        let _ = writeln!(
            s,
            "{:>20}      {:<40} # {:>14} per op",
            fmt::num(*v),
            n.trim_start_matches(strip),
            per
        );
    }
}

/// `perf-stat.md`: every cell in full.
pub fn markdown(input: &RunInput) -> String {
    let mut s = String::from("<!-- generated by `shadowlab report`; do not edit -->\n\n");
    s.push_str("# Counters per cell, in the manner of `perf stat`\n\n");
    s.push_str(
        "Per cell: each perf counter of the vCPU threads (value and value per op: medians over \
         the passing blocks, summed over vCPUs; in brackets the share of time it ran, \
         time_running / time_enabled), `<not supported>` where the host could not count it; \
         then KVM's binary stats and our MMU's counters, each in its own block (run-wide, \
         median over blocks).\n\n",
    );
    for (g, c) in cells(input) {
        let _ = writeln!(s, "## {} — `{}`\n", group_title(g), c.arm);
        s.push_str("```text\n");
        s.push_str(&perf_text(g, &c));
        s.push_str("```\n\n");
    }
    s
}

/// `perf-stat.tex`: one row per cell, the per-op value of each counter counted somewhere;
/// the counters the host counted nowhere are named under the table as `<not supported>`.
pub fn latex(input: &RunInput) -> String {
    let all = cells(input);
    let counted: BTreeSet<&String> = all
        .iter()
        .flat_map(|(_, c)| c.perf.iter())
        .filter(|(_, k)| matches!(k, Counter::Counted { .. }))
        .map(|(n, _)| n)
        .collect();
    let nowhere: BTreeSet<&String> = all
        .iter()
        .flat_map(|(_, c)| c.perf.keys())
        .filter(|n| !counted.contains(n))
        .collect();
    let mut s = String::from("% generated by `shadowlab report`; do not edit\n");
    let _ = writeln!(
        s,
        "\\begin{{tabular}}{{ll{}}}",
        "r".repeat(counted.len() + 1)
    );
    s.push_str("\\toprule\n");
    let heads: Vec<String> = counted.iter().map(|n| tex(&counter_name(n))).collect();
    if !counted.is_empty() {
        let _ = writeln!(
            s,
            " & & & \\multicolumn{{{}}}{{c}}{{per op}} \\\\",
            counted.len()
        );
    }
    let _ = writeln!(s, "group & arm & ops & {} \\\\", heads.join(" & "));
    s.push_str("\\midrule\n");
    for (g, c) in &all {
        let cols: Vec<String> = counted
            .iter()
            .map(|n| match c.perf.get(*n) {
                Some(Counter::Counted {
                    per_op, running, ..
                }) if *running < 0.9995 => {
                    format!("{} ({})", tex(&fmt::num(*per_op)), tex(&fmt::pct(*running)))
                }
                Some(Counter::Counted { per_op, .. }) => tex(&fmt::num(*per_op)),
                Some(Counter::Not { .. }) => "\\textless{}not supported\\textgreater{}".into(),
                None => "--".into(),
            })
            .collect();
        let _ = writeln!(
            s,
            "{} & \\texttt{{{}}} & {} & {} \\\\",
            tex(&group_title(g)),
            tex(&c.arm),
            tex(&fmt::num(c.ops)),
            cols.join(" & ")
        );
    }
    s.push_str("\\bottomrule\n");
    if !nowhere.is_empty() {
        let names: Vec<String> = nowhere
            .iter()
            .map(|n| format!("\\texttt{{{}}}", tex(&counter_name(n))))
            .collect();
        let _ = writeln!(
            s,
            "\\multicolumn{{{}}}{{l}}{{\\textless{{}}not supported\\textgreater{{}} on this host: {}}} \\\\",
            counted.len() + 3,
            names.join(", ")
        );
    }
    s.push_str("\\end{tabular}\n");
    s
}
