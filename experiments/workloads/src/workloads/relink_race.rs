//! `relink-race`: process creation. vCPU 0 (the parent) builds and edits page tables and links
//! them into new places; the other vCPUs (children) fault through each new link while the parent
//! is still editing the table behind it, then both sides shoot down and the children check. The
//! race `FNAME(fetch)`'s per-level `gpte_changed` re-check guards (framework/src/sim/fetch_race.rs).

use super::{check_page, in_range, stamp, OpTimer, Spec};
use crate::cpu::{CheckFailed, Cpu};
use crate::error::WorkloadError;
use crate::frames::FrameAlloc;
use crate::paging::{write_entry, Flags, PageTables, TABLE_FLAGS};
use crate::report::{Counted, Params, Report};
use crate::rng::{pattern, Rng};
use crate::sync::{abort_peers, shared_word, spin_until_at_least, word, Barrier};
use crate::tlb::TlbGather;
use shadowlab_abi::layout::{pt_index, PAGE_SIZE, PT_ENTRIES, WORKLOAD_BASE};

/// Leaf tables the parent cycles through (table `round % TABLES` in round `round`).
const TABLES: u64 = 4;
/// Link slots 1..SLOTS of the PD and of the PDPT; entry 0 of each holds the permanent links.
const SLOTS: u64 = 64;
/// The PML4 slot of every mapping: the PDPT hangs here in root A and in every child root.
const L4: usize = pt_index(WORKLOAD_BASE, 4);
/// The parent waits up to `2^MAX_JITTER_LOG2 - 1` extra loads between seeing a child start its
/// fault and editing the table: log-uniform, so the edit lands at every point of the fault
/// (tens of ns on hardware, 50-100 µs when the fault exits to a VMM).
const MAX_JITTER_LOG2: u64 = 17;

/// Where round `round` links its table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// A new PD entry points at the leaf table.
    PdEntry,
    /// A new PDPT entry points at the second PD, whose entry 0 points at the leaf table.
    PdptEntry,
    /// A new PD entry, and the children switch to a new address space (a new PML4 sharing the
    /// PDPT subtree) before they fault through it.
    NewAddressSpace,
}

const fn kind(round: u64) -> Kind {
    match round % 3 {
        0 => Kind::PdEntry,
        1 => Kind::PdptEntry,
        _ => Kind::NewAddressSpace,
    }
}

/// The PD or PDPT entry round `round` links at: never the previous round's.
const fn link_slot(round: u64) -> u64 {
    1 + round % (SLOTS - 1)
}

/// Virtual address of page `j` behind round `round`'s link.
const fn link_va(round: u64, j: u64) -> u64 {
    let s = link_slot(round);
    let (l3, l2) = match kind(round) {
        Kind::PdptEntry => (s, 0),
        Kind::PdEntry | Kind::NewAddressSpace => (0, s),
    };
    WORKLOAD_BASE + (l3 << 30) + (l2 << 21) + j * PAGE_SIZE
}

/// The data frames: page `j` of leaf table `k` maps `frame(k, j, false)` before the parent's
/// edit and `frame(k, j, true)` after it.
#[derive(Clone, Copy)]
struct DataFrames {
    base: u64,
    pages: u64,
}

impl DataFrames {
    const fn frame(self, k: u64, j: u64, edited: bool) -> u64 {
        self.base + ((2 * k + edited as u64) * self.pages + j) * PAGE_SIZE
    }

    /// The stamp of page `j`'s frame in round `round`, before or after the edit.
    const fn stamp(self, seed: u64, round: u64, j: u64, edited: bool) -> u64 {
        let f = self.frame(round % TABLES, j, edited);
        pattern(seed, f, 2 * round + edited as u64)
    }
}

