//! The shadow MMU's correctness oracle, under every correct policy.
//!
//! Property: after any sequence of guest page-table operations (map, unmap, protect, remap,
//! switch root, tables shared between address spaces, INVLPG or flush at random points), every
//! guest virtual address translates the same through the guest's own tables (the reference
//! walk) and through the shadow tables, permissions included, once the guest has invalidated
//! it; and what the vCPU reads through the address (software TLB included) is what the guest
//! mapped there. The MMU's own invariants (`audit`) hold at the end.
//!
//! Stress: the race the protocol guards against (`unsync-race` on 2 and 3 vCPUs) over many
//! rounds: the workload checks every translation after each flush and fails on a stale one.

use proptest::prelude::*;
use shadowlab_framework::mmu::check_translation;
use shadowlab_framework::sim::{self, SimConfig, SimCpu, SimVm};
use shadowlab_policies::{AcquireLoad, AlwaysLock, RmbFence, SeqCstFence, SyncPolicy};
use shadowlab_workloads::layout::{direct_map, WORKLOAD_BASE};
use shadowlab_workloads::{Cpu, Flags, FrameAlloc, PageTables, Params, PtError, Run, TlbGather};

/// Pages the operations touch: six under PML4 slot 1 (whose subtree both address spaces
/// share), spread over two leaf tables, and six under slot 2 (private to each space).
const PAGES: usize = 12;
const DATA_FRAMES: usize = 6;

fn page_gva(page: usize) -> u64 {
    let (slot, i) = if page < 6 { (1, page) } else { (2, page - 6) };
    // Pages 0..3 and 3..6 of a slot land in different 2 MiB regions, i.e. different leaf tables.
    WORKLOAD_BASE * slot + (i as u64 / 3) * (2 << 20) + (i as u64 % 3) * 4096 * 7
}

/// The same pages, but each leaf table's three consecutive: one aligned group of the shadow
/// MMU's PTE prefetch (`PTE_PREFETCH_NUM`), so a fault on one also maps its mapped neighbours
/// and the comparison covers prefetched SPTEs.
fn dense_page_gva(page: usize) -> u64 {
    let (slot, i) = if page < 6 { (1, page) } else { (2, page - 6) };
    WORKLOAD_BASE * slot + (i as u64 / 3) * (2 << 20) + (i as u64 % 3) * 4096
}

#[derive(Clone, Debug)]
enum Op {
    Map {
        space: usize,
        page: usize,
        frame: usize,
        writable: bool,
    },
    Unmap {
        space: usize,
        page: usize,
    },
    Protect {
        space: usize,
        page: usize,
        writable: bool,
    },
    SwitchRoot {
        space: usize,
    },
    Invlpg {
        page: usize,
    },
    Flush,
    Read {
        page: usize,
    },
    WriteFresh {
        page: usize,
        value: u64,
    },
}

fn op() -> impl Strategy<Value = Op> {
    let page = 0..PAGES;
    prop_oneof![
        4 => (0..2usize, page.clone(), 0..DATA_FRAMES, any::<bool>())
            .prop_map(|(space, page, frame, writable)| Op::Map { space, page, frame, writable }),
        2 => (0..2usize, page.clone()).prop_map(|(space, page)| Op::Unmap { space, page }),
        2 => (0..2usize, page.clone(), any::<bool>())
            .prop_map(|(space, page, writable)| Op::Protect { space, page, writable }),
        1 => (0..2usize).prop_map(|space| Op::SwitchRoot { space }),
        2 => page.clone().prop_map(|page| Op::Invlpg { page }),
        1 => Just(Op::Flush),
        3 => page.clone().prop_map(|page| Op::Read { page }),
        1 => (page, any::<u64>()).prop_map(|(page, value)| Op::WriteFresh { page, value }),
    ]
}

fn config(seed: u64) -> SimConfig {
    SimConfig {
        vcpus: 1,
        seed,
        ram_bytes: 8 << 20,
        pool_pages: 128,
    }
}

/// Checks one address after the guest invalidated it: shadow agrees with guest, and a read
/// through the address returns what the guest maps there.
fn check_page<P: SyncPolicy>(cpu: &mut SimCpu<'_, P>, gva: u64) -> Result<(), String> {
    let guest = cpu.guest_translate(gva);
    check_translation(gva, &guest, &cpu.shadow_translate(gva))?;
    match guest {
        Ok(t) => {
            let want = cpu.read_u64(direct_map(t.gpa_page));
            match cpu.try_read_u64(gva) {
                Ok(got) if got == want => Ok(()),
                Ok(got) => Err(format!(
                    "{gva:#x}: read {got:#x} through the TLB, the guest maps {:#x} holding {want:#x}",
                    t.gpa_page
                )),
                Err(e) => Err(format!("{gva:#x}: mapped by the guest but faulted: {e}")),
            }
        }
        Err(_) => match cpu.try_read_u64(gva) {
            Err(_) => Ok(()),
            Ok(v) => Err(format!("{gva:#x}: unmapped by the guest yet read {v:#x}")),
        },
    }
}

