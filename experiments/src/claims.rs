//! The paper's checkable claims (`paper/claims.toml`), evaluated against a run, and the
//! tolerances a new run is compared with the committed one by.
//!
//! A claim is a sentence of the paper with a checkable form ([`Check`]): "`always-lock` costs
//! more than `rmb-fence` on sim cr3-switch with 2 vCPUs" is [`Check::Slower`], resolved in that
//! cell with a ratio above 1. [`evaluate`] gives each claim a [`Status`]: it holds, it fails
//! (with the figures why), or the run cannot check it (the cell is not in its matrix, too few
//! blocks for a label, no `callgrind.json`).
//!
//! [`Tolerance`] is the one place the comparison rule's numbers live (the `[tolerance]` table
//! of `claims.toml`); [`differing_cells`] applies it, and [`tolerances_tex`] states it for the
//! paper's artifact appendix, so that the text cannot drift from what `reproduce` checks.

use std::path::Path;

use serde::Deserialize;
use shadowlab_schema::Backend;
use shadowlab_stats::{Estimate, Label};

use shadowlab_experiments::callgrind_record::CallgrindRecord;

use crate::matrix::BASELINE;
use crate::piece::Piece;
use crate::summary::{GroupSummary, Summary};

/// The claims file, compiled in (a change to it rebuilds the driver).
pub const CLAIMS_TOML: &str = include_str!("../../paper/claims.toml");

/// The name of the optional instruction-count file in a run folder.
const CALLGRIND: &str = shadowlab_experiments::callgrind_record::FILE;

/// Why the claims or a run's evidence could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ClaimsError {
    /// `paper/claims.toml` does not parse into [`ClaimSet`].
    #[error("paper/claims.toml: {0}")]
    Parse(#[from] toml::de::Error),
    /// A claims file with two claims of one id.
    #[error("paper/claims.toml: claim id '{0}' appears twice")]
    DuplicateId(String),
    /// A run's `summary.json` could not be read.
    #[error("cannot read {path}: {why}")]
    Summary {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        why: String,
    },
}

/// `claims.toml`: the tolerances and the claims.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ClaimSet {
    /// The comparison rule's numbers.
    pub tolerance: Tolerance,
    /// The claims, in the paper's order.
    pub claim: Vec<Claim>,
}

/// The tolerances of the comparison of a new run with the committed one.
///
/// A cell **differs** when its ratio to `rmb-fence` moved beyond chance and beyond noise: the
/// two runs' 95% intervals of the ratio do not overlap **and** `|new − old|` exceeds
/// `max(A/A floor of the group in the old run, in the new run, min_change)`. A claim
/// **differs** when its status (holds / fails / not checkable) is not the one it has in the
/// committed run: that is how a label flipping between resolved and bounded counts where a
/// claim depends on it.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Tolerance {
    /// The least change of a ratio (a fraction of rmb-fence's cost: 0.05 = 5 points) that can
    /// count as a difference, however quiet both runs were.
    pub min_change: f64,
    /// Exact instruction counts per op are equal within this relative difference.
    pub instructions: f64,
}

/// One claim.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Claim {
    /// A stable name (kebab-case).
    pub id: String,
    /// The paper's sentence (`code` in backticks).
    pub sentence: String,
    /// Its checkable form.
    pub check: Check,
}

/// What a claim says, in a form a run can check.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Check {
    /// `arm`'s ratio to `rmb-fence` in this one cell is resolved, above 1.
    Slower {
        /// The arm.
        arm: String,
        /// Backend.
        backend: Backend,
        /// Workload.
        workload: String,
        /// vCPUs.
        vcpus: u32,
    },
    /// Every policy arm's ratio (not the A/A arms, not native) is bounded: within the A/A
    /// floor. Only `arm`'s, and only on `backend`, where given.
    Bounded {
        /// Only this arm.
        arm: Option<String>,
        /// Only this backend.
        backend: Option<Backend>,
    },
    /// The arms' exact instruction counts per op are equal (within
    /// [`Tolerance::instructions`]) in every cell of `backend` where all of them were counted.
    SameInstructions {
        /// The arms (policies).
        arms: Vec<String>,
        /// Backend.
        backend: Backend,
    },
}

