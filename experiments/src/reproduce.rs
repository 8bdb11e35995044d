//! `shadowlab reproduce [--quick]`: the artifact evaluation in one command.
//!
//! 1. **build**: every policy's worker (`build::worker_binary`, the cache `shadowlab run` uses);
//! 2. **verify**: the loom verdict matrix, in process, against the expected one;
//! 3. **run**: the matrix (the quick or full preset, or a restriction of it), into
//!    `target/reproduce/<run-id>` unless `--out` names the run folder;
//! 4. **report**: every piece of `shadowlab report`, made from the new run and the builds just
//!    made, into `<new run>/report/`;
//! 5. **check**: the paper's claims ([`crate::claims`]) on the committed run and on the new one,
//!    and every cell's ratio, compared within the tolerances of `paper/claims.toml`.
//!
//! Prints each stage's elapsed time, then `reproduced` (exit 0) or one line per verdict, claim
//! or cell that differs (exit 1). Also writes `<new run>/reproduce.json`: the stages' times,
//! the run compared against, and the verdict. Bad arguments: one line, exit 2; Ctrl-C during
//! the run: the finished repetitions are kept, exit 130.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use crate::claims::{self, ClaimSet, Evidence};
use crate::error::DriverError;
use crate::report::{self, ReportError};
use crate::reproduce_record::{ReproduceRecord, StageTime};
use crate::results::{self, Status};
use crate::run::RunArgs;

