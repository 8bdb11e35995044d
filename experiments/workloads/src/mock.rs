//! Host-side test machine: flat guest RAM and a software CPU per vCPU that walks the guest's own
//! page tables with the reference walker on every access, optionally through a TLB.
//!
//! [`TlbMode::None`] is a *perfect* CPU: no TLB, so every access sees the tables as they are.
//! [`TlbMode::Real`] caches translations and drops them on INVLPG / flush / CR3 load exactly as
//! x86 allows, so a workload that forgets an invalidation reads stale data there. The two
//! `Ignore*` modes are deliberately broken CPUs that keep stale entries, to prove the
//! workloads' self-checks catch stale translations.
//!
//! Guest faults (not present, reserved, write to read-only) panic the vCPU's thread: a correct
//! workload never takes one.

extern crate std;

use core::ops::Range;
use core::sync::atomic::{AtomicU64, Ordering};
use std::boxed::Box;
use std::collections::HashMap;
use std::time::Instant;
use std::vec::Vec;

use crate::cpu::{Cpu, RET};
use crate::error::WorkloadError;
use crate::report::Report;
use crate::walk::{walk, Access, PhysRead};
use crate::workloads::{Run, Workload};
use shadowlab_abi::layout::{
    pt_index, pte, DIRECT_MAP_BASE, DIRECT_MAP_SLOT, PAGE_SIZE, PT_ENTRIES,
};

/// What the software CPU's TLB does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TlbMode {
    /// No TLB: a perfect CPU.
    None,
    /// A TLB that honours INVLPG, flushes and CR3 loads, and fills aggressively.
    Real,
    /// Broken: ignores INVLPG and flushes (still flushes on CR3 load).
    IgnoreInvalidation,
    /// Broken: ignores INVLPG, flushes and CR3 loads.
    IgnoreAll,
}

/// Guest RAM and the boot state every vCPU shares.
pub struct Machine {
    ram: Vec<AtomicU64>,
    boot_root: u64,
    shared: u64,
    free: Vec<Range<u64>>,
    start: Instant,
    hypercalls: AtomicU64,
}

impl Machine {
    /// `ram_mib` MiB of RAM (at most 1 GiB), direct-mapped by a boot root built in its first
    /// frames; the rest is split evenly into the vCPUs' free frames. Frame 0 stays unused,
    /// frame 1 is the shared page.
    pub fn new(ram_mib: u64, nr_vcpus: usize) -> Box<Machine> {
        assert!((1..=1024).contains(&ram_mib) && nr_vcpus >= 1);
        let frames = ram_mib * 256;
        let words = (frames * PAGE_SIZE / 8) as usize;
        let ram = (0..words).map(|_| AtomicU64::new(0)).collect();
        let (shared, pml4, pdpt, pd, pt0) =
            (PAGE_SIZE, 2 * PAGE_SIZE, 3 * PAGE_SIZE, 4 * PAGE_SIZE, 5);
        let nr_pt = frames.div_ceil(PT_ENTRIES as u64);
        let first_free = (pt0 + nr_pt) * PAGE_SIZE;
        let per_vcpu = ((frames * PAGE_SIZE - first_free) / nr_vcpus as u64) & !(PAGE_SIZE - 1);
        let free = (0..nr_vcpus as u64)
            .map(|i| first_free + i * per_vcpu..first_free + (i + 1) * per_vcpu)
            .collect();
        let m = Machine {
            ram,
            boot_root: pml4,
            shared,
            free,
            start: Instant::now(),
            hypercalls: AtomicU64::new(0),
        };
        let table = pte::P | pte::W | pte::A;
        m.set(pml4 + 8 * DIRECT_MAP_SLOT as u64, pdpt | table);
        m.set(pdpt + 8 * pt_index(DIRECT_MAP_BASE, 3) as u64, pd | table);
        for j in 0..nr_pt {
            let pt = (pt0 + j) * PAGE_SIZE;
            m.set(pd + 8 * j, pt | table);
            for k in 0..PT_ENTRIES as u64 {
                let frame = (j * PT_ENTRIES as u64 + k) * PAGE_SIZE;
                if frame < frames * PAGE_SIZE {
                    m.set(pt + 8 * k, frame | table | pte::D);
                }
            }
        }
        Box::new(m)
    }

    /// The same machine with every vCPU's free frames cut to the first `frames` of its range.
    pub fn with_free_frames(mut self: Box<Self>, frames: u64) -> Box<Machine> {
        for r in &mut self.free {
            assert!(
                r.end - r.start >= frames * PAGE_SIZE,
                "RAM too small for {frames}"
            );
            r.end = r.start + frames * PAGE_SIZE;
        }
        self
    }

