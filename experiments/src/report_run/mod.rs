//! The run-based pieces of `shadowlab report`: tables and figures made only from results
//! folders (`bench-results/<run-id>/`), with deterministic bytes so that `report --check` can
//! compare them with the committed ones.
//!
//! - [`tables`] — cost per policy (`cost-per-policy.md`, `.tex`) and the README's results table;
//! - [`figures`] — `cost-per-policy.svg` (ratios to `rmb-fence` with the A/A floor) and
//!   `scaling-vcpus.svg` (sim, per-op time against vCPUs);
//! - [`lock_wait`] — `lock-wait-share.{md,tex,svg}`;
//! - [`native`] — `ours-vs-native.{md,tex,svg}`;
//! - [`perf_stat`] — `perf-stat.md` (every cell) and `perf-stat.tex` (compact);
//! - [`readme`] — the README section between `<!-- generated:results -->` and `<!-- /generated -->`.
//!
//! Several run folders may be given (say one per machine); their groups are put side by side,
//! and a group present in two of them is an error.

pub mod figures;
pub mod fmt;
pub mod lock_wait;
pub mod native;
pub mod perf_stat;
pub mod plot;
pub mod readme;
pub mod tables;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use shadowlab_stats::BootstrapConfig;

use crate::matrix::{Cell, AA_ARM, BASELINE, NATIVE_ARM};
use crate::piece::Piece;
use crate::report_error::ReportError;
use crate::results::{self, Sample};
use crate::summary::{CellSummary, GroupSummary, Summary};

/// The arm of the cross-layout A/A control (the `rmb-fence` binary built with another layout),
/// when a run has it.
pub const XL_ARM: &str = "rmb-fence-xl";

/// The file in the output folder naming the run folders the run-based pieces were made from,
/// one per line, relative to the workspace root where they are inside it.
pub const SOURCE: &str = "SOURCE";

/// The results folders a report is made from, read and checked.
#[derive(Debug)]
pub struct RunInput {
    /// Each run's id (its folder's name), in the order given.
    pub run_ids: Vec<String>,
    /// Every group of every run, in the order given (within a run: the summary's order).
    pub groups: Vec<GroupSummary>,
    /// Every sample of every run.
    pub samples: Vec<Sample>,
    /// The bootstrap settings of the first run (used for the intervals computed here).
    pub bootstrap: BootstrapConfig,
    /// The exact instruction counts of the first run that has a `callgrind.json` (the
    /// tables' exact column), if any.
    pub instructions: Option<shadowlab_experiments::callgrind_record::CallgrindRecord>,
    /// Each run's manifest, in the order given.
    pub manifests: Vec<results::Manifest>,
    /// The first run's `reproduce.json`, where `shadowlab reproduce` made it.
    pub reproduce: Option<crate::reproduce_record::ReproduceRecord>,
}

impl RunInput {
    /// Reads the run folders `dirs` (at least one).
    pub fn load(dirs: &[PathBuf]) -> Result<RunInput, ReportError> {
        let mut input = RunInput {
            run_ids: Vec::new(),
            groups: Vec::new(),
            samples: Vec::new(),
            bootstrap: BootstrapConfig::seeded(0),
            instructions: None,
            manifests: Vec::new(),
            reproduce: None,
        };
        let mut seen: BTreeMap<(String, String, u32), String> = BTreeMap::new();
        for (i, dir) in dirs.iter().enumerate() {
            let loaded = results::load(dir, true).map_err(|e| ReportError::BadRun {
                path: dir.clone(),
                why: match e {
                    crate::error::DriverError::BadResults { why, .. } => why,
                    crate::error::DriverError::Incomplete(_, status) => {
                        format!("an incomplete run (status {status})")
                    }
                    other => other.to_string(),
                },
            })?;
            let summary = read_summary(dir)?;
            if i == 0 {
                input.bootstrap = summary.bootstrap;
            }
            let id = loaded.manifest.run_id.clone();
            for g in summary.groups {
                let key = (g.backend.to_string(), g.workload.clone(), g.vcpus);
                if let Some(other) = seen.insert(key, id.clone()) {
                    return Err(ReportError::DuplicateGroup {
                        group: group_title(&g),
                        first: other,
                        second: id,
                    });
                }
                input.groups.push(g);
            }
            if i == 0 {
                input.reproduce = crate::reproduce_record::read(dir)?;
            }
            if input.instructions.is_none() {
                input.instructions = crate::report_callgrind::read(dir)?;
            }
            input.samples.extend(loaded.samples);
            input.manifests.push(loaded.manifest);
            input.run_ids.push(id);
        }
        Ok(input)
    }

