//! Batched TLB invalidation, after Linux's `mmu_gather` (mm/mmu_gather.c).
//!
//! Every change to a *present* PTE (unmap, write-protect, remap) leaves the old translation in
//! the TLB until it is invalidated, and a frame (data or page table) may be reused only after
//! that invalidation. The page-table manager records each such change here; [`TlbGather::finish`]
//! then invalidates (INVLPG per page up to [`FLUSH_CEILING`] pages, else one full flush, and
//! always a full flush when page-table pages were unlinked, since paging-structure caches may
//! hold them), and only then frees the deferred frames. Making an entry present needs no
//! invalidation on x86 (not-present entries are not cached), so `map` never records anything.
//!
//! The gather covers this vCPU's TLB only; the workloads that share tables between vCPUs make
//! the other vCPUs flush themselves (the `Cpu` trait has no IPI).

use crate::cpu::Cpu;
use crate::error::PtError;
use crate::frames::FrameAlloc;

/// Above this many pages one full flush replaces the INVLPGs (Linux's default
/// `tlb_single_page_flush_ceiling`).
pub const FLUSH_CEILING: usize = 33;
/// Frames whose freeing can be deferred before the gather flushes early to make room (Linux
/// flushes early when its batch is full, too).
pub const DEFERRED_FREES: usize = 64;

/// Pending invalidations and frees, for one vCPU.
#[derive(Debug)]
#[must_use = "a TlbGather must be finished, or stale translations stay in the TLB"]
pub struct TlbGather {
    pages: [u64; FLUSH_CEILING],
    nr_pages: usize,
    full_flush: bool,
    frees: [u64; DEFERRED_FREES],
    nr_frees: usize,
    invlpgs: u64,
    flushes: u64,
}

impl Default for TlbGather {
    fn default() -> Self {
        Self::new()
    }
}

impl TlbGather {
    /// An empty gather.
    pub const fn new() -> Self {
        TlbGather {
            pages: [0; FLUSH_CEILING],
            nr_pages: 0,
            full_flush: false,
            frees: [0; DEFERRED_FREES],
            nr_frees: 0,
            invlpgs: 0,
            flushes: 0,
        }
    }

    /// Nothing is pending.
    pub fn is_empty(&self) -> bool {
        self.nr_pages == 0 && !self.full_flush && self.nr_frees == 0
    }

    /// Records that the translation of `gva` changed (`tlb_remove_tlb_entry`).
    pub fn page(&mut self, gva: u64) {
        if self.full_flush {
            return;
        }
        if self.nr_pages < FLUSH_CEILING {
            self.pages[self.nr_pages] = gva;
            self.nr_pages += 1;
        } else {
            self.full_flush = true;
        }
    }

    /// Records that a page-table page was unlinked: the next invalidation is a full flush
    /// (`tlb->freed_tables`).
    pub fn unlinked_table(&mut self) {
        self.full_flush = true;
    }

    /// Makes the next invalidation a full TLB flush whatever was recorded: for workloads that
    /// exercise the flush path (`kvm_mmu_sync_roots`) rather than INVLPG's.
    pub fn flush_all(&mut self) {
        self.full_flush = true;
    }

    /// Frees `gpa` after the invalidation (`tlb_remove_page`). Flushes early when the batch is
    /// full.
    pub fn free_after_flush<C: Cpu>(
        &mut self,
        cpu: &mut C,
        frames: &mut FrameAlloc,
        gpa: u64,
    ) -> Result<(), PtError> {
        if self.nr_frees == DEFERRED_FREES {
            self.finish(cpu, frames)?;
        }
        self.frees[self.nr_frees] = gpa;
        self.nr_frees += 1;
        Ok(())
    }

    /// Invalidates everything recorded, then frees the deferred frames (`tlb_finish_mmu`).
    /// Issues nothing when nothing changed.
    pub fn finish<C: Cpu>(&mut self, cpu: &mut C, frames: &mut FrameAlloc) -> Result<(), PtError> {
        if self.full_flush {
            cpu.flush_tlb();
            self.flushes += 1;
        } else {
            for &gva in &self.pages[..self.nr_pages] {
                cpu.invlpg(gva);
            }
            self.invlpgs += self.nr_pages as u64;
        }
        self.nr_pages = 0;
        self.full_flush = false;
        let n = self.nr_frees;
        self.nr_frees = 0;
        for i in 0..n {
            frames.free(cpu, self.frees[i])?;
        }
        Ok(())
    }

    /// INVLPGs issued so far.
    pub fn invlpgs(&self) -> u64 {
        self.invlpgs
    }

    /// Full flushes issued so far.
    pub fn flushes(&self) -> u64 {
        self.flushes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mock::Machine;

    #[test]
    fn few_pages_invlpg_many_pages_flush() {
        let m = Machine::new(4, 1);
        let mut cpu = m.cpu(0);
        let mut frames = FrameAlloc::for_cpu(&cpu);
        let mut g = TlbGather::new();
        assert!(g.is_empty());
        g.finish(&mut cpu, &mut frames).unwrap();
        assert_eq!((g.invlpgs(), g.flushes()), (0, 0));
        for i in 0..3 {
            g.page(i << 12);
        }
        g.finish(&mut cpu, &mut frames).unwrap();
        assert_eq!((g.invlpgs(), g.flushes()), (3, 0));
        assert_eq!(cpu.invlpgs(), 3);
        for i in 0..=FLUSH_CEILING as u64 {
            g.page(i << 12);
        }
        g.finish(&mut cpu, &mut frames).unwrap();
        assert_eq!((g.invlpgs(), g.flushes()), (3, 1));
        g.page(0);
        g.unlinked_table();
        g.finish(&mut cpu, &mut frames).unwrap();
        assert_eq!((g.invlpgs(), g.flushes()), (3, 2));
        assert!(g.is_empty());
    }

    #[test]
    fn frees_wait_for_the_flush() {
        let m = Machine::new(4, 1);
        let mut cpu = m.cpu(0);
        let mut frames = FrameAlloc::for_cpu(&cpu);
        let before = frames.available();
        let mut g = TlbGather::new();
        for _ in 0..DEFERRED_FREES + 1 {
            let f = frames.alloc(&mut cpu).unwrap();
            g.page(0x1000);
            g.free_after_flush(&mut cpu, &mut frames, f).unwrap();
        }
        // The batch overflowed once: one early invalidation freed the first DEFERRED_FREES.
        assert_eq!(frames.available(), before - 1);
        assert_eq!(cpu.flushes() + cpu.invlpgs(), 1);
        g.finish(&mut cpu, &mut frames).unwrap();
        assert_eq!(frames.available(), before);
        assert!(g.is_empty());
    }
}
