//! `fault-storm`: first touches of many freshly mapped pages; the fault path.

use super::{check_page, check_word, in_range, stamp, table_frames, OpTimer, Spec};
use crate::cpu::{CheckFailed, Cpu};
use crate::error::WorkloadError;
use crate::frames::FrameAlloc;
use crate::paging::{Flags, PageTables};
use crate::report::{Counted, Params, Report};
use crate::rng::{pattern, Rng};
use crate::tlb::TlbGather;
use shadowlab_abi::layout::{direct_map, PAGE_SIZE, WORKLOAD_BASE};

/// Most pages per round.
pub const MAX_PAGES: u64 = 4096;

/// `fault-storm`: `iters` rounds over `size` pages (1..=[`MAX_PAGES`], default 256): map every
/// page to a freshly stamped frame (not-present to present: no invalidation, so the VMM first
/// hears of the page at the touch), touch each page once, timing each touch, then unmap them
/// all and invalidate. The tables stay; only leaves come and go, so every touch is a first
/// touch of a translation the shadow MMU has not built yet.
///
/// A touch is a read (checked against the frame's stamp) or, chosen at random by the seed, a
/// store (checked through the direct map to have landed in the frame).
///
/// One op = one first touch; `ops == iters * size`. Page `i` alternates between two frames of
/// its own, so a stale translation reads the previous round's stamp.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FaultStorm {
    /// `size` = pages per round.
    pub params: Params,
}

impl Spec for FaultStorm {
    const NAME: &'static str = "fault-storm";
    const DEFAULT: Params = Params {
        iters: 100,
        seed: 1,
        size: 256,
    };

    fn params(&self) -> Params {
        self.params
    }

    fn expected_ops(p: Params) -> u64 {
        p.iters.saturating_mul(p.size)
    }

    fn check(p: Params, _nr_vcpus: usize) -> Result<(), WorkloadError> {
        in_range(Self::NAME, "size", p.size, 1..=MAX_PAGES, "pages")
    }

    /// Per page a map, a touch and an unmap.
    fn work_per_iter(p: Params, _nr_vcpus: usize) -> u64 {
        3 * p.size
    }

    /// The root, the tables of `size` pages, two frames per page.
    fn frames_needed(p: Params, _nr_vcpus: usize) -> u64 {
        1 + table_frames(p.size) + 2 * p.size
    }

    fn body<C: Cpu>(
        &self,
        cpu: &mut Counted<'_, C>,
        report: &mut Report,
    ) -> Result<(), WorkloadError> {
        let p = self.params;
        let n = p.size;
        let mut frames = FrameAlloc::for_cpu(cpu);
        let boot = cpu.boot_root();
        let va = |i: u64| WORKLOAD_BASE + i * PAGE_SIZE;
        let base = frames.alloc_contiguous(2 * n)?;
        let frame = |i: u64, par: u64| base + (par * n + i) * PAGE_SIZE;

        let mut pt = PageTables::new_root(cpu, &mut frames, boot, &[])?;
        cpu.load_cr3(pt.root());
        let mut rng = Rng::new(p.seed);
        let mut tlb = TlbGather::new();
        for round in 0..p.iters {
            let par = round % 2;
            for i in 0..n {
                stamp(cpu, frame(i, par), pattern(p.seed, frame(i, par), round));
                pt.map(cpu, &mut frames, va(i), frame(i, par), Flags::RW)?;
            }
            for i in 0..n {
                let f = frame(i, par);
                let want = pattern(p.seed, f, round);
                // Each touch is timed alone: the op is the first touch, not the checks.
                if rng.next_u64() & 1 == 0 {
                    let mut timer = OpTimer::start(cpu);
                    let found = cpu.read_u64(va(i));
                    timer.lap(cpu, report);
                    if found != want {
                        return Err(CheckFailed {
                            what: "fault-storm first-touch read",
                            gva: va(i),
                            expected: want,
                            found,
                        }
                        .into());
                    }
                    report.checks += 1;
                    check_page(
                        cpu,
                        report,
                        "fault-storm read after first touch",
                        va(i),
                        want,
                    )?;
                } else {
                    let value = want ^ round.rotate_left(17) ^ i;
                    let mut timer = OpTimer::start(cpu);
                    cpu.write_u64(va(i) + 8, value);
                    timer.lap(cpu, report);
                    check_word(
                        cpu,
                        report,
                        "fault-storm first-touch store lands in the frame",
                        direct_map(f + 8),
                        value,
                    )?;
                }
            }
            for i in 0..n {
                pt.unmap(cpu, va(i), &mut tlb)?;
            }
            tlb.finish(cpu, &mut frames)?;
        }
        report.pte_writes = pt.pte_writes();
        cpu.load_cr3(boot);
        Ok(())
    }
}
