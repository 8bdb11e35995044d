//! Performance counters of one vCPU thread, read with `perf-event` around the measured region
//! only (the workload's run, not the VM's set-up), in the manner of `perf stat`.
//!
//! - Hardware: cycles, instructions, branch-misses and cache-misses, opened as **one group**
//!   so that they are scheduled onto the PMU together and their ratios are meaningful, where the
//!   host has a PMU. The development machines (a software-virtualised host) have none.
//! - Software, always: task-clock, context-switches, cpu-migrations and page-faults, each its own
//!   counter (the kernel never multiplexes software events).
//! - Each reading keeps `time_enabled` and `time_running`: where they differ the counter was
//!   multiplexed and its value covers only part of the region, as `perf stat` shows with its
//!   percentage column.
//! - A counter the host cannot open is [`Reading::NotSupported`] with the reason, never 0.
//!
//! Counters follow the calling thread (pid 0, any CPU) and include kernel time, so on `kvm` the
//! time a vCPU thread spends inside `KVM_RUN` is counted too. Hypervisor time is excluded.

use perf_event::events::{Event, Hardware, Software};
use perf_event::{Builder, Counter, Group};

pub use shadowlab_schema::{PerfCounts, Reading};

/// The hardware group: one leader (cycles) and three members, read atomically.
struct HwGroup {
    group: Group,
    members: [Counter; 4],
}

/// Counters open on the calling thread, ready to bracket a measured region.
pub struct ThreadCounters {
    hw: Result<HwGroup, String>,
    sw: [Result<Counter, String>; 4],
}

const HW_EVENTS: [Hardware; 4] = [
    Hardware::CPU_CYCLES,
    Hardware::INSTRUCTIONS,
    Hardware::BRANCH_MISSES,
    Hardware::CACHE_MISSES,
];
const SW_EVENTS: [Software; 4] = [
    Software::TASK_CLOCK,
    Software::CONTEXT_SWITCHES,
    Software::CPU_MIGRATIONS,
    Software::PAGE_FAULTS,
];

/// A counter of `kind` on the calling thread, kernel included, optionally in `group`.
fn open(kind: impl Into<Event>, group: Option<&mut Group>) -> std::io::Result<Counter> {
    let mut b = Builder::new();
    b.include_kernel();
    let b = b.kind(kind);
    match group {
        Some(g) => b.group(g).build(),
        None => b.build(),
    }
}

fn open_hw_group() -> Result<HwGroup, String> {
    let mut group = Group::new().map_err(|e| e.to_string())?;
    let mut open_member = |e: Hardware| open(e, Some(&mut group)).map_err(|e| e.to_string());
    let members = [
        open_member(HW_EVENTS[0])?,
        open_member(HW_EVENTS[1])?,
        open_member(HW_EVENTS[2])?,
        open_member(HW_EVENTS[3])?,
    ];
    Ok(HwGroup { group, members })
}

impl ThreadCounters {
    /// Opens every counter on the calling thread (disabled). Never fails: a counter that cannot
    /// be opened is remembered with its reason and reported as not supported.
    pub fn open() -> Self {
        ThreadCounters {
            hw: open_hw_group(),
            sw: SW_EVENTS.map(|e| open(e, None).map_err(|e| e.to_string())),
        }
    }

    /// Zeroes and starts every counter that opened: the start of the measured region.
    pub fn start(&mut self) {
        if let Ok(hw) = &mut self.hw {
            let _ = hw.group.reset();
            let _ = hw.group.enable();
        }
        for c in self.sw.iter_mut().flatten() {
            let _ = c.reset();
            let _ = c.enable();
        }
    }

