//! The result schema of one `shadowlab-vmm` run: ONE definition, which the worker serialises to
//! its single JSON line and the driver (`shadowlab run`) deserialises. The crate depends on serde
//! and on the workloads crate, whose [`Report`] each vCPU's result holds as it is (clap behind a
//! feature, for the worker's `--backend`); it knows nothing of the MMU or the backends, which fill
//! these structs in.
//!
//! Changing a field's meaning or removing one bumps [`SCHEMA_VERSION`]; the driver refuses a
//! result whose version it does not know.

mod kvm;
mod mmu;
mod perf;

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
pub use shadowlab_workloads::{Histogram, Report};

pub use kvm::{ExitCounts, FaultTiming, HostCoherence, HostCoherenceStats, KvmStats};
pub use mmu::{LockStats, MmuStats, SimCpuStats};
pub use perf::{PerfCounts, Reading};

/// The version of this schema, written in every result as `schema_version`.
///
/// 2: `per_vcpu` holds each vCPU's workload [`Report`] as it is (`report`, with the whole
/// latency [`Histogram`]) instead of a copy of its counters and a percentile summary.
pub const SCHEMA_VERSION: u32 = 2;

/// Which backend runs the guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "kebab-case")]
pub enum Backend {
    /// Software vCPUs on threads, walking our shadow tables with a software TLB.
    Sim,
    /// Real vCPUs on /dev/kvm, CR3 always one of our shadow roots.
    Kvm,
    /// Real vCPUs on /dev/kvm on the guest's own page tables: the host kernel's shadow MMU.
    Native,
}

impl Backend {
    /// Every backend, in a fixed order.
    pub const ALL: [Backend; 3] = [Backend::Sim, Backend::Kvm, Backend::Native];

    /// The unit of the latency samples in the workload reports of this backend: `ns` on sim
    /// (host clock), `tsc` in a guest (its timestamp counter).
    pub fn latency_unit(self) -> &'static str {
        match self {
            Backend::Sim => "ns",
            Backend::Kvm | Backend::Native => "tsc",
        }
    }

    /// The command-line and JSON name.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Sim => "sim",
            Backend::Kvm => "kvm",
            Backend::Native => "native",
        }
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A name that is not a backend.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnknownBackend(pub String);

impl fmt::Display for UnknownBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "unknown backend '{}' (expected one of: sim, kvm, native)",
            self.0
        )
    }
}

impl std::error::Error for UnknownBackend {}

impl FromStr for Backend {
    type Err = UnknownBackend;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Backend::ALL
            .into_iter()
            .find(|b| b.name() == s)
            .ok_or_else(|| UnknownBackend(s.into()))
    }
}

/// The policy a binary was built with, as recorded in every result.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyRecord {
    /// `rmb-fence`, ...
    pub name: String,
    /// The cargo feature that selected it.
    pub feature: String,
    /// `sound`, `arch-dependent` or `UNSOUND`.
    pub soundness: String,
    /// Whether it reads the unsync flags without the MMU lock.
    pub lockless: bool,
}

/// Did the guest's own self-checks pass?
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// Every vCPU finished, every self-check passed, and the op count is the one the
    /// parameters imply.
    Pass,
    /// Something failed: see `failure`.
    Fail,
}

/// One vCPU's part of the run: the workload's report as the guest counted it (its `vcpu` is the
/// vCPU's index; its latency samples are in [`Backend::latency_unit`]s), and its thread's perf
/// counters.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VcpuResult {
    /// The workload's report, as it is.
    pub report: Report,
    /// The vCPU thread's perf counters over the measured region.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub perf: Option<PerfCounts>,
}

/// Which host CPU each vCPU thread is (to be) pinned to, as recorded in the worker's result.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pinning {
    /// vCPU `i` → the host CPU it runs on; `None` for a vCPU whose thread did not pin itself
    /// (a run that stopped before that thread started).
    pub map: Vec<Option<usize>>,
    /// More vCPUs than allowed CPUs: some vCPUs share a CPU (round-robin).
    pub oversubscribed: bool,
    /// CPUs the process was allowed to run on when the plan was made.
    pub allowed_cpus: Vec<usize>,
}

impl Pinning {
    /// The same plan with every entry `None`: filled in by the threads as they pin themselves.
    pub fn unfilled(&self) -> Pinning {
        Pinning {
            map: vec![None; self.map.len()],
            oversubscribed: self.oversubscribed,
            allowed_cpus: self.allowed_cpus.clone(),
        }
    }
}

/// The parameters the workload ran with (defaults resolved).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParamsRecord {
    /// Iterations.
    pub iters: u64,
    /// Seed.
    pub seed: u64,
    /// Size knob.
    pub size: u64,
}

/// Backend-specific counters. Serialised without a tag, as the bare value: the result's
/// `backend` field says which it is.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum BackendStats {
    /// `sim`: each vCPU's software-TLB counters.
    Sim(Vec<SimCpuStats>),
    /// `kvm` and `native`: KVM's binary stats, exits, fault handling, host coherence.
    Kvm(Box<KvmStats>),
    /// The run failed before the backend could count (`null`).
    #[default]
    None,
}

