//! `cr3-switch`: many cached roots, no page-table writes; the lockless `is_unsync_root` path.

use super::{check_page, in_range, table_frames, OpTimer, Spec};
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

impl Spec for Cr3Switch {
    const NAME: &'static str = "cr3-switch";
    const DEFAULT: Params = Params {
        iters: 10_000,
        seed: 1,
        size: 8,
    };

    fn params(&self) -> Params {
        self.params
    }

    fn check(p: Params, _nr_vcpus: usize) -> Result<(), WorkloadError> {
        in_range(Self::NAME, "size", p.size, 2..=MAX_ROOTS as u64, "roots")
    }

    /// Each root: its PML4, the PDPT, PD and PT of its one page, and the page's frame.
    fn frames_needed(p: Params, _nr_vcpus: usize) -> u64 {
        p.size * (1 + table_frames(1) + 1)
    }

    fn body<C: Cpu>(
        &self,
        cpu: &mut Counted<'_, C>,
        report: &mut Report,
    ) -> Result<(), WorkloadError> {
        let p = self.params;
        let n = p.size as usize;
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
            check_page(cpu, report, "cr3-switch warm-up read", VA, value)?;
        }

        let mut rng = Rng::new(p.seed);
        let mut cur = n - 1;
        let mut timer = OpTimer::start(cpu);
        for _ in 0..p.iters {
            cur = (cur + 1 + rng.below(n as u64 - 1) as usize) % n;
            let (root, value) = roots[cur];
            cpu.load_cr3(root);
            check_page(cpu, report, "cr3-switch read after CR3 load", VA, value)?;
            timer.lap(cpu, report);
        }
        cpu.load_cr3(boot);
        Ok(())
    }
}
