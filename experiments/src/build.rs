//! Building `shadowlab-vmm` once per policy, from the framework's cargo features, into a cache
//! keyed by (commit, dirty-tree hash, policy, code layout): a second run of the same tree does
//! not rebuild.
//!
//! `target/shadowlab-workers/<commit>-<dirty>/<policy>/shadowlab-vmm`, built in a cargo target
//! directory of its own (`target/shadowlab-workers/cargo`) so that a policy build never
//! replaces the default `target/release/shadowlab-vmm`. A build with a layout pad (the
//! cross-layout arm's) is `.../<policy>-pad<N>/shadowlab-vmm`, built in
//! `target/shadowlab-workers/cargo-layout`, so that the two layouts never rebuild each other.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use shadowlab_experiments::worker_build;

use crate::error::DriverError;

/// Where the tree stands: the commit, and a hash of what differs from it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceState {
    /// `git rev-parse HEAD`.
    pub commit: String,
    /// Uncommitted changes (tracked or untracked) exist.
    pub dirty: bool,
    /// sha256 of `git diff HEAD` and the untracked files' names and contents (first 16 hex
    /// digits), or `clean`.
    pub dirty_hash: String,
}

impl SourceState {
    /// The cache key: `<commit 12>-<dirty hash>`.
    pub fn key(&self) -> String {
        format!(
            "{}-{}",
            &self.commit[..self.commit.len().min(12)],
            self.dirty_hash
        )
    }
}

