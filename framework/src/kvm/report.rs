//! What a run reports: per-vCPU outcomes, exit counts, and the failure reports with registers.

use std::collections::BTreeMap;
use std::fmt;

use serde::Serialize;

use std::sync::Arc;

use super::emulate::DecodeError;
use super::hooks::HookError;
use super::monitor::ExceptionFrame;
pub use shadowlab_schema::{ExitCounts, FaultTiming, HostCoherenceStats};
use shadowlab_schema::{MmuStats, PerfCounts, Pinning};

/// The guest's registers at a failure.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct GuestRegs {
    /// General-purpose registers in the order rax, rbx, rcx, rdx, rsi, rdi, rsp, rbp, r8..r15.
    pub gprs: [u64; 16],
    /// RIP.
    pub rip: u64,
    /// RFLAGS.
    pub rflags: u64,
    /// CR0.
    pub cr0: u64,
    /// CR2.
    pub cr2: u64,
    /// CR3.
    pub cr3: u64,
    /// CR4.
    pub cr4: u64,
    /// EFER.
    pub efer: u64,
    /// CS selector.
    pub cs: u16,
}

impl GuestRegs {
    /// From KVM's register structs.
    pub fn from_kvm(r: &kvm_bindings::kvm_regs, s: &kvm_bindings::kvm_sregs) -> Self {
        Self {
            gprs: [
                r.rax, r.rbx, r.rcx, r.rdx, r.rsi, r.rdi, r.rsp, r.rbp, r.r8, r.r9, r.r10, r.r11,
                r.r12, r.r13, r.r14, r.r15,
            ],
            rip: r.rip,
            rflags: r.rflags,
            cr0: s.cr0,
            cr2: s.cr2,
            cr3: s.cr3,
            cr4: s.cr4,
            efer: s.efer,
            cs: s.cs.selector,
        }
    }
}

impl fmt::Display for GuestRegs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const NAMES: [&str; 16] = [
            "rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rsp", "rbp", "r8", "r9", "r10", "r11",
            "r12", "r13", "r14", "r15",
        ];
        write!(
            f,
            "rip={:#018x} rflags={:#x} cs={:#x}",
            self.rip, self.rflags, self.cs
        )?;
        for (n, v) in NAMES.iter().zip(self.gprs) {
            write!(f, " {n}={v:#x}")?;
        }
        write!(
            f,
            " cr0={:#x} cr2={:#x} cr3={:#x} cr4={:#x} efer={:#x}",
            self.cr0, self.cr2, self.cr3, self.cr4, self.efer
        )
    }
}

/// How a vCPU failed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub enum FailureKind {
    /// GUEST_ASSERT (or a guest panic).
    Assert {
        /// Source file.
        file: String,
        /// Line.
        line: u64,
        /// Message.
        message: String,
    },
    /// A guest exception the MMU did not fix (reported by the monitor).
    Exception {
        /// The frame the monitor stub left.
        frame: ExceptionFrame,
        /// CR2 (for #PF: the faulting address).
        cr2: u64,
    },
    /// KVM_EXIT_SHUTDOWN: a triple fault.
    TripleFault,
    /// KVM_EXIT_INTERNAL_ERROR.
    InternalError {
        /// The suberror.
        suberror: u32,
    },
    /// KVM_EXIT_FAIL_ENTRY.
    FailEntry {
        /// Hardware reason.
        reason: u64,
    },
    /// An exit the backend does not expect (port, MMIO, HLT before DONE...).
    UnexpectedExit(String),
    /// The run watchdog stopped the vCPU.
    Timeout {
        /// Milliseconds allowed.
        millis: u64,
    },
    /// The MMU hook reported a VMM-side error (shared: a failure report is cloned into the
    /// run's error; serialised as its message).
    Mmu(#[serde(serialize_with = "as_message")] Arc<HookError>),
    /// Stopped because another vCPU failed first.
    Stopped(String),
    /// A store to a guest page table that cannot be emulated (not a MOV-family store);
    /// serialised as its message.
    Emulation(#[serde(serialize_with = "as_message")] DecodeError),
}

fn as_message<E: fmt::Display, S: serde::Serializer>(e: &E, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(e)
}

/// A vCPU's failure, with its registers and last ucall message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct GuestFailure {
    /// What happened.
    pub kind: FailureKind,
    /// Registers at the failure (None if they could not be read).
    pub regs: Option<GuestRegs>,
    /// The guest's last SYNC/PRINTF message before it.
    pub last_message: Option<String>,
}

