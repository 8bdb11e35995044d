//! Filling the worker's JSON result. The types are `shadowlab-schema`'s (one definition, which
//! the driver reads back); this module builds them from the framework's and workloads' values.

use shadowlab_policies::{PolicyInfo, Soundness};
use shadowlab_schema::{
    ParamsRecord, PerfCounts, PolicyRecord, VcpuResult, Verdict, WorkerResult, SCHEMA_VERSION,
};
use shadowlab_workloads::{Report, Run, Workload};

use super::{Backend, WorkerArgs};
use crate::BUILD_POLICY;

/// The record of a build's policy.
pub fn policy_record(p: PolicyInfo) -> PolicyRecord {
    PolicyRecord {
        name: p.name.into(),
        feature: p.feature().into(),
        soundness: match p.soundness {
            Soundness::Sound => "sound",
            Soundness::ArchDependent => "arch-dependent",
            Soundness::Unsound => "UNSOUND",
        }
        .into(),
        lockless: p.lockless,
    }
}

/// A result for `workload` on `backend` that has not run yet: verdict `fail`, no failure
/// message, counts zero. The backend fills it in and calls [`WorkerResult::conclude`].
pub fn new_result(args: &WorkerArgs, workload: &Workload, backend: Backend) -> WorkerResult {
    let params = workload.params();
    let vcpus = args.vcpus as usize;
    WorkerResult {
        schema_version: SCHEMA_VERSION,
        worker: format!("shadowlab-vmm {}", env!("CARGO_PKG_VERSION")),
        policy: policy_record(BUILD_POLICY),
        backend,
        workload: workload.name().into(),
        vcpus,
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
        // Every vCPU runs the workload and reports `expected_ops` (the multi-vCPU one counts
        // its rounds on every vCPU too).
        expected_ops: workload.expected_ops() * vcpus as u64,
        elapsed_ns: 0,
        per_vcpu: Vec::new(),
        mmu: None,
        backend_stats: Default::default(),
        layout_pad: crate::layout::LAYOUT_PAD as u64,
        pinning: None,
    }
}

/// Adds one vCPU's report, as it is, and its thread's perf counters, to `result`.
pub fn add_vcpu(result: &mut WorkerResult, report: Report, perf: Option<PerfCounts>) {
    result.ops += report.ops;
    result.per_vcpu.push(VcpuResult { report, perf });
}
