//! What a workload is asked to do ([`Params`]) and what it reports ([`Report`]), and the
//! counting wrapper that fills in the MMU operations it asked for.

use crate::cpu::Cpu;
use crate::hist::Histogram;
use core::ops::Range;

/// A workload's parameters. `size` means something per workload (see each workload's docs);
/// the defaults come from [`crate::Workload::default_params`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Params {
    /// Iterations (rounds) of the workload's main loop.
    pub iters: u64,
    /// Seed for the data patterns and any random choices; the same seed gives the same sequence
    /// of guest operations on every backend.
    pub seed: u64,
    /// The workload's size knob (roots, pages, slots...).
    pub size: u64,
}

/// One vCPU's result: what the workload counted, as the guest sends it (words, [`crate::words`])
/// and the worker writes it (JSON, feature `serde`; the histogram as its non-empty buckets).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(deny_unknown_fields))]
pub struct Report {
    /// The vCPU that ran it.
    pub vcpu: usize,
    /// Operations done; what one op is, and how many the parameters imply, is documented per
    /// workload.
    pub ops: u64,
    /// Self-checks passed (words read back and compared).
    pub checks: u64,
    /// Page-table entries stored through the direct map.
    pub pte_writes: u64,
    /// CR3 loads asked for.
    pub cr3_loads: u64,
    /// INVLPGs asked for.
    pub invlpgs: u64,
    /// Full TLB flushes asked for.
    pub tlb_flushes: u64,
    /// No-op hypercalls made.
    pub hypercalls: u64,
    /// Latency of each op, in [`Cpu::timestamp`] units.
    pub latency: Histogram,
}

impl Report {
    /// Adds `other`'s counts and latency samples to this one (e.g. to sum a run's vCPUs; `vcpu`
    /// keeps this report's value).
    pub fn merge(&mut self, other: &Report) {
        self.ops += other.ops;
        self.checks += other.checks;
        self.pte_writes += other.pte_writes;
        self.cr3_loads += other.cr3_loads;
        self.invlpgs += other.invlpgs;
        self.tlb_flushes += other.tlb_flushes;
        self.hypercalls += other.hypercalls;
        self.latency.merge(&other.latency);
    }
}

/// Forwards to a [`Cpu`] and counts the MMU operations and hypercalls (compiled to a counter
/// increment beside each call).
pub struct Counted<'a, C: Cpu> {
    cpu: &'a mut C,
    cr3_loads: u64,
    invlpgs: u64,
    flushes: u64,
    hypercalls: u64,
}

impl<'a, C: Cpu> Counted<'a, C> {
    /// Wraps `cpu`.
    pub fn new(cpu: &'a mut C) -> Self {
        Counted {
            cpu,
            cr3_loads: 0,
            invlpgs: 0,
            flushes: 0,
            hypercalls: 0,
        }
    }

    /// Copies the counts into `report`.
    pub fn fill(&self, report: &mut Report) {
        report.vcpu = self.cpu.id();
        report.cr3_loads = self.cr3_loads;
        report.invlpgs = self.invlpgs;
        report.tlb_flushes = self.flushes;
        report.hypercalls = self.hypercalls;
    }
}

impl<C: Cpu> Cpu for Counted<'_, C> {
    #[inline]
    fn id(&self) -> usize {
        self.cpu.id()
    }
    #[inline]
    fn nr_vcpus(&self) -> usize {
        self.cpu.nr_vcpus()
    }
    #[inline]
    fn free_frames(&self) -> Range<u64> {
        self.cpu.free_frames()
    }
    #[inline]
    fn boot_root(&self) -> u64 {
        self.cpu.boot_root()
    }
    #[inline]
    fn shared_page(&self) -> u64 {
        self.cpu.shared_page()
    }
    #[inline]
    fn read_u64(&mut self, gva: u64) -> u64 {
        self.cpu.read_u64(gva)
    }
    #[inline]
    fn write_u64(&mut self, gva: u64, value: u64) {
        self.cpu.write_u64(gva, value)
    }
    #[inline]
    fn fetch_add_u64(&mut self, gva: u64, value: u64) -> u64 {
        self.cpu.fetch_add_u64(gva, value)
    }
    #[inline]
    fn fetch(&mut self, gva: u64) {
        self.cpu.fetch(gva)
    }
    #[inline]
    fn pause(&mut self) {
        self.cpu.pause()
    }
    #[inline]
    fn load_cr3(&mut self, root: u64) {
        self.cr3_loads += 1;
        self.cpu.load_cr3(root)
    }
    #[inline]
    fn invlpg(&mut self, gva: u64) {
        self.invlpgs += 1;
        self.cpu.invlpg(gva)
    }
    #[inline]
    fn flush_tlb(&mut self) {
        self.flushes += 1;
        self.cpu.flush_tlb()
    }
    #[inline]
    fn hypercall_nop(&mut self) {
        self.hypercalls += 1;
        self.cpu.hypercall_nop()
    }
    #[inline]
    fn timestamp(&mut self) -> u64 {
        self.cpu.timestamp()
    }
}
