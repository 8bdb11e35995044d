//! `unsync-race`: other vCPUs write leaf PTEs of a table vCPU 0's root uses; vCPU 0 flushes and
//! must see them. The race the `is_unsync_root` barrier guards.

use super::{check_page, require, stamp, Run};
use crate::cpu::Cpu;
use crate::error::WorkloadError;
use crate::frames::FrameAlloc;
use crate::paging::{read_entry, write_entry, Flags, PageTables};
use crate::report::{Counted, Params, Report};
use crate::rng::pattern;
use crate::sync::{abort_peers, shared_word, spin_until_at_least, word, Barrier};
use crate::tlb::TlbGather;
use shadowlab_abi::layout::{pt_index, pte, PAGE_SIZE, PT_ENTRIES, WORKLOAD_BASE};

/// `unsync-race`. One page table T maps 512 slots `WORKLOAD_BASE + s * 4 KiB`; every vCPU owns
/// `size` consecutive slots (vCPU `k` owns `k*size .. (k+1)*size`; `nr_vcpus * size <= 512`,
/// default `size` 4). Each slot alternates between two frames of its owner, stamped with the
/// round before the PTE points at them.
///
/// **vCPU 0** builds root A (direct map + the tables down to T), maps its own slots, publishes
/// T's gpa in the shared page, and loads A. Each round `r` it
/// 1. remaps its own slots to this round's frames (leaf PTE writes into T) and **flushes the
///    TLB** (a full flush: the `kvm_mmu_sync_roots` path, not INVLPG's), then checks them. Its
///    writes race with the other vCPUs': if a writer has just unsynced T
///    (`mmu_try_to_unsync_pages` made T's SPTE writable), vCPU 0's stores go through without an
///    exit and only the flush's `is_unsync_root` check stands between vCPU 0 and a stale
///    translation: the exact race of the 2021 patch;
/// 2. waits until every writer has published its batch for round `r` (the shared `DONE`
///    counter, `fetch_add`), flushes again, and checks every writer slot: it reads the slot's
///    PTE (the guest's truth) and the page through the slot, which must hold the stamp of that
///    PTE's frame for round `r`.
///
/// **vCPUs 1..N** (writers) run on their boot root; T is not in it, they reach it through the
/// direct map. Each round they stamp their slots' next frames, store the slots' PTEs into T,
/// and `fetch_add` the `DONE` counter. Everyone meets at a barrier at the end of each round, so
/// a writer never rewrites a frame vCPU 0 may still be reading.
///
/// **With one vCPU** there is no one to race with; the workload degrades to the same protocol
/// across address spaces: vCPU 0 builds a second root B sharing A's whole user subtree (so T
/// too), writes the round's PTEs while running on B, then loads A's CR3 and checks. The CR3 load
/// must sync T, which was written while A was not loaded (a cached previous root).
///
/// One op = one round on every vCPU; `ops == iters`. vCPU 0 does the checks; the writers'
/// reports carry their PTE writes and latency of each published batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UnsyncRace {
    /// `size` = slots per vCPU.
    pub params: Params,
}

impl UnsyncRace {
    /// Default parameters.
    pub const DEFAULT: Params = Params {
        iters: 1_000,
        seed: 1,
        size: 4,
    };
}

/// Virtual address of slot `s`.
const fn slot_va(s: u64) -> u64 {
    WORKLOAD_BASE + s * PAGE_SIZE
}

impl Run for UnsyncRace {
    fn name(&self) -> &'static str {
        "unsync-race"
    }

    fn params(&self) -> Params {
        self.params
    }

    fn expected_ops(&self) -> u64 {
        self.params.iters
    }

    fn run<C: Cpu>(&self, cpu: &mut C) -> Result<Report, WorkloadError> {
        let p = self.params;
        let nr = cpu.nr_vcpus() as u64;
        require(
            p.size >= 1,
            "unsync-race: size (slots per vCPU) must be at least 1",
        )?;
        require(
            nr >= 1 && p.size.saturating_mul(nr) <= PT_ENTRIES as u64,
            "unsync-race: size (slots per vCPU) * vCPUs must be at most 512",
        )?;
        require((cpu.id() as u64) < nr, "unsync-race: vCPU id out of range")?;
        let mut cpu = Counted::new(cpu);
        let cpu = &mut cpu;
        let result = if cpu.id() == 0 {
            self.leader(cpu)
        } else {
            self.writer(cpu)
        };
        match result {
            Ok(mut report) => {
                cpu.fill(&mut report);
                Ok(report)
            }
            Err(e) => {
                // Release the vCPUs waiting for this one.
                if e != WorkloadError::PeerFailed {
                    abort_peers(cpu);
                }
                Err(e)
            }
        }
    }
}

