//! `summary.json`: per cell, the median per-op time over blocks with its 95% bootstrap
//! interval; each policy's ratio to `rmb-fence`, paired by block; the A/A floors of the group
//! (same binary: `rmb-fence-aa`; cross-layout: `rmb-fence-xl`) and the larger of the two, which
//! the labels use; and the resolved/bounded label. All from `shadowlab-stats`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use shadowlab_schema::Backend;
use shadowlab_stats::{
    aa_floor, median_ci, paired_ratio, BootstrapConfig, Estimate, Floor, Label, NoiseFloor,
};

use crate::matrix::{Cell, Group, AA_ARM, BASELINE, NATIVE_ARM, XL_ARM};
use crate::results::{Outcome, Sample, Status, RESULTS_VERSION};

/// The per-block value of every cell: the mean over the vCPUs' per-op means, of the blocks
/// whose run passed.
pub fn per_block(samples: &[Sample]) -> BTreeMap<Cell, BTreeMap<u32, f64>> {
    let mut acc: BTreeMap<Cell, BTreeMap<u32, (f64, u32, bool)>> = BTreeMap::new();
    for s in samples {
        let e = acc
            .entry(s.key.cell())
            .or_default()
            .entry(s.key.block)
            .or_insert((0.0, 0, true));
        match (s.key.outcome, s.key.per_op) {
            (Outcome::Pass, Some(v)) => {
                e.0 += v;
                e.1 += 1;
            }
            _ => e.2 = false,
        }
    }
    acc.into_iter()
        .map(|(c, blocks)| {
            let vals = blocks
                .into_iter()
                .filter(|(_, (_, n, ok))| *ok && *n > 0)
                .map(|(b, (sum, n, _))| (b, sum / f64::from(n)))
                .collect();
            (c, vals)
        })
        .collect()
}

/// Fewer paired blocks than this give no label: a bootstrap of one or two values has an
/// interval of (almost) no width, which would read as "resolved" without evidence.
pub const MIN_BLOCKS: usize = 3;

/// One cell's statistics.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CellSummary {
    /// The arm.
    pub arm: String,
    /// Blocks that passed / that ran.
    pub blocks_ok: usize,
    /// Blocks that ran.
    pub blocks_run: usize,
    /// Median per-op time over blocks, with its interval.
    pub median: Option<Estimate>,
    /// Ratio to `rmb-fence`, paired by block (none for the baseline and `native`).
    pub ratio: Option<Estimate>,
    /// Resolved or bounded, against the group's A/A floor.
    pub label: Option<Label>,
    /// Why a statistic is missing.
    pub note: Option<String>,
}

/// One group's statistics.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct GroupSummary {
    /// Backend.
    pub backend: Backend,
    /// Workload.
    pub workload: String,
    /// vCPUs.
    pub vcpus: u32,
    /// The unit of the medians (`ns`, or `tsc` ticks in a guest).
    pub unit: String,
    /// The same-binary A/A floor: `rmb-fence-aa` against `rmb-fence`, paired by block.
    pub aa_floor: Option<NoiseFloor>,
    /// The cross-layout A/A floor: `rmb-fence-xl` (the baseline built with another code
    /// layout) against `rmb-fence`, paired by block (none: a run without that arm).
    #[serde(default)]
    pub cross_layout_floor: Option<NoiseFloor>,
    /// The floor the labels use: the larger of the two ([`Floor`]), a fraction (none: no
    /// same-binary floor).
    #[serde(default)]
    pub floor: Option<f64>,
    /// The cells.
    pub cells: Vec<CellSummary>,
}

/// `summary.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Summary {
    /// [`RESULTS_VERSION`].
    pub results_version: u32,
    /// The run's status when this was written (an interrupted run's summary covers what ran).
    pub status: Status,
    /// What a value is.
    pub metric: String,
    /// The bootstrap's settings.
    pub bootstrap: BootstrapConfig,
    /// Per group.
    pub groups: Vec<GroupSummary>,
}