/// The claims of `paper/claims.toml`.
pub fn claim_set() -> Result<ClaimSet, ClaimsError> {
    parse(CLAIMS_TOML)
}

/// Parses a claims file.
pub fn parse(text: &str) -> Result<ClaimSet, ClaimsError> {
    let set: ClaimSet = toml::from_str(text)?;
    let mut ids = std::collections::BTreeSet::new();
    for c in &set.claim {
        if !ids.insert(c.id.as_str()) {
            return Err(ClaimsError::DuplicateId(c.id.clone()));
        }
    }
    Ok(set)
}

/// What a claim is checked against: a run's summary, and its instruction counts if it has any.
#[derive(Clone, Debug)]
pub struct Evidence {
    /// The run's `summary.json`.
    pub summary: Summary,
    /// Its instruction counts: `Ok(None)` when the run has no `callgrind.json`, `Err(why)`
    /// when it has one that could not be read.
    pub instructions: Result<Option<CallgrindRecord>, String>,
}

impl Evidence {
    /// The evidence in run folder `dir`: `summary.json`, and `callgrind.json` if present.
    pub fn read(dir: &Path) -> Result<Evidence, ClaimsError> {
        let path = dir.join(crate::results::SUMMARY);
        let summary = std::fs::read_to_string(&path)
            .map_err(|e| e.to_string())
            .and_then(|t| serde_json::from_str::<Summary>(&t).map_err(|e| e.to_string()))
            .map_err(|why| ClaimsError::Summary { path, why })?;
        let instructions = crate::report_callgrind::read(dir).map_err(|e| e.to_string());
        Ok(Evidence {
            summary,
            instructions,
        })
    }
}

/// A claim's status in one run.
#[derive(Clone, Debug, PartialEq)]
pub enum Status {
    /// It holds: the figures that show it.
    Holds(String),
    /// It does not: the figures why.
    Fails(String),
    /// This run cannot say: why.
    NotCheckable(String),
}

impl Status {
    /// `holds`, `fails`, `not checkable`.
    pub fn word(&self) -> &'static str {
        match self {
            Status::Holds(_) => "holds",
            Status::Fails(_) => "fails",
            Status::NotCheckable(_) => "not checkable",
        }
    }

    /// The figures (or the reason).
    pub fn detail(&self) -> &str {
        match self {
            Status::Holds(s) | Status::Fails(s) | Status::NotCheckable(s) => s,
        }
    }

    /// Same status, whatever the figures.
    pub fn same_kind(&self, other: &Status) -> bool {
        std::mem::discriminant(self) == std::mem::discriminant(other)
    }
}

/// Whether `arm` is a policy's own arm (not the baseline, not an A/A arm of the baseline's
/// binary, not `native`).
fn is_policy_arm(arm: &str) -> bool {
    arm != BASELINE && crate::list::policy_names().contains(&arm)
}

/// `sim cr3-switch 2 vCPUs`.
fn group_name(g: &GroupSummary) -> String {
    format!(
        "{} {} {} vCPU{}",
        g.backend,
        g.workload,
        g.vcpus,
        if g.vcpus == 1 { "" } else { "s" }
    )
}

/// `1.98× [1.85, 2.59]`.
fn ratio_text(r: &Estimate) -> String {
    format!("{:.2}× [{:.2}, {:.2}]", r.value, r.ci.lo, r.ci.hi)
}

/// `, A/A floor 12.3%` or nothing.
fn floor_text(g: &GroupSummary) -> String {
    group_floor(g).map_or(String::new(), |f| format!(", A/A floor {:.1}%", 100.0 * f))
}

/// The floor `g`'s labels use: the larger of the same-binary and cross-layout A/A floors
/// (the same-binary one in runs written before the cross-layout arm).
fn group_floor(g: &GroupSummary) -> Option<f64> {
    g.floor.or_else(|| g.aa_floor.as_ref().map(|f| f.floor))
}

