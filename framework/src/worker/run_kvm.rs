//! `--backend kvm` and `--backend native`: real vCPUs on /dev/kvm.

use std::time::Duration;

use shadowlab_workloads::Workload;

use serde::{de::DeserializeOwned, Serialize};
use shadowlab_schema::{BackendStats, KvmStats};

use super::args::HostCoherence as HostCoherenceArg;
use super::result::{add_vcpu, new_result};
use super::{Backend, WorkerArgs, WorkerError, WorkerResult};
use crate::kvm::{
    run_kvm_reports, run_native_reports, GuestParams, HostCoherence, KvmError, RunConfig,
};
use crate::BuildPolicy;

/// Runs `workload` on /dev/kvm: on our shadow MMU with the build's policy (`kvm`), or on the
/// guest's own page tables under the host kernel's shadow MMU (`native`).
pub fn run(args: &WorkerArgs, workload: &Workload) -> Result<WorkerResult, WorkerError> {
    let backend = args.backend;
    let setup = |message: String| WorkerError::Backend { backend, message };
    if let Some(reason) = crate::kvm::kvm_unavailable_reason() {
        return Err(setup(format!("/dev/kvm not available: {reason}")));
    }
    let config = RunConfig {
        nr_vcpus: args.vcpus as usize,
        ram_size: args.ram_mib << 20,
        timeout: Duration::from_secs(args.timeout_s),
        pool_pages: args.pool_pages,
        host_coherence: match args.host_coherence {
            HostCoherenceArg::Replay => HostCoherence::Replay,
            HostCoherenceArg::CycleSlot => HostCoherence::CycleSlot,
        },
        replay_page_zap_min: usize::try_from(args.replay_page_zap_min).unwrap_or(usize::MAX),
        ..RunConfig::default()
    };
    let mut result = new_result(args, workload, backend);
    let guest = GuestParams::workload(workload);
    let run = match backend {
        Backend::Native => run_native_reports(&config, &guest),
        _ => run_kvm_reports::<BuildPolicy>(&config, &guest),
    };
    let run = match run {
        Ok(r) => r,
        // A guest that failed (assert, triple fault, watchdog) is a failed run, kept.
        Err(e @ KvmError::GuestFailed { .. }) => {
            result.failure = Some(e.to_string());
            return Ok(result);
        }
        Err(e) => return Err(setup(e.to_string())),
    };
    result.elapsed_ns = run.elapsed_ns;
    let mut failures = Vec::new();
    match run.mmu_stats.as_ref().map(to_schema).transpose() {
        Ok(mmu) => result.mmu = mmu,
        Err(e) => failures.push(e),
    }
    for v in &run.vcpus {
        match &v.outcome {
            Ok(done) => match &done.report {
                Some(r) => add_vcpu(&mut result, &r.to_report(), "tsc"),
                None => failures.push(format!("vCPU {}: DONE without a workload report", v.vcpu)),
            },
            Err(f) => failures.push(format!("vCPU {}: {f}", v.vcpu)),
        }
    }
    let stats = (|| -> Result<KvmStats, String> {
        Ok(KvmStats {
            host_cpus: run.host_cpus,
            oversubscribed: config.nr_vcpus > run.host_cpus,
            kvm_vm_stats: run.kvm_vm_stats.clone(),
            kvm_vcpu_stats: run.kvm_vcpu_stats.clone(),
            host_coherence_flushes: run.host_flushes,
            host_coherence: run.host_coherence.as_ref().map(to_schema).transpose()?,
            exits: run
                .vcpus
                .iter()
                .map(|v| to_schema(&v.exits))
                .collect::<Result<_, _>>()?,
            fault_handling: run
                .vcpus
                .iter()
                .map(|v| to_schema(&v.fault_handling))
                .collect::<Result<_, _>>()?,
        })
    })();
    match stats {
        Ok(s) => result.backend_stats = BackendStats::Kvm(Box::new(s)),
        Err(e) => failures.push(e),
    }
    result.conclude(failures);
    Ok(result)
}

/// Converts one of `kvm`'s report values into the schema's type of the same fields. `kvm/`
/// keeps its own definitions while it is re-cut; once it uses `shadowlab_schema`'s, this goes.
/// A mismatch is a failed run with the reason, never a panic.
fn to_schema<T: Serialize, U: DeserializeOwned>(v: &T) -> Result<U, String> {
    serde_json::to_value(v)
        .and_then(serde_json::from_value)
        .map_err(|e| {
            format!(
                "result schema: {} does not match: {e}",
                std::any::type_name::<U>()
            )
        })
}
