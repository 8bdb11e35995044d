//! `shadowlab run`: builds the worker once per policy, runs the matrix block by block in a
//! seeded random order, and writes the run folder after every worker run, so that Ctrl-C (or a
//! crash) loses at most the run in flight.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use shadowlab_schema::{Backend, WorkerResult, SCHEMA_VERSION};

use crate::build::{self, BinaryRecord};
use crate::error::DriverError;
use crate::matrix::{
    binary_policy, cross_layout_pad, Group, MatrixSpec, Preset, Shard, BASELINE, UNSOUND, XL_ARM,
};
use crate::progress::Progress;
use crate::results::{self, HostRecord, Manifest, Sample, Status, RESULTS_VERSION};

/// Options of `shadowlab run`.
#[derive(clap::Args, Debug)]
pub struct RunArgs {
    /// The `quick` preset (same as --preset quick).
    #[arg(long, conflicts_with = "preset")]
    pub(crate) quick: bool,
    /// A preset: quick, full (see `shadowlab list`).
    #[arg(long)]
    pub(crate) preset: Option<String>,
    /// Policies, comma-separated (default: every sound one).
    #[arg(long, value_delimiter = ',')]
    pub(crate) policies: Vec<String>,
    /// Also run the UNSOUND no-barrier control.
    #[arg(long)]
    pub(crate) with_unsound_control: bool,
    /// Backends, comma-separated (replaces the preset's).
    #[arg(long, value_delimiter = ',')]
    pub(crate) backends: Vec<String>,
    /// Workloads, comma-separated (replaces the preset's).
    #[arg(long, value_delimiter = ',')]
    pub(crate) workloads: Vec<String>,
    /// vCPU counts, comma-separated (replaces the preset's).
    #[arg(long, value_delimiter = ',')]
    pub(crate) vcpus: Vec<u32>,
    /// Blocks (repetitions of every cell).
    #[arg(long)]
    pub(crate) reps: Option<u32>,
    /// Iterations per worker run (0: each workload's default).
    #[arg(long)]
    pub(crate) iters: Option<u64>,
    /// Seed of the block order and the bootstrap.
    #[arg(long, default_value_t = 1)]
    pub(crate) seed: u64,
    /// The run folder (default: bench-results/<run-id>).
    #[arg(long)]
    pub(crate) out: Option<PathBuf>,
    /// Run only the K-th of N deterministic slices of the matrix.
    #[arg(long)]
    pub(crate) shard: Option<Shard>,
    /// Do not pin the workers' vCPU threads to host CPUs (pinning is the default: it takes
    /// scheduler migrations out of the noise floor).
    #[arg(long)]
    pub(crate) no_pin: bool,
    /// Seconds before a worker run is killed and recorded as an error.
    #[arg(long, default_value_t = 600)]
    pub(crate) timeout: u64,
    /// Use this binary for a policy instead of building it: POLICY=PATH (repeatable); also
    /// rmb-fence-xl=PATH for the cross-layout arm (its pad is what its --version says).
    #[arg(long)]
    pub(crate) worker: Vec<String>,
    /// Do not count instructions under callgrind (the pass that writes callgrind.json).
    #[arg(long)]
    pub(crate) no_callgrind: bool,
    /// The source tree to build the workers from.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/.."))]
    pub(crate) source: PathBuf,
}