    /// The exact instructions per op of `arm` in group `g`: counted on `sim` with 1 vCPU only
    /// (the deterministic case), so none for any other group.
    pub fn instructions_per_op(&self, g: &GroupSummary, arm: &str) -> Option<f64> {
        if g.backend != shadowlab_schema::Backend::Sim || g.vcpus != 1 {
            return None;
        }
        self.instructions
            .as_ref()
            .and_then(|r| r.entry(&g.workload, arm))
            .and_then(|e| e.per_op())
    }

    /// The samples of one cell.
    pub fn samples_of<'a>(&'a self, cell: &'a Cell) -> impl Iterator<Item = &'a Sample> + 'a {
        self.samples.iter().filter(move |s| {
            s.key.arm == cell.arm
                && s.key.backend == cell.group.backend
                && s.key.workload == cell.group.workload
                && s.key.vcpus == cell.group.vcpus
        })
    }
}

/// Reads `summary.json` of `dir`.
fn read_summary(dir: &Path) -> Result<Summary, ReportError> {
    let path = dir.join(results::SUMMARY);
    let text = std::fs::read_to_string(&path).map_err(|e| ReportError::BadRun {
        path: dir.to_path_buf(),
        why: format!("{}: {e}", results::SUMMARY),
    })?;
    serde_json::from_str(&text).map_err(|e| ReportError::BadRun {
        path: dir.to_path_buf(),
        why: format!("{}: {e}", results::SUMMARY),
    })
}

/// `backend workload, N vCPU(s)`.
pub fn group_title(g: &GroupSummary) -> String {
    format!(
        "{} {}, {} vCPU{}",
        g.backend.name(),
        g.workload,
        g.vcpus,
        if g.vcpus == 1 { "" } else { "s" }
    )
}

/// The cell of `arm` in `g`.
pub fn cell_of(g: &GroupSummary, arm: &str) -> Cell {
    Cell {
        group: crate::matrix::Group {
            backend: g.backend,
            workload: g.workload.clone(),
            vcpus: g.vcpus,
        },
        arm: arm.into(),
    }
}

/// Where an arm sorts in every table and figure: the baseline, the other policies in the
/// policy list's order, the A/A arms, `native`, then anything else by name.
pub fn arm_rank(arm: &str) -> (usize, String) {
    let policies = shadowlab_policies::ALL;
    let r = if arm == BASELINE {
        0
    } else if let Some(i) = policies.iter().position(|p| p.name == arm) {
        1 + i
    } else if arm == AA_ARM {
        10
    } else if arm == XL_ARM {
        11
    } else if arm == NATIVE_ARM {
        12
    } else {
        20
    };
    (r, arm.to_string())
}

/// The cells of `g`, in [`arm_rank`] order.
pub fn sorted_cells(g: &GroupSummary) -> Vec<&CellSummary> {
    let mut v: Vec<&CellSummary> = g.cells.iter().collect();
    v.sort_by_key(|c| arm_rank(&c.arm));
    v
}

/// Whether `arm` is one of the A/A controls (the baseline's binary run again).
pub fn is_control(arm: &str) -> bool {
    arm == AA_ARM || arm == XL_ARM
}

