//! `unsync-race`: other vCPUs write leaf PTEs of a table vCPU 0's root uses; vCPU 0 flushes and
//! must see them. The race the `is_unsync_root` barrier guards.

use super::{check_page, in_range, stamp, table_frames, OpTimer, Spec};
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

/// Virtual address of slot `s`.
const fn slot_va(s: u64) -> u64 {
    WORKLOAD_BASE + s * PAGE_SIZE
}

impl Spec for UnsyncRace {
    const NAME: &'static str = "unsync-race";
    const DEFAULT: Params = Params {
        iters: 1_000,
        seed: 1,
        size: 4,
    };

    fn params(&self) -> Params {
        self.params
    }

    fn check(p: Params, nr_vcpus: usize) -> Result<(), WorkloadError> {
        in_range(
            Self::NAME,
            "size",
            p.size,
            1..=(PT_ENTRIES / nr_vcpus.max(1)) as u64,
            "slots per vCPU: every vCPU's slots share one 512-entry page table",
        )
    }

    /// vCPU 0 remaps and checks its own slots and checks every writer's.
    fn work_per_iter(p: Params, nr_vcpus: usize) -> u64 {
        2 * p.size * nr_vcpus as u64 + 2
    }

    /// vCPU 0: root A (and B on one vCPU), the tables of its slots, two frames per slot; the
    /// writers need only their two frames per slot.
    fn frames_needed(p: Params, _nr_vcpus: usize) -> u64 {
        2 + table_frames(p.size) + 2 * p.size
    }

    fn body<C: Cpu>(
        &self,
        cpu: &mut Counted<'_, C>,
        report: &mut Report,
    ) -> Result<(), WorkloadError> {
        let result = if cpu.id() == 0 {
            self.leader(cpu, report)
        } else {
            self.writer(cpu, report)
        };
        // Release the vCPUs waiting for this one.
        if let Err(e) = result {
            if e != WorkloadError::PeerFailed {
                abort_peers(cpu);
            }
        }
        result
    }
}

impl UnsyncRace {
    /// vCPU 0: owns root A and the checks.
    fn leader<C: Cpu>(&self, cpu: &mut C, report: &mut Report) -> Result<(), WorkloadError> {
        let p = self.params;
        let (n, nr) = (p.size, cpu.nr_vcpus() as u64);
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
                report,
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
        let mut timer = OpTimer::start(cpu);
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
                    report,
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
                        report,
                        "unsync-race: other vCPU's PTE write after flush",
                        slot_va(s),
                        want,
                    )?;
                }
                barrier.wait(cpu)?;
            }
            timer.lap(cpu, report);
        }
        report.pte_writes = a.pte_writes() + b.map_or(0, |b| b.pte_writes()) + pte_writes;
        cpu.load_cr3(boot);
        Ok(())
    }

    /// vCPUs 1..N: write leaf PTEs of vCPU 0's table T through the direct map.
    fn writer<C: Cpu>(&self, cpu: &mut C, report: &mut Report) -> Result<(), WorkloadError> {
        let p = self.params;
        let n = p.size;
        let first = cpu.id() as u64 * n;
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
            // The batch's publication is the op; the barrier wait after it is not timed.
            let mut timer = OpTimer::start(cpu);
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
            timer.lap(cpu, report);
            barrier.wait(cpu)?;
        }
        Ok(())
    }
}
