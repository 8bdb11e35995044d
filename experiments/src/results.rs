//! A run's folder: `manifest.json`, `samples.csv`, `summary.json`. Every file is written
//! atomically (a temporary file in the same folder, fsync, rename), so a reader, or a run cut
//! short, sees the old file or the new one, never half of one.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use shadowlab_host::HostInfo;
use shadowlab_schema::{Backend, VcpuResult, WorkerResult};

use crate::build::{BinaryRecord, SourceState};
use crate::error::DriverError;
use crate::matrix::{Cell, Group, MatrixSpec, Shard};

/// Version of the results folder's format (manifest, samples' fixed columns, summary).
pub const RESULTS_VERSION: u32 = 1;

/// The manifest's file name.
pub const MANIFEST: &str = "manifest.json";
/// The samples' file name.
pub const SAMPLES: &str = "samples.csv";
/// The summary's file name.
pub const SUMMARY: &str = "summary.json";
/// The instruction counts' file name (absent: `--no-callgrind`, a shard other than 1, or a
/// run made before the counts existed).
pub const CALLGRIND: &str = shadowlab_experiments::callgrind_record::FILE;

/// How far a run got.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Still running (or killed without a chance to say so).
    Running,
    /// Every cell of every block ran.
    Complete,
    /// Stopped by Ctrl-C: the finished repetitions are kept.
    Interrupted,
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Status::Running => "running",
            Status::Complete => "complete",
            Status::Interrupted => "interrupted",
        })
    }
}

/// One host a run (or one shard of it) ran on.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct HostRecord {
    /// The shard that ran there (none: an unsharded run).
    pub shard: Option<Shard>,
    /// What the host is (CPU, kernel, KVM flavour and capabilities, perf).
    pub host: HostInfo,
    /// Counters the host can count, by perf's name.
    pub counters_available: Vec<String>,
    /// Counters it cannot (recorded as unavailable, never as 0).
    pub counters_unavailable: Vec<String>,
    /// The binaries that ran there.
    pub binaries: Vec<BinaryRecord>,
    /// Start, UTC (RFC 3339).
    pub started: String,
    /// End, UTC (none while running).
    pub ended: Option<String>,
    /// The command line.
    pub command_line: Vec<String>,
}

/// `manifest.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Manifest {
    /// [`RESULTS_VERSION`].
    pub results_version: u32,
    /// The worker result schema the samples were read with.
    pub worker_schema_version: u32,
    /// The folder's name when it was made.
    pub run_id: String,
    /// The source tree.
    pub source: SourceState,
    /// The preset named (or `custom`).
    pub preset: String,
    /// The whole matrix (every shard of one run has the same).
    pub matrix: MatrixSpec,
    /// The shards this folder holds (none: the unsharded run).
    pub shards: Vec<Shard>,
    /// Where it ran (one per shard after a merge).
    pub hosts: Vec<HostRecord>,
    /// How far it got.
    pub status: Status,
}

/// How one worker run ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// The guest's checks passed.
    Pass,
    /// It ran, and a check failed (the worker's `verdict: fail`).
    Fail,
    /// The worker did not produce a result: exit code, bad JSON, timeout.
    Error,
}

/// The fixed columns of one `samples.csv` row: one per repetition and vCPU.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SampleKey {
    /// Block (repetition), from 0.
    pub block: u32,
    /// Position in the block's order.
    pub seq: u32,
    /// The arm.
    pub arm: String,
    /// The policy of the binary that ran.
    pub policy: String,
    /// Backend.
    pub backend: Backend,
    /// Workload.
    pub workload: String,
    /// vCPUs.
    pub vcpus: u32,
    /// This row's vCPU (empty: the run produced no per-vCPU result).
    pub vcpu: Option<u32>,
    /// How the run ended.
    pub outcome: Outcome,
    /// Why it failed, if it did.
    pub reason: String,
    /// This vCPU's mean per-op time (the workload's measured region), in `unit`.
    pub per_op: Option<f64>,
    /// `ns` (sim) or `tsc` (kvm, native: guest TSC ticks).
    pub unit: String,
}

impl SampleKey {
    /// The cell of this row.
    pub fn cell(&self) -> Cell {
        Cell {
            group: Group {
                backend: self.backend,
                workload: self.workload.clone(),
                vcpus: self.vcpus,
            },
            arm: self.arm.clone(),
        }
    }
}