/// The status of `check` in `ev`.
pub fn evaluate(check: &Check, ev: &Evidence, tol: &Tolerance) -> Status {
    match check {
        Check::Slower {
            arm,
            backend,
            workload,
            vcpus,
        } => {
            let Some(g) =
                ev.summary.groups.iter().find(|g| {
                    g.backend == *backend && g.workload == *workload && g.vcpus == *vcpus
                })
            else {
                return Status::NotCheckable(format!(
                    "the run has no {backend} {workload} {vcpus}-vCPU group"
                ));
            };
            let Some(c) = g.cells.iter().find(|c| c.arm == *arm) else {
                return Status::NotCheckable(format!(
                    "the run has no {arm} arm in {}",
                    group_name(g)
                ));
            };
            let (Some(ratio), Some(label)) = (c.ratio, c.label) else {
                return Status::NotCheckable(format!(
                    "{arm} in {} has no label ({})",
                    group_name(g),
                    c.note.as_deref().unwrap_or("no ratio")
                ));
            };
            let figures = format!("{arm} in {}: {label}{}", group_name(g), floor_text(g));
            match label {
                Label::Resolved { ratio: r, .. } if r > 1.0 => Status::Holds(figures),
                Label::Resolved { .. } => Status::Fails(format!("{figures} (faster, not slower)")),
                Label::Bounded { .. } => {
                    Status::Fails(format!("{figures}; ratio {}", ratio_text(&ratio)))
                }
            }
        }
        Check::Bounded { arm, backend } => {
            let mut bounded = Vec::new();
            let mut resolved = Vec::new();
            let mut unlabelled = 0usize;
            for g in &ev.summary.groups {
                if backend.is_some_and(|b| b != g.backend) {
                    continue;
                }
                for c in &g.cells {
                    if !is_policy_arm(&c.arm) || arm.as_ref().is_some_and(|a| *a != c.arm) {
                        continue;
                    }
                    match c.label {
                        Some(l @ Label::Resolved { .. }) => resolved.push(format!(
                            "{} in {}: {l}{}",
                            c.arm,
                            group_name(g),
                            floor_text(g)
                        )),
                        Some(Label::Bounded {
                            max_abs_delta_pct, ..
                        }) => bounded.push(max_abs_delta_pct),
                        None => unlabelled += 1,
                    }
                }
            }
            let scope = match (arm, backend) {
                (Some(a), Some(b)) => format!("{a} on {b}"),
                (Some(a), None) => a.clone(),
                (None, Some(b)) => format!("policy cells on {b}"),
                (None, None) => "policy cells".into(),
            };
            let skipped = if unlabelled > 0 {
                format!(" ({unlabelled} without a label not counted)")
            } else {
                String::new()
            };
            if !resolved.is_empty() {
                return Status::Fails(format!("resolved: {}{skipped}", resolved.join("; ")));
            }
            if bounded.is_empty() {
                return Status::NotCheckable(format!("the run has no labelled {scope}{skipped}"));
            }
            let (lo, hi) = bounded.iter().fold((f64::INFINITY, 0.0f64), |(lo, hi), b| {
                (lo.min(*b), hi.max(*b))
            });
            let range = if hi - lo < 0.05 {
                format!("{hi:.1}%")
            } else {
                format!("{lo:.1}% to {hi:.1}%")
            };
            Status::Holds(format!(
                "{} {scope} bounded, |Δ| < {range} at 95%{skipped}",
                bounded.len()
            ))
        }
        Check::SameInstructions { arms, backend } => {
            let record = match &ev.instructions {
                Ok(Some(r)) => r,
                Ok(None) => return Status::NotCheckable(format!("the run has no {CALLGRIND}")),
                Err(why) => return Status::NotCheckable(why.clone()),
            };
            if record.backend != *backend {
                return Status::NotCheckable(format!(
                    "{CALLGRIND} counts {}, not {backend}",
                    record.backend
                ));
            }
            let v = record.vcpus;
            let mut same = Vec::new();
            let mut differ = Vec::new();
            for w in record.workloads() {
                // An arm not counted, or whose count failed, leaves the cell out.
                let of: Vec<(&str, f64)> = arms
                    .iter()
                    .filter_map(|a| {
                        record
                            .entry(w, a)
                            .and_then(|e| e.per_op())
                            .map(|x| (a.as_str(), x))
                    })
                    .collect();
                if of.len() < arms.len() {
                    continue;
                }
                let min = of.iter().map(|x| x.1).fold(f64::INFINITY, f64::min);
                let max = of.iter().map(|x| x.1).fold(0.0, f64::max);
                let spread = if min > 0.0 {
                    max / min - 1.0
                } else {
                    f64::INFINITY
                };
                let text = format!(
                    "{backend} {w} {v} vCPU: {}",
                    of.iter()
                        .map(|(a, x)| format!("{a} {x:.1}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                );
                if spread <= tol.instructions {
                    same.push(text);
                } else {
                    differ.push(format!("{text} (differ by {:.2}%)", 100.0 * spread));
                }
            }
            if !differ.is_empty() {
                Status::Fails(format!("instructions per op {}", differ.join("; ")))
            } else if same.is_empty() {
                Status::NotCheckable(format!(
                    "{CALLGRIND} counts no {backend} cell for all of {}",
                    arms.join(", ")
                ))
            } else {
                Status::Holds(format!(
                    "instructions per op, equal within {}%: {}",
                    100.0 * tol.instructions,
                    same.join("; ")
                ))
            }
        }
    }
}

/// Every claim of `set` with its status in `ev`.
pub fn evaluate_all<'a>(set: &'a ClaimSet, ev: &Evidence) -> Vec<(&'a Claim, Status)> {
    set.claim
        .iter()
        .map(|c| (c, evaluate(&c.check, ev, &set.tolerance)))
        .collect()
}

/// A cell whose ratio moved beyond the tolerance.
#[derive(Clone, Debug, PartialEq)]
pub struct CellDiff {
    /// `sim cr3-switch 2 vCPUs`.
    pub group: String,
    /// The arm.
    pub arm: String,
    /// The ratio in the committed run.
    pub old: Estimate,
    /// In the new run.
    pub new: Estimate,
    /// What it could move by before it counts: `max(floors, min_change)`.
    pub allowed: f64,
}

impl std::fmt::Display for CellDiff {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "cell {} {}: ratio to {BASELINE} {} committed, {} now; moved {:.1} points, tolerance {:.1}",
            self.group,
            self.arm,
            ratio_text(&self.old),
            ratio_text(&self.new),
            100.0 * (self.new.value - self.old.value).abs(),
            100.0 * self.allowed
        )
    }
}

