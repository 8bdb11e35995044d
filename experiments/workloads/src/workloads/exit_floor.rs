//! `exit-floor`: a no-op hypercall in a loop; the backend's round-trip floor.

use super::{check_word, OpTimer, Spec};
use crate::cpu::Cpu;
use crate::error::WorkloadError;
use crate::frames::FrameAlloc;
use crate::report::{Counted, Params, Report};
use crate::rng::pattern;
use shadowlab_abi::layout::direct_map;

/// `exit-floor`: `iters` times `cpu.hypercall_nop()`. `size` = hypercalls per latency sample
/// (0 or 1, the default: each hypercall timed alone; `k`: one timestamp per `k` hypercalls and
/// one sample of the batch's mean per hypercall, so that timestamps add next to nothing when
/// comparing with a bare `KVM_RUN` loop; a last partial batch gets its own mean).
///
/// One op = one hypercall; `ops == iters`. Self-checks: the timestamps never go backwards
/// across a round trip, and a word stamped in guest memory before the loop still reads back
/// after it (the VMM's exit path does not disturb guest RAM).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExitFloor {
    /// `size` = hypercalls per latency sample.
    pub params: Params,
}

impl Spec for ExitFloor {
    const NAME: &'static str = "exit-floor";
    const DEFAULT: Params = Params {
        iters: 100_000,
        seed: 1,
        size: 0,
    };

    fn params(&self) -> Params {
        self.params
    }

    /// Any `size`: a batch longer than `iters` is one batch.
    fn check(_p: Params, _nr_vcpus: usize) -> Result<(), WorkloadError> {
        Ok(())
    }

    /// The stamped word's frame.
    fn frames_needed(_p: Params, _nr_vcpus: usize) -> u64 {
        1
    }

    fn body<C: Cpu>(
        &self,
        cpu: &mut Counted<'_, C>,
        report: &mut Report,
    ) -> Result<(), WorkloadError> {
        let p = self.params;
        let mut frames = FrameAlloc::for_cpu(cpu);
        let frame = frames.alloc(cpu)?;
        let value = pattern(p.seed, frame, 0);
        cpu.write_u64(direct_map(frame), value);

        let stride = p.size.max(1);
        let mut timer = OpTimer::start(cpu);
        let mut done = 0;
        while done < p.iters {
            let batch = stride.min(p.iters - done);
            for _ in 0..batch {
                cpu.hypercall_nop();
            }
            timer.lap_batch(
                cpu,
                report,
                batch,
                "exit-floor: timestamp went backwards across a hypercall",
            )?;
            done += batch;
        }
        check_word(
            cpu,
            report,
            "exit-floor: guest memory after the hypercalls",
            direct_map(frame),
            value,
        )?;
        Ok(())
    }
}
