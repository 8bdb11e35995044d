//! Building the per-policy worker with cargo, and installing a built binary where it is kept:
//! the one place the driver (`shadowlab run`), the report and the tests spell the command.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};

/// Why a worker could not be built or installed.
#[derive(Debug, thiserror::Error)]
pub enum BuildWorkerError {
    /// cargo could not be started.
    #[error("building the policy-{policy} worker: cannot run cargo: {source}")]
    Spawn {
        /// The policy.
        policy: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// cargo failed.
    #[error("building the policy-{policy} worker: cargo exited with {status}")]
    Failed {
        /// The policy.
        policy: String,
        /// cargo's exit status.
        status: ExitStatus,
    },
    /// The built binary could not be copied into place.
    #[error("installing the worker at {path}: {source}")]
    Install {
        /// Where it was to go.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
}

/// Builds `shadowlab-vmm` with `policy-<policy>` from the workspace at `workspace` into
/// `target_dir`: `cargo build --release -p shadowlab-framework --bin shadowlab-vmm
/// --no-default-features --features policy-<policy>`, with the default code layout (an inherited
/// `SHADOWLAB_LAYOUT_PAD` is removed). Returns the built binary, which the next build into the
/// same target directory overwrites: [`install`] it somewhere of its own.
pub fn build_worker(
    workspace: &Path,
    target_dir: &Path,
    policy: &str,
) -> Result<PathBuf, BuildWorkerError> {
    build_worker_with_layout(workspace, target_dir, policy, 0)
}

/// [`build_worker`] with `layout_pad` bytes of padding ahead of the MMU's code
/// (`SHADOWLAB_LAYOUT_PAD`; 0: the default layout). Build each layout in a target directory of
/// its own: the framework's build script reruns when the pad changes, so two layouts sharing one
/// would rebuild each other in turn.
pub fn build_worker_with_layout(
    workspace: &Path,
    target_dir: &Path,
    policy: &str,
    layout_pad: u64,
) -> Result<PathBuf, BuildWorkerError> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(workspace)
        .env("CARGO_TARGET_DIR", target_dir);
    if layout_pad == 0 {
        cmd.env_remove("SHADOWLAB_LAYOUT_PAD");
    } else {
        cmd.env("SHADOWLAB_LAYOUT_PAD", layout_pad.to_string());
    }
    let status = cmd
        .args([
            "build",
            "--release",
            "--quiet",
            "-p",
            "shadowlab-framework",
            "--bin",
            "shadowlab-vmm",
            "--no-default-features",
            "--features",
        ])
        .arg(format!("policy-{policy}"))
        .status()
        .map_err(|source| BuildWorkerError::Spawn {
            policy: policy.into(),
            source,
        })?;
    if !status.success() {
        return Err(BuildWorkerError::Failed {
            policy: policy.into(),
            status,
        });
    }
    Ok(target_dir.join("release/shadowlab-vmm"))
}

/// Copies `built` to `dest` through a temporary name in `dest`'s folder and a rename, so that
/// `dest` is whole or absent, also when several processes (shards on one host) install the
/// same worker at once.
pub fn install(built: &Path, dest: &Path) -> Result<(), BuildWorkerError> {
    let err = |source| BuildWorkerError::Install {
        path: dest.to_path_buf(),
        source,
    };
    let dir = dest.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(err)?;
    let tmp = dir.join(format!(".shadowlab-vmm.{}.tmp", std::process::id()));
    std::fs::copy(built, &tmp).map_err(err)?;
    std::fs::rename(&tmp, dest).map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn installing_replaces_the_destination_whole() {
        let dir = tempfile::tempdir().unwrap();
        let built = dir.path().join("built");
        std::fs::write(&built, b"new").unwrap();
        let dest = dir.path().join("cache/policy/shadowlab-vmm");
        install(&built, &dest).unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), b"new");
        std::fs::write(&built, b"newer").unwrap();
        install(&built, &dest).unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), b"newer");
        let leftovers: Vec<_> = std::fs::read_dir(dest.parent().unwrap())
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
            .collect();
        assert!(leftovers.is_empty());
    }

    #[test]
    fn a_missing_binary_is_an_install_error_naming_the_destination() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("x/shadowlab-vmm");
        let e = install(&dir.path().join("absent"), &dest).unwrap_err();
        assert!(e.to_string().contains("x/shadowlab-vmm"), "{e}");
    }
}