/// The fixed columns, in order.
const FIXED: [&str; 12] = [
    "block", "seq", "arm", "policy", "backend", "workload", "vcpus", "vcpu", "outcome", "reason",
    "per_op", "unit",
];

/// One row: the fixed columns and every counter of the worker's result, flattened
/// (`mmu.faults`, `vcpu.latency.p50`, `backend.tlb_hits`, `backend.kvm_vm_stats.<name>`, ...).
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    /// The fixed columns.
    pub key: SampleKey,
    /// The counters, by column name.
    pub counters: BTreeMap<String, String>,
}

/// The rows of one worker run.
pub fn rows_of(block: u32, seq: u32, cell: &Cell, run: Result<&WorkerResult, &str>) -> Vec<Sample> {
    let key = |vcpu, outcome, reason: &str, per_op, unit: &str| SampleKey {
        block,
        seq,
        arm: cell.arm.clone(),
        policy: cell.policy().into(),
        backend: cell.group.backend,
        workload: cell.group.workload.clone(),
        vcpus: cell.group.vcpus,
        vcpu,
        outcome,
        reason: reason.into(),
        per_op,
        unit: unit.into(),
    };
    let r = match run {
        Ok(r) => r,
        Err(reason) => {
            return vec![Sample {
                key: key(None, Outcome::Error, reason, None, ""),
                counters: BTreeMap::new(),
            }]
        }
    };
    let outcome = match r.verdict {
        shadowlab_schema::Verdict::Pass => Outcome::Pass,
        shadowlab_schema::Verdict::Fail => Outcome::Fail,
    };
    let reason = r.failure.clone().unwrap_or_default();
    // The run-wide counters, flattened once; the per-vCPU arrays are picked per row.
    let mut common = BTreeMap::new();
    let whole = serde_json::to_value(r).unwrap_or_default();
    for (k, v) in whole.as_object().into_iter().flatten() {
        match k.as_str() {
            "per_vcpu" | "backend_stats" | "failure" | "verdict" => {}
            "mmu" => flatten("mmu", v, None, &mut common),
            _ => flatten(&format!("result.{k}"), v, None, &mut common),
        }
    }
    let backend = serde_json::to_value(&r.backend_stats).unwrap_or_default();
    if r.per_vcpu.is_empty() {
        let mut counters = common;
        flatten("backend", &backend, None, &mut counters);
        return vec![Sample {
            key: key(None, outcome, &reason, None, ""),
            counters,
        }];
    }
    let unit = r.backend.latency_unit();
    r.per_vcpu
        .iter()
        .map(|v| {
            let mut counters = common.clone();
            vcpu_columns(v, unit, &mut counters);
            flatten("backend", &backend, Some(v.report.vcpu), &mut counters);
            // The exact mean latency of one op, in `unit`.
            let per_op = v.report.latency.mean().map(|m| m as f64);
            Sample {
                key: key(Some(v.report.vcpu as u32), outcome, &reason, per_op, unit),
                counters,
            }
        })
        .collect()
}

/// One vCPU's columns: the report's counters (`vcpu.ops`, `vcpu.checks`, ...), its latency
/// histogram summarised (`vcpu.latency.{unit,samples,mean,min,max,p50,p90,p99}`, computed here
/// from the histogram, not one column per bucket), and the perf counters (`vcpu.perf.*`).
fn vcpu_columns(v: &VcpuResult, unit: &str, out: &mut BTreeMap<String, String>) {
    let mut report = serde_json::to_value(v.report).unwrap_or_default();
    if let Some(m) = report.as_object_mut() {
        m.remove("latency");
    }
    flatten("vcpu", &report, None, out);
    let h = &v.report.latency;
    let some = |x: Option<u64>| x.map(|x| x.to_string()).unwrap_or_default();
    for (name, value) in [
        ("unit", unit.to_string()),
        ("samples", h.count.to_string()),
        ("mean", some(h.mean())),
        ("min", some((h.count > 0).then_some(h.min))),
        ("max", some((h.count > 0).then_some(h.max))),
        ("p50", some(h.percentile(500))),
        ("p90", some(h.percentile(900))),
        ("p99", some(h.percentile(990))),
    ] {
        out.insert(format!("vcpu.latency.{name}"), value);
    }
    if let Some(perf) = &v.perf {
        flatten(
            "vcpu.perf",
            &serde_json::to_value(perf).unwrap_or_default(),
            None,
            out,
        );
    }
}