/// Runs `shadowlab run`.
pub fn run(args: &RunArgs) -> ExitCode {
    match execute(args, Path::new("bench-results")) {
        Ok((Status::Complete, _)) => ExitCode::SUCCESS,
        Ok(_) => ExitCode::from(130),
        Err(e) => {
            eprintln!("shadowlab run: error: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

/// The matrix the options name, checked.
fn spec_of(
    args: &RunArgs,
    host: &shadowlab_host::HostInfo,
) -> Result<(String, MatrixSpec), DriverError> {
    let preset_name = if args.quick {
        "quick".to_string()
    } else {
        args.preset.clone().unwrap_or_else(|| "full".into())
    };
    let preset = Preset::by_name(&preset_name)
        .ok_or_else(|| DriverError::UnknownPreset(preset_name.clone()))?;
    let known = crate::list::policy_names();
    let mut policies: Vec<String> = if args.policies.is_empty() {
        known
            .iter()
            .filter(|p| **p != UNSOUND)
            .map(|p| p.to_string())
            .collect()
    } else {
        args.policies.clone()
    };
    for p in &policies {
        if !known.contains(&p.as_str()) {
            return Err(DriverError::UnknownPolicy(p.clone()));
        }
    }
    if policies.iter().any(|p| p == UNSOUND) && !args.with_unsound_control {
        return Err(DriverError::UnsoundNotAllowed);
    }
    if args.with_unsound_control && !policies.iter().any(|p| p == UNSOUND) {
        policies.push(UNSOUND.into());
    }
    // The baseline is always built and run: every ratio and the A/A floor need it.
    policies.retain(|p| p != BASELINE);
    policies.insert(0, BASELINE.into());
    for w in &args.workloads {
        if shadowlab_workloads::Workload::from_name(w).is_none() {
            return Err(DriverError::UnknownWorkload(w.clone()));
        }
    }
    let backends = args
        .backends
        .iter()
        .map(|b| b.parse::<Backend>())
        .collect::<Result<Vec<_>, _>>()?;
    let preset_groups = preset.groups();
    let preset_iters = |g: &Group| {
        preset_groups
            .iter()
            .find(|(p, _)| p.backend == g.backend && p.workload == g.workload)
            .map_or(0, |(_, i)| *i)
    };
    let mut groups: Vec<Group> = preset_groups.iter().map(|(g, _)| g.clone()).collect();
    if !(backends.is_empty() && args.workloads.is_empty() && args.vcpus.is_empty()) {
        let pick = |given: Vec<String>, from: Vec<String>| {
            if given.is_empty() {
                from
            } else {
                given
            }
        };
        let dedup = |mut v: Vec<String>| {
            let mut seen = std::collections::BTreeSet::new();
            v.retain(|x| seen.insert(x.clone()));
            v
        };
        let bs = pick(
            backends.iter().map(|b| b.to_string()).collect(),
            dedup(groups.iter().map(|g| g.backend.to_string()).collect()),
        );
        let ws = pick(
            args.workloads.clone(),
            dedup(groups.iter().map(|g| g.workload.clone()).collect()),
        );
        let vs = pick(
            args.vcpus.iter().map(u32::to_string).collect(),
            dedup(groups.iter().map(|g| g.vcpus.to_string()).collect()),
        );
        groups = Vec::new();
        for b in &bs {
            for w in &ws {
                for v in &vs {
                    groups.push(Group {
                        backend: b.parse()?,
                        workload: w.clone(),
                        vcpus: v
                            .parse()
                            .map_err(|_| DriverError::Usage(format!("--vcpus {v}")))?,
                    });
                }
            }
        }
    }
    let iters = groups
        .iter()
        .map(|g| args.iters.unwrap_or_else(|| preset_iters(g)))
        .collect();
    let kvm_max = host
        .caps
        .iter()
        .filter(|c| c.name == "MAX_VCPUS" || c.name == "NR_VCPUS")
        .map(|c| c.value)
        .filter(|v| *v > 0)
        .max();
    for g in &groups {
        if g.vcpus == 0 {
            return Err(DriverError::Vcpus {
                vcpus: 0,
                why: "a run needs at least one vCPU".into(),
            });
        }
        if g.backend != Backend::Sim {
            if let Some(max) = kvm_max {
                if i64::from(g.vcpus) > i64::from(max) {
                    return Err(DriverError::Vcpus {
                        vcpus: g.vcpus,
                        why: format!("this host's KVM allows at most {max} (KVM_CAP_MAX_VCPUS)"),
                    });
                }
            }
        }
    }
    let reps = args.reps.unwrap_or(preset.reps);
    if reps == 0 {
        return Err(DriverError::Usage("--reps must be at least 1".into()));
    }
    let custom = !(args.backends.is_empty() && args.workloads.is_empty() && args.vcpus.is_empty())
        || args.reps.is_some()
        || args.iters.is_some();
    Ok((
        if custom {
            format!("{preset_name}+custom")
        } else {
            preset_name
        },
        MatrixSpec {
            policies,
            groups,
            iters,
            reps,
            seed: args.seed,
            pin: !args.no_pin,
            cross_layout: true,
        },
    ))
}

/// Checks what `args` name (the matrix, and that `--out` does not exist) without running
/// anything: the errors `execute` would stop with before its first build.
pub(crate) fn check_args(args: &RunArgs) -> Result<(), DriverError> {
    spec_of(args, &shadowlab_host::detect())?;
    match &args.out {
        Some(o) if o.exists() => Err(DriverError::Exists(o.clone())),
        _ => Ok(()),
    }
}

/// Runs the matrix `args` names into `args.out`, or `default_parent/<run-id>`; returns how far
/// it got and the run folder (`shadowlab run` and `shadowlab reproduce`).
pub(crate) fn execute(
    args: &RunArgs,
    default_parent: &Path,
) -> Result<(Status, PathBuf), DriverError> {
    let host = shadowlab_host::detect();
    let (preset, spec) = spec_of(args, &host)?;
    let mut overrides = BTreeMap::new();
    for w in &args.worker {
        let (p, path) = w
            .split_once('=')
            .ok_or_else(|| DriverError::WorkerSyntax(w.clone()))?;
        overrides.insert(p.to_string(), PathBuf::from(path));
    }
    let root = args
        .source
        .canonicalize()
        .map_err(|source| DriverError::Io {
            what: "find the source tree",
            path: args.source.clone(),
            source,
        })?;
    let source = build::source_state(&root)?;
    let started = results::now_utc();
    let run_id = format!(
        "{}-{}{}",
        started.replace([':', '-'], ""),
        &source.commit[..source.commit.len().min(7)],
        args.shard
            .map_or(String::new(), |s| format!("-shard{}of{}", s.k, s.n))
    );
    let dir = args
        .out
        .clone()
        .unwrap_or_else(|| default_parent.join(&run_id));
    // The folder first: an existing one or an unwritable parent fails before any build.
    results::create_run_dir(&dir)?;
    // Until the manifest is written, a failure (a build error, a worker of the wrong policy)
    // removes the folder again, so that a rerun with the same --out is not refused.
    let mut unfinished = RemoveIfEmpty(Some(dir.clone()));

    let interrupted = Arc::new(AtomicBool::new(false));
    {
        let flag = interrupted.clone();
        ctrlc::set_handler(move || flag.store(true, Ordering::SeqCst))
            .map_err(|e| DriverError::Signal(e.to_string()))?;
    }

    let groups = spec.groups_of(args.shard);
    let cells = spec.cells(&groups);
    let mut progress = Progress::new(u64::from(spec.reps) * cells.len() as u64);
    // The callgrind pass: in shard 1 (or unsharded), when the matrix has a sim workload.
    let callgrind = !args.no_callgrind
        && crate::callgrind_pass::counts_here(args.shard)
        && !crate::callgrind_pass::workloads(&spec).is_empty();
    let mut needed: std::collections::BTreeSet<String> =
        cells.iter().map(|c| c.binary().to_string()).collect();
    if callgrind {
        needed.extend(crate::callgrind_pass::binaries_needed(&spec));
    }
    // Keyed by build: each policy's own, and XL_ARM for the baseline with another layout.
    let mut binaries: BTreeMap<String, BinaryRecord> = BTreeMap::new();
    for b in &needed {
        let policy = binary_policy(b);
        let pad = if b == XL_ARM {
            cross_layout_pad(spec.seed)
        } else {
            0
        };
        let mut rec = match overrides.get(b.as_str()) {
            Some(path) => build::checked(policy, path, false)?,
            None => build::worker_binary(&root, &source, policy, pad, &mut |m| progress.note(m))?,
        };
        if b == XL_ARM {
            rec.arm = Some(XL_ARM.into());
        }
        binaries.insert(b.clone(), rec);
    }
    if let (Some(xl), Some(base)) = (binaries.get(XL_ARM), binaries.get(BASELINE)) {
        if xl.layout_pad == base.layout_pad {
            progress.note(&format!(
                "note: the {XL_ARM} binary has the layout pad of {BASELINE} ({} bytes): its \
                 floor is a second same-layout floor, not a cross-layout one",
                xl.layout_pad
            ));
        }
    }
    let perf = &host.perf;
    let (mut avail, mut unavail) = (Vec::new(), Vec::new());
    for (names, ok) in [
        (
            &["cycles", "instructions", "branch-misses", "cache-misses"][..],
            perf.hw_instructions,
        ),
        (
            &[
                "task-clock",
                "context-switches",
                "cpu-migrations",
                "page-faults",
            ][..],
            perf.sw_task_clock,
        ),
    ] {
        for n in names {
            if ok {
                avail.push(n.to_string())
            } else {
                unavail.push(n.to_string())
            }
        }
    }
    let mut manifest = Manifest {
        results_version: RESULTS_VERSION,
        worker_schema_version: SCHEMA_VERSION,
        run_id,
        source,
        preset,
        matrix: spec.clone(),
        shards: args.shard.into_iter().collect(),
        hosts: vec![HostRecord {
            shard: args.shard,
            host,
            counters_available: avail,
            counters_unavailable: unavail,
            binaries: binaries.values().cloned().collect(),
            started,
            ended: None,
            command_line: std::env::args().collect(),
        }],
        status: Status::Running,
    };
    results::write_json(&dir, results::MANIFEST, &manifest)?;
    unfinished.0 = None;

    let mut samples: Vec<Sample> = Vec::new();
    let mut status = Status::Complete;
    'blocks: for block in 0..spec.reps {
        for (seq, cell) in spec.block_order(&cells, block).iter().enumerate() {
            if interrupted.load(Ordering::SeqCst) {
                status = Status::Interrupted;
                break 'blocks;
            }
            let bin = &binaries[cell.binary()];
            let mut cmd = Command::new(&bin.path);
            cmd.args([
                "--backend",
                cell.group.backend.name(),
                "--workload",
                &cell.group.workload,
            ])
            .arg("--vcpus")
            .arg(cell.group.vcpus.to_string())
            .arg("--iters")
            .arg(spec.iters_of(&cell.group).to_string())
            .arg("--timeout-s")
            .arg(args.timeout.max(1).to_string());
            if spec.pin {
                cmd.arg("--pin");
            }
            if cell.policy() == UNSOUND {
                cmd.arg("--allow-unsound");
            }
            let outcome = run_worker(cmd, Duration::from_secs(args.timeout), &interrupted);
            let rows = match &outcome {
                WorkerOutcome::Interrupted => {
                    status = Status::Interrupted;
                    break 'blocks;
                }
                WorkerOutcome::Done(r) => {
                    let msg = match r.per_vcpu.first().and_then(|v| v.report.latency.mean()) {
                        Some(m) => {
                            format!("{:?} {m} {}/op", r.verdict, r.backend.latency_unit())
                        }
                        None => format!("{:?}", r.verdict),
                    };
                    progress.cell(block, &cell.label(), &msg);
                    results::rows_of(block, seq as u32, cell, Ok(r))
                }
                WorkerOutcome::Failed(reason) => {
                    progress.cell(block, &cell.label(), &format!("error: {reason}"));
                    results::rows_of(block, seq as u32, cell, Err(reason))
                }
            };
            samples.extend(rows);
            results::write_atomic(&dir, results::SAMPLES, &results::samples_csv(&samples)?)?;
        }
    }
    if callgrind && status == Status::Complete {
        let record = crate::callgrind_pass::count_all(&spec, &binaries, &interrupted, &mut |m| {
            progress.note(m)
        });
        if interrupted.load(Ordering::SeqCst) {
            status = Status::Interrupted;
        }
        results::write_json(&dir, results::CALLGRIND, &record)?;
    }
    progress.finish();
    let summary = crate::summary::summarise(&samples, status, spec.seed);
    results::write_json(&dir, results::SUMMARY, &summary)?;
    if samples.is_empty() {
        // An interrupted run before the first sample still gets a (header-only) samples file.
        results::write_atomic(&dir, results::SAMPLES, &results::samples_csv(&samples)?)?;
    }
    manifest.status = status;
    manifest.hosts[0].ended = Some(results::now_utc());
    results::write_json(&dir, results::MANIFEST, &manifest)?;
    print!("{}", crate::summary::table(&summary));
    println!("{status}: {}", dir.display());
    Ok((status, dir))
}

/// Removes the folder it holds on drop, if the folder is still empty.
struct RemoveIfEmpty(Option<PathBuf>);

impl Drop for RemoveIfEmpty {
    fn drop(&mut self) {
        if let Some(d) = &self.0 {
            // remove_dir fails on a folder that is not empty: nothing written is lost.
            let _ = std::fs::remove_dir(d);
        }
    }
}

/// How a worker run ended.
enum WorkerOutcome {
    /// It printed a result (pass or fail).
    Done(Box<WorkerResult>),
    /// It did not: why.
    Failed(String),
    /// Ctrl-C: it was killed, nothing to keep.
    Interrupted,
}

/// Runs one worker, killing it at `timeout` or on Ctrl-C.
fn run_worker(mut cmd: Command, timeout: Duration, interrupted: &AtomicBool) -> WorkerOutcome {
    let mut child = match cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn() {
        Ok(c) => c,
        Err(e) => return WorkerOutcome::Failed(format!("cannot start the worker: {e}")),
    };
    // Read the pipes on threads: a worker that fills a pipe must not block on it.
    let pipe = |r: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut s = String::new();
            if let Some(mut r) = r {
                let _ = r.read_to_string(&mut s);
            }
            s
        })
    };
    let out = pipe(
        child
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
    );
    let err = pipe(
        child
            .stderr
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
    );
    let start = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break Ok(s),
            Ok(None) => {}
            Err(e) => break Err(format!("waiting for the worker: {e}")),
        }
        if interrupted.load(Ordering::SeqCst) {
            let _ = child.kill();
            let _ = child.wait();
            return WorkerOutcome::Interrupted;
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            break Err(format!("timed out after {} s", timeout.as_secs()));
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let stdout = out.join().unwrap_or_default();
    let stderr = err.join().unwrap_or_default();
    let status = match status {
        Ok(s) => s,
        Err(e) => return WorkerOutcome::Failed(e),
    };
    let last_err = stderr.lines().last().unwrap_or("").trim().to_string();
    match read_result(stdout.trim()) {
        Err(e @ ResultError::Version { .. }) => WorkerOutcome::Failed(e.to_string()),
        // Exit 0 with a pass, or exit 3 with a failed verdict: a result either way.
        Ok(r) if status.success() || status.code() == Some(3) => WorkerOutcome::Done(Box::new(r)),
        Ok(_) => WorkerOutcome::Failed(format!("worker exited with {status}: {last_err}")),
        Err(e) if status.success() => WorkerOutcome::Failed(e.to_string()),
        Err(_) => WorkerOutcome::Failed(format!("worker exited with {status}: {last_err}")),
    }
}