fn git(root: &Path, args: &[&str]) -> Result<Vec<u8>, DriverError> {
    let out = Command::new("git")
        .arg("-C")
        .arg(root)
        .args(args)
        .output()
        .map_err(|e| DriverError::Git(format!("git {}: {e}", args.join(" "))))?;
    if !out.status.success() {
        return Err(DriverError::Git(format!(
            "git {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(out.stdout)
}

/// The state of the source tree at `root`. `target/` and `bench-results/` are ignored by git
/// (and so by this hash).
pub fn source_state(root: &Path) -> Result<SourceState, DriverError> {
    let commit = String::from_utf8_lossy(&git(root, &["rev-parse", "HEAD"])?)
        .trim()
        .to_string();
    let diff = git(root, &["diff", "HEAD", "--binary"])?;
    let untracked = git(root, &["ls-files", "--others", "--exclude-standard", "-z"])?;
    let mut h = Sha256::new();
    h.update(&diff);
    let mut any_untracked = false;
    for name in untracked.split(|&b| b == 0).filter(|n| !n.is_empty()) {
        any_untracked = true;
        h.update(name);
        let path = root.join(String::from_utf8_lossy(name).as_ref());
        if let Ok(bytes) = std::fs::read(&path) {
            h.update(&bytes);
        }
    }
    let dirty = !diff.is_empty() || any_untracked;
    let dirty_hash = if dirty {
        hex(&h.finalize())[..16].to_string()
    } else {
        "clean".into()
    };
    Ok(SourceState {
        commit,
        dirty,
        dirty_hash,
    })
}

/// Lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// sha256 of the file at `path`.
pub fn sha256_file(path: &Path) -> Result<String, DriverError> {
    let bytes = std::fs::read(path).map_err(|source| DriverError::Io {
        what: "read a worker binary",
        path: path.to_path_buf(),
        source,
    })?;
    Ok(hex(&Sha256::digest(&bytes)))
}

/// One worker binary of a run.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BinaryRecord {
    /// The policy it was built with (from its own `--version`).
    pub policy: String,
    /// Where it is.
    pub path: PathBuf,
    /// Its sha256.
    pub sha256: String,
    /// Built by this run (false: taken from the cache, or given with `--worker`).
    pub built_now: bool,
    /// The bytes of padding its build placed ahead of the MMU (`layout-pad` of its own
    /// `--version`; 0: the default layout, and in runs made before the field existed).
    #[serde(default)]
    pub layout_pad: u64,
    /// The one arm this build runs when it is not its policy's own build: `rmb-fence-xl`, the
    /// cross-layout A/A. Absent for a policy's build.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arm: Option<String>,
}

/// The cached binary of `policy` with `layout_pad` bytes of padding (0: the default layout)
/// for `state` under `root`.
pub fn cached_path(root: &Path, state: &SourceState, policy: &str, layout_pad: u64) -> PathBuf {
    let entry = if layout_pad == 0 {
        policy.to_string()
    } else {
        format!("{policy}-pad{layout_pad}")
    };
    root.join("target/shadowlab-workers")
        .join(state.key())
        .join(entry)
        .join("shadowlab-vmm")
}

/// The binary of `policy` with `layout_pad` bytes of padding ahead of the MMU (0: the default
/// layout): from the cache, or built now with `cargo build --release -p shadowlab-framework
/// --bin shadowlab-vmm --no-default-features --features policy-<policy>` (and
/// `SHADOWLAB_LAYOUT_PAD=<layout_pad>`) and copied into the cache.
pub fn worker_binary(
    root: &Path,
    state: &SourceState,
    policy: &str,
    layout_pad: u64,
    log: &mut dyn FnMut(&str),
) -> Result<BinaryRecord, DriverError> {
    let dest = cached_path(root, state, policy, layout_pad);
    let built_now = !dest.exists();
    if built_now {
        let build_err = |e: worker_build::BuildWorkerError| DriverError::Build {
            policy: policy.into(),
            reason: e.to_string(),
        };
        // One cargo target directory for every policy (the dependencies compile once), and one
        // more for the padded layout; each binary is installed into its cache entry whole or
        // not at all, also when shards on one host (Slurm array tasks) build it at once.
        let built = if layout_pad == 0 {
            log(&format!("building shadowlab-vmm with policy-{policy} ..."));
            let target = root.join("target/shadowlab-workers/cargo");
            worker_build::build_worker(root, &target, policy).map_err(build_err)?
        } else {
            log(&format!(
                "building shadowlab-vmm with policy-{policy} and a {layout_pad}-byte layout pad ..."
            ));
            let target = root.join("target/shadowlab-workers/cargo-layout");
            worker_build::build_worker_with_layout(root, &target, policy, layout_pad)
                .map_err(build_err)?
        };
        worker_build::install(&built, &dest).map_err(build_err)?;
    }
    let rec = checked(policy, &dest, built_now)?;
    if rec.layout_pad != layout_pad {
        return Err(DriverError::Build {
            policy: policy.into(),
            reason: format!(
                "{} has a {}-byte layout pad, not the {layout_pad} it was built with",
                dest.display(),
                rec.layout_pad
            ),
        });
    }
    Ok(rec)
}

/// The record of the binary at `path`, after checking that it was built with `policy`; its
/// layout pad is what its `--version` says.
pub fn checked(policy: &str, path: &Path, built_now: bool) -> Result<BinaryRecord, DriverError> {
    let id = crate::worker::identity_of(path)?;
    if id.policy != policy {
        return Err(DriverError::WrongPolicy {
            path: path.to_path_buf(),
            want: policy.into(),
            actual: id.policy,
        });
    }
    Ok(BinaryRecord {
        policy: policy.into(),
        path: path.to_path_buf(),
        sha256: sha256_file(path)?,
        built_now,
        layout_pad: id.layout_pad,
        arm: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cache_key_names_commit_and_dirt() {
        let s = SourceState {
            commit: "85d603c0123456789abcdef".into(),
            dirty: true,
            dirty_hash: "00ff00ff00ff00ff".into(),
        };
        assert_eq!(
            cached_path(Path::new("/r"), &s, "always-lock", 0),
            Path::new("/r/target/shadowlab-workers/85d603c01234-00ff00ff00ff00ff/always-lock/shadowlab-vmm")
        );
        assert_eq!(
            cached_path(Path::new("/r"), &s, "rmb-fence", 1234),
            Path::new("/r/target/shadowlab-workers/85d603c01234-00ff00ff00ff00ff/rmb-fence-pad1234/shadowlab-vmm"),
            "the cross-layout build is cached apart from the policy's own"
        );
    }

    #[test]
    fn this_tree_has_a_state() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
        let s = source_state(root).unwrap();
        assert_eq!(s.commit.len(), 40);
        assert_eq!(s.dirty, s.dirty_hash != "clean");
        assert_eq!(
            s,
            source_state(root).unwrap(),
            "the state is a pure function of the tree"
        );
    }
}
