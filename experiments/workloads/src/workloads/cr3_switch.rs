//! `cr3-switch`: many cached roots, no page-table writes; the lockless `is_unsync_root` path.

use super::{check_page, require, Run};
use crate::cpu::Cpu;
use crate::error::WorkloadError;
use crate::frames::FrameAlloc;
use crate::paging::{Flags, PageTables};
use crate::report::{Counted, Params, Report};
use crate::rng::{pattern, Rng};
use shadowlab_abi::layout::WORKLOAD_BASE;

/// Most roots `cr3-switch` builds (KVM caches 3 previous roots; more than that also exercises
/// the shadow-root lookup by hash).
pub const MAX_ROOTS: usize = 64;

/// The virtual address every root maps, each to a frame of its own.
const VA: u64 = WORKLOAD_BASE;

/// `cr3-switch`: builds `size` roots (2..=[`MAX_ROOTS`], default 8), each sharing the direct map
/// and mapping the same virtual page to a different frame. Then, `iters` times: load the CR3 of
/// another root chosen at random (never the current one) and read the page through it.
///
/// No guest PTE is written in the loop, so every CR3 load finds a clean root: the VMM's
/// `kvm_mmu_sync_roots` should return after the lockless `is_unsync_root` check.
///
/// One op = one CR3 load plus the checked read; `ops == iters`. Self-check: the page reads as
/// the stamp of *that* root's frame, so a translation left over from the previous root (a TLB
/// not flushed on CR3 load, or a wrong cached shadow root) is caught.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cr3Switch {
    /// `size` = number of roots.
    pub params: Params,
}

impl Cr3Switch {
    /// Default parameters.
    pub const DEFAULT: Params = Params {
        iters: 10_000,
        seed: 1,
        size: 8,
    };
}

impl Run for Cr3Switch {
    fn name(&self) -> &'static str {
        "cr3-switch"
    }

    fn params(&self) -> Params {
        self.params
    }

    fn expected_ops(&self) -> u64 {
        self.params.iters
    }

    fn run<C: Cpu>(&self, cpu: &mut C) -> Result<Report, WorkloadError> {
        let p = self.params;
        require(
            (2..=MAX_ROOTS as u64).contains(&p.size),
            "cr3-switch: size (roots) must be 2..=64",
        )?;
        let n = p.size as usize;
        let mut cpu = Counted::new(cpu);
        let cpu = &mut cpu;
        let mut report = Report::default();
        let mut frames = FrameAlloc::for_cpu(cpu);
        let boot = cpu.boot_root();

        // (root, expected stamp) per root.
        let mut roots = [(0u64, 0u64); MAX_ROOTS];
        for (r, slot) in roots.iter_mut().enumerate().take(n) {
            let mut pt = PageTables::new_root(cpu, &mut frames, boot, &[])?;
            let data = frames.alloc(cpu)?;
            let value = pattern(p.seed, data, r as u64);
            super::stamp(cpu, data, value);
            pt.map(cpu, &mut frames, VA, data, Flags::RO)?;
            report.pte_writes += pt.pte_writes();
            *slot = (pt.root(), value);
        }
        // Visit every root once so the VMM has a shadow root for each before timing starts.
        for &(root, value) in &roots[..n] {
            cpu.load_cr3(root);
            check_page(cpu, &mut report, "cr3-switch warm-up read", VA, value)?;
        }

        let mut rng = Rng::new(p.seed);
        let mut cur = n - 1;
        let mut t = cpu.timestamp();
        for _ in 0..p.iters {
            cur = (cur + 1 + rng.below(n as u64 - 1) as usize) % n;
            let (root, value) = roots[cur];
            cpu.load_cr3(root);
            check_page(
                cpu,
                &mut report,
                "cr3-switch read after CR3 load",
                VA,
                value,
            )?;
            let now = cpu.timestamp();
            report.latency.record(now.wrapping_sub(t));
            t = now;
            report.ops += 1;
        }
        cpu.load_cr3(boot);
        cpu.fill(&mut report);
        Ok(report)
    }
}
