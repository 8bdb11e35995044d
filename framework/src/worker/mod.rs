//! The `shadowlab-vmm` worker: parse the command line, run one workload on one backend with the
//! build's policy, and produce one JSON result.
//!
//! The driver (`shadowlab`) is policy-agnostic: it runs one worker binary per policy as a
//! subprocess and reads these results. Everything the driver needs to know about a run is in
//! [`WorkerResult`], including the policy the binary was built with.

mod args;
mod result;
mod run_kvm;
mod run_sim;
mod validate;

pub use args::{Backend, HostCoherence, WorkerArgs};
pub use shadowlab_schema::{
    BackendStats, PolicyRecord, VcpuResult, Verdict, WorkerResult, SCHEMA_VERSION,
};

use shadowlab_workloads::{Params, Workload, WorkloadError};

use crate::BUILD_POLICY;

/// A worker failure that is the user's or the environment's, not the guest's: reported as one
/// line on stderr with exit code 2 (bad input) or 1 (could not run).
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// The workload name is not one of the workloads.
    #[error("unknown workload '{0}' (expected one of: {names})", names = Workload::names().join(", "))]
    UnknownWorkload(String),
    /// The build's policy is the unsound control and `--allow-unsound` was not given.
    #[error("this shadowlab-vmm was built with the UNSOUND negative-control policy '{0}'; pass --allow-unsound to run it")]
    UnsoundRefused(&'static str),
    /// The workload refuses the parameters (checked before boot; an out-of-range value names
    /// the parameter as the command line spells it).
    #[error("{0}")]
    Workload(#[from] WorkloadError),
    /// `--ram-mib` that the kvm/native layout cannot hold.
    #[error("--ram-mib {ram_mib} is out of range for --backend {backend}: a multiple of 2 in {min}..={max} (guest RAM must lie below 2 GiB: ucall addresses are 32-bit, and the MMIO hypercall window sits at 3 GiB)")]
    RamSize {
        /// Which backend (its CLI name).
        backend: &'static str,
        /// The value given.
        ram_mib: u64,
        /// Smallest accepted, MiB.
        min: u64,
        /// Largest accepted, MiB.
        max: u64,
    },
    /// The workload needs more guest frames per vCPU than the RAM leaves each vCPU.
    #[error("{workload} --size {size} needs {need} free guest frames per vCPU, but --ram-mib {ram_mib} with --vcpus {vcpus} leaves {have} per vCPU on --backend {backend} (raise --ram-mib, or lower --size or --vcpus)")]
    Frames {
        /// The workload.
        workload: &'static str,
        /// Its size.
        size: u64,
        /// Frames it allocates per vCPU at most.
        need: u64,
        /// Frames the boot layout leaves the vCPU with the fewest.
        have: u64,
        /// Which backend (its CLI name).
        backend: &'static str,
        /// Guest RAM, MiB.
        ram_mib: u64,
        /// vCPUs.
        vcpus: u32,
    },
    /// The backend could not set the VM up (bad sizes, no /dev/kvm, ...).
    #[error("{backend:?} backend: {message}")]
    Backend {
        /// Which backend.
        backend: Backend,
        /// What went wrong.
        message: String,
    },
}

impl WorkerError {
    /// The process exit code: 2 for bad input, 1 for an environment that cannot run it.
    pub fn exit_code(&self) -> u8 {
        match self {
            WorkerError::UnknownWorkload(_)
            | WorkerError::UnsoundRefused(_)
            | WorkerError::Workload(_)
            | WorkerError::RamSize { .. }
            | WorkerError::Frames { .. } => 2,
            WorkerError::Backend { .. } => 1,
        }
    }
}

/// The workload the arguments name, with their parameters (0 = the workload's default).
pub fn workload_from_args(args: &WorkerArgs) -> Result<Workload, WorkerError> {
    let name = args.workload.as_deref().unwrap_or_default();
    let w = Workload::from_name(name).ok_or_else(|| WorkerError::UnknownWorkload(name.into()))?;
    let d = w.default_params();
    Ok(w.with_params(Params {
        iters: if args.iters == 0 { d.iters } else { args.iters },
        seed: args.seed,
        size: if args.size == 0 { d.size } else { args.size },
    }))
}

/// Runs the workload the arguments name on their backend. A guest failure (a failed self-check,
/// a guest-fatal fault) is a result with verdict `fail`, not an error: the driver keeps it.
pub fn run(args: &WorkerArgs) -> Result<WorkerResult, WorkerError> {
    if BUILD_POLICY.soundness == shadowlab_policies::Soundness::Unsound && !args.allow_unsound {
        return Err(WorkerError::UnsoundRefused(BUILD_POLICY.name));
    }
    let workload = workload_from_args(args)?;
    validate::validate(args, &workload)?;
    match args.backend {
        Backend::Sim => run_sim::run(args, &workload),
        Backend::Kvm | Backend::Native => run_kvm::run(args, &workload),
    }
}