/// One run, as printed on stdout.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerResult {
    /// [`SCHEMA_VERSION`] of the writer.
    pub schema_version: u32,
    /// `shadowlab-vmm <version>`.
    pub worker: String,
    /// The build's policy.
    pub policy: PolicyRecord,
    /// The backend.
    pub backend: Backend,
    /// The workload's name.
    pub workload: String,
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
    pub mmu: Option<MmuStats>,
    /// Backend-specific counters.
    pub backend_stats: BackendStats,
    /// Bytes of padding the worker was built with ahead of the MMU's code
    /// (`SHADOWLAB_LAYOUT_PAD`): same code, another layout, for the layout-varied A/A.
    #[serde(default)]
    pub layout_pad: u64,
    /// Where each vCPU thread was pinned (`--pin`), or `None` when it was not.
    #[serde(default)]
    pub pinning: Option<Pinning>,
}

impl WorkerResult {
    /// Sets the verdict: `pass` only if no vCPU failed and the op count is the one the
    /// parameters imply; otherwise `fail` with every reason joined.
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
            self.verdict = Verdict::Fail;
            self.failure = Some(failures.join("; "));
        }
    }

    /// Per-op time in ns: wall-clock time of the guest part over the operations done (`None`
    /// for a run that did none).
    pub fn ns_per_op(&self) -> Option<f64> {
        (self.ops > 0 && self.elapsed_ns > 0).then(|| self.elapsed_ns as f64 / self.ops as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report() -> Report {
        let mut latency = Histogram::new();
        for v in [40, 41, 900] {
            latency.record(v);
        }
        Report {
            vcpu: 0,
            ops: 10,
            checks: 20,
            latency,
            ..Report::default()
        }
    }

    fn result(backend: Backend, stats: BackendStats) -> WorkerResult {
        WorkerResult {
            schema_version: SCHEMA_VERSION,
            worker: "shadowlab-vmm 0.1.0".into(),
            policy: PolicyRecord {
                name: "rmb-fence".into(),
                feature: "policy-rmb-fence".into(),
                soundness: "sound".into(),
                lockless: true,
            },
            backend,
            workload: "cr3-switch".into(),
            vcpus: 1,
            params: ParamsRecord {
                iters: 10,
                seed: 1,
                size: 4,
            },
            ram_mib: 64,
            pool_pages: 4096,
            verdict: Verdict::Fail,
            failure: None,
            ops: 10,
            expected_ops: 10,
            elapsed_ns: 2000,
            per_vcpu: vec![VcpuResult {
                report: report(),
                perf: None,
            }],
            mmu: Some(MmuStats {
                faults: 3,
                lock: LockStats {
                    read_acquisitions: 2,
                    ..LockStats::default()
                },
                ..MmuStats::default()
            }),
            backend_stats: stats,
            layout_pad: 0,
            pinning: None,
        }
    }

    #[test]
    fn every_backend_stats_shape_round_trips() {
        for (b, s) in [
            (
                Backend::Sim,
                BackendStats::Sim(vec![SimCpuStats {
                    tlb_hits: 7,
                    ..SimCpuStats::default()
                }]),
            ),
            (
                Backend::Kvm,
                BackendStats::Kvm(Box::new(KvmStats {
                    host_cpus: 2,
                    host_coherence: Some(HostCoherenceStats {
                        mode: HostCoherence::CycleSlot,
                        flushes: 4,
                        ..HostCoherenceStats::default()
                    }),
                    exits: vec![ExitCounts {
                        nop: 9,
                        ..ExitCounts::default()
                    }],
                    ..KvmStats::default()
                })),
            ),
            (Backend::Native, BackendStats::None),
        ] {
            let r = result(b, s);
            let json = serde_json::to_string(&r).unwrap();
            assert_eq!(serde_json::from_str::<WorkerResult>(&json).unwrap(), r);
        }
        let json = serde_json::to_string(&result(Backend::Native, BackendStats::None)).unwrap();
        assert!(json.contains(r#""backend_stats":null"#), "{json}");
        assert!(json.contains(r#""schema_version":2"#), "{json}");
        // The report as it is: its counters and its histogram's non-empty buckets.
        let b = Histogram::bucket_of;
        let want = format!(
            r#""per_vcpu":[{{"report":{{"vcpu":0,"ops":10,"checks":20,"pte_writes":0,"cr3_loads":0,"invlpgs":0,"tlb_flushes":0,"hypercalls":0,"latency":{{"count":3,"sum":981,"min":40,"max":900,"buckets":[[40,1],[41,1],[{},1]]}}}}}}]"#,
            b(900)
        );
        assert!(json.contains(&want), "{json}");
    }

    #[test]
    fn conclude_needs_the_implied_op_count() {
        let mut r = result(Backend::Sim, BackendStats::None);
        r.conclude(vec![]);
        assert_eq!(r.verdict, Verdict::Pass);
        let mut r = result(Backend::Sim, BackendStats::None);
        r.ops = 9;
        r.conclude(vec![]);
        assert_eq!(r.verdict, Verdict::Fail);
        assert_eq!(
            r.failure.as_deref(),
            Some("op count 9 differs from the 10 the parameters imply")
        );
        assert_eq!(r.ns_per_op(), Some(2000.0 / 9.0));
    }

    #[test]
    fn backend_names_parse_back() {
        for b in Backend::ALL {
            assert_eq!(b.name().parse::<Backend>(), Ok(b));
        }
        assert_eq!(
            "tcg".parse::<Backend>().unwrap_err().to_string(),
            "unknown backend 'tcg' (expected one of: sim, kvm, native)"
        );
    }
}