/// The summary of `samples`.
pub fn summarise(samples: &[Sample], status: Status, seed: u64) -> Summary {
    let cfg = BootstrapConfig::seeded(seed);
    let blocks = per_block(samples);
    let mut units: BTreeMap<Group, String> = BTreeMap::new();
    for s in samples.iter().filter(|s| !s.key.unit.is_empty()) {
        units.insert(s.key.cell().group, s.key.unit.clone());
    }
    let mut ran: BTreeMap<Cell, std::collections::BTreeSet<u32>> = BTreeMap::new();
    for s in samples {
        ran.entry(s.key.cell()).or_default().insert(s.key.block);
    }
    let mut groups: BTreeMap<Group, Vec<Cell>> = BTreeMap::new();
    for c in ran.keys() {
        groups.entry(c.group.clone()).or_default().push(c.clone());
    }
    let empty = BTreeMap::new();
    let vals = |c: &Cell| blocks.get(c).unwrap_or(&empty);
    let paired = |a: &BTreeMap<u32, f64>, b: &BTreeMap<u32, f64>| -> (Vec<f64>, Vec<f64>) {
        a.iter()
            .filter_map(|(k, x)| b.get(k).map(|y| (*x, *y)))
            .unzip()
    };
    let out = groups
        .into_iter()
        .map(|(g, cells)| {
            let arm = |name: &str| Cell {
                group: g.clone(),
                arm: name.into(),
            };
            let base = vals(&arm(BASELINE));
            let floor_of = |control: &str| {
                let (a, b) = paired(base, vals(&arm(control)));
                (a.len() >= MIN_BLOCKS)
                    .then(|| aa_floor(&a, &b, &cfg).ok())
                    .flatten()
            };
            let (same_binary, cross_layout) = (floor_of(AA_ARM), floor_of(XL_ARM));
            let floor = same_binary.map(|s| Floor::new(s, cross_layout));
            let cells = cells
                .iter()
                .map(|c| {
                    let v = vals(c);
                    let xs: Vec<f64> = v.values().copied().collect();
                    let mut note = Vec::new();
                    let median = match median_ci(&xs, &cfg) {
                        Ok(m) => Some(m),
                        Err(e) => {
                            note.push(format!("median: {e}"));
                            None
                        }
                    };
                    let (ratio, label) = if c.arm == BASELINE || c.arm == NATIVE_ARM {
                        (None, None)
                    } else {
                        let (p, b) = paired(v, base);
                        match paired_ratio(&p, &b, &cfg) {
                            Ok(r) if p.len() < MIN_BLOCKS => {
                                note.push(format!(
                                    "{} paired blocks (< {MIN_BLOCKS}): no label",
                                    p.len()
                                ));
                                (Some(r), None)
                            }
                            Ok(r) => match &floor {
                                Some(f) => (Some(r), Label::of(&r, f.floor).ok()),
                                None => {
                                    note.push("no A/A floor: no label".into());
                                    (Some(r), None)
                                }
                            },
                            Err(e) => {
                                note.push(format!("ratio: {e}"));
                                (None, None)
                            }
                        }
                    };
                    CellSummary {
                        arm: c.arm.clone(),
                        blocks_ok: xs.len(),
                        blocks_run: ran.get(c).map_or(0, |b| b.len()),
                        median,
                        ratio,
                        label,
                        note: (!note.is_empty()).then(|| note.join("; ")),
                    }
                })
                .collect();
            GroupSummary {
                unit: units.get(&g).cloned().unwrap_or_default(),
                backend: g.backend,
                workload: g.workload,
                vcpus: g.vcpus,
                aa_floor: same_binary,
                cross_layout_floor: cross_layout,
                floor: floor.map(|f| f.floor),
                cells,
            }
        })
        .collect();
    Summary {
        results_version: RESULTS_VERSION,
        status,
        metric: "per-op time of the workload's measured region: the mean over vCPUs of each \
                 vCPU's mean, one value per block; median over blocks with a 95% bootstrap \
                 interval; ratios to rmb-fence paired by block"
            .into(),
        bootstrap: cfg,
        groups: out,
    }
}