    fn set(&self, gpa: u64, v: u64) {
        self.ram[(gpa / 8) as usize].store(v, Ordering::Relaxed);
    }

    fn word(&self, gpa: u64) -> Option<&AtomicU64> {
        if gpa % 8 != 0 {
            return None;
        }
        self.ram.get(usize::try_from(gpa / 8).ok()?)
    }

    /// Hypercalls made by all vCPUs.
    pub fn hypercalls(&self) -> u64 {
        self.hypercalls.load(Ordering::Relaxed)
    }

    /// vCPU `id` with a perfect (TLB-less) CPU.
    pub fn cpu(&self, id: usize) -> MockCpu<'_> {
        self.cpu_with(id, TlbMode::None)
    }

    /// vCPU `id` with the given TLB behaviour.
    pub fn cpu_with(&self, id: usize, tlb: TlbMode) -> MockCpu<'_> {
        MockCpu {
            m: self,
            id,
            cr3: self.boot_root,
            mode: tlb,
            tlb: HashMap::new(),
            invlpgs: 0,
            flushes: 0,
        }
    }

    /// Runs `w` on every vCPU, one thread each, and returns each vCPU's result.
    pub fn run(&self, w: Workload, mode: TlbMode) -> Vec<Result<Report, WorkloadError>> {
        std::thread::scope(|s| {
            let handles: Vec<_> = (0..self.free.len())
                .map(|id| s.spawn(move || w.run(&mut self.cpu_with(id, mode))))
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("vCPU thread panicked"))
                .collect()
        })
    }
}

impl PhysRead for &Machine {
    fn read_phys(&mut self, gpa: u64) -> Option<u64> {
        Some(self.word(gpa)?.load(Ordering::Acquire))
    }
}

/// One software vCPU.
pub struct MockCpu<'m> {
    m: &'m Machine,
    id: usize,
    cr3: u64,
    mode: TlbMode,
    /// Virtual page number -> (frame, writable, executable).
    tlb: HashMap<u64, (u64, bool, bool)>,
    invlpgs: u64,
    flushes: u64,
}

impl MockCpu<'_> {
    /// INVLPGs executed.
    pub fn invlpgs(&self) -> u64 {
        self.invlpgs
    }

    /// Full flushes executed.
    pub fn flushes(&self) -> u64 {
        self.flushes
    }

    /// The RAM word `gva` translates to, for `access` (supervisor: the mock's direct map has no
    /// U). Instruction fetches need not be aligned; the word holding the byte is returned.
    fn translate(&mut self, gva: u64, access: Access) -> &'_ AtomicU64 {
        assert!(
            access.fetch || gva % 8 == 0,
            "vCPU {}: unaligned access at {gva:#x}",
            self.id
        );
        let vpn = gva >> 12;
        let offset = gva & (PAGE_SIZE - 8);
        if self.mode != TlbMode::None {
            if let Some(&(frame, writable, exec)) = self.tlb.get(&vpn) {
                assert!(
                    !access.write || writable,
                    "vCPU {}: #PF write to read-only (cached) {gva:#x}",
                    self.id
                );
                assert!(
                    !access.fetch || exec,
                    "vCPU {}: #PF fetch from no-execute (cached) {gva:#x}",
                    self.id
                );
                return self.m.word(frame + offset).expect("TLB entry outside RAM");
            }
        }
        let mut mem = self.m;
        let t = match walk(&mut mem, self.cr3, gva) {
            Ok(t) => t,
            Err(f) => panic!("vCPU {}: #PF {f:?} (cr3 {:#x})", self.id, self.cr3),
        };
        assert!(
            t.permits(access),
            "vCPU {}: #PF protection {gva:#x} {access:?} {t:?}",
            self.id
        );
        if self.mode != TlbMode::None {
            // Fill aggressively, as x86 is allowed to (translations may be cached
            // speculatively): every present entry of this leaf table, not just the one used. A
            // workload that relies on "I have not touched that page since the last flush"
            // instead of invalidating after a PTE change reads stale data here.
            let upper_w = t.entries[..3].iter().all(|e| e & pte::W != 0);
            let upper_x = t.entries[..3].iter().all(|e| e & pte::NX == 0);
            for k in 0..PT_ENTRIES as u64 {
                let e = self
                    .m
                    .word(t.tables[3] + 8 * k)
                    .map_or(0, |w| w.load(Ordering::Acquire));
                let frame = e & pte::ADDR_MASK;
                if e & pte::P != 0 && self.m.word(frame).is_some() {
                    self.tlb.insert(
                        (vpn & !511) | k,
                        (
                            frame,
                            upper_w && e & pte::W != 0,
                            upper_x && e & pte::NX == 0,
                        ),
                    );
                }
            }
            self.tlb.insert(vpn, (t.frame(), t.writable, !t.nx));
        }
        self.m
            .word(t.gpa & !7)
            .expect("walk returned a gpa outside RAM")
    }
}