impl fmt::Display for GuestFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            FailureKind::Assert {
                file,
                line,
                message,
            } => write!(f, "GUEST_ASSERT failed at {file}:{line}: {message}")?,
            FailureKind::Exception { frame, cr2 } => write!(
                f,
                "guest exception vector {} error code {:#x} at rip {:#x} (cr2 {cr2:#x})",
                frame.vector, frame.error_code, frame.rip
            )?,
            FailureKind::TripleFault => write!(f, "triple fault (KVM_EXIT_SHUTDOWN)")?,
            FailureKind::InternalError { suberror } => {
                write!(f, "KVM internal error, suberror {suberror}")?
            }
            FailureKind::FailEntry { reason } => {
                write!(f, "VM entry failed, hardware reason {reason:#x}")?
            }
            FailureKind::UnexpectedExit(what) => write!(f, "unexpected exit: {what}")?,
            FailureKind::Timeout { millis } => {
                write!(f, "no result within the {millis} ms watchdog")?
            }
            FailureKind::Mmu(e) => write!(f, "MMU error: {e}")?,
            FailureKind::Stopped(why) => write!(f, "stopped: {why}")?,
            FailureKind::Emulation(why) => write!(f, "emulation failed: {why}")?,
        }
        if let Some(m) = &self.last_message {
            write!(f, "; last guest message: {m:?}")?;
        }
        if let Some(r) = &self.regs {
            write!(f, "; registers: {r}")?;
        }
        Ok(())
    }
}

/// What the guest reported on DONE.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Done {
    /// Operations performed.
    pub ops: u64,
    /// TSC at the start of the measured loop.
    pub tsc_start: u64,
    /// TSC at its end.
    pub tsc_end: u64,
    /// All six DONE arguments.
    pub args: [u64; 6],
    /// The workload's own report, when the program was a workload.
    pub report: Option<WorkloadReport>,
}

/// A workload's report (`shadowlab_workloads::Report`) as the guest sent it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct WorkloadReport {
    /// vCPU that ran it.
    pub vcpu: u64,
    /// Operations.
    pub ops: u64,
    /// Self-checks passed.
    pub checks: u64,
    /// PTE stores through the direct map.
    pub pte_writes: u64,
    /// CR3 loads.
    pub cr3_loads: u64,
    /// INVLPGs.
    pub invlpgs: u64,
    /// TLB flushes.
    pub tlb_flushes: u64,
    /// No-op hypercalls.
    pub hypercalls: u64,
    /// Per-op latency samples (TSC ticks).
    pub latency_count: u64,
    /// Their sum.
    pub latency_sum: u64,
    /// The smallest.
    pub latency_min: u64,
    /// The largest.
    pub latency_max: u64,
    /// The latency histogram's non-empty buckets, as (bucket index, samples) in index order
    /// (`shadowlab_workloads::Histogram::bucket_of`: log-linear, 32 buckets per power of two;
    /// most of the 1920 are empty, so they are not listed).
    pub latency_buckets: Vec<(usize, u64)>,
}

// The block carries `Histogram::buckets` word for word.
const _: () =
    assert!(shadowlab_abi::report_words::NR_BUCKETS == shadowlab_workloads::hist::BUCKETS);

impl WorkloadReport {
    /// From the report block's words (`shadowlab_abi::report_words`).
    pub fn from_words(w: &[u64]) -> Option<Self> {
        use shadowlab_abi::report_words as r;
        if w.len() != r::TOTAL {
            return None;
        }
        Some(Self {
            vcpu: w[r::VCPU],
            ops: w[r::OPS],
            checks: w[r::CHECKS],
            pte_writes: w[r::PTE_WRITES],
            cr3_loads: w[r::CR3_LOADS],
            invlpgs: w[r::INVLPGS],
            tlb_flushes: w[r::TLB_FLUSHES],
            hypercalls: w[r::HYPERCALLS],
            latency_count: w[r::LAT_COUNT],
            latency_sum: w[r::LAT_SUM],
            latency_min: w[r::LAT_MIN],
            latency_max: w[r::LAT_MAX],
            latency_buckets: w[r::LAT_BUCKETS..]
                .iter()
                .enumerate()
                .filter(|&(_, &n)| n != 0)
                .map(|(b, &n)| (b, n))
                .collect(),
        })
    }

    /// The report back in the workloads crate's type (the guest sent it through the ucall
    /// ABI as words), so that every backend's reports are summarised by the same code.
    pub fn to_report(&self) -> shadowlab_workloads::Report {
        let mut latency = shadowlab_workloads::Histogram::new();
        for &(b, n) in &self.latency_buckets {
            // A bucket index out of range can only come from a hand-built report (from_words
            // yields indices below NR_BUCKETS): it is dropped, and `count` still says how
            // many samples there were.
            if let Some(dst) = latency.buckets.get_mut(b) {
                *dst = n;
            }
        }
        latency.count = self.latency_count;
        latency.sum = self.latency_sum;
        latency.min = self.latency_min;
        latency.max = self.latency_max;
        shadowlab_workloads::Report {
            vcpu: self.vcpu as usize,
            ops: self.ops,
            checks: self.checks,
            pte_writes: self.pte_writes,
            cr3_loads: self.cr3_loads,
            invlpgs: self.invlpgs,
            tlb_flushes: self.tlb_flushes,
            hypercalls: self.hypercalls,
            latency,
        }
    }
}