/// Options of `shadowlab reproduce`.
#[derive(clap::Args, Debug)]
pub struct ReproduceArgs {
    /// The quick preset (default: the full one).
    #[arg(long)]
    quick: bool,
    /// The committed run to compare with [default: the newest complete run of the same preset
    /// under bench-results/].
    #[arg(long, value_name = "DIR")]
    against: Option<PathBuf>,
    /// The new run's folder [default: target/reproduce/<run-id>, outside bench-results/].
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Restrict the matrix: policies, comma-separated (the claims that need others are then
    /// not checkable, and say so).
    #[arg(long, value_delimiter = ',')]
    policies: Vec<String>,
    /// Restrict the matrix: backends, comma-separated.
    #[arg(long, value_delimiter = ',')]
    backends: Vec<String>,
    /// Restrict the matrix: workloads, comma-separated.
    #[arg(long, value_delimiter = ',')]
    workloads: Vec<String>,
    /// Restrict the matrix: vCPU counts, comma-separated.
    #[arg(long, value_delimiter = ',')]
    vcpus: Vec<u32>,
    /// Blocks (default: the preset's).
    #[arg(long)]
    reps: Option<u32>,
    /// Iterations per worker run (default: the preset's).
    #[arg(long)]
    iters: Option<u64>,
    /// Seed of the block order and the bootstrap.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

/// Why reproduce stopped before a verdict.
#[derive(Debug, thiserror::Error)]
pub enum ReproduceError {
    /// Finding, building, running or storing failed.
    #[error(transparent)]
    Driver(#[from] DriverError),
    /// The run named by `--against` (or found) cannot be compared with.
    #[error("--against: {0}")]
    Against(DriverError),
    /// No committed run to compare with.
    #[error(
        "no complete '{preset}' run under {dir} to compare with (name one with --against DIR)"
    )]
    NoCommittedRun {
        /// The preset looked for.
        preset: String,
        /// Where.
        dir: PathBuf,
    },
    /// The report could not be made.
    #[error(transparent)]
    Report(#[from] ReportError),
    /// The claims could not be read or checked.
    #[error(transparent)]
    Claims(#[from] claims::ClaimsError),
}

impl ReproduceError {
    /// 2 for the user's input, 1 for the rest.
    fn exit_code(&self) -> u8 {
        match self {
            ReproduceError::Driver(e) => e.exit_code(),
            ReproduceError::Against(_) | ReproduceError::NoCommittedRun { .. } => 2,
            _ => 1,
        }
    }
}

/// Times stages and prints each as it ends.
struct Stages(Vec<StageTime>, Instant);

impl Stages {
    fn start() -> Self {
        Stages(Vec::new(), Instant::now())
    }

    /// Ends `stage` (started when the previous one ended) with a one-line summary.
    fn done(&mut self, stage: &'static str, what: &str) {
        let seconds = self.1.elapsed().as_secs_f64();
        println!("reproduce: {stage:<7} {:>8.1} s  {what}", seconds);
        self.0.push(StageTime {
            stage: stage.into(),
            seconds,
        });
        self.1 = Instant::now();
    }
}

/// Runs `shadowlab reproduce`.
pub fn run(args: &ReproduceArgs) -> ExitCode {
    match inner(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("shadowlab reproduce: error: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

/// The preset a manifest's preset name is made from (`quick+custom` is `quick`).
fn base_preset(name: &str) -> &str {
    name.split('+').next().unwrap_or(name)
}

/// The newest complete run of `preset` under `dir` (run folders are named by their UTC start,
/// so the greatest name is the newest).
pub fn newest_run(dir: &Path, preset: &str) -> Option<PathBuf> {
    let mut runs: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .filter(|p| results::load(p, true).is_ok_and(|l| base_preset(&l.manifest.preset) == preset))
        .collect();
    runs.sort();
    runs.pop()
}

fn inner(args: &ReproduceArgs) -> Result<ExitCode, ReproduceError> {
    let root = report::workspace_root();
    let preset = if args.quick { "quick" } else { "full" };
    // The run to compare with, first: a missing or broken one fails before an hour of work.
    let against = match &args.against {
        Some(d) => d.clone(),
        None => newest_run(&root.join("bench-results"), preset).ok_or_else(|| {
            ReproduceError::NoCommittedRun {
                preset: preset.into(),
                dir: root.join("bench-results"),
            }
        })?,
    };
    results::load(&against, true).map_err(ReproduceError::Against)?;
    let committed = Evidence::read(&against)?;
    let set = claims::claim_set()?;
    let run_args = RunArgs {
        quick: args.quick,
        preset: Some(preset.into()),
        policies: args.policies.clone(),
        with_unsound_control: false,
        backends: args.backends.clone(),
        workloads: args.workloads.clone(),
        vcpus: args.vcpus.clone(),
        reps: args.reps,
        iters: args.iters,
        seed: args.seed,
        out: args.out.clone(),
        shard: None,
        no_pin: false,
        timeout: 600,
        worker: Vec::new(),
        no_callgrind: false,
        source: root.clone(),
    };
    crate::run::check_args(&run_args)?;
    println!("reproduce: comparing with {}", against.display());
    let mut stages = Stages::start();

    // 1. Every policy's worker: the run's, and the report's listing of all five.
    let source = crate::build::source_state(&root)?;
    let mut built = 0;
    for p in shadowlab_policies::ALL {
        let rec = crate::build::worker_binary(&root, &source, p.name, 0, &mut |m| {
            println!("reproduce: {m}")
        })?;
        built += usize::from(rec.built_now);
    }
    let workers = crate::build::cached_path(&root, &source, "x", 0)
        .parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .unwrap_or_default();
    stages.done(
        "build",
        &format!(
            "{} policy workers ({built} built now) in {}",
            shadowlab_policies::ALL.len(),
            workers.display()
        ),
    );

    // 2. The verdict matrix.
    let cells = shadowlab_policies::model::verdict_matrix();
    let mut differences: Vec<String> = cells
        .iter()
        .filter(|c| !c.as_expected())
        .map(|c| format!("verify: {}", crate::verify::mismatch(c)))
        .collect();
    stages.done(
        "verify",
        &format!(
            "{} model-checked cells, {} not as expected",
            cells.len(),
            differences.len()
        ),
    );

    // 3. The matrix.
    let (status, dir) = crate::run::execute(&run_args, &root.join("target/reproduce"))?;
    if status != Status::Complete {
        eprintln!(
            "shadowlab reproduce: the run was {status}; its finished repetitions are in {}",
            dir.display()
        );
        return Ok(ExitCode::from(130));
    }
    stages.done("run", &dir.display().to_string());

    // 4. The report of the new run.
    let out = dir.join("report");
    let mut pieces = report::pieces(&workers, false)?;
    // The README's results section is made too, but not written: a rerun leaves the tree as
    // it was.
    let (made, _readme) = report::run_pieces(
        &root,
        &out,
        std::slice::from_ref(&dir),
        &root.join("README.md"),
    )?;
    pieces.extend(made);
    report::write_all(&out, &pieces)?;
    stages.done(
        "report",
        &format!("{} files in {}", pieces.len(), out.display()),
    );

    // 5. Claims and cells against the committed run.
    let new = Evidence::read(&dir)?;
    let custom = results::load(&dir, true)?.manifest.preset.contains('+');
    differences.extend(check(&set, &committed, &new, custom));
    stages.done("check", &format!("against {}", against.display()));

    let verdict = if differences.is_empty() {
        "reproduced"
    } else {
        "differs"
    };
    results::write_json(
        &dir,
        crate::reproduce_record::FILE,
        &ReproduceRecord {
            against: against.clone(),
            stages: stages.0.clone(),
            verdict: verdict.into(),
            differences: differences.clone(),
        },
    )?;
    let total: f64 = stages.0.iter().map(|s| s.seconds).sum();
    println!("reproduce: total   {total:>8.1} s");
    if differences.is_empty() {
        println!("reproduced");
        Ok(ExitCode::SUCCESS)
    } else {
        for d in &differences {
            println!("{d}");
        }
        Ok(ExitCode::FAILURE)
    }
}

/// One line per claim whose status differs between the runs, per cell that moved beyond the
/// tolerances, and (unless the new run's matrix is a restriction, `custom`) per committed cell
/// the new run lacks.
pub fn check(set: &ClaimSet, committed: &Evidence, new: &Evidence, custom: bool) -> Vec<String> {
    let mut out = Vec::new();
    let old = claims::evaluate_all(set, committed);
    for ((claim, was), (_, now)) in old.iter().zip(claims::evaluate_all(set, new)) {
        if !was.same_kind(&now) {
            out.push(format!(
                "claim {}: {} in the committed run ({}); {} now ({})",
                claim.id,
                was.word(),
                was.detail(),
                now.word(),
                now.detail()
            ));
        }
    }
    let cells = claims::differing_cells(&committed.summary, &new.summary, &set.tolerance);
    out.extend(cells.differ.iter().map(ToString::to_string));
    if custom {
        if !cells.missing.is_empty() {
            println!(
                "reproduce: {} cells of the committed run are not in this restricted matrix (not compared)",
                cells.missing.len()
            );
        }
    } else {
        out.extend(
            cells
                .missing
                .iter()
                .map(|c| format!("cell {c}: in the committed run, not in the new one")),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn committed_dir() -> Option<PathBuf> {
        newest_run(&report::workspace_root().join("bench-results"), "quick")
    }

    #[test]
    fn a_run_compared_with_itself_is_reproduced() {
        let Some(dir) = committed_dir() else {
            println!("SKIPPED: no committed quick run");
            return;
        };
        let ev = Evidence::read(&dir).unwrap();
        let set = claims::claim_set().unwrap();
        assert_eq!(check(&set, &ev, &ev, false), Vec::<String>::new());
    }

    #[test]
    fn a_changed_cell_and_a_flipped_claim_are_named() {
        let Some(dir) = committed_dir() else {
            println!("SKIPPED: no committed quick run");
            return;
        };
        let old = Evidence::read(&dir).unwrap();
        let set = claims::claim_set().unwrap();
        let mut new = old.clone();
        // Every kvm always-lock cell resolved at 3x: a cell beyond tolerance, and the claim
        // that nothing is resolvable on kvm no longer holds.
        let mut touched = 0;
        for g in new
            .summary
            .groups
            .iter_mut()
            .filter(|g| g.backend == shadowlab_schema::Backend::Kvm)
        {
            for c in g.cells.iter_mut().filter(|c| c.arm == "always-lock") {
                let r = shadowlab_stats::Estimate {
                    value: 3.0,
                    ci: shadowlab_stats::Ci {
                        lo: 2.9,
                        hi: 3.1,
                        level: 0.95,
                    },
                    n: 5,
                };
                c.ratio = Some(r);
                c.label = Some(shadowlab_stats::Label::of(&r, 0.05).unwrap());
                touched += 1;
            }
        }
        assert!(touched > 0);
        let lines = check(&set, &old, &new, false);
        assert!(
            lines
                .iter()
                .any(|l| l
                    .starts_with("claim nothing-resolvable-on-kvm: holds in the committed run")),
            "{lines:?}"
        );
        assert_eq!(
            lines
                .iter()
                .filter(|l| l.starts_with("cell kvm ") && l.contains("always-lock"))
                .count(),
            touched,
            "{lines:?}"
        );
        // A full matrix that lost a group names its cells; a restricted one does not.
        let mut fewer = old.clone();
        fewer
            .summary
            .groups
            .retain(|g| g.backend != shadowlab_schema::Backend::Kvm);
        let lines = check(&set, &old, &fewer, false);
        assert!(
            lines.iter().any(|l| l.contains("not in the new one")),
            "{lines:?}"
        );
        let lines = check(&set, &old, &fewer, true);
        assert!(
            lines.iter().all(|l| !l.contains("not in the new one")),
            "{lines:?}"
        );
    }
}