/// `relink-race`. `size` = pages per leaf table (1..=512, default 4).
///
/// **Tables.** vCPU 0 (the parent) owns root A, whose PML4 slot 1 holds a PDPT P; P's entry 0
/// holds PD D0; a second PD D1 is linked only by the round's PDPT link; four leaf tables
/// T0..T3 are used round-robin, each with two frames per page (before and after the edit). A
/// child root B (a new PML4 that copies A's direct-map and slot-1 entries, so it shares the
/// whole user subtree, as a new process shares what its creator hands it) is what the children
/// run on. Frame use is bounded: tables are reused, and each replaced child root is freed after
/// the children have left it and the gather has flushed (the LIFO free list hands it back to
/// the next new root).
///
/// **Each round `r`** (one op), with table T = T[r mod 4] and a slot s that is not the last
/// round's:
/// 1. the parent waits until every child has finished round `r - 1`, unlinks that round's link
///    (clears the PD or PDPT entry) and does a full flush (a page table was unlinked), freeing a
///    replaced child root after it;
/// 2. every third round it creates a new child root (process creation: a zeroed PML4 with the
///    shared entries copied);
/// 3. it links T at a **new place**: D0's entry s (rounds 0 and 2 mod 3), or P's entry s → D1
///    with D1's entry 0 → T (round 1 mod 3); then fills T: page `j` → this round's "before"
///    frame, stamped `pattern(seed, frame, 2r)`; and stamps the "after" frames with
///    `pattern(seed, frame, 2r + 1)`. The link is stored before the leaf entries so that the
///    parent's own stores to T are the last thing before the race: it holds a writable TLB
///    entry for T, as a CPU that keeps writing a table does (a shadow MMU unsyncs T on the
///    first of them, or T is not shadowed yet);
/// 4. it publishes the round, and the child root, on the shared page;
/// 5. each child loads the new root if there is one (the CR3 switch into the new address space)
///    or else flushes (the shootdown of the link unlinked in step 1), announces that it is about
///    to fault (the shared `GO` counter), and reads page 0..size through the new link: **these
///    reads fault through the new link while the parent edits T**, and each must read T's
///    entry before or after the edit;
/// 6. the parent, once every child is about to fault, waits a random log-uniform number of
///    loads, then **edits** T: every page `j` → its "after" frame; INVLPGs them on itself and
///    publishes the edit (the shootdown request a kernel sends after changing PTEs another CPU
///    may cache), then checks every page through root A;
/// 7. each child INVLPGs every page (a full flush above 33 pages, as `mmu_gather` does) and
///    checks both ends of every page against the "after" stamp, then reports the round done.
///
/// A shadow MMU that builds a child's leaf SPTE from a walk taken before a parent store that
/// raced its write-protection of T (or D1, or their syncing), and marks T synced, leaves a
/// translation to the "before" frame that the INVLPG does not remove: step 7 fails.
///
/// **With one vCPU** there is nobody to race: vCPU 0 does both sides in turn, across address
/// spaces: after step 3 it loads the child root and checks the "before" stamps through the new
/// link, loads A, edits T, INVLPGs and checks through A, then loads the child root again and
/// checks the "after" stamps there (T was edited while that root was not loaded: a cached
/// previous root whose shadow must be synced on the CR3 load).
///
/// One op = one round on every vCPU; `ops == iters`. The children's reports carry the checks
/// of steps 5 and 7, the parent's the PTE writes and the checks through A.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RelinkRace {
    /// `size` = pages per leaf table.
    pub params: Params,
}

