//! `summary.json`: per cell, the median per-op time over blocks with its 95% bootstrap
//! interval; each policy's ratio to `rmb-fence`, paired by block; the A/A floor of the group;
//! and the resolved/bounded label. All from `shadowlab-stats`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use shadowlab_schema::Backend;
use shadowlab_stats::{
    aa_floor, median_ci, paired_ratio, BootstrapConfig, Estimate, Label, NoiseFloor,
};

use crate::matrix::{Cell, Group, AA_ARM, BASELINE, NATIVE_ARM};
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
    /// The A/A floor: `rmb-fence-aa` against `rmb-fence`, paired by block.
    pub aa_floor: Option<NoiseFloor>,
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
            let floor = {
                let (a, b) = paired(base, vals(&arm(AA_ARM)));
                (a.len() >= MIN_BLOCKS)
                    .then(|| aa_floor(&a, &b, &cfg).ok())
                    .flatten()
            };
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
                aa_floor: floor,
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
                (None, BASELINE) => match &g.aa_floor {
                    Some(f) => format!("baseline; A/A floor {:.1}%", 100.0 * f.floor),
                    None => "baseline".into(),
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
