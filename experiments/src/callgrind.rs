//! Exact instruction counts where there is no PMU: a worker run under valgrind's callgrind,
//! collecting only the measured region.
//!
//! The worker runs each vCPU's workload inside `shadowlab_measured_region`, an
//! `#[inline(never)]` function with a unique name (`shadowlab_framework::measure`). Callgrind
//! starts with collection off (`--collect-atstart=no`) and toggles it on entry to and exit from
//! that function (`--toggle-collect=*shadowlab_measured_region*`), so its total `Ir`
//! (instructions executed) covers the workload only: not the VM's set-up, not the perf-counter
//! reads, not the JSON. With one vCPU and a fixed seed a `sim` run is deterministic, so the
//! count is exact and the same on every run and every host (of the same binary): a column that
//! needs no statistics. Divided by the ops the worker reports it is instructions per op.
//!
//! ```text
//! let run = callgrind::count(worker, &["--backend", "sim", "--workload", "cr3-switch", ...], dir)?;
//! run.instructions      // total Ir in the measured region
//! run.per_op()          // instructions per op
//! run.sync_roots        // the worker's kvm_mmu_sync_roots calls (each one is_unsync_root check)
//! ```
//!
//! Valgrind comes from the distribution's packages (`apt-get install valgrind`); where it is
//! missing, [`count`] returns [`CallgrindError::NotAvailable`] and the caller says so.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Deserialize;

/// The pattern of the measured region's symbol for `--toggle-collect` (the function is
/// generic: each instance's name contains it).
pub const TOGGLE_PATTERN: &str = "*shadowlab_measured_region*";

/// Why a count could not be made.
#[derive(Debug, thiserror::Error)]
pub enum CallgrindError {
    /// valgrind is not installed (or does not run) on this host.
    #[error("valgrind not available: {reason}")]
    NotAvailable {
        /// What running `valgrind --version` gave.
        reason: String,
    },
    /// valgrind could not be started.
    #[error("cannot run valgrind: {0}")]
    Spawn(std::io::Error),
    /// The worker under valgrind failed (non-zero exit).
    #[error("worker under callgrind exited with {status}: {stderr}")]
    WorkerFailed {
        /// Its exit status.
        status: std::process::ExitStatus,
        /// The last line of its stderr.
        stderr: String,
    },
    /// The worker's stdout is not its JSON result.
    #[error("worker result is not JSON: {0}")]
    BadResult(serde_json::Error),
    /// The worker did no ops, so there is nothing to divide by.
    #[error("the worker reported 0 ops")]
    NoOps,
    /// The callgrind output file could not be read.
    #[error("reading callgrind output {path}: {source}")]
    ReadOutput {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The callgrind output file has no `totals:` or `summary:` line.
    #[error("callgrind output {0} has no totals: or summary: line")]
    NoTotals(PathBuf),
    /// Callgrind collected nothing: the measured region's symbol was not found (a worker built
    /// without it, or stripped).
    #[error("callgrind collected 0 instructions: no function matching {TOGGLE_PATTERN} ran")]
    NothingCollected,
}

/// The version valgrind reports (`valgrind-3.x`), or [`CallgrindError::NotAvailable`].
pub fn valgrind_version() -> Result<String, CallgrindError> {
    match Command::new("valgrind").arg("--version").output() {
        Ok(out) if out.status.success() => {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
        }
        Ok(out) => Err(CallgrindError::NotAvailable {
            reason: format!("valgrind --version exited with {}", out.status),
        }),
        Err(e) => Err(CallgrindError::NotAvailable {
            reason: e.to_string(),
        }),
    }
}

/// The part of the worker's JSON result a count needs.
#[derive(Debug, Deserialize)]
struct ResultFields {
    ops: u64,
    mmu: Option<MmuFields>,
}

#[derive(Debug, Deserialize)]
struct MmuFields {
    sync_roots: u64,
}

/// One worker run under callgrind.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InstructionCount {
    /// Instructions executed in the measured region (callgrind's total `Ir`).
    pub instructions: u64,
    /// Ops the worker reported (all vCPUs).
    pub ops: u64,
    /// The worker's `sync_roots` counter (`kvm_mmu_sync_roots` calls, each one lockless
    /// `is_unsync_root` check where the vCPU has a root), if the backend has our MMU.
    pub sync_roots: Option<u64>,
}

impl InstructionCount {
    /// Instructions per op.
    pub fn per_op(&self) -> f64 {
        self.instructions as f64 / self.ops as f64
    }
}

/// Runs `worker args...` under callgrind, collecting only the measured region, with its output
/// file in `out_dir`, and returns the instruction count with the ops the worker reported.
/// The worker must print its JSON result on stdout (every run of `shadowlab-vmm` does).
pub fn count<S: AsRef<OsStr>>(
    worker: &Path,
    args: &[S],
    out_dir: &Path,
) -> Result<InstructionCount, CallgrindError> {
    valgrind_version()?;
    let out_file = out_dir.join(format!("callgrind.{}.out", std::process::id()));
    let out = Command::new("valgrind")
        .arg("--tool=callgrind")
        .arg("--collect-atstart=no")
        .arg(format!("--toggle-collect={TOGGLE_PATTERN}"))
        .arg(format!("--callgrind-out-file={}", out_file.display()))
        .arg(worker)
        .args(args)
        .output()
        .map_err(CallgrindError::Spawn)?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        return Err(CallgrindError::WorkerFailed {
            status: out.status,
            stderr: stderr
                .lines()
                .rfind(|l| !l.starts_with("==") && !l.trim().is_empty())
                .unwrap_or("")
                .to_string(),
        });
    }
    let fields: ResultFields =
        serde_json::from_slice(&out.stdout).map_err(CallgrindError::BadResult)?;
    let text = std::fs::read_to_string(&out_file).map_err(|source| CallgrindError::ReadOutput {
        path: out_file.clone(),
        source,
    })?;
    let _ = std::fs::remove_file(&out_file);
    let instructions = parse_total(&text).ok_or(CallgrindError::NoTotals(out_file))?;
    if instructions == 0 {
        return Err(CallgrindError::NothingCollected);
    }
    if fields.ops == 0 {
        return Err(CallgrindError::NoOps);
    }
    Ok(InstructionCount {
        instructions,
        ops: fields.ops,
        sync_roots: fields.mmu.map(|m| m.sync_roots),
    })
}

/// The total of the first event (`Ir`) in a callgrind output file: its `totals:` line, or the
/// `summary:` line older versions write instead.
pub fn parse_total(text: &str) -> Option<u64> {
    let first = |key: &str| {
        text.lines()
            .filter_map(|l| l.strip_prefix(key))
            .find_map(|rest| rest.split_whitespace().next()?.parse::<u64>().ok())
    };
    first("totals:").or_else(|| first("summary:"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn totals_are_read_from_either_line() {
        let both =
            "version: 1\ncmd: x\nevents: Ir\nsummary: 6982726\n\nfn=(1) f\n3 7\ntotals: 6982726\n";
        assert_eq!(parse_total(both), Some(6_982_726));
        assert_eq!(parse_total("events: Ir\nsummary: 12 0\n"), Some(12));
        assert_eq!(parse_total("events: Ir\nfn=(1) f\n"), None);
    }
}
