//! `--backend sim`.

use shadowlab_workloads::{Run, Workload};

use super::result::{ParamsRecord, VcpuResult, Verdict, WorkerResult};
use super::{Backend, WorkerArgs, WorkerError};
use crate::sim::{self, SimConfig, SimError};
use crate::BUILD_POLICY;

/// Runs `workload` on the simulated backend with the build's policy.
pub fn run(args: &WorkerArgs, workload: &Workload) -> Result<WorkerResult, WorkerError> {
    let cfg = SimConfig {
        vcpus: args.vcpus as usize,
        seed: args.seed,
        ram_bytes: args.ram_mib << 20,
        pool_pages: args.pool_pages,
    };
    let params = workload.params();
    let mut result = WorkerResult {
        worker: format!("shadowlab-vmm {}", env!("CARGO_PKG_VERSION")),
        policy: BUILD_POLICY.into(),
        backend: Backend::Sim,
        workload: workload.name(),
        vcpus: cfg.vcpus,
        params: ParamsRecord {
            iters: params.iters,
            seed: params.seed,
            size: params.size,
        },
        ram_mib: args.ram_mib,
        pool_pages: args.pool_pages,
        verdict: Verdict::Fail,
        failure: None,
        ops: 0,
        expected_ops: expected_ops(workload, cfg.vcpus),
        elapsed_ns: 0,
        per_vcpu: Vec::new(),
        mmu: None,
        backend_stats: serde_json::Value::Null,
    };
    let run = match sim::run(&cfg, |cpu| workload.run(cpu)) {
        Ok(run) => run,
        // The VM could not be built from these arguments: the user's problem, one line.
        Err(e @ (SimError::Config(_) | SimError::Mem(_) | SimError::Boot(_))) => {
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
    result.mmu = serde_json::to_value(run.mmu).ok();
    result.backend_stats = serde_json::to_value(&run.cpus).unwrap_or_default();
    let mut failures = Vec::new();
    for (vcpu, r) in run.results.iter().enumerate() {
        match r {
            Ok(report) => {
                result.ops += report.ops;
                result.per_vcpu.push(VcpuResult::of(report, "ns"));
            }
            Err(e) => failures.push(format!("vCPU {vcpu}: {e}")),
        }
    }
    if failures.is_empty() && result.ops != result.expected_ops {
        failures.push(format!(
            "op count {} differs from the {} the parameters imply",
            result.ops, result.expected_ops
        ));
    }
    if failures.is_empty() {
        result.verdict = Verdict::Pass;
    } else {
        result.failure = Some(failures.join("; "));
    }
    Ok(result)
}

/// Ops the whole run should report: `expected_ops` per vCPU, for every workload (the
/// multi-vCPU one counts rounds on every vCPU too).
fn expected_ops(workload: &Workload, vcpus: usize) -> u64 {
    workload.expected_ops() * vcpus as u64
}