/// Why a worker's stdout is not a result this driver reads.
#[derive(Debug, thiserror::Error)]
enum ResultError {
    /// A result of another schema version (named as such even when its fields no longer parse
    /// as this version's).
    #[error("result schema version {found} (this driver reads {SCHEMA_VERSION})")]
    Version {
        /// The version the worker wrote.
        found: u32,
    },
    /// Not a result at all.
    #[error("bad JSON from the worker: {0}")]
    Json(#[from] serde_json::Error),
}

/// Reads the worker's JSON line: its `schema_version` first, then the whole result.
fn read_result(stdout: &str) -> Result<WorkerResult, ResultError> {
    /// Only the version, which every schema version carries.
    #[derive(serde::Deserialize)]
    struct Versioned {
        schema_version: u32,
    }
    if let Ok(v) = serde_json::from_str::<Versioned>(stdout) {
        if v.schema_version != SCHEMA_VERSION {
            return Err(ResultError::Version {
                found: v.schema_version,
            });
        }
    }
    Ok(serde_json::from_str(stdout)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_result_of_another_schema_version_is_named_as_such() {
        // A version-1 line: per-vCPU counters and a latency summary, which no longer parse.
        let v1 = r#"{"schema_version":1,"per_vcpu":[{"vcpu":0,"ops":5,"latency":{"unit":"tsc","p50":3}}]}"#;
        let e = read_result(v1).unwrap_err();
        assert!(matches!(e, ResultError::Version { found: 1 }), "{e:?}");
        assert_eq!(
            e.to_string(),
            format!("result schema version 1 (this driver reads {SCHEMA_VERSION})")
        );
        // This version, but not a whole result; and not JSON at all.
        let this = format!(r#"{{"schema_version":{SCHEMA_VERSION}}}"#);
        for bad in [this.as_str(), "no json"] {
            let e = read_result(bad).unwrap_err();
            assert!(matches!(e, ResultError::Json(_)), "{bad}: {e:?}");
            assert!(
                e.to_string().starts_with("bad JSON from the worker: "),
                "{e}"
            );
        }
    }
}
