//! `mmap-churn`: map and unmap with new table pages each time; shadow page creation and zap.

use super::{check_page, in_range, stamp, table_frames, OpTimer, Spec};
use crate::cpu::Cpu;
use crate::error::WorkloadError;
use crate::frames::FrameAlloc;
use crate::paging::{read_entry, Flags, PageTables};
use crate::report::{Counted, Params, Report};
use crate::rng::{pattern, Rng};
use crate::tlb::TlbGather;
use shadowlab_abi::layout::{pte, PAGE_SIZE, PT_ENTRIES, WORKLOAD_BASE};

/// Regions the mappings rotate over, each in its own 1 GiB (its own PDPT entry).
pub const REGIONS: u64 = 8;
const GIB: u64 = 1 << 30;

/// `mmap-churn`: `iters` times, in one of [`REGIONS`] 1 GiB regions chosen at random:
///
/// 1. *mmap*: map `size` pages (1..=512, default 16) to frames from the allocator, stamped
///    through the direct map. The region has no tables, so a new page directory and page table
///    are allocated, zeroed and linked (new shadow pages for the VMM);
/// 2. read every page through its new mapping and check its stamp;
/// 3. *munmap*: unmap the pages, unlink and free the region's page directory and page table,
///    flush, and only then return the data frames and table pages to the allocator, which hands
///    them out again (LIFO) for the next iteration, often as a table of another level: the VMM
///    must zap the old shadow pages.
///
/// One op = one mmap + check + munmap; `ops == iters`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MmapChurn {
    /// `size` = pages per mapping.
    pub params: Params,
}

impl Spec for MmapChurn {
    const NAME: &'static str = "mmap-churn";
    const DEFAULT: Params = Params {
        iters: 1_000,
        seed: 1,
        size: 16,
    };

    fn params(&self) -> Params {
        self.params
    }

    fn check(p: Params, _nr_vcpus: usize) -> Result<(), WorkloadError> {
        in_range(
            Self::NAME,
            "size",
            p.size,
            1..=PT_ENTRIES as u64,
            "pages, all in one page table",
        )
    }

    /// Per page a map, a read and an unmap; the tables' links and the flush.
    fn work_per_iter(p: Params, _nr_vcpus: usize) -> u64 {
        3 * p.size + 4
    }

    /// The root and the region's tables, and the `size` data frames; everything but the root
    /// and the PDPT is freed at the end of each iteration and reused by the next.
    fn frames_needed(p: Params, _nr_vcpus: usize) -> u64 {
        1 + table_frames(p.size) + p.size
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
        let mut pt = PageTables::new_root(cpu, &mut frames, boot, &[])?;
        cpu.load_cr3(pt.root());

        let mut rng = Rng::new(p.seed);
        let mut tlb = TlbGather::new();
        let mut timer = OpTimer::start(cpu);
        for it in 0..p.iters {
            let base = WORKLOAD_BASE + rng.below(REGIONS) * GIB;
            for i in 0..n {
                let f = frames.alloc(cpu)?;
                stamp(cpu, f, pattern(p.seed, f, it));
                pt.map(cpu, &mut frames, base + i * PAGE_SIZE, f, Flags::RW)?;
            }
            // All `n` pages sit in the region's one page table (base is 1 GiB aligned, n <= 512).
            let table = pt.leaf_table(cpu, base)?;
            for i in 0..n {
                let f = read_entry(cpu, table + 8 * i) & pte::ADDR_MASK;
                check_page(
                    cpu,
                    report,
                    "mmap-churn read of a new mapping",
                    base + i * PAGE_SIZE,
                    pattern(p.seed, f, it),
                )?;
            }
            for i in 0..n {
                let old = pt.unmap(cpu, base + i * PAGE_SIZE, &mut tlb)?;
                tlb.free_after_flush(cpu, &mut frames, old & pte::ADDR_MASK)?;
            }
            pt.free_tables(cpu, &mut frames, base, base + GIB, &mut tlb)?;
            tlb.finish(cpu, &mut frames)?;
            timer.lap(cpu, report);
        }
        report.pte_writes = pt.pte_writes();
        cpu.load_cr3(boot);
        Ok(())
    }
}
