//! Performance counters of one vCPU thread over its measured region, as `perf stat` reports
//! them: each with its value and the time it was enabled and really running, or the reason the
//! host could not count it. Read by `framework/src/perf.rs`.

use serde::{Deserialize, Serialize};

/// One counter's value over the measured region.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "kebab-case")]
pub enum Reading {
    /// The counter ran.
    Counted {
        /// Events counted.
        value: u64,
        /// Nanoseconds the counter was enabled.
        time_enabled_ns: u64,
        /// Nanoseconds it was really on the PMU (less than enabled when multiplexed).
        time_running_ns: u64,
    },
    /// The host could not open it (no PMU, not permitted, ...): `<not supported>`.
    NotSupported {
        /// What `perf_event_open` said.
        reason: String,
    },
}

impl Reading {
    /// The value, if the counter ran.
    pub fn value(&self) -> Option<u64> {
        match self {
            Reading::Counted { value, .. } => Some(*value),
            Reading::NotSupported { .. } => None,
        }
    }
}

/// The counters of one vCPU thread over its measured region.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PerfCounts {
    /// Hardware: CPU cycles.
    pub cycles: Reading,
    /// Hardware: instructions retired.
    pub instructions: Reading,
    /// Hardware: mispredicted branches.
    pub branch_misses: Reading,
    /// Hardware: last-level cache misses.
    pub cache_misses: Reading,
    /// Software: task-clock, nanoseconds on a CPU.
    pub task_clock_ns: Reading,
    /// Software: context switches.
    pub context_switches: Reading,
    /// Software: migrations to another CPU.
    pub cpu_migrations: Reading,
    /// Software: page faults (of the host process: guest RAM first touches, ...).
    pub page_faults: Reading,
}