/// What comparing two runs' cells found.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CellComparison {
    /// Cells with a ratio in both runs.
    pub compared: usize,
    /// Of those, the ones that differ ([`Tolerance`]).
    pub differ: Vec<CellDiff>,
    /// Cells with a ratio in the committed run and none in the new one (`group arm`).
    pub missing: Vec<String>,
}

/// The cells of `new` whose ratio to `rmb-fence` differs from `old`'s beyond `tol` (see
/// [`Tolerance`]).
pub fn differing_cells(old: &Summary, new: &Summary, tol: &Tolerance) -> CellComparison {
    let mut out = CellComparison::default();
    for og in &old.groups {
        let ng = new
            .groups
            .iter()
            .find(|g| g.backend == og.backend && g.workload == og.workload && g.vcpus == og.vcpus);
        for oc in &og.cells {
            let Some(o) = oc.ratio else { continue };
            let n = ng.and_then(|g| g.cells.iter().find(|c| c.arm == oc.arm)?.ratio);
            let Some(n) = n else {
                out.missing.push(format!("{} {}", group_name(og), oc.arm));
                continue;
            };
            out.compared += 1;
            let floor = |g: Option<&GroupSummary>| g.and_then(group_floor).unwrap_or(0.0);
            let allowed = floor(Some(og)).max(floor(ng)).max(tol.min_change);
            let overlap = o.ci.lo <= n.ci.hi && n.ci.lo <= o.ci.hi;
            if !overlap && (n.value - o.value).abs() > allowed {
                out.differ.push(CellDiff {
                    group: group_name(og),
                    arm: oc.arm.clone(),
                    old: o,
                    new: n,
                    allowed,
                });
            }
        }
    }
    out
}