impl Cpu for MockCpu<'_> {
    fn id(&self) -> usize {
        self.id
    }
    fn nr_vcpus(&self) -> usize {
        self.m.free.len()
    }
    fn free_frames(&self) -> Range<u64> {
        self.m.free[self.id].clone()
    }
    fn boot_root(&self) -> u64 {
        self.m.boot_root
    }
    fn shared_page(&self) -> u64 {
        self.m.shared
    }
    fn read_u64(&mut self, gva: u64) -> u64 {
        self.translate(gva, Access::READ).load(Ordering::Acquire)
    }
    fn write_u64(&mut self, gva: u64, value: u64) {
        self.translate(gva, Access::WRITE)
            .store(value, Ordering::Release)
    }
    fn fetch_add_u64(&mut self, gva: u64, value: u64) -> u64 {
        self.translate(gva, Access::WRITE)
            .fetch_add(value, Ordering::SeqCst)
    }
    fn fetch(&mut self, gva: u64) {
        let fetch = Access {
            fetch: true,
            ..Access::READ
        };
        let word = self.translate(gva, fetch).load(Ordering::Acquire);
        let byte = (word >> (8 * (gva & 7))) as u8;
        assert_eq!(
            byte, RET,
            "vCPU {}: fetched {byte:#04x} at {gva:#x}, not a ret",
            self.id
        );
    }
    fn pause(&mut self) {
        std::thread::yield_now()
    }
    fn load_cr3(&mut self, root: u64) {
        self.cr3 = root;
        if self.mode != TlbMode::IgnoreAll {
            self.tlb.clear();
        }
    }
    fn invlpg(&mut self, gva: u64) {
        self.invlpgs += 1;
        if matches!(self.mode, TlbMode::None | TlbMode::Real) {
            self.tlb.remove(&(gva >> 12));
        }
    }
    fn flush_tlb(&mut self) {
        self.flushes += 1;
        if matches!(self.mode, TlbMode::None | TlbMode::Real) {
            self.tlb.clear();
        }
    }
    fn hypercall_nop(&mut self) {
        self.hypercalls_inc();
    }
    fn timestamp(&mut self) -> u64 {
        self.m.start.elapsed().as_nanos() as u64
    }
}

impl MockCpu<'_> {
    fn hypercalls_inc(&self) {
        self.m.hypercalls.fetch_add(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Flags, FrameAlloc, PageTables, TlbGather};
    use shadowlab_abi::layout::{direct_map, WORKLOAD_BASE};

    /// A `ret` on an executable page runs; the same page made no-execute faults, also when a
    /// read cached the translation first (the TLB keeps the permission it was filled with).
    #[test]
    fn fetch_runs_a_ret_and_honours_nx_through_the_tlb() {
        let m = Machine::new(4, 1);
        let mut cpu = m.cpu_with(0, TlbMode::Real);
        let mut frames = FrameAlloc::for_cpu(&cpu);
        let boot = cpu.boot_root();
        let mut pt = PageTables::new_root(&mut cpu, &mut frames, boot, &[]).unwrap();
        let code = frames.alloc(&mut cpu).unwrap();
        cpu.write_u64(direct_map(code), u64::from(RET) << 24);
        pt.map(&mut cpu, &mut frames, WORKLOAD_BASE, code, Flags::RX)
            .unwrap();
        cpu.load_cr3(pt.root());
        cpu.fetch(WORKLOAD_BASE + 3);
        let mut tlb = TlbGather::new();
        pt.protect(&mut cpu, WORKLOAD_BASE, Flags::RO, &mut tlb)
            .unwrap();
        cpu.invlpg(WORKLOAD_BASE);
        assert_eq!(cpu.read_u64(WORKLOAD_BASE), u64::from(RET) << 24);
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            cpu.fetch(WORKLOAD_BASE + 3)
        }));
        let msg = *r.unwrap_err().downcast::<std::string::String>().unwrap();
        assert!(msg.contains("no-execute"), "{msg}");
    }
}