/// Flattens `v` under `prefix` into `out`. An array is per vCPU: with `vcpu`, its element for
/// that vCPU is taken (without an index in the name); otherwise every element, by index.
fn flatten(
    prefix: &str,
    v: &serde_json::Value,
    vcpu: Option<usize>,
    out: &mut BTreeMap<String, String>,
) {
    use serde_json::Value;
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                flatten(&format!("{prefix}.{k}"), x, vcpu, out);
            }
        }
        Value::Array(a) => match vcpu {
            Some(i) => {
                if let Some(x) = a.get(i) {
                    flatten(prefix, x, None, out);
                }
            }
            None => {
                for (i, x) in a.iter().enumerate() {
                    flatten(&format!("{prefix}.{i}"), x, None, out);
                }
            }
        },
        Value::Null => {
            out.insert(prefix.into(), String::new());
        }
        Value::String(s) => {
            out.insert(prefix.into(), s.clone());
        }
        other => {
            out.insert(prefix.into(), other.to_string());
        }
    }
}

/// Writes `bytes` to `dir/name` atomically: a temporary file in `dir`, fsync, rename, fsync
/// of the folder.
pub fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> Result<(), DriverError> {
    let path = dir.join(name);
    let tmp = dir.join(format!(".{name}.tmp"));
    let io = |what, p: &Path| {
        let p = p.to_path_buf();
        move |source| DriverError::Io {
            what,
            path: p,
            source,
        }
    };
    let mut f = std::fs::File::create(&tmp).map_err(io("create", &tmp))?;
    f.write_all(bytes).map_err(io("write", &tmp))?;
    f.sync_all().map_err(io("sync", &tmp))?;
    drop(f);
    std::fs::rename(&tmp, &path).map_err(io("rename into place", &path))?;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Writes `value` as pretty JSON to `dir/name`, atomically.
pub fn write_json<T: Serialize>(
    dir: &Path,
    name: &'static str,
    value: &T,
) -> Result<(), DriverError> {
    let mut json = serde_json::to_vec_pretty(value).map_err(|e| DriverError::Serialise {
        what: name,
        why: e.to_string(),
    })?;
    json.push(b'\n');
    write_atomic(dir, name, &json)
}

/// `samples.csv` for `samples`: the fixed columns, then the union of every row's counters,
/// sorted (a counter a row lacks is empty there).
pub fn samples_csv(samples: &[Sample]) -> Result<Vec<u8>, DriverError> {
    let counters: BTreeSet<&str> = samples
        .iter()
        .flat_map(|s| s.counters.keys().map(String::as_str))
        .collect();
    let mut w = csv::Writer::from_writer(Vec::new());
    let ser = |e: csv::Error| DriverError::Serialise {
        what: SAMPLES,
        why: e.to_string(),
    };
    let header: Vec<&str> = FIXED
        .iter()
        .copied()
        .chain(counters.iter().copied())
        .collect();
    w.write_record(&header).map_err(ser)?;
    for s in samples {
        let k = &s.key;
        let mut rec = vec![
            k.block.to_string(),
            k.seq.to_string(),
            k.arm.clone(),
            k.policy.clone(),
            k.backend.to_string(),
            k.workload.clone(),
            k.vcpus.to_string(),
            k.vcpu.map(|v| v.to_string()).unwrap_or_default(),
            match k.outcome {
                Outcome::Pass => "pass",
                Outcome::Fail => "fail",
                Outcome::Error => "error",
            }
            .into(),
            k.reason.clone(),
            k.per_op.map(|v| v.to_string()).unwrap_or_default(),
            k.unit.clone(),
        ];
        rec.extend(
            counters
                .iter()
                .map(|c| s.counters.get(*c).cloned().unwrap_or_default()),
        );
        w.write_record(&rec).map_err(ser)?;
    }
    w.into_inner().map_err(|e| DriverError::Serialise {
        what: SAMPLES,
        why: e.to_string(),
    })
}

/// Reads `samples.csv` back.
pub fn read_samples(dir: &Path) -> Result<Vec<Sample>, DriverError> {
    let path = dir.join(SAMPLES);
    let bad = |why: String| DriverError::BadResults {
        path: dir.to_path_buf(),
        why,
    };
    let mut r = csv::Reader::from_path(&path).map_err(|e| bad(format!("{SAMPLES}: {e}")))?;
    let header = r
        .headers()
        .map_err(|e| bad(format!("{SAMPLES}: {e}")))?
        .clone();
    if header.len() < FIXED.len() || header.iter().take(FIXED.len()).ne(FIXED.iter().copied()) {
        return Err(bad(format!(
            "{SAMPLES} does not start with the columns {}",
            FIXED.join(",")
        )));
    }
    let mut out = Vec::new();
    for (i, rec) in r.records().enumerate() {
        let rec = rec.map_err(|e| bad(format!("{SAMPLES}: {e}")))?;
        let row = |why: &str| bad(format!("{SAMPLES} row {}: {why}", i + 2));
        let f = |j: usize| rec.get(j).unwrap_or("");
        let num = |j: usize| f(j).parse::<u32>().map_err(|_| row(FIXED[j]));
        let opt = |j: usize| -> Result<Option<u32>, DriverError> {
            if f(j).is_empty() {
                Ok(None)
            } else {
                num(j).map(Some)
            }
        };
        let key = SampleKey {
            block: num(0)?,
            seq: num(1)?,
            arm: f(2).into(),
            policy: f(3).into(),
            backend: f(4).parse().map_err(|_| row("backend"))?,
            workload: f(5).into(),
            vcpus: num(6)?,
            vcpu: opt(7)?,
            outcome: match f(8) {
                "pass" => Outcome::Pass,
                "fail" => Outcome::Fail,
                "error" => Outcome::Error,
                _ => return Err(row("outcome")),
            },
            reason: f(9).into(),
            per_op: if f(10).is_empty() {
                None
            } else {
                Some(f(10).parse::<f64>().map_err(|_| row("per_op"))?)
            },
            unit: f(11).into(),
        };
        let counters = header
            .iter()
            .zip(rec.iter())
            .skip(FIXED.len())
            .filter(|(_, v)| !v.is_empty())
            .map(|(h, v)| (h.to_string(), v.to_string()))
            .collect();
        out.push(Sample { key, counters });
    }
    Ok(out)
}

/// The instruction counts of the run folder `dir` (none: it has no `callgrind.json`).
pub fn read_callgrind(
    dir: &Path,
) -> Result<Option<shadowlab_experiments::callgrind_record::CallgrindRecord>, DriverError> {
    let path = dir.join(CALLGRIND);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(DriverError::BadResults {
                path: dir.to_path_buf(),
                why: format!("{CALLGRIND}: {e}"),
            })
        }
    };
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| DriverError::BadResults {
            path: dir.to_path_buf(),
            why: format!("{CALLGRIND}: {e}"),
        })
}