/// The summary as a table, one line per cell.
pub fn table(s: &Summary) -> String {
    let mut out = format!(
        "{:<8} {:<12} {:>2}  {:<14} {:>6} {:>24}  {:>22}  {}\n",
        "backend", "workload", "v", "arm", "blocks", "median [95% CI]", "ratio [95% CI]", "label"
    );
    for g in &s.groups {
        for c in &g.cells {
            let med = c.median.map_or("-".into(), |m| {
                format!("{:.1} [{:.1}, {:.1}] {}", m.value, m.ci.lo, m.ci.hi, g.unit)
            });
            let ratio = c.ratio.map_or("-".into(), |r| {
                format!("{:.3} [{:.3}, {:.3}]", r.value, r.ci.lo, r.ci.hi)
            });
            let label = match (&c.label, c.arm.as_str()) {
                (Some(l), _) => l.to_string(),
                (None, BASELINE) => match (g.floor, &g.aa_floor, &g.cross_layout_floor) {
                    (Some(f), Some(s), Some(x)) => format!(
                        "baseline; A/A floor {:.1}% (same binary {:.1}%, cross-layout {:.1}%)",
                        100.0 * f,
                        100.0 * s.floor,
                        100.0 * x.floor
                    ),
                    (Some(f), _, _) => format!("baseline; A/A floor {:.1}%", 100.0 * f),
                    _ => "baseline".into(),
                },
                (None, NATIVE_ARM) => "host reference".into(),
                (None, _) => c.note.clone().unwrap_or_default(),
            };
            out.push_str(&format!(
                "{:<8} {:<12} {:>2}  {:<14} {:>3}/{:<2} {:>24}  {:>22}  {}\n",
                g.backend.name(),
                g.workload,
                g.vcpus,
                c.arm,
                c.blocks_ok,
                c.blocks_run,
                med,
                ratio,
                label
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::results::SampleKey;

    /// One passing sample of `arm` in block `block` on sim cr3-switch at 1 vCPU.
    fn sample(arm: &str, block: u32, per_op: f64) -> Sample {
        Sample {
            key: SampleKey {
                block,
                seq: 0,
                arm: arm.into(),
                policy: crate::matrix::binary_policy(arm).into(),
                backend: Backend::Sim,
                workload: "cr3-switch".into(),
                vcpus: 1,
                vcpu: Some(0),
                outcome: Outcome::Pass,
                reason: String::new(),
                per_op: Some(per_op),
                unit: "ns".into(),
            },
            counters: BTreeMap::new(),
        }
    }

    /// 12 blocks of a drifting machine: the same-binary A/A within ±0.4%, the cross-layout arm
    /// 6% slower (a layout effect), and a policy 4% slower.
    fn samples(with_xl: bool) -> Vec<Sample> {
        let mut out = Vec::new();
        for b in 0..12u32 {
            let base = 200.0 * (1.0 + 0.3 * f64::from(b % 5) / 5.0);
            let wiggle = 1.0 + 0.004 * (f64::from(b % 3) - 1.0);
            out.push(sample(BASELINE, b, base));
            out.push(sample(AA_ARM, b, base * wiggle));
            out.push(sample("seqcst-fence", b, base * 1.04 / wiggle));
            if with_xl {
                out.push(sample(XL_ARM, b, base * 1.06 * wiggle));
            }
        }
        out
    }

    fn group(s: &Summary) -> &GroupSummary {
        assert_eq!(s.groups.len(), 1);
        &s.groups[0]
    }

    fn label_of<'a>(g: &'a GroupSummary, arm: &str) -> &'a Label {
        let c = g.cells.iter().find(|c| c.arm == arm).unwrap();
        c.label
            .as_ref()
            .unwrap_or_else(|| panic!("{arm}: {:?}", c.note))
    }

    #[test]
    fn labels_use_the_larger_of_the_same_binary_and_cross_layout_floors() {
        let s = summarise(&samples(true), Status::Complete, 1);
        let g = group(&s);
        let same = g.aa_floor.expect("same-binary floor");
        let cross = g.cross_layout_floor.expect("cross-layout floor");
        assert!(same.floor < 0.01, "{same:?}");
        assert!(cross.floor > 0.05, "{cross:?}");
        assert_eq!(g.floor, Some(cross.floor));
        // 4% is beyond the same-binary floor but within the cross-layout one: bounded.
        assert!(!label_of(g, "seqcst-fence").is_resolved());
        assert!(!label_of(g, XL_ARM).is_resolved());
        let table = table(&s);
        assert!(table.contains("same binary"), "{table}");
        assert!(table.contains("cross-layout"), "{table}");
    }

    #[test]
    fn a_run_without_the_cross_layout_arm_summarises_with_the_same_binary_floor() {
        let s = summarise(&samples(false), Status::Complete, 1);
        let g = group(&s);
        assert!(g.cross_layout_floor.is_none());
        assert_eq!(g.floor, g.aa_floor.map(|f| f.floor));
        assert!(label_of(g, "seqcst-fence").is_resolved());
        // And a summary.json written before the fields existed still reads.
        let mut json = serde_json::to_value(&s).unwrap();
        let g0 = json["groups"][0].as_object_mut().unwrap();
        g0.remove("cross_layout_floor");
        g0.remove("floor");
        let old: Summary = serde_json::from_value(json).unwrap();
        assert_eq!(old.groups[0].floor, None);
    }

    #[test]
    fn every_committed_run_loads_and_summarises() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../bench-results");
        let mut n = 0;
        for dir in std::fs::read_dir(&root).into_iter().flatten().flatten() {
            let dir = dir.path();
            if !dir.join(crate::results::MANIFEST).exists() {
                continue;
            }
            let run = crate::results::load(&dir, false)
                .unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
            let s = summarise(&run.samples, run.manifest.status, run.manifest.matrix.seed);
            for g in &s.groups {
                let has_xl = run.samples.iter().any(|x| {
                    x.key.arm == XL_ARM
                        && x.key.workload == g.workload
                        && x.key.backend == g.backend
                        && x.key.vcpus == g.vcpus
                });
                if !has_xl {
                    assert!(g.cross_layout_floor.is_none(), "{}", dir.display());
                }
                if let (Some(f), Some(same)) = (g.floor, g.aa_floor) {
                    assert!(f >= same.floor);
                }
            }
            n += 1;
        }
        assert!(n > 0, "no committed run under {}", root.display());
    }
}