/// One vCPU's report.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct VcpuReport {
    /// vCPU index.
    pub vcpu: usize,
    /// DONE, or the failure.
    pub outcome: Result<Done, GuestFailure>,
    /// Exits by reason.
    pub exits: ExitCounts,
    /// SYNC checkpoints seen (stage, value).
    pub syncs: Vec<(u64, u64)>,
    /// PRINTF output.
    pub prints: Vec<String>,
    /// VMM-side page-fault handling time.
    pub fault_handling: FaultTiming,
    /// The vCPU thread's perf counters over its run of the guest.
    pub perf: PerfCounts,
    /// The host CPU the thread pinned itself to (`RunConfig::pin`).
    pub pinned_cpu: Option<usize>,
}

/// A whole run.
#[derive(Clone, Debug, Serialize)]
pub struct RunResult {
    /// `native` or `kvm`.
    pub backend: &'static str,
    /// vCPUs.
    pub nr_vcpus: usize,
    /// Host CPUs online (a run with more vCPUs is oversubscribed).
    pub host_cpus: usize,
    /// Wall-clock time from the first vCPU start to the last vCPU's end.
    pub elapsed_ns: u64,
    /// Per-vCPU reports.
    pub vcpus: Vec<VcpuReport>,
    /// Delta of the VM's cumulative binary stats over the run (peak/instant values: final).
    pub kvm_vm_stats: BTreeMap<String, u64>,
    /// Delta of the vCPUs' cumulative binary stats, summed over vCPUs.
    pub kvm_vcpu_stats: BTreeMap<String, u64>,
    /// Our shadow MMU's counters (`kvm` backend).
    pub mmu_stats: Option<MmuStats>,
    /// Host coherence flushes (pool memslot cycles) the `kvm` backend needed.
    pub host_flushes: Option<u64>,
    /// How the `kvm` backend kept the host coherent, with its counts.
    pub host_coherence: Option<HostCoherenceStats>,
    /// Where each vCPU thread was pinned, if the run pinned them.
    pub pinning: Option<Pinning>,
}

impl RunResult {
    /// Total operations over the vCPUs that reported DONE.
    pub fn total_ops(&self) -> u64 {
        self.vcpus
            .iter()
            .filter_map(|v| v.outcome.as_ref().ok())
            .map(|d| d.ops)
            .sum()
    }

    /// The run as JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fault_timing_quantiles() {
        assert_eq!(FaultTiming::of(vec![]), FaultTiming::default());
        let t = FaultTiming::of((1..=100).rev().collect());
        assert_eq!(
            (t.count, t.median_ns, t.p90_ns, t.max_ns),
            (100, 51, 90, 100)
        );
    }

    #[test]
    fn the_report_converts_back_with_its_latency_histogram() {
        use shadowlab_abi::report_words as w;
        use shadowlab_workloads::Histogram;
        // What the guest does: a workload's histogram, copied word for word into the block.
        let mut h = Histogram::new();
        for v in [5, 7, 204, 257, 1000, 1000] {
            h.record(v);
        }
        let mut words = vec![0u64; w::TOTAL];
        words[w::OPS] = 6;
        words[w::LAT_COUNT] = h.count;
        words[w::LAT_SUM] = h.sum;
        words[w::LAT_MIN] = h.min;
        words[w::LAT_MAX] = h.max;
        words[w::LAT_BUCKETS..].copy_from_slice(&h.buckets);
        let r = WorkloadReport::from_words(&words).unwrap();
        // Only the non-empty buckets are kept (and serialised).
        assert_eq!(
            r.latency_buckets,
            vec![
                (5, 1),
                (7, 1),
                (Histogram::bucket_of(204), 1),
                (Histogram::bucket_of(257), 1),
                (Histogram::bucket_of(1000), 2)
            ]
        );
        let rep = r.to_report();
        assert_eq!(rep.latency, h);
        assert_eq!(rep.ops, 6);
        // 204 and 257 are told apart (log2 buckets said 255 for both).
        assert_eq!(
            rep.latency.percentile(500),
            Some(Histogram::representative(Histogram::bucket_of(204)))
        );
        assert_eq!(rep.latency.percentile(1000), Some(1000));
        assert_eq!(WorkloadReport::from_words(&words[1..]), None);
    }
}
