//! `exit-floor`: a no-op hypercall in a loop; the backend's round-trip floor.

use super::{check_word, Run};
use crate::cpu::{CheckFailed, Cpu};
use crate::error::WorkloadError;
use crate::frames::FrameAlloc;
use crate::layout::direct_map;
use crate::report::{Counted, Params, Report};
use crate::rng::pattern;

/// `exit-floor`: `iters` times `cpu.hypercall_nop()`, timed one by one. `size` is unused.
///
/// One op = one hypercall; `ops == iters`. Self-checks: the timestamps never go backwards
/// across a round trip, and a word stamped in guest memory before the loop still reads back
/// after it (the VMM's exit path does not disturb guest RAM).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExitFloor {
    /// `size` is ignored.
    pub params: Params,
}

impl ExitFloor {
    /// Default parameters.
    pub const DEFAULT: Params = Params {
        iters: 100_000,
        seed: 1,
        size: 0,
    };
}

impl Run for ExitFloor {
    fn name(&self) -> &'static str {
        "exit-floor"
    }

    fn params(&self) -> Params {
        self.params
    }

    fn expected_ops(&self) -> u64 {
        self.params.iters
    }

    fn run<C: Cpu>(&self, cpu: &mut C) -> Result<Report, WorkloadError> {
        let p = self.params;
        let mut cpu = Counted::new(cpu);
        let cpu = &mut cpu;
        let mut report = Report::default();
        let mut frames = FrameAlloc::for_cpu(cpu);
        let frame = frames.alloc(cpu)?;
        let value = pattern(p.seed, frame, 0);
        cpu.write_u64(direct_map(frame), value);

        let mut t = cpu.timestamp();
        for _ in 0..p.iters {
            cpu.hypercall_nop();
            let now = cpu.timestamp();
            if now < t {
                return Err(CheckFailed {
                    what: "exit-floor: timestamp went backwards across a hypercall",
                    gva: 0,
                    expected: t,
                    found: now,
                }
                .into());
            }
            report.latency.record(now - t);
            t = now;
            report.ops += 1;
        }
        check_word(
            cpu,
            &mut report,
            "exit-floor: guest memory after the hypercalls",
            direct_map(frame),
            value,
        )?;
        cpu.fill(&mut report);
        Ok(report)
    }
}
