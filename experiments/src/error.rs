//! The driver's errors: one variant per failing operation, each a one-line message. Usage
//! errors exit 2, everything else 1.

use std::path::PathBuf;

/// What stopped a driver command.
#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    /// A name that is not a workload.
    #[error("unknown workload '{0}' (expected one of: {names})", names = shadowlab_workloads::Workload::names().join(", "))]
    UnknownWorkload(String),
    /// A name that is not a policy.
    #[error("unknown policy '{0}' (expected one of: {names})", names = crate::list::policy_names().join(", "))]
    UnknownPolicy(String),
    /// A name that is not a backend.
    #[error("{0}")]
    UnknownBackend(#[from] shadowlab_schema::UnknownBackend),
    /// A name that is not a preset.
    #[error("unknown preset '{0}' (expected one of: {names})", names = crate::matrix::PRESETS.iter().map(|p| p.name).collect::<Vec<_>>().join(", "))]
    UnknownPreset(String),
    /// `no-barrier` named without the flag that allows it.
    #[error("the UNSOUND control 'no-barrier' runs only with --with-unsound-control")]
    UnsoundNotAllowed,
    /// 0 vCPUs, or more than KVM allows.
    #[error("--vcpus {vcpus}: {why}")]
    Vcpus {
        /// The count asked for.
        vcpus: u32,
        /// Why it cannot run.
        why: String,
    },
    /// A `--worker POLICY=PATH` that does not parse.
    #[error("--worker '{0}' must be POLICY=PATH")]
    WorkerSyntax(String),
    /// A bad option value (`--reps 0`, ...).
    #[error("{0}")]
    Usage(String),
    /// The run folder exists already.
    #[error("the run folder {0} exists already (a run folder is never overwritten)")]
    Exists(PathBuf),
    /// A file operation failed.
    #[error("cannot {what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// On which path.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// git failed.
    #[error("{0}")]
    Git(String),
    /// A worker build failed.
    #[error("building shadowlab-vmm with policy-{policy} failed: {reason}")]
    Build {
        /// The policy.
        policy: String,
        /// Why.
        reason: String,
    },
    /// A worker binary is not the policy it should be.
    #[error("{path} was built with {actual}, not {want}")]
    WrongPolicy {
        /// The binary.
        path: PathBuf,
        /// Expected.
        want: String,
        /// Its `--version`.
        actual: String,
    },
    /// The worker beside the driver could not be asked.
    #[error(transparent)]
    Worker(#[from] crate::worker::WorkerError),
    /// A results folder that cannot be read as one.
    #[error("{path} is not a readable shadowlab results folder: {why}")]
    BadResults {
        /// The folder.
        path: PathBuf,
        /// Why.
        why: String,
    },
    /// A results folder of an interrupted (or still running) run.
    #[error("{0} is an incomplete run (status {1}); finish or rerun it first")]
    Incomplete(PathBuf, String),
    /// Shards that are not of one run.
    #[error("cannot merge: {0}")]
    Mismatch(String),
    /// The ctrl-c handler could not be installed.
    #[error("cannot install the Ctrl-C handler: {0}")]
    Signal(String),
    /// Serialising a results file failed.
    #[error("cannot serialise {what}: {why}")]
    Serialise {
        /// Which file.
        what: &'static str,
        /// Why.
        why: String,
    },
}

impl DriverError {
    /// 2 for the user's input, 1 for everything else.
    pub fn exit_code(&self) -> u8 {
        match self {
            DriverError::UnknownWorkload(_)
            | DriverError::UnknownPolicy(_)
            | DriverError::UnknownBackend(_)
            | DriverError::UnknownPreset(_)
            | DriverError::UnsoundNotAllowed
            | DriverError::Vcpus { .. }
            | DriverError::WorkerSyntax(_)
            | DriverError::Usage(_) => 2,
            _ => 1,
        }
    }
}
