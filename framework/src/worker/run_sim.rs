//! `--backend sim`.

use shadowlab_schema::BackendStats;
use shadowlab_workloads::{Run, Workload};

use super::result::{add_vcpu, new_result};
use super::{Backend, WorkerArgs, WorkerError, WorkerResult};
use crate::sim::{self, RunOptions, SimConfig, SimError};

/// Runs `workload` on the simulated backend with the build's policy.
pub fn run(args: &WorkerArgs, workload: &Workload) -> Result<WorkerResult, WorkerError> {
    let cfg = SimConfig {
        vcpus: args.vcpus as usize,
        seed: args.seed,
        ram_bytes: args.ram_mib << 20,
        pool_pages: args.pool_pages,
    };
    let mut result = new_result(args, workload, Backend::Sim);
    let opts = RunOptions { pin: args.pin };
    let run = match sim::run_options(&cfg, opts, |cpu| workload.run(cpu)) {
        Ok(run) => run,
        // The VM could not be built from these arguments: the user's problem, one line.
        Err(
            e @ (SimError::Config(_) | SimError::Mem(_) | SimError::Boot(_) | SimError::Pin(_)),
        ) => {
            return Err(WorkerError::Backend {
                backend: Backend::Sim,
                message: e.to_string(),
            })
        }
        // A vCPU died (a guest-fatal fault, an MMU error mid-run): a failed run, kept.
        Err(e) => {
            result.failure = Some(e.to_string());
            return Ok(result);
        }
    };
    result.elapsed_ns = run.elapsed.as_nanos() as u64;
    result.pinning = run.pinning;
    result.mmu = Some(run.mmu);
    result.backend_stats = BackendStats::Sim(run.cpus);
    let mut failures = Vec::new();
    for (vcpu, r) in run.results.iter().enumerate() {
        match r {
            Ok(report) => add_vcpu(&mut result, *report, run.perf.get(vcpu).cloned()),
            Err(e) => failures.push(format!("vCPU {vcpu}: {e}")),
        }
    }
    result.conclude(failures);
    Ok(result)
}
