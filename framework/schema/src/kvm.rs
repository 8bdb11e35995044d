//! The `kvm` and `native` backends' counters: defined here once, filled by `framework/src/kvm`
//! (which re-exports them) and read by the driver.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Exit counts of one vCPU, by reason.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitCounts {
    /// No-op hypercalls.
    pub nop: u64,
    /// ucalls (all commands).
    pub ucall: u64,
    /// ucalls refused (bad address, command or argument).
    pub ucall_rejected: u64,
    /// MMU hypercalls.
    pub mmu_hypercall: u64,
    /// Exceptions reported by the monitor.
    pub exception: u64,
    /// Page faults fixed by the MMU.
    pub page_fault_fixed: u64,
    /// Guest page-table stores emulated.
    pub emulated_write: u64,
    /// Hypercall `out`s that reached the VMM as a #GP (a host that refuses CPL3 port I/O
    /// despite IOPL=3) and were emulated; they are also counted as `nop`/`ucall`.
    pub emulated_out: u64,
    /// KVM_RUN returns with EINTR (kicks).
    pub kicked: u64,
    /// Host-coherence replays entered by hand because an event was in flight.
    pub replay_by_hand: u64,
    /// Other exits.
    pub other: u64,
}

/// VMM-side time to handle the guest's page faults (the MMU's fault handler and everything
/// around it in the exit handler, not the exit).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FaultTiming {
    /// Faults timed.
    pub count: u64,
    /// Median, ns.
    pub median_ns: u64,
    /// 90th percentile, ns.
    pub p90_ns: u64,
    /// Largest, ns.
    pub max_ns: u64,
}

impl FaultTiming {
    /// Summarises samples (ns): count, median, 90th percentile (nearest rank) and maximum.
    pub fn of(mut ns: Vec<u32>) -> Self {
        if ns.is_empty() {
            return Self::default();
        }
        ns.sort_unstable();
        let q = |p: f64| u64::from(ns[(((ns.len() - 1) as f64) * p).round() as usize]);
        Self {
            count: ns.len() as u64,
            median_ns: q(0.5),
            p90_ns: q(0.9),
            max_ns: u64::from(ns[ns.len() - 1]),
        }
    }
}

/// How the `kvm` backend makes a host that shadows the pool see SPTE changes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "kebab-case")]
pub enum HostCoherence {
    /// Re-store the changed SPTEs in guest context through the monitor, then reload CR3.
    #[default]
    Replay,
    /// Delete and re-add the shadow pool's memslot with every vCPU parked.
    CycleSlot,
}

/// What the `kvm` backend did to keep the host coherent with its SPTE changes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostCoherenceStats {
    /// The mechanism.
    pub mode: HostCoherence,
    /// `KVM_REQ_TLB_FLUSH` requests handled with a host flush (a replay or a slot cycle).
    pub flushes: u64,
    /// Pool memslot cycles.
    pub slot_cycles: u64,
    /// Runs of the monitor's replay routine, including those that only reloaded CR3.
    pub replay_runs: u64,
    /// Of those, runs that only reloaded CR3 (the log was empty: another vCPU had replayed it).
    pub cr3_only_runs: u64,
    /// Changed SPTEs the replay routine made the host see.
    pub sptes_replayed: u64,
    /// Pool pages the host was made to drop whole, one store each.
    pub pages_replayed: u64,
    /// Stores the replay routine made.
    pub replay_stores: u64,
    /// Wall-clock time spent in host flushes, summed over vCPUs, in ns.
    pub flush_ns: u64,
}

/// The `kvm` and `native` backends' counters for one run.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvmStats {
    /// Host CPUs online.
    pub host_cpus: usize,
    /// More vCPUs than host CPUs.
    pub oversubscribed: bool,
    /// Delta of the VM's cumulative KVM binary stats over the run, by KVM's name.
    pub kvm_vm_stats: BTreeMap<String, u64>,
    /// Delta of the vCPUs' cumulative KVM binary stats, summed over vCPUs.
    pub kvm_vcpu_stats: BTreeMap<String, u64>,
    /// Host coherence flushes the `kvm` backend needed (`native`: none).
    pub host_coherence_flushes: Option<u64>,
    /// How the `kvm` backend kept the host coherent, with its counts.
    pub host_coherence: Option<HostCoherenceStats>,
    /// Each vCPU's exits by reason.
    pub exits: Vec<ExitCounts>,
    /// Each vCPU's VMM-side fault handling time.
    pub fault_handling: Vec<FaultTiming>,
}
