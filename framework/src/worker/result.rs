//! The worker's JSON result.

use serde::Serialize;
use shadowlab_policies::{PolicyInfo, Soundness};
use shadowlab_workloads::{Histogram, Report, Run, Workload};

use super::{Backend, WorkerArgs};
use crate::BUILD_POLICY;

/// The policy a binary was built with, as recorded in every result.
#[derive(Clone, Debug, Serialize)]
pub struct PolicyRecord {
    /// `rmb-fence`, ...
    pub name: &'static str,
    /// The cargo feature that selected it.
    pub feature: &'static str,
    /// `sound`, `arch-dependent` or `UNSOUND`.
    pub soundness: &'static str,
    /// Whether it reads the unsync flags without the MMU lock.
    pub lockless: bool,
}

impl From<PolicyInfo> for PolicyRecord {
    fn from(p: PolicyInfo) -> Self {
        PolicyRecord {
            name: p.name,
            feature: p.feature(),
            soundness: match p.soundness {
                Soundness::Sound => "sound",
                Soundness::ArchDependent => "arch-dependent",
                Soundness::Unsound => "UNSOUND",
            },
            lockless: p.lockless,
        }
    }
}

/// Did the guest's own self-checks pass?
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// Every vCPU finished, every self-check passed, and the op count is the one the
    /// parameters imply.
    Pass,
    /// Something failed: see `failure`.
    Fail,
}

/// Percentiles of a per-op latency histogram (log-linear buckets: each value is within
/// `shadowlab_workloads::hist::MAX_RELATIVE_ERROR`, 1.6%, of the true quantile), in the
/// backend's timestamp unit.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct LatencySummary {
    /// The unit of the values (`ns` on sim, `tsc` in a guest).
    pub unit: &'static str,
    /// Samples recorded.
    pub samples: u64,
    /// Exact mean.
    pub mean: Option<u64>,
    /// Exact minimum.
    pub min: Option<u64>,
    /// Exact maximum.
    pub max: Option<u64>,
    /// 50th percentile.
    pub p50: Option<u64>,
    /// 90th percentile.
    pub p90: Option<u64>,
    /// 99th percentile.
    pub p99: Option<u64>,
}

impl LatencySummary {
    /// Summarises `h`.
    pub fn of(h: &Histogram, unit: &'static str) -> Self {
        LatencySummary {
            unit,
            samples: h.count,
            mean: h.mean(),
            min: (h.count > 0).then_some(h.min),
            max: (h.count > 0).then_some(h.max),
            p50: h.percentile(500),
            p90: h.percentile(900),
            p99: h.percentile(990),
        }
    }
}

/// One vCPU's part of the run.
#[derive(Clone, Debug, Serialize)]
pub struct VcpuResult {
    /// The vCPU.
    pub vcpu: usize,
    /// Operations done.
    pub ops: u64,
    /// Self-checks passed.
    pub checks: u64,
    /// PTE stores through the direct map.
    pub pte_writes: u64,
    /// CR3 loads.
    pub cr3_loads: u64,
    /// INVLPGs.
    pub invlpgs: u64,
    /// Full TLB flushes.
    pub tlb_flushes: u64,
    /// No-op hypercalls.
    pub hypercalls: u64,
    /// Per-op latency.
    pub latency: LatencySummary,
}

impl VcpuResult {
    /// From a workload's report.
    pub fn of(r: &Report, unit: &'static str) -> Self {
        VcpuResult {
            vcpu: r.vcpu,
            ops: r.ops,
            checks: r.checks,
            pte_writes: r.pte_writes,
            cr3_loads: r.cr3_loads,
            invlpgs: r.invlpgs,
            tlb_flushes: r.tlb_flushes,
            hypercalls: r.hypercalls,
            latency: LatencySummary::of(&r.latency, unit),
        }
    }
}