fn flags(writable: bool) -> Flags {
    if writable {
        Flags::RW
    } else {
        Flags::RO
    }
}

/// Runs one generated sequence; `Err` names the first disagreement.
fn run_ops<P: SyncPolicy>(seed: u64, ops: &[Op]) -> Result<(), String> {
    run_ops_on::<P>(seed, ops, page_gva).map(|_| ())
}

/// [`run_ops`] with the pages at `page_gva`; `Ok` carries the MMU's prefetch count.
fn run_ops_on<P: SyncPolicy>(
    seed: u64,
    ops: &[Op],
    page_gva: fn(usize) -> u64,
) -> Result<u64, String> {
    let vm = SimVm::<P>::new(&config(seed)).map_err(|e| e.to_string())?;
    let mut cpu = vm.cpu(0).map_err(|e| e.to_string())?;
    let mut frames = FrameAlloc::for_cpu(&cpu);
    let pte = |e: PtError| format!("page tables: {e}");
    let boot = cpu.boot_root();

    // Data frames, each tagged with its own address so a read tells which frame it hit.
    let data: Vec<u64> = (0..DATA_FRAMES)
        .map(|_| frames.alloc(&mut cpu))
        .collect::<Result<_, _>>()
        .map_err(pte)?;
    for &f in &data {
        cpu.write_u64(direct_map(f), f ^ 0x5eed_0000_0000_0000);
    }
    // Space A, with slot 1's tables created; space B shares slot 1's subtree with A.
    let mut a = PageTables::new_root(&mut cpu, &mut frames, boot, &[]).map_err(pte)?;
    a.map(&mut cpu, &mut frames, page_gva(0), data[0], Flags::RW)
        .map_err(pte)?;
    let b = PageTables::new_root(&mut cpu, &mut frames, a.root(), &[1]).map_err(pte)?;
    let mut spaces = [a, b];
    let mut current = 0;
    cpu.load_cr3(spaces[0].root());

    for (i, op) in ops.iter().enumerate() {
        let mut gather = TlbGather::new();
        let at = |e: String| format!("op {i} {op:?}: {e}");
        match *op {
            Op::Map {
                space,
                page,
                frame,
                writable,
            } => {
                let pt = &mut spaces[space];
                let (gva, gpa) = (page_gva(page), data[frame]);
                match pt.map(&mut cpu, &mut frames, gva, gpa, flags(writable)) {
                    Err(PtError::AlreadyMapped { .. }) => {
                        pt.remap(&mut cpu, gva, gpa, flags(writable), &mut gather)
                            .map_err(pte)
                            .map_err(at)?;
                    }
                    r => r.map_err(pte).map_err(at)?,
                }
            }
            Op::Unmap { space, page } => {
                match spaces[space].unmap(&mut cpu, page_gva(page), &mut gather) {
                    Ok(_) | Err(PtError::NotMapped { .. }) => {}
                    Err(e) => return Err(at(pte(e))),
                }
            }
            Op::Protect {
                space,
                page,
                writable,
            } => {
                match spaces[space].protect(&mut cpu, page_gva(page), flags(writable), &mut gather)
                {
                    Ok(_) | Err(PtError::NotMapped { .. }) => {}
                    Err(e) => return Err(at(pte(e))),
                }
            }
            Op::SwitchRoot { space } => {
                current = space;
                cpu.load_cr3(spaces[space].root());
                for p in 0..PAGES {
                    check_page(&mut cpu, page_gva(p)).map_err(at)?;
                }
            }
            Op::Invlpg { page } => {
                cpu.invlpg(page_gva(page));
                check_page(&mut cpu, page_gva(page)).map_err(at)?;
            }
            Op::Flush => {
                cpu.flush_tlb();
                for p in 0..PAGES {
                    check_page(&mut cpu, page_gva(p)).map_err(at)?;
                }
            }
            // A read between invalidations may legitimately hit a stale TLB entry (as on
            // hardware); it must not fail where the guest grants the access.
            Op::Read { page } => {
                let gva = page_gva(page);
                if let (Ok(_), Err(e)) = (cpu.guest_translate(gva), cpu.try_read_u64(gva)) {
                    return Err(at(format!(
                        "{gva:#x}: guest grants a read, vCPU faulted: {e}"
                    )));
                }
            }
            // A store right after invalidating the page must land in the frame the guest maps.
            Op::WriteFresh { page, value } => {
                let gva = page_gva(page);
                cpu.invlpg(gva);
                if let Ok(t) = cpu.guest_translate(gva) {
                    if t.access & 2 != 0 {
                        cpu.try_write_u64(gva, value)
                            .map_err(|e| at(format!("{gva:#x}: writable, yet faulted: {e}")))?;
                        let landed = cpu.read_u64(direct_map(t.gpa_page));
                        if landed != value {
                            return Err(at(format!(
                                "{gva:#x}: store did not reach the guest's frame"
                            )));
                        }
                    }
                }
            }
        }
        // The gather's pages are the caller's to invalidate; the ops above decide when.
        drop(gather);
    }
    // The end state, after a flush, on both roots.
    for space in [current, 1 - current] {
        cpu.load_cr3(spaces[space].root());
        for p in 0..PAGES {
            check_page(&mut cpu, page_gva(p)).map_err(|e| format!("final, space {space}: {e}"))?;
        }
    }
    vm.mmu().audit().map_err(|e| format!("audit: {e}"))?;
    Ok(vm.mmu().stats().prefetched)
}

