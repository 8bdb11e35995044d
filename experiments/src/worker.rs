//! The per-policy worker binary, `shadowlab-vmm`, as the driver sees it: a program to run, never
//! a library to link. The driver learns which policy a worker was built with from the worker
//! itself (`shadowlab-vmm --version` prints `policy: <name>`), so it stays policy-agnostic.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Why a worker's policy could not be learned.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// No worker binary next to the driver.
    #[error("no shadowlab-vmm next to this driver at {0} (build it: cargo build --release)")]
    NotFound(PathBuf),
    /// The binary could not be run.
    #[error("cannot run {path}: {source}")]
    Spawn {
        /// The binary.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// It ran but did not name a policy.
    #[error("{path} --version names no policy (printed {printed:?})")]
    NoPolicy {
        /// The binary.
        path: PathBuf,
        /// What it printed.
        printed: String,
    },
    /// It ran but did not give its code layout's pad.
    #[error("{path} --version gives no layout-pad (printed {printed:?})")]
    NoLayoutPad {
        /// The binary.
        path: PathBuf,
        /// What it printed.
        printed: String,
    },
}

/// What a worker says it is (`--version`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    /// `policy: <name>`.
    pub policy: String,
    /// `layout-pad: N`: the bytes of padding its build placed ahead of the MMU.
    pub layout_pad: u64,
}

/// The worker binary built beside the driver (the same cargo target directory and profile).
pub fn beside_driver() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join("shadowlab-vmm")))
        .unwrap_or_else(|| PathBuf::from("shadowlab-vmm"))
}

/// The policy `worker` was built with, from its `--version`.
pub fn policy_of(worker: &Path) -> Result<String, WorkerError> {
    version_text(worker).and_then(|printed| {
        parse_policy(&printed).ok_or_else(|| WorkerError::NoPolicy {
            path: worker.to_path_buf(),
            printed,
        })
    })
}

/// The policy and the code layout `worker` was built with, from its `--version`.
pub fn identity_of(worker: &Path) -> Result<Identity, WorkerError> {
    let printed = version_text(worker)?;
    let Some(policy) = parse_policy(&printed) else {
        return Err(WorkerError::NoPolicy {
            path: worker.to_path_buf(),
            printed,
        });
    };
    let Some(layout_pad) = parse_layout_pad(&printed) else {
        return Err(WorkerError::NoLayoutPad {
            path: worker.to_path_buf(),
            printed,
        });
    };
    Ok(Identity { policy, layout_pad })
}

/// What `worker --version` prints.
fn version_text(worker: &Path) -> Result<String, WorkerError> {
    if !worker.exists() {
        return Err(WorkerError::NotFound(worker.to_path_buf()));
    }
    let out = Command::new(worker)
        .arg("--version")
        .output()
        .map_err(|source| WorkerError::Spawn {
            path: worker.to_path_buf(),
            source,
        })?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The name in a `policy: <name>` line of `--version` output.
fn parse_policy(version: &str) -> Option<String> {
    version
        .lines()
        .find_map(|l| l.strip_prefix("policy:"))
        .map(|p| p.trim().to_string())
        .filter(|p| !p.is_empty())
}

/// The number in a `layout-pad: N` line of `--version` output.
fn parse_layout_pad(version: &str) -> Option<u64> {
    version
        .lines()
        .find_map(|l| l.strip_prefix("layout-pad:"))
        .and_then(|n| n.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_policy_line_is_parsed_and_nothing_else_is_taken_for_one() {
        assert_eq!(
            parse_policy("shadowlab-vmm 0.1.0\npolicy: always-lock\n").as_deref(),
            Some("always-lock")
        );
        assert_eq!(parse_policy("shadowlab-vmm 0.1.0\n"), None);
        assert_eq!(parse_policy("policy:   \n"), None);
    }

    #[test]
    fn the_layout_pad_line_is_parsed() {
        let v = "shadowlab-vmm 0.1.0\npolicy: rmb-fence\nlayout-pad: 1536\n";
        assert_eq!(parse_layout_pad(v), Some(1536));
        assert_eq!(parse_layout_pad("policy: rmb-fence\n"), None);
        assert_eq!(parse_layout_pad("layout-pad: many\n"), None);
    }

    #[test]
    fn a_missing_worker_is_a_clear_error() {
        let e = policy_of(Path::new("/nonexistent/shadowlab-vmm")).unwrap_err();
        assert!(e.to_string().contains("no shadowlab-vmm"), "{e}");
    }
}