    /// Stops the counters and reads them: the end of the measured region.
    pub fn stop(&mut self) -> PerfCounts {
        let hw: [Reading; 4] = match &mut self.hw {
            Ok(hw) => {
                let _ = hw.group.disable();
                match hw.group.read() {
                    Ok(counts) => {
                        let (enabled, running) = (counts.time_enabled(), counts.time_running());
                        hw.members.each_ref().map(|m| match counts.get(m) {
                            Some(&value) => Reading::Counted {
                                value,
                                time_enabled_ns: enabled,
                                time_running_ns: running,
                            },
                            None => not_supported("the group read did not include it"),
                        })
                    }
                    Err(e) => [0; 4].map(|_| not_supported(&e.to_string())),
                }
            }
            Err(reason) => [0; 4].map(|_| not_supported(reason)),
        };
        let sw = self.sw.each_mut().map(|c| match c {
            Ok(c) => {
                let _ = c.disable();
                match c.read_count_and_time() {
                    Ok(t) => Reading::Counted {
                        value: t.count,
                        time_enabled_ns: t.time_enabled,
                        time_running_ns: t.time_running,
                    },
                    Err(e) => not_supported(&e.to_string()),
                }
            }
            Err(reason) => not_supported(reason),
        });
        let [cycles, instructions, branch_misses, cache_misses] = hw;
        let [task_clock_ns, context_switches, cpu_migrations, page_faults] = sw;
        PerfCounts {
            cycles,
            instructions,
            branch_misses,
            cache_misses,
            task_clock_ns,
            context_switches,
            cpu_migrations,
            page_faults,
        }
    }
}

fn not_supported(reason: &str) -> Reading {
    Reading::NotSupported {
        reason: reason.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn work(n: u64) -> u64 {
        let mut x = 0u64;
        for i in 0..n {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(i));
        }
        x
    }

    #[test]
    fn software_counters_count_the_region_and_missing_hardware_says_why() {
        let mut c = ThreadCounters::open();
        c.start();
        work(2_000_000);
        // A page fault in the region: touch fresh memory.
        let v = std::hint::black_box(vec![1u8; 1 << 20]);
        let p = c.stop();
        drop(v);
        match &p.task_clock_ns {
            Reading::Counted {
                value,
                time_enabled_ns,
                time_running_ns,
            } => {
                assert!(*value > 0, "{p:?}");
                assert!(time_running_ns <= time_enabled_ns && *time_enabled_ns > 0);
            }
            Reading::NotSupported { reason } => panic!("task-clock must work here: {reason}"),
        }
        assert!(p.page_faults.value().is_some_and(|n| n > 0), "{p:?}");
        // Hardware counters: either all four counted, or all four say why not (never a 0
        // standing in for "no PMU").
        let hw = [
            &p.cycles,
            &p.instructions,
            &p.branch_misses,
            &p.cache_misses,
        ];
        match hw.iter().filter(|r| r.value().is_some()).count() {
            4 => assert!(p.instructions.value().unwrap() > 1_000_000, "{p:?}"),
            0 => assert!(hw.iter().all(|r| match r {
                Reading::NotSupported { reason } => !reason.is_empty(),
                _ => false,
            })),
            n => panic!("{n} of the 4 grouped hardware counters ran: {p:?}"),
        }
    }

    #[test]
    fn a_region_outside_start_and_stop_is_not_counted() {
        let mut c = ThreadCounters::open();
        c.start();
        let short = c.stop();
        work(5_000_000);
        c.start();
        let again = c.stop();
        let (a, b) = (
            short.task_clock_ns.value().unwrap(),
            again.task_clock_ns.value().unwrap(),
        );
        assert!(
            a < 1_000_000 && b < 1_000_000,
            "{a} {b}: the work between was counted"
        );
    }

    #[test]
    fn readings_serialise_with_their_status() {
        let r = Reading::NotSupported {
            reason: "No such file or directory (os error 2)".into(),
        };
        let j = serde_json::to_string(&r).unwrap();
        assert!(j.contains("\"status\":\"not-supported\""), "{j}");
        let c = Reading::Counted {
            value: 7,
            time_enabled_ns: 10,
            time_running_ns: 5,
        };
        let back: Reading = serde_json::from_str(&serde_json::to_string(&c).unwrap()).unwrap();
        assert_eq!(back, c);
    }
}