/// A results folder read back: its manifest and samples.
pub struct Loaded {
    /// The folder.
    pub dir: PathBuf,
    /// `manifest.json`.
    pub manifest: Manifest,
    /// `samples.csv`.
    pub samples: Vec<Sample>,
}

/// Reads the results folder `dir`; refuses one that is not ours, corrupt, or (with
/// `need_complete`) incomplete.
pub fn load(dir: &Path, need_complete: bool) -> Result<Loaded, DriverError> {
    let bad = |why: String| DriverError::BadResults {
        path: dir.to_path_buf(),
        why,
    };
    let text =
        std::fs::read_to_string(dir.join(MANIFEST)).map_err(|e| bad(format!("{MANIFEST}: {e}")))?;
    let manifest: Manifest =
        serde_json::from_str(&text).map_err(|e| bad(format!("{MANIFEST}: {e}")))?;
    if manifest.results_version != RESULTS_VERSION {
        return Err(bad(format!(
            "results version {} (this driver reads {RESULTS_VERSION})",
            manifest.results_version
        )));
    }
    if need_complete && manifest.status != Status::Complete {
        return Err(DriverError::Incomplete(
            dir.to_path_buf(),
            manifest.status.to_string(),
        ));
    }
    let samples = read_samples(dir)?;
    Ok(Loaded {
        dir: dir.to_path_buf(),
        manifest,
        samples,
    })
}

/// Makes the run folder `dir`: its parent may exist, it may not (never overwritten).
pub fn create_run_dir(dir: &Path) -> Result<(), DriverError> {
    if dir.exists() {
        return Err(DriverError::Exists(dir.to_path_buf()));
    }
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|source| DriverError::Io {
            what: "create the results folder",
            path: parent.to_path_buf(),
            source,
        })?;
    }
    std::fs::create_dir(dir).map_err(|source| match source.kind() {
        std::io::ErrorKind::AlreadyExists => DriverError::Exists(dir.to_path_buf()),
        _ => DriverError::Io {
            what: "create the run folder",
            path: dir.to_path_buf(),
            source,
        },
    })
}