/// LaTeX-escapes `s` and sets `code` (in backticks) in `\texttt`.
fn tex(s: &str) -> String {
    let mut out = String::new();
    for (i, part) in s.split('`').enumerate() {
        let mut e = String::new();
        for ch in part.chars() {
            match ch {
                '\\' => e.push_str("\\textbackslash{}"),
                '&' | '%' | '$' | '#' | '_' | '{' | '}' => {
                    e.push('\\');
                    e.push(ch);
                }
                '~' => e.push_str("\\textasciitilde{}"),
                '^' => e.push_str("\\textasciicircum{}"),
                '×' => e.push_str("$\\times$"),
                'Δ' => e.push_str("$\\Delta$"),
                '<' => e.push_str("$<$"),
                '>' => e.push_str("$>$"),
                _ => e.push(ch),
            }
        }
        if i % 2 == 1 {
            out.push_str(&format!("\\texttt{{{e}}}"));
        } else {
            out.push_str(&e);
        }
    }
    out
}

/// The name of the run a report is made from, for the generated text.
fn run_name(dir: &Path) -> String {
    dir.file_name().map_or_else(
        || dir.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    )
}

/// `claims.md`: each claim's sentence, its status in the run, and the figures.
pub fn render_markdown(results: &[(&Claim, Status)], run: &str) -> String {
    let mut out = format!(
        "<!-- generated by `shadowlab report` from paper/claims.toml and {run}; do not edit -->\n\n\
         Claims checked against run `{run}`:\n\n"
    );
    for (c, s) in results {
        out.push_str(&format!(
            "- {} (`{}`)  \n  **{}**: {}\n",
            c.sentence,
            c.id,
            s.word(),
            s.detail()
        ));
    }
    out
}

/// `claims.tex`: the same, for the paper.
pub fn render_latex(results: &[(&Claim, Status)], run: &str) -> String {
    let mut out = format!(
        "% generated by `shadowlab report` from paper/claims.toml and {run}; do not edit\n\
         Checked against run \\texttt{{{}}}:\n\\begin{{enumerate}}\n",
        tex(run)
    );
    for (c, s) in results {
        out.push_str(&format!(
            "  \\item {} \\\\\n    \\emph{{{}}} (\\texttt{{{}}}): {}\n",
            tex(&c.sentence),
            s.word(),
            tex(&c.id),
            tex(s.detail())
        ));
    }
    out.push_str("\\end{enumerate}\n");
    out
}

/// `tolerances.tex`: the comparison rule with the numbers of `claims.toml`.
pub fn tolerances_tex(t: &Tolerance) -> String {
    format!(
        "% generated by `shadowlab report` from paper/claims.toml; do not edit\n\
         \\texttt{{shadowlab reproduce}} compares the new run with the committed one. A cell \
         \\emph{{differs}} when its ratio to \\texttt{{rmb-fence}} moved beyond chance and beyond \
         noise: the two runs' 95\\% intervals of the ratio do not overlap, \\emph{{and}} the \
         change exceeds the larger of the group's A/A floor in either run and {:.1} points \
         (a ratio of 1 is 100 points). A claim \\emph{{differs}} when its status (holds, fails, \
         not checkable) is not the one it has in the committed run; so a label flipping between \
         resolved and bounded counts where a claim depends on it. Exact instruction counts per \
         operation are equal within {}\\%.\n",
        100.0 * t.min_change,
        100.0 * t.instructions
    )
}

