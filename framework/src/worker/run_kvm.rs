//! `--backend kvm` and `--backend native`: real vCPUs on /dev/kvm.

use std::time::Duration;

use shadowlab_workloads::Workload;

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
        pin: args.pin,
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
    result.mmu = run.mmu_stats;
    result.pinning = run.pinning.clone();
    for v in &run.vcpus {
        match &v.outcome {
            Ok(done) => match &done.report {
                Some(r) if r.vcpu != v.vcpu => failures.push(format!(
                    "vCPU {}: its workload report says it is vCPU {}",
                    v.vcpu, r.vcpu
                )),
                Some(r) => add_vcpu(&mut result, **r, Some(v.perf.clone())),
                None => failures.push(format!("vCPU {}: DONE without a workload report", v.vcpu)),
            },
            Err(f) => failures.push(format!("vCPU {}: {f}", v.vcpu)),
        }
    }
    result.backend_stats = BackendStats::Kvm(Box::new(KvmStats {
        host_cpus: run.host_cpus,
        oversubscribed: config.nr_vcpus > run.host_cpus,
        kvm_vm_stats: run.kvm_vm_stats.clone(),
        kvm_vcpu_stats: run.kvm_vcpu_stats.clone(),
        host_coherence_flushes: run.host_flushes,
        host_coherence: run.host_coherence,
        exits: run.vcpus.iter().map(|v| v.exits.clone()).collect(),
        fault_handling: run.vcpus.iter().map(|v| v.fault_handling.clone()).collect(),
    }));
    result.conclude(failures);
    Ok(result)
}