/// Now, UTC, RFC 3339 to the second.
pub fn now_utc() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Howard Hinnant's civil_from_days.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_round_trip_through_csv() {
        let s = Sample {
            key: SampleKey {
                block: 2,
                seq: 5,
                arm: "rmb-fence-aa".into(),
                policy: "rmb-fence".into(),
                backend: Backend::Kvm,
                workload: "pt-churn".into(),
                vcpus: 2,
                vcpu: Some(1),
                outcome: Outcome::Fail,
                reason: "vCPU 1: GUEST_ASSERT, \"quoted\"".into(),
                per_op: Some(123.5),
                unit: "tsc".into(),
            },
            counters: [("mmu.faults".to_string(), "7".to_string())].into(),
        };
        let mut e = s.clone();
        e.key.vcpu = None;
        e.key.per_op = None;
        e.key.outcome = Outcome::Error;
        e.counters.clear();
        let dir = tempfile::tempdir().unwrap();
        write_atomic(
            dir.path(),
            SAMPLES,
            &samples_csv(&[s.clone(), e.clone()]).unwrap(),
        )
        .unwrap();
        assert_eq!(read_samples(dir.path()).unwrap(), vec![s, e]);
    }

    #[test]
    fn a_vcpu_report_gives_the_same_columns_and_no_bucket_columns() {
        use shadowlab_schema::{Histogram, PerfCounts, Reading, Report};
        let mut latency = Histogram::new();
        for v in 1..=100 {
            latency.record(v);
        }
        let v = VcpuResult {
            report: Report {
                vcpu: 1,
                ops: 100,
                checks: 3,
                latency,
                ..Report::default()
            },
            perf: Some({
                let r = Reading::NotSupported {
                    reason: "no PMU".into(),
                };
                PerfCounts {
                    cycles: r.clone(),
                    instructions: r.clone(),
                    branch_misses: r.clone(),
                    cache_misses: r.clone(),
                    task_clock_ns: r.clone(),
                    context_switches: r.clone(),
                    cpu_migrations: r.clone(),
                    page_faults: r,
                }
            }),
        };
        let mut cols = BTreeMap::new();
        vcpu_columns(&v, "tsc", &mut cols);
        let names: Vec<&str> = cols
            .keys()
            .map(String::as_str)
            .filter(|k| !k.starts_with("vcpu.perf."))
            .collect();
        assert_eq!(
            names,
            [
                "vcpu.checks",
                "vcpu.cr3_loads",
                "vcpu.hypercalls",
                "vcpu.invlpgs",
                "vcpu.latency.max",
                "vcpu.latency.mean",
                "vcpu.latency.min",
                "vcpu.latency.p50",
                "vcpu.latency.p90",
                "vcpu.latency.p99",
                "vcpu.latency.samples",
                "vcpu.latency.unit",
                "vcpu.ops",
                "vcpu.pte_writes",
                "vcpu.tlb_flushes",
                "vcpu.vcpu",
            ]
        );
        assert!(cols.contains_key("vcpu.perf.cycles.status"), "{cols:?}");
        // The percentiles come from the histogram: exact below 64; p99 (the 99th sample, 99)
        // is in the bucket [98, 99], whose representative is 98.
        let col = |k: &str| cols[k].as_str();
        assert_eq!(
            [
                col("vcpu.latency.unit"),
                col("vcpu.latency.samples"),
                col("vcpu.latency.mean"),
                col("vcpu.latency.min"),
                col("vcpu.latency.max"),
                col("vcpu.latency.p50"),
                col("vcpu.latency.p99")
            ],
            ["tsc", "100", "50", "1", "100", "50", "98"]
        );
        assert_eq!(
            col("vcpu.latency.p90"),
            v.report.latency.percentile(900).unwrap().to_string()
        );
        // An empty histogram: the optional ones are empty cells.
        let empty = VcpuResult {
            report: Report::default(),
            perf: None,
        };
        let mut cols = BTreeMap::new();
        vcpu_columns(&empty, "ns", &mut cols);
        assert_eq!(cols["vcpu.latency.samples"], "0");
        assert_eq!(cols["vcpu.latency.p50"], "");
        assert_eq!(cols["vcpu.latency.min"], "");
        assert!(!cols.keys().any(|k| k.starts_with("vcpu.perf")));
    }

    #[test]
    fn the_date_is_rfc3339() {
        let d = now_utc();
        assert_eq!(d.len(), 20, "{d}");
        assert!(d.starts_with("20") && d.ends_with('Z'), "{d}");
    }
}
