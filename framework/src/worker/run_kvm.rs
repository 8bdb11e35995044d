//! `--backend kvm` and `--backend native`: real vCPUs on /dev/kvm.

use std::time::Duration;

use shadowlab_workloads::{Histogram, Run, Workload};

use super::args::HostCoherenceArg;
use super::result::{ParamsRecord, VcpuResult, Verdict, WorkerResult};
use super::{Backend, WorkerArgs, WorkerError};
use crate::kvm::report::WorkloadReport;
use crate::kvm::{
    run_kvm_reports, run_native_reports, GuestParams, HostCoherence, KvmError, RunConfig,
};
use crate::{BuildPolicy, BUILD_POLICY};

/// The guest's report as the workloads crate's histogram, so every backend's latencies are
/// summarised by the same code.
fn histogram(r: &WorkloadReport) -> Histogram {
    let mut h = Histogram::new();
    for (b, n) in r.latency_buckets.iter().enumerate().take(h.buckets.len()) {
        h.buckets[b] = *n;
    }
    h.count = r.latency_count;
    h.sum = r.latency_sum;
    h.min = r.latency_min;
    h.max = r.latency_max;
    h
}

fn vcpu_result(r: &WorkloadReport) -> VcpuResult {
    let mut v = VcpuResult::of(&Default::default(), "tsc");
    v.vcpu = r.vcpu as usize;
    v.ops = r.ops;
    v.checks = r.checks;
    v.pte_writes = r.pte_writes;
    v.cr3_loads = r.cr3_loads;
    v.invlpgs = r.invlpgs;
    v.tlb_flushes = r.tlb_flushes;
    v.hypercalls = r.hypercalls;
    v.latency = super::LatencySummary::of(&histogram(r), "tsc");
    v
}

/// Runs `workload` on /dev/kvm: on our shadow MMU with the build's policy (`kvm`), or on the
/// guest's own page tables under the host kernel's shadow MMU (`native`).
pub fn run(args: &WorkerArgs, workload: &Workload) -> Result<WorkerResult, WorkerError> {
    let backend = args.backend;
    let setup = |message: String| WorkerError::Backend { backend, message };
    if let Some(reason) = crate::kvm::kvm_unavailable_reason() {
        return Err(setup(format!("/dev/kvm not available: {reason}")));
    }
    if args.ram_mib % 2 != 0 {
        return Err(setup(format!(
            "--ram-mib {} must be a multiple of 2 (guest RAM is laid out in 2 MiB units)",
            args.ram_mib
        )));
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
    let params = workload.params();
    let mut result = WorkerResult {
        worker: format!("shadowlab-vmm {}", env!("CARGO_PKG_VERSION")),
        policy: BUILD_POLICY.into(),
        backend,
        workload: workload.name(),
        vcpus: config.nr_vcpus,
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
        expected_ops: workload.expected_ops() * config.nr_vcpus as u64,
        elapsed_ns: 0,
        per_vcpu: Vec::new(),
        mmu: None,
        backend_stats: serde_json::Value::Null,
    };
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
    result.mmu = run.mmu_stats.clone();
    let mut failures = Vec::new();
    for v in &run.vcpus {
        match &v.outcome {
            Ok(done) => match &done.report {
                Some(r) => {
                    result.ops += r.ops;
                    result.per_vcpu.push(vcpu_result(r));
                }
                None => failures.push(format!("vCPU {}: DONE without a workload report", v.vcpu)),
            },
            Err(f) => failures.push(format!("vCPU {}: {f}", v.vcpu)),
        }
    }
    if failures.is_empty() && result.ops != result.expected_ops {
        failures.push(format!(
            "op count {} differs from the {} the parameters imply",
            result.ops, result.expected_ops
        ));
    }
    result.backend_stats = serde_json::json!({
        "host_cpus": run.host_cpus,
        "oversubscribed": config.nr_vcpus > run.host_cpus,
        "kvm_vm_stats": run.kvm_vm_stats,
        "kvm_vcpu_stats": run.kvm_vcpu_stats,
        "host_coherence_flushes": run.host_flushes,
        "host_coherence": run.host_coherence,
        "exits": run.vcpus.iter().map(|v| &v.exits).collect::<Vec<_>>(),
        "fault_handling": run.vcpus.iter().map(|v| &v.fault_handling).collect::<Vec<_>>(),
    });
    if failures.is_empty() {
        result.verdict = Verdict::Pass;
    } else {
        result.failure = Some(failures.join("; "));
    }
    Ok(result)
}
