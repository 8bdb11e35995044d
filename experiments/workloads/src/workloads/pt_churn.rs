//! `pt-churn`: fork/COW-like leaf PTE writes, then flush; the unsync path.

use super::{check_page, check_word, in_range, stamp, table_frames, OpTimer, Spec};
use crate::cpu::Cpu;
use crate::error::WorkloadError;
use crate::frames::FrameAlloc;
use crate::paging::{Flags, PageTables};
use crate::report::{Counted, Params, Report};
use crate::rng::{pattern, Rng};
use crate::tlb::TlbGather;
use shadowlab_abi::layout::{direct_map, PAGE_SIZE, WORKLOAD_BASE};

/// Most pages `pt-churn` churns.
pub const MAX_PAGES: u64 = 4096;

/// `pt-churn`: maps `size` pages (1..=[`MAX_PAGES`], default 64) read-write, each page `i` with
/// two frames of its own, then `iters` rounds of a fork followed by copy-on-write breaks:
///
/// 1. *fork*: write-protect every page (one leaf PTE write each), invalidate (INVLPG per page
///    up to 33 pages, else one flush, as Linux does), and check every page still reads the data
///    of the previous round;
/// 2. *COW break*, in a random order: copy = stamp the page's other frame with this round's
///    pattern, remap the page to it read-write (another leaf PTE write), invalidate, then check
///    every page reads the new frame, and that a store through it lands in the new frame.
///
/// The leaf tables are written while shadowed: in a shadow MMU the first write of a round
/// unsyncs the table (`mmu_try_to_unsync_pages`) and the invalidation must sync it.
///
/// One op = one round; `ops == iters`, `2 * size * iters` leaf PTE writes in the loop. A stale
/// translation reads the other frame, whose stamp is another round's, and fails the check.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PtChurn {
    /// `size` = pages.
    pub params: Params,
}

impl Spec for PtChurn {
    const NAME: &'static str = "pt-churn";
    const DEFAULT: Params = Params {
        iters: 1_000,
        seed: 1,
        size: 64,
    };

    fn params(&self) -> Params {
        self.params
    }

    fn check(p: Params, _nr_vcpus: usize) -> Result<(), WorkloadError> {
        in_range(Self::NAME, "size", p.size, 1..=MAX_PAGES, "pages")
    }

    /// Per page two leaf PTE writes, their invalidations, and the checks.
    fn work_per_iter(p: Params, _nr_vcpus: usize) -> u64 {
        4 * p.size
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
        // Page i's frame for rounds of parity `par`.
        let base = frames.alloc_contiguous(2 * n)?;
        let frame = |i: u64, par: u64| base + (par * n + i) * PAGE_SIZE;

        let mut pt = PageTables::new_root(cpu, &mut frames, boot, &[])?;
        for i in 0..n {
            stamp(cpu, frame(i, 0), pattern(p.seed, frame(i, 0), 0));
            pt.map(cpu, &mut frames, va(i), frame(i, 0), Flags::RW)?;
        }
        cpu.load_cr3(pt.root());
        for i in 0..n {
            check_page(
                cpu,
                report,
                "pt-churn initial read",
                va(i),
                pattern(p.seed, frame(i, 0), 0),
            )?;
        }

        let mut rng = Rng::new(p.seed);
        let mut tlb = TlbGather::new();
        let mut timer = OpTimer::start(cpu);
        for round in 1..=p.iters {
            let (old, new) = ((round - 1) % 2, round % 2);
            // Fork: the parent's pages become read-only.
            for i in 0..n {
                pt.protect(cpu, va(i), Flags::RO, &mut tlb)?;
            }
            tlb.finish(cpu, &mut frames)?;
            for i in 0..n {
                let want = pattern(p.seed, frame(i, old), round - 1);
                check_page(
                    cpu,
                    report,
                    "pt-churn read after write-protect",
                    va(i),
                    want,
                )?;
            }
            // COW breaks, starting at a random page.
            let start = rng.below(n);
            for k in 0..n {
                let i = (start + k) % n;
                stamp(cpu, frame(i, new), pattern(p.seed, frame(i, new), round));
                pt.remap(cpu, va(i), frame(i, new), Flags::RW, &mut tlb)?;
            }
            tlb.finish(cpu, &mut frames)?;
            for i in 0..n {
                let want = pattern(p.seed, frame(i, new), round);
                check_page(cpu, report, "pt-churn read after COW remap", va(i), want)?;
                cpu.write_u64(va(i) + 8, round);
                check_word(
                    cpu,
                    report,
                    "pt-churn store through COW remap lands in the new frame",
                    direct_map(frame(i, new) + 8),
                    round,
                )?;
            }
            timer.lap(cpu, report);
        }
        report.pte_writes = pt.pte_writes();
        cpu.load_cr3(boot);
        Ok(())
    }
}