/// The cross-layout floor of `g`, a fraction, when the group has the [`XL_ARM`]: how far the
/// interval of its ratio to `rmb-fence` reaches from 1 (the same rule as the same-binary floor).
pub fn xl_floor(g: &GroupSummary) -> Option<f64> {
    if let Some(f) = &g.cross_layout_floor {
        return Some(f.floor);
    }
    g.cells
        .iter()
        .find(|c| c.arm == XL_ARM)
        .and_then(|c| c.ratio)
        .map(|r| (r.ci.lo - 1.0).abs().max((r.ci.hi - 1.0).abs()))
}

/// The floor the group's labels use: the larger of the same-binary and the cross-layout A/A
/// floors (summary.json's `floor`; the same-binary one in runs written before it).
pub fn label_floor(g: &GroupSummary) -> Option<f64> {
    g.floor.or_else(|| g.aa_floor.as_ref().map(|f| f.floor))
}

/// The groups a policy comparison is made in (every backend but `native`).
pub fn policy_groups(input: &RunInput) -> Vec<&GroupSummary> {
    input
        .groups
        .iter()
        .filter(|g| g.cells.iter().any(|c| c.arm == BASELINE))
        .collect()
}

/// The names of the pieces [`pieces`] makes (besides [`SOURCE`]).
pub const RUN_PIECE_NAMES: [&str; 12] = [
    "cost-per-policy.md",
    "cost-per-policy.tex",
    "cost-per-policy.svg",
    "scaling-vcpus.svg",
    "lock-wait-share.md",
    "lock-wait-share.tex",
    "lock-wait-share.svg",
    "ours-vs-native.md",
    "ours-vs-native.tex",
    "ours-vs-native.svg",
    "perf-stat.md",
    "perf-stat.tex",
];

/// Every run-based piece made from `input`, and [`SOURCE`] naming `sources`.
pub fn pieces(input: &RunInput, sources: &[String]) -> Result<Vec<Piece>, ReportError> {
    let lock = lock_wait::rows(input);
    let nat = native::rows(input);
    let texts: [String; 12] = [
        tables::cost_markdown(input),
        tables::cost_latex(input),
        figures::cost_svg(input)?,
        figures::scaling_svg(input)?,
        lock_wait::markdown(&lock),
        lock_wait::latex(&lock),
        lock_wait::svg(&lock)?,
        native::markdown(&nat),
        native::latex(&nat),
        native::svg(&nat)?,
        perf_stat::markdown(input),
        perf_stat::latex(input),
    ];
    let mut out: Vec<Piece> = RUN_PIECE_NAMES
        .iter()
        .zip(texts)
        .map(|(name, text)| Piece {
            name,
            bytes: text.into_bytes(),
        })
        .collect();
    let mut src = String::new();
    for s in sources {
        src.push_str(s);
        src.push('\n');
    }
    out.push(Piece {
        name: SOURCE,
        bytes: src.into_bytes(),
    });
    Ok(out)
}

/// The way `dir` is written in [`SOURCE`]: relative to `root` where it is inside it.
pub fn source_name(root: &Path, dir: &Path) -> String {
    let abs = if dir.is_absolute() {
        dir.to_path_buf()
    } else {
        std::env::current_dir()
            .map(|c| c.join(dir))
            .unwrap_or_else(|_| dir.to_path_buf())
    };
    let abs = abs.canonicalize().unwrap_or(abs);
    let root = root.canonicalize().unwrap_or_else(|_| root.to_path_buf());
    match abs.strip_prefix(&root) {
        Ok(rel) => rel.display().to_string(),
        Err(_) => abs.display().to_string(),
    }
}

/// The run folders named in `out/SOURCE` (relative names taken from `root`), or none when
/// there is no such file.
pub fn committed_sources(root: &Path, out: &Path) -> Result<Vec<PathBuf>, ReportError> {
    let path = out.join(SOURCE);
    match std::fs::read_to_string(&path) {
        Ok(text) => Ok(text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(|l| root.join(l))
            .collect()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(source) => Err(ReportError::Io {
            what: "read",
            path,
            source,
        }),
    }
}

#[cfg(test)]
pub mod synthetic;

#[cfg(test)]
mod tests;