/// The parameters the workload ran with (defaults resolved).
#[derive(Clone, Copy, Debug, Serialize)]
pub struct ParamsRecord {
    /// Iterations.
    pub iters: u64,
    /// Seed.
    pub seed: u64,
    /// Size knob.
    pub size: u64,
}

impl WorkerResult {
    /// A result for `workload` on `backend` that has not run yet: verdict `fail`, no failure
    /// message, counts zero. The backend fills it in and calls [`WorkerResult::conclude`].
    pub fn new(args: &WorkerArgs, workload: &Workload, backend: Backend) -> Self {
        let params = workload.params();
        let vcpus = args.vcpus as usize;
        WorkerResult {
            worker: format!("shadowlab-vmm {}", env!("CARGO_PKG_VERSION")),
            policy: BUILD_POLICY.into(),
            backend,
            workload: workload.name(),
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
            // Every vCPU runs the workload and reports `expected_ops` (the multi-vCPU one
            // counts its rounds on every vCPU too).
            expected_ops: workload.expected_ops() * vcpus as u64,
            elapsed_ns: 0,
            per_vcpu: Vec::new(),
            mmu: None,
            backend_stats: serde_json::Value::Null,
            layout_pad: crate::layout::LAYOUT_PAD,
            pinning: None,
        }
    }

    /// Adds one vCPU's report.
    pub fn add_vcpu(&mut self, report: &Report, unit: &'static str) {
        self.ops += report.ops;
        self.per_vcpu.push(VcpuResult::of(report, unit));
    }

    /// Sets the verdict: `pass` only if no vCPU failed and the op count is the one the
    /// parameters imply.
    pub fn conclude(&mut self, mut failures: Vec<String>) {
        if failures.is_empty() && self.ops != self.expected_ops {
            failures.push(format!(
                "op count {} differs from the {} the parameters imply",
                self.ops, self.expected_ops
            ));
        }
        if failures.is_empty() {
            self.verdict = Verdict::Pass;
        } else {
            self.failure = Some(failures.join("; "));
        }
    }
}

/// One run, as printed on stdout.
#[derive(Clone, Debug, Serialize)]
pub struct WorkerResult {
    /// `shadowlab-vmm <version>`.
    pub worker: String,
    /// The build's policy.
    pub policy: PolicyRecord,
    /// The backend.
    pub backend: Backend,
    /// The workload's name.
    pub workload: &'static str,
    /// vCPUs.
    pub vcpus: usize,
    /// The workload's parameters.
    pub params: ParamsRecord,
    /// Guest RAM, MiB.
    pub ram_mib: u64,
    /// Shadow pool, pages.
    pub pool_pages: u64,
    /// Pass or fail.
    pub verdict: Verdict,
    /// Why it failed (the guest's message), if it did.
    pub failure: Option<String>,
    /// Operations done, all vCPUs.
    pub ops: u64,
    /// Operations the parameters imply, all vCPUs.
    pub expected_ops: u64,
    /// Wall-clock time of the guest part of the run, ns.
    pub elapsed_ns: u64,
    /// Each vCPU's report (empty if the run failed before any finished).
    pub per_vcpu: Vec<VcpuResult>,
    /// Every shadow-MMU counter (`sim` and `kvm`; `native` has none of ours).
    pub mmu: Option<serde_json::Value>,
    /// Backend-specific counters (sim: TLB hits, walks, ...).
    pub backend_stats: serde_json::Value,
    /// Bytes of layout padding in this binary's `.text` (`SHADOWLAB_LAYOUT_PAD` at build time,
    /// see `crate::layout`): two builds that differ only in it differ only in code layout.
    pub layout_pad: usize,
    /// Where each vCPU thread was pinned (`--pin`), and whether vCPUs outnumbered the CPUs;
    /// `None` where the threads were not pinned (no `--pin`; the kvm and native backends do
    /// not pin yet).
    pub pinning: Option<crate::pin::Pinning>,
}