/// The pieces of the report made from the claims and the run in `dir`: `claims.md`,
/// `claims.tex`, `tolerances.tex`.
pub fn pieces(dir: &Path) -> Result<Vec<Piece>, ClaimsError> {
    let set = claim_set()?;
    let ev = Evidence::read(dir)?;
    let results = evaluate_all(&set, &ev);
    let run = run_name(dir);
    Ok(vec![
        Piece {
            name: "claims.md",
            bytes: render_markdown(&results, &run).into_bytes(),
        },
        Piece {
            name: "claims.tex",
            bytes: render_latex(&results, &run).into_bytes(),
        },
        Piece {
            name: "tolerances.tex",
            bytes: tolerances_tex(&set.tolerance).into_bytes(),
        },
    ])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::results::Status as RunStatus;
    use crate::summary::CellSummary;
    use shadowlab_stats::{BootstrapConfig, Ci, NoiseFloor};

    fn est(value: f64, lo: f64, hi: f64) -> Estimate {
        Estimate {
            value,
            ci: Ci {
                lo,
                hi,
                level: 0.95,
            },
            n: 5,
        }
    }

    /// A cell with `ratio`, labelled against `floor` by the real rule.
    fn cell(arm: &str, ratio: Option<Estimate>, floor: f64) -> CellSummary {
        CellSummary {
            arm: arm.into(),
            blocks_ok: 5,
            blocks_run: 5,
            median: Some(est(100.0, 90.0, 110.0)),
            ratio,
            label: ratio.map(|r| Label::of(&r, floor).unwrap()),
            note: None,
        }
    }

    /// A group whose arms have these ratios, with A/A floor `floor`.
    fn group(
        backend: Backend,
        workload: &str,
        vcpus: u32,
        floor: f64,
        arms: &[(&str, Estimate)],
    ) -> GroupSummary {
        let mut cells = vec![cell(BASELINE, None, floor)];
        cells.extend(arms.iter().map(|(a, r)| cell(a, Some(*r), floor)));
        GroupSummary {
            backend,
            workload: workload.into(),
            vcpus,
            unit: "ns".into(),
            aa_floor: Some(NoiseFloor {
                ratio: est(1.0, 1.0 - floor, 1.0 + floor),
                floor,
            }),
            cross_layout_floor: None,
            floor: Some(floor),
            cells,
        }
    }

    fn summary(groups: Vec<GroupSummary>) -> Summary {
        Summary {
            results_version: crate::results::RESULTS_VERSION,
            status: RunStatus::Complete,
            metric: "test".into(),
            bootstrap: BootstrapConfig::seeded(1),
            groups,
        }
    }

    /// A run where every claim of the committed claims file can be checked and holds.
    fn good_run() -> Summary {
        let flat = est(1.01, 0.95, 1.06);
        summary(vec![
            group(
                Backend::Sim,
                "cr3-switch",
                2,
                0.1,
                &[
                    ("acquire-load", flat),
                    ("always-lock", est(1.9, 1.8, 2.1)),
                    ("rmb-fence-aa", flat),
                ],
            ),
            group(
                Backend::Kvm,
                "cr3-switch",
                1,
                0.2,
                &[
                    ("acquire-load", flat),
                    ("always-lock", est(1.05, 0.9, 1.15)),
                ],
            ),
        ])
    }

    fn counts(per_op: [f64; 3]) -> CallgrindRecord {
        use shadowlab_experiments::callgrind_record::{CallgrindEntry, CountOutcome, Valgrind};
        CallgrindRecord {
            valgrind: Valgrind::Available {
                version: "valgrind-test".into(),
            },
            backend: Backend::Sim,
            vcpus: 1,
            entries: ["acquire-load", "rmb-fence", "no-barrier"]
                .iter()
                .zip(per_op)
                .map(|(p, x)| CallgrindEntry {
                    arm: (*p).into(),
                    policy: (*p).into(),
                    layout_pad: 0,
                    sha256: String::new(),
                    workload: "cr3-switch".into(),
                    seed: 1,
                    iters: 1000,
                    outcome: CountOutcome::Counted {
                        ops: 1000,
                        instructions: (x * 1000.0) as u64,
                        instructions_per_op: x,
                        sync_roots: Some(1000),
                    },
                })
                .collect(),
        }
    }

    fn status_of(id: &str, ev: &Evidence) -> Status {
        let set = claim_set().unwrap();
        let c = set.claim.iter().find(|c| c.id == id).unwrap();
        evaluate(&c.check, ev, &set.tolerance)
    }

    #[test]
    fn the_committed_claims_file_parses_and_names_known_arms() {
        let set = claim_set().unwrap();
        assert!(set.claim.len() >= 4);
        let known = crate::list::policy_names();
        for c in &set.claim {
            let arms: Vec<&String> = match &c.check {
                Check::Slower { arm, .. } => vec![arm],
                Check::Bounded { arm, .. } => arm.iter().collect(),
                Check::SameInstructions { arms, .. } => arms.iter().collect(),
            };
            for a in arms {
                assert!(known.contains(&a.as_str()), "{}: unknown arm {a}", c.id);
            }
        }
    }

    #[test]
    fn an_unknown_kind_or_field_or_a_duplicate_id_is_an_error() {
        let head = "[tolerance]\nmin_change = 0.05\ninstructions = 0.001\n";
        let bad_kind = format!("{head}[[claim]]\nid='a'\nsentence='s'\ncheck={{kind='faster'}}\n");
        assert!(matches!(parse(&bad_kind), Err(ClaimsError::Parse(_))));
        let bad_field = format!(
            "{head}[[claim]]\nid='a'\nsentence='s'\ncheck={{kind='bounded', policy='x'}}\n"
        );
        assert!(matches!(parse(&bad_field), Err(ClaimsError::Parse(_))));
        let c = "[[claim]]\nid='a'\nsentence='s'\ncheck={kind='bounded'}\n";
        let dup = format!("{head}{c}{c}");
        let e = parse(&dup).unwrap_err();
        assert!(matches!(e, ClaimsError::DuplicateId(_)), "{e}");
        assert_eq!(e.to_string().lines().count(), 1);
    }

    #[test]
    fn claims_hold_on_a_run_that_shows_them() {
        let ev = Evidence {
            summary: good_run(),
            instructions: Ok(Some(counts([412.0, 412.0, 412.2]))),
        };
        for c in claim_set().unwrap().claim {
            let s = status_of(&c.id, &ev);
            assert!(matches!(s, Status::Holds(_)), "{}: {s:?}", c.id);
        }
        let s = status_of("lock-costs-with-two-vcpus", &ev);
        assert!(s.detail().contains("1.90×"), "{s:?}");
        assert!(s.detail().contains("A/A floor 10.0%"), "{s:?}");
    }

    #[test]
    fn claims_fail_with_the_figures_why() {
        let mut run = good_run();
        // always-lock within the floor on sim; acquire-load resolved on kvm.
        run.groups[0].cells[2] = cell("always-lock", Some(est(1.05, 0.98, 1.12)), 0.1);
        run.groups[1].cells[1] = cell("acquire-load", Some(est(1.5, 1.4, 1.6)), 0.2);
        let ev = Evidence {
            summary: run,
            instructions: Ok(Some(counts([412.0, 412.0, 450.0]))),
        };
        let s = status_of("lock-costs-with-two-vcpus", &ev);
        assert!(matches!(s, Status::Fails(_)), "{s:?}");
        assert!(
            s.detail().contains("bounded") && s.detail().contains("1.05×"),
            "{s:?}"
        );
        let s = status_of("nothing-resolvable-on-kvm", &ev);
        assert!(matches!(s, Status::Fails(_)), "{s:?}");
        assert!(
            s.detail()
                .contains("acquire-load in kvm cr3-switch 1 vCPU: resolved: 1.50×"),
            "{s:?}"
        );
        assert!(matches!(
            status_of("acquire-within-floor", &ev),
            Status::Fails(_)
        ));
        let s = status_of("same-instructions-on-x86", &ev);
        assert!(matches!(s, Status::Fails(_)), "{s:?}");
        assert!(s.detail().contains("no-barrier 450.0"), "{s:?}");
    }

    #[test]
    fn a_run_without_the_evidence_cannot_check_a_claim() {
        let mut run = good_run();
        run.groups.retain(|g| g.backend == Backend::Kvm);
        let ev = Evidence {
            summary: run,
            instructions: Ok(None),
        };
        let s = status_of("lock-costs-with-two-vcpus", &ev);
        assert!(matches!(s, Status::NotCheckable(_)), "{s:?}");
        assert!(s.detail().contains("sim cr3-switch 2-vCPU"), "{s:?}");
        let s = status_of("same-instructions-on-x86", &ev);
        assert_eq!(
            s,
            Status::NotCheckable("the run has no callgrind.json".into())
        );
        // Still checkable: the kvm cells are there.
        assert!(matches!(
            status_of("nothing-resolvable-on-kvm", &ev),
            Status::Holds(_)
        ));
        // Too few blocks: no label, nothing to check.
        let mut run = good_run();
        for g in &mut run.groups {
            for c in &mut g.cells {
                c.label = None;
            }
        }
        let ev = Evidence {
            summary: run,
            instructions: Err("callgrind.json: expected value".into()),
        };
        for id in ["nothing-resolvable-on-kvm", "lock-costs-with-two-vcpus"] {
            assert!(
                matches!(status_of(id, &ev), Status::NotCheckable(_)),
                "{id}"
            );
        }
        assert!(matches!(
            status_of("same-instructions-on-x86", &ev),
            Status::NotCheckable(_)
        ));
    }

    fn tol() -> Tolerance {
        claim_set().unwrap().tolerance
    }

    #[test]
    fn a_cell_moved_beyond_tolerance_is_named_and_one_within_is_not() {
        let old = good_run();
        // Within: intervals overlap.
        let mut new = good_run();
        new.groups[0].cells[2].ratio = Some(est(2.0, 1.85, 2.2));
        let c = differing_cells(&old, &new, &tol());
        assert!(c.differ.is_empty(), "{c:?}");
        assert_eq!(c.compared, 5);
        // Intervals apart, but the change (0.08) is within the group's floor (0.1).
        new.groups[0].cells[2].ratio = Some(est(1.98, 1.97, 1.99));
        let old_tight = {
            let mut o = good_run();
            o.groups[0].cells[2].ratio = Some(est(1.9, 1.89, 1.91));
            o
        };
        assert!(differing_cells(&old_tight, &new, &tol()).differ.is_empty());
        // Apart and beyond max(floors, 5%): named, with both figures.
        new.groups[0].cells[2].ratio = Some(est(1.2, 1.15, 1.25));
        let c = differing_cells(&old, &new, &tol());
        assert_eq!(c.differ.len(), 1, "{c:?}");
        let line = c.differ[0].to_string();
        assert!(
            line.contains("sim cr3-switch 2 vCPUs always-lock"),
            "{line}"
        );
        assert!(line.contains("1.90× [1.80, 2.10] committed"), "{line}");
        assert!(line.contains("1.20× [1.15, 1.25] now"), "{line}");
        assert!(line.contains("moved 70.0 points, tolerance 10.0"), "{line}");
        // A cell the new run lacks is listed as missing, not compared.
        let mut fewer = good_run();
        fewer.groups.pop();
        let c = differing_cells(&old, &fewer, &tol());
        assert_eq!(c.missing.len(), 2);
        assert_eq!(c.compared, 3);
    }

    #[test]
    fn the_tolerance_text_states_the_numbers_of_the_claims_file() {
        let t = tolerances_tex(&tol());
        assert!(t.contains("5.0 points"), "{t}");
        assert!(t.contains("within 0.1\\%"), "{t}");
    }

    #[test]
    fn rendering_escapes_and_sets_code() {
        assert_eq!(
            tex("`a_b` 5% 1.9× |Δ| < 3"),
            "\\texttt{a\\_b} 5\\% 1.9$\\times$ |$\\Delta$| $<$ 3"
        );
        let set = claim_set().unwrap();
        let ev = Evidence {
            summary: good_run(),
            instructions: Ok(None),
        };
        let res = evaluate_all(&set, &ev);
        let md = render_markdown(&res, "run-x");
        assert!(md.contains("run `run-x`"));
        assert!(
            md.contains("**not checkable**: the run has no callgrind.json"),
            "{md}"
        );
        let tex = render_latex(&res, "run-x");
        assert_eq!(tex.matches("\\item").count(), set.claim.len());
    }

    /// The committed run(s) evaluate without error, and every claim has a status.
    #[test]
    fn the_committed_runs_give_every_claim_a_status() {
        let root = crate::report::workspace_root().join("bench-results");
        let mut seen = 0;
        for e in std::fs::read_dir(&root).unwrap().flatten() {
            if e.path().join(crate::results::SUMMARY).exists() {
                let p = pieces(&e.path()).unwrap();
                let md = String::from_utf8(p[0].bytes.clone()).unwrap();
                println!("{md}");
                assert_eq!(
                    md.matches("\n- ").count(),
                    claim_set().unwrap().claim.len(),
                    "{md}"
                );
                seen += 1;
            }
        }
        assert!(seen > 0, "no committed run under bench-results/");
    }
}