impl Spec for RelinkRace {
    const NAME: &'static str = "relink-race";
    /// Default parameters: about 0.3 s on `sim`, 20-25 s on `kvm` and `native` on the
    /// development machine (where a round costs several exits of 50-100 µs each).
    const DEFAULT: Params = Params {
        iters: 1_000,
        seed: 1,
        size: 4,
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
            "pages per leaf table",
        )
    }

    /// The parent's link and unlink, two leaf PTE writes and an INVLPG per page, its checks.
    fn work_per_iter(p: Params, _nr_vcpus: usize) -> u64 {
        4 * p.size + 4
    }

    /// The parent: [`TABLES`] tables of two frames per page, root A, the PDPT, two PDs, the
    /// leaf tables, and two child roots (a new one is made before the one it replaces is
    /// freed). The children allocate nothing.
    fn frames_needed(p: Params, _nr_vcpus: usize) -> u64 {
        2 * TABLES * p.size + 1 + 3 + TABLES + 2
    }

    fn body<C: Cpu>(
        &self,
        cpu: &mut Counted<'_, C>,
        report: &mut Report,
    ) -> Result<(), WorkloadError> {
        let result = if cpu.id() == 0 {
            self.parent(cpu, report)
        } else {
            self.child(cpu, report)
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

/// Checks every page behind round `round`'s link: both ends hold the stamp of its "before" or
/// "after" frame.
fn check_pages<C: Cpu>(
    cpu: &mut C,
    report: &mut Report,
    what: &'static str,
    data: DataFrames,
    seed: u64,
    round: u64,
    edited: bool,
) -> Result<(), CheckFailed> {
    for j in 0..data.pages {
        let want = data.stamp(seed, round, j, edited);
        check_page(cpu, report, what, link_va(round, j), want)?;
    }
    Ok(())
}

impl RelinkRace {
    /// vCPU 0: builds, links, edits and unlinks.
    fn parent<C: Cpu>(&self, cpu: &mut C, report: &mut Report) -> Result<(), WorkloadError> {
        let p = self.params;
        let (n, nr) = (p.size, cpu.nr_vcpus() as u64);
        let children = nr - 1;
        let mut pte_writes = 0;
        let mut frames = FrameAlloc::for_cpu(cpu);
        let boot = cpu.boot_root();
        let data = DataFrames {
            base: frames.alloc_contiguous(2 * TABLES * n)?,
            pages: n,
        };
        let a = PageTables::new_root(cpu, &mut frames, boot, &[])?;
        let pdpt = frames.alloc_zeroed(cpu)?;
        let pd0 = frames.alloc_zeroed(cpu)?;
        let pd1 = frames.alloc_zeroed(cpu)?;
        let mut tables = [0; TABLES as usize];
        for t in &mut tables {
            *t = frames.alloc_zeroed(cpu)?;
        }
        write_entry(cpu, a.root() + 8 * L4 as u64, pdpt | TABLE_FLAGS);
        write_entry(cpu, pdpt, pd0 | TABLE_FLAGS);
        pte_writes += 2 + a.pte_writes();
        let mut child_root = PageTables::new_root(cpu, &mut frames, a.root(), &[L4])?;
        pte_writes += child_root.pte_writes();
        cpu.write_u64(shared_word(cpu, word::DATA), data.base);
        cpu.write_u64(shared_word(cpu, word::ROOT), child_root.root());
        cpu.load_cr3(a.root());
        let mut barrier = Barrier::new(cpu);
        barrier.wait(cpu)?;

        let (link_word, go, edit, done) = (
            shared_word(cpu, word::LINK),
            shared_word(cpu, word::GO),
            shared_word(cpu, word::EDIT),
            shared_word(cpu, word::DONE),
        );
        let mut rng = Rng::new(p.seed);
        let mut tlb = TlbGather::new();
        // The entry holding the current link, and a child root replaced but not yet freed.
        let mut link: Option<u64> = None;
        let mut retired: Option<u64> = None;
        let mut pd1_entry = 0;
        let mut timer = OpTimer::start(cpu);
        for round in 1..=p.iters {
            // 1. Unlink the last round's link once every child is done with it.
            spin_until_at_least(
                cpu,
                done,
                (round - 1).saturating_mul(children),
                "the children's last round",
            )?;
            if let Some(entry) = link.take() {
                write_entry(cpu, entry, 0);
                pte_writes += 1;
                tlb.unlinked_table();
            }
            if let Some(root) = retired.take() {
                tlb.free_after_flush(cpu, &mut frames, root)?;
            }
            tlb.finish(cpu, &mut frames)?;

            // 2. Process creation: a new address space sharing the user subtree.
            if kind(round) == Kind::NewAddressSpace {
                let new = PageTables::new_root(cpu, &mut frames, a.root(), &[L4])?;
                pte_writes += new.pte_writes();
                retired = Some(child_root.root());
                child_root = new;
            }

            // 3. Link T at a new place, then fill it.
            let table = tables[(round % TABLES) as usize];
            let s = link_slot(round);
            let entry = if kind(round) == Kind::PdptEntry {
                if pd1_entry != table {
                    // D1 is linked nowhere now (its last PDPT link was cleared in step 1).
                    write_entry(cpu, pd1, table | TABLE_FLAGS);
                    pte_writes += 1;
                    pd1_entry = table;
                }
                write_entry(cpu, pdpt + 8 * s, pd1 | TABLE_FLAGS);
                pdpt + 8 * s
            } else {
                write_entry(cpu, pd0 + 8 * s, table | TABLE_FLAGS);
                pd0 + 8 * s
            };
            pte_writes += 1;
            link = Some(entry);
            // T was reachable from nowhere since its last link was cleared and flushed, and
            // nobody has used the new addresses yet: no invalidation is owed for these stores.
            for j in 0..n {
                let before = data.frame(round % TABLES, j, false);
                stamp(cpu, before, data.stamp(p.seed, round, j, false));
                write_entry(cpu, table + 8 * j, before | Flags::RW.bits());
                pte_writes += 1;
            }
            for j in 0..n {
                let after = data.frame(round % TABLES, j, true);
                stamp(cpu, after, data.stamp(p.seed, round, j, true));
            }

            if children == 0 {
                // One vCPU: the child's side in the new address space, then the edit.
                cpu.load_cr3(child_root.root());
                check_pages(
                    cpu,
                    report,
                    "relink-race (one vCPU): read through the new link in the child root",
                    data,
                    p.seed,
                    round,
                    false,
                )?;
                cpu.load_cr3(a.root());
            } else {
                // 4. Publish; 6. edit once every child is about to fault through the link.
                cpu.write_u64(shared_word(cpu, word::ROOT), child_root.root());
                cpu.write_u64(link_word, round);
                spin_until_at_least(
                    cpu,
                    go,
                    round.saturating_mul(children),
                    "the children to fault",
                )?;
                let log2 = rng.below(MAX_JITTER_LOG2);
                let jitter = rng.below(1 << log2);
                for _ in 0..jitter {
                    cpu.read_u64(go);
                }
            }
            for j in 0..n {
                let after = data.frame(round % TABLES, j, true);
                write_entry(cpu, table + 8 * j, after | Flags::RW.bits());
                pte_writes += 1;
                tlb.page(link_va(round, j));
            }
            tlb.finish(cpu, &mut frames)?;
            if children > 0 {
                cpu.write_u64(edit, round);
            }
            check_pages(
                cpu,
                report,
                "relink-race: parent's read after its own INVLPG",
                data,
                p.seed,
                round,
                true,
            )?;
            if children == 0 {
                cpu.load_cr3(child_root.root());
                check_pages(
                    cpu,
                    report,
                    "relink-race (one vCPU): read in the child root after the edit and CR3 load",
                    data,
                    p.seed,
                    round,
                    true,
                )?;
                cpu.load_cr3(a.root());
            }
            timer.lap(cpu, report);
        }
        spin_until_at_least(
            cpu,
            done,
            p.iters.saturating_mul(children),
            "the children's last round",
        )?;
        if let Some(entry) = link.take() {
            write_entry(cpu, entry, 0);
            pte_writes += 1;
            tlb.unlinked_table();
        }
        if let Some(root) = retired.take() {
            tlb.free_after_flush(cpu, &mut frames, root)?;
        }
        tlb.finish(cpu, &mut frames)?;
        report.pte_writes = pte_writes;
        cpu.load_cr3(boot);
        Ok(())
    }

    /// vCPUs 1..N: fault through each new link while the parent edits, shoot down, check.
    fn child<C: Cpu>(&self, cpu: &mut C, report: &mut Report) -> Result<(), WorkloadError> {
        let p = self.params;
        let n = p.size;
        // Never allocates: the gather wants an allocator for deferred frees, and there are none.
        let mut frames = FrameAlloc::for_cpu(cpu);
        let boot = cpu.boot_root();
        let mut barrier = Barrier::new(cpu);
        barrier.wait(cpu)?;
        // Published by the parent before the barrier.
        let data = DataFrames {
            base: cpu.read_u64(shared_word(cpu, word::DATA)),
            pages: n,
        };
        let root_word = shared_word(cpu, word::ROOT);
        let mut root = cpu.read_u64(root_word);
        cpu.load_cr3(root);
        let (link_word, go, edit, done) = (
            shared_word(cpu, word::LINK),
            shared_word(cpu, word::GO),
            shared_word(cpu, word::EDIT),
            shared_word(cpu, word::DONE),
        );
        let mut tlb = TlbGather::new();
        for round in 1..=p.iters {
            // The whole round is the op, the waits for the parent included.
            let mut timer = OpTimer::start(cpu);
            spin_until_at_least(cpu, link_word, round, "the parent's new link")?;
            let r = cpu.read_u64(root_word);
            if r != root {
                // Into the new address space (a CR3 load flushes this vCPU's TLB too).
                cpu.load_cr3(r);
                root = r;
            } else {
                // The parent unlinked the last round's table: the shootdown a kernel sends.
                cpu.flush_tlb();
            }
            cpu.fetch_add_u64(go, 1);
            // The faults through the new link, racing the parent's edit of the table.
            for j in 0..n {
                let va = link_va(round, j);
                let found = cpu.read_u64(va);
                let before = data.stamp(p.seed, round, j, false);
                let after = data.stamp(p.seed, round, j, true);
                if found != before && found != after {
                    return Err(CheckFailed {
                        what: "relink-race: fault through the new link racing the parent's edit",
                        gva: va,
                        expected: after,
                        found,
                    }
                    .into());
                }
                report.checks += 1;
            }
            spin_until_at_least(cpu, edit, round, "the parent's edit")?;
            for j in 0..n {
                tlb.page(link_va(round, j));
            }
            tlb.finish(cpu, &mut frames)?;
            check_pages(
                cpu,
                report,
                "relink-race: child's read after the parent's edit and the shootdown",
                data,
                p.seed,
                round,
                true,
            )?;
            cpu.fetch_add_u64(done, 1);
            timer.lap(cpu, report);
        }
        cpu.load_cr3(boot);
        Ok(())
    }
}
