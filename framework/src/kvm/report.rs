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
use shadowlab_workloads::Report;

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
    /// The workload's own report, when the program was a workload (boxed: 15 KiB, most of it
    /// the latency histogram).
    pub report: Option<Box<Report>>,
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
}