impl UnsyncRace {
    /// vCPU 0: owns root A and the checks.
    fn leader<C: Cpu>(&self, cpu: &mut C) -> Result<Report, WorkloadError> {
        let p = self.params;
        let (n, nr) = (p.size, cpu.nr_vcpus() as u64);
        let mut report = Report::default();
        let mut frames = FrameAlloc::for_cpu(cpu);
        let boot = cpu.boot_root();
        let base = frames.alloc_contiguous(2 * n)?;
        let frame = |j: u64, par: u64| base + (par * n + j) * PAGE_SIZE;

        let mut a = PageTables::new_root(cpu, &mut frames, boot, &[])?;
        for j in 0..n {
            stamp(cpu, frame(j, 0), pattern(p.seed, frame(j, 0), 0));
            a.map(cpu, &mut frames, slot_va(j), frame(j, 0), Flags::RW)?;
        }
        let table = a.leaf_table(cpu, slot_va(0))?;
        let b = if nr == 1 {
            Some(PageTables::new_root(
                cpu,
                &mut frames,
                a.root(),
                &[pt_index(WORKLOAD_BASE, 4)],
            )?)
        } else {
            None
        };
        cpu.write_u64(shared_word(cpu, word::TABLE), table);
        cpu.load_cr3(a.root());
        for j in 0..n {
            check_page(
                cpu,
                &mut report,
                "unsync-race initial read",
                slot_va(j),
                pattern(p.seed, frame(j, 0), 0),
            )?;
        }
        let mut barrier = Barrier::new(cpu);
        barrier.wait(cpu)?;

        let done = shared_word(cpu, word::DONE);
        let mut tlb = TlbGather::new();
        let mut pte_writes = 0;
        let mut t = cpu.timestamp();
        for round in 1..=p.iters {
            let par = round % 2;
            if let Some(b) = &b {
                // One vCPU: write under root B, check under root A.
                cpu.load_cr3(b.root());
                for j in 0..n {
                    stamp(cpu, frame(j, par), pattern(p.seed, frame(j, par), round));
                    write_entry(cpu, table + 8 * j, frame(j, par) | Flags::RW.bits());
                    pte_writes += 1;
                }
                cpu.load_cr3(a.root());
            } else {
                for j in 0..n {
                    stamp(cpu, frame(j, par), pattern(p.seed, frame(j, par), round));
                    a.remap(cpu, slot_va(j), frame(j, par), Flags::RW, &mut tlb)?;
                }
                tlb.flush_all();
                tlb.finish(cpu, &mut frames)?;
            }
            for j in 0..n {
                let want = pattern(p.seed, frame(j, par), round);
                check_page(
                    cpu,
                    &mut report,
                    "unsync-race: own PTE write after own flush",
                    slot_va(j),
                    want,
                )?;
            }
            if nr > 1 {
                spin_until_at_least(
                    cpu,
                    done,
                    round.saturating_mul(nr - 1),
                    "the writer vCPUs' PTE batches",
                )?;
                cpu.flush_tlb();
                for s in n..nr * n {
                    let f = read_entry(cpu, table + 8 * s) & pte::ADDR_MASK;
                    let want = pattern(p.seed, f, round);
                    check_page(
                        cpu,
                        &mut report,
                        "unsync-race: other vCPU's PTE write after flush",
                        slot_va(s),
                        want,
                    )?;
                }
                barrier.wait(cpu)?;
            }
            let now = cpu.timestamp();
            report.latency.record(now.wrapping_sub(t));
            t = now;
            report.ops += 1;
        }
        report.pte_writes = a.pte_writes() + b.map_or(0, |b| b.pte_writes()) + pte_writes;
        cpu.load_cr3(boot);
        Ok(report)
    }

    /// vCPUs 1..N: write leaf PTEs of vCPU 0's table T through the direct map.
    fn writer<C: Cpu>(&self, cpu: &mut C) -> Result<Report, WorkloadError> {
        let p = self.params;
        let n = p.size;
        let first = cpu.id() as u64 * n;
        let mut report = Report::default();
        let mut frames = FrameAlloc::for_cpu(cpu);
        let base = frames.alloc_contiguous(2 * n)?;
        let frame = |j: u64, par: u64| base + (par * n + j) * PAGE_SIZE;
        let mut barrier = Barrier::new(cpu);
        barrier.wait(cpu)?;
        // Published by vCPU 0 before the barrier.
        let table = cpu.read_u64(shared_word(cpu, word::TABLE));
        let done = shared_word(cpu, word::DONE);
        for round in 1..=p.iters {
            let par = round % 2;
            let t0 = cpu.timestamp();
            for j in 0..n {
                stamp(cpu, frame(j, par), pattern(p.seed, frame(j, par), round));
                write_entry(
                    cpu,
                    table + 8 * (first + j),
                    frame(j, par) | Flags::RW.bits(),
                );
                report.pte_writes += 1;
            }
            cpu.fetch_add_u64(done, 1);
            let t1 = cpu.timestamp();
            report.latency.record(t1.wrapping_sub(t0));
            report.ops += 1;
            barrier.wait(cpu)?;
        }
        Ok(report)
    }
}