const CASES: u32 = 1000;

proptest! {
    #![proptest_config(ProptestConfig { cases: CASES, ..ProptestConfig::default() })]

    #[test]
    fn shadow_matches_guest_under_rmb_fence(seed in any::<u64>(), ops in prop::collection::vec(op(), 1..60)) {
        prop_assert_eq!(run_ops::<RmbFence>(seed, &ops), Ok(()));
    }

    #[test]
    fn shadow_matches_guest_under_acquire_load(seed in any::<u64>(), ops in prop::collection::vec(op(), 1..60)) {
        prop_assert_eq!(run_ops::<AcquireLoad>(seed, &ops), Ok(()));
    }

    #[test]
    fn shadow_matches_guest_under_always_lock(seed in any::<u64>(), ops in prop::collection::vec(op(), 1..60)) {
        prop_assert_eq!(run_ops::<AlwaysLock>(seed, &ops), Ok(()));
    }

    #[test]
    fn shadow_matches_guest_under_seqcst_fence(seed in any::<u64>(), ops in prop::collection::vec(op(), 1..60)) {
        prop_assert_eq!(run_ops::<SeqCstFence>(seed, &ops), Ok(()));
    }

    #[test]
    fn prefetched_shadow_matches_guest_under_rmb_fence(seed in any::<u64>(), ops in prop::collection::vec(op(), 1..60)) {
        prop_assert_eq!(run_ops_on::<RmbFence>(seed, &ops, dense_page_gva).map(|_| ()), Ok(()));
    }

    #[test]
    fn prefetched_shadow_matches_guest_under_always_lock(seed in any::<u64>(), ops in prop::collection::vec(op(), 1..60)) {
        prop_assert_eq!(run_ops_on::<AlwaysLock>(seed, &ops, dense_page_gva).map(|_| ()), Ok(()));
    }
}

/// The dense layout really exercises the prefetch: map a leaf table's three pages, touch the
/// first, and the other two are prefetched (the comparison then covers them), where the
/// sparse layout's pages are too far apart (the boot's own mappings prefetch the same in
/// both).
#[test]
fn dense_pages_are_prefetched() {
    let ops = [0, 1, 2]
        .map(|page| Op::Map {
            space: 0,
            page,
            frame: page,
            writable: page != 1,
        })
        .into_iter()
        .chain([Op::Read { page: 0 }, Op::Flush])
        .collect::<Vec<_>>();
    let dense = run_ops_on::<RmbFence>(1, &ops, dense_page_gva).unwrap();
    let sparse = run_ops_on::<RmbFence>(1, &ops, page_gva).unwrap();
    assert_eq!(dense, sparse + 2, "dense {dense}, sparse {sparse}");
}

/// Rounds of the unsync race per (policy, vCPU count).
const RACE_ROUNDS: u64 = 20_000;

fn race<P: SyncPolicy>(vcpus: usize) {
    let w = shadowlab_workloads::Workload::from_name("unsync-race")
        .expect("unsync-race exists")
        .with_params(Params {
            iters: RACE_ROUNDS,
            seed: 5,
            size: 4,
        });
    let cfg = SimConfig {
        vcpus,
        seed: 5,
        ram_bytes: 16 << 20,
        pool_pages: 512,
    };
    let run = sim::run_with::<P, _, _>(&cfg, |cpu| w.run(cpu)).expect("the VM runs");
    let mut checks = 0;
    for (v, r) in run.results.iter().enumerate() {
        let r = r
            .as_ref()
            .unwrap_or_else(|e| panic!("{} vCPU {v}: {e}", P::NAME));
        assert_eq!(r.ops, RACE_ROUNDS, "{} vCPU {v}", P::NAME);
        checks += r.checks;
    }
    // vCPU 0 checks every writer's slots after every round.
    assert!(
        checks >= RACE_ROUNDS * (vcpus as u64 - 1),
        "{}: {checks} checks",
        P::NAME
    );
    // The race window was really exercised: leaf tables went unsync and were synced.
    assert!(
        run.mmu.unsyncs > RACE_ROUNDS / 10,
        "{}: {:?}",
        P::NAME,
        run.mmu
    );
    assert!(
        run.mmu.syncs > RACE_ROUNDS / 10,
        "{}: {:?}",
        P::NAME,
        run.mmu
    );
}

#[test]
fn unsync_race_stress_sees_no_stale_translation_on_2_and_3_vcpus() {
    for vcpus in [2, 3] {
        race::<RmbFence>(vcpus);
        race::<AcquireLoad>(vcpus);
        race::<AlwaysLock>(vcpus);
        race::<SeqCstFence>(vcpus);
    }
}
