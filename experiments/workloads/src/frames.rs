//! The guest frame allocator over [`Cpu::free_frames`].
//!
//! A bump pointer over the vCPU's range plus a LIFO free list threaded through the free frames
//! themselves (word 0 of a free frame holds the next one), as a kernel's free lists are: no
//! heap, no fixed capacity. The free-list link is written through the direct map, so a freed
//! frame that the shadow MMU still tracks as a page table sees that store like any other.

use core::ops::Range;

use crate::cpu::Cpu;
use crate::error::PtError;
use shadowlab_abi::layout::{direct_map, PAGE_SIZE, PT_ENTRIES};

/// End of the free list.
const NIL: u64 = u64::MAX;

/// Allocates 4 KiB guest-physical frames from one vCPU's `free_frames()`.
#[derive(Debug)]
pub struct FrameAlloc {
    start: u64,
    next: u64,
    end: u64,
    free_head: u64,
    free_len: u64,
}

impl FrameAlloc {
    /// An allocator over `range`, shrunk to whole pages.
    pub fn new(range: Range<u64>) -> Self {
        let start = range.start.div_ceil(PAGE_SIZE).saturating_mul(PAGE_SIZE);
        let end = (range.end & !(PAGE_SIZE - 1)).max(start);
        FrameAlloc {
            start,
            next: start,
            end,
            free_head: NIL,
            free_len: 0,
        }
    }

    /// An allocator over this vCPU's `free_frames()`.
    pub fn for_cpu<C: Cpu>(cpu: &C) -> Self {
        Self::new(cpu.free_frames())
    }

    /// Frames still available (never allocated, or freed).
    pub fn available(&self) -> u64 {
        (self.end - self.next) / PAGE_SIZE + self.free_len
    }

    /// One frame, with whatever it held. Reuses the most recently freed frame first.
    pub fn alloc<C: Cpu>(&mut self, cpu: &mut C) -> Result<u64, PtError> {
        if self.free_head != NIL {
            let gpa = self.free_head;
            self.free_head = cpu.read_u64(direct_map(gpa));
            self.free_len -= 1;
            return Ok(gpa);
        }
        self.alloc_contiguous(1)
    }

    /// One frame filled with zeros (512 stores through the direct map, as a kernel clears a new
    /// page-table page).
    pub fn alloc_zeroed<C: Cpu>(&mut self, cpu: &mut C) -> Result<u64, PtError> {
        let gpa = self.alloc(cpu)?;
        for i in 0..PT_ENTRIES as u64 {
            cpu.write_u64(direct_map(gpa + 8 * i), 0);
        }
        Ok(gpa)
    }

    /// `n` physically contiguous frames, from the never-allocated part of the range (the free
    /// list is not searched). Returns the first.
    pub fn alloc_contiguous(&mut self, n: u64) -> Result<u64, PtError> {
        let bytes = n.checked_mul(PAGE_SIZE).ok_or(PtError::OutOfFrames)?;
        if n == 0 || self.end - self.next < bytes {
            return Err(PtError::OutOfFrames);
        }
        let gpa = self.next;
        self.next += bytes;
        Ok(gpa)
    }

    /// Gives `gpa` back. It must be a page-aligned frame this allocator handed out; the caller
    /// must have flushed every TLB that may still map it (see [`crate::tlb::TlbGather`]).
    pub fn free<C: Cpu>(&mut self, cpu: &mut C, gpa: u64) -> Result<(), PtError> {
        if gpa % PAGE_SIZE != 0 || gpa < self.start || gpa >= self.next {
            return Err(PtError::BadFrame { gpa });
        }
        cpu.write_u64(direct_map(gpa), self.free_head);
        self.free_head = gpa;
        self.free_len += 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mock::Machine;

    #[test]
    fn bump_then_lifo_reuse() {
        let m = Machine::new(4, 1);
        let mut cpu = m.cpu(0);
        let range = cpu.free_frames();
        let mut fa = FrameAlloc::for_cpu(&cpu);
        let total = fa.available();
        assert_eq!(total, (range.end - range.start) / PAGE_SIZE);
        let a = fa.alloc(&mut cpu).unwrap();
        let b = fa.alloc(&mut cpu).unwrap();
        assert_eq!((a, b), (range.start, range.start + PAGE_SIZE));
        fa.free(&mut cpu, a).unwrap();
        fa.free(&mut cpu, b).unwrap();
        assert_eq!(fa.available(), total);
        assert_eq!(fa.alloc(&mut cpu).unwrap(), b);
        assert_eq!(fa.alloc(&mut cpu).unwrap(), a);
        assert_eq!(fa.alloc(&mut cpu).unwrap(), range.start + 2 * PAGE_SIZE);
    }

    #[test]
    fn zeroed_frames_are_zero() {
        let m = Machine::new(4, 1);
        let mut cpu = m.cpu(0);
        let mut fa = FrameAlloc::for_cpu(&cpu);
        let a = fa.alloc(&mut cpu).unwrap();
        cpu.write_u64(direct_map(a + 64), 77);
        fa.free(&mut cpu, a).unwrap();
        let z = fa.alloc_zeroed(&mut cpu).unwrap();
        assert_eq!(z, a);
        assert!((0..512).all(|i| cpu.read_u64(direct_map(a + 8 * i)) == 0));
    }

    #[test]
    fn bad_frees_and_exhaustion_are_errors() {
        let m = Machine::new(4, 1);
        let mut cpu = m.cpu(0);
        let mut fa = FrameAlloc::new(0x10_0000..0x10_3000);
        assert_eq!(
            fa.free(&mut cpu, 0x10_0000),
            Err(PtError::BadFrame { gpa: 0x10_0000 })
        );
        assert_eq!(fa.alloc_contiguous(4), Err(PtError::OutOfFrames));
        assert_eq!(fa.alloc_contiguous(0), Err(PtError::OutOfFrames));
        assert_eq!(fa.alloc_contiguous(u64::MAX), Err(PtError::OutOfFrames));
        assert_eq!(fa.alloc_contiguous(3), Ok(0x10_0000));
        assert_eq!(fa.alloc(&mut cpu), Err(PtError::OutOfFrames));
        assert_eq!(
            fa.free(&mut cpu, 0x10_0008),
            Err(PtError::BadFrame { gpa: 0x10_0008 })
        );
        assert_eq!(
            fa.free(&mut cpu, 0x10_3000),
            Err(PtError::BadFrame { gpa: 0x10_3000 })
        );
        // An unaligned range is shrunk to whole pages.
        let fa = FrameAlloc::new(0x1001..0x4fff);
        assert_eq!(fa.available(), 2);
    }
}
