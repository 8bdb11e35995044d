//! Every workload on the mock machine: perfect CPU, real TLB, and broken TLBs.

extern crate std;

use std::vec::Vec;

use super::*;
use crate::mock::{Machine, TlbMode};

fn params(iters: u64, size: u64) -> Params {
    Params {
        iters,
        seed: 0x5eed,
        size,
    }
}

fn workload(name: &str, iters: u64, size: u64) -> Workload {
    Workload::from_name(name)
        .expect("known workload")
        .with_params(params(iters, size))
}

/// Runs `w` on a fresh machine and returns every vCPU's report, failing on any error.
/// Every report's `ops` is checked against [`Run::expected_ops`].
fn run_ok(w: Workload, vcpus: usize, mode: TlbMode) -> Vec<Report> {
    let m = Machine::new(64, vcpus);
    let reports: Vec<Report> = m
        .run(w, mode)
        .into_iter()
        .enumerate()
        .map(|(id, r)| r.unwrap_or_else(|e| panic!("{} vCPU {id} ({mode:?}): {e}", w.name())))
        .collect();
    for (id, r) in reports.iter().enumerate() {
        assert_eq!((r.vcpu, r.ops), (id, w.expected_ops()), "{}", w.name());
    }
    reports
}

/// Runs `w` and returns the first self-check failure.
fn run_check_failed(w: Workload, vcpus: usize, mode: TlbMode) -> CheckFailed {
    let m = Machine::new(64, vcpus);
    let results = m.run(w, mode);
    results
        .iter()
        .find_map(|r| match r {
            Err(WorkloadError::Check(c)) => Some(*c),
            _ => None,
        })
        .unwrap_or_else(|| panic!("{} on a {mode:?} CPU passed: {results:?}", w.name()))
}

// Real first: a workload missing an invalidation fails its self-check there.
const GOOD: [TlbMode; 2] = [TlbMode::Real, TlbMode::None];

#[test]
fn names_round_trip() {
    assert_eq!(
        Workload::names(),
        [
            "cr3-switch",
            "pt-churn",
            "unsync-race",
            "mmap-churn",
            "fault-storm",
            "exit-floor",
            "relink-race"
        ]
    );
    for w in Workload::ALL {
        assert_eq!(Workload::from_name(w.name()), Some(w));
        assert_eq!(w.default_params(), w.params());
        let p = params(3, 5);
        let w2 = w.with_params(p);
        assert_eq!(
            (w2.name(), w2.params(), w2.default_params()),
            (w.name(), p, w.params())
        );
    }
    assert_eq!(Workload::from_name("pt_churn"), None);
    assert_eq!(Workload::from_name(""), None);
}

#[test]
fn cr3_switch() {
    for mode in GOOD {
        let [r] = run_ok(workload("cr3-switch", 500, 8), 1, mode)[..] else {
            panic!()
        };
        assert_eq!(r.ops, 500);
        assert_eq!(r.cr3_loads, 8 + 500 + 1); // warm-up, loop, back to boot
        assert_eq!(r.checks, 2 * (8 + 500));
        assert_eq!((r.invlpgs, r.tlb_flushes), (0, 0));
        // 8 roots: the direct-map entry, 3 tables and the leaf each.
        assert_eq!(r.pte_writes, 8 * 5);
        assert_eq!(r.latency.count, 500);
    }
}

#[test]
fn pt_churn() {
    for mode in GOOD {
        for size in [1, 40] {
            let [r] = run_ok(workload("pt-churn", 30, size), 1, mode)[..] else {
                panic!()
            };
            assert_eq!(r.ops, 30);
            // Setup: direct-map entry + 3 tables + `size` leaves; then 2 leaf writes per page.
            assert_eq!(r.pte_writes, 1 + 3 + size + 2 * size * 30);
            // 2 words per page after setup, protect and remap, plus the store check.
            assert_eq!(r.checks, 2 * size + 30 * 5 * size);
            if size <= crate::tlb::FLUSH_CEILING as u64 {
                assert_eq!((r.invlpgs, r.tlb_flushes), (2 * size * 30, 0));
            } else {
                assert_eq!((r.invlpgs, r.tlb_flushes), (0, 2 * 30));
            }
            assert_eq!(r.latency.count, 30);
        }
    }
}

#[test]
fn pt_churn_independent_on_each_vcpu() {
    let reports = run_ok(workload("pt-churn", 20, 16), 2, TlbMode::Real);
    for (id, r) in reports.iter().enumerate() {
        assert_eq!((r.vcpu, r.ops), (id, 20));
    }
}

#[test]
fn unsync_race_one_vcpu_uses_two_roots() {
    for mode in GOOD {
        let [r] = run_ok(workload("unsync-race", 50, 4), 1, mode)[..] else {
            panic!()
        };
        assert_eq!(r.ops, 50);
        // Setup: A's direct-map entry, 3 tables, 4 leaves; B: direct-map and the shared slot;
        // then 4 leaves per round.
        assert_eq!(r.pte_writes, 1 + 3 + 4 + 2 + 4 * 50);
        assert_eq!(r.cr3_loads, 1 + 2 * 50 + 1);
        assert_eq!(r.checks, 2 * 4 * (1 + 50));
    }
}

#[test]
fn unsync_race_multi_vcpu() {
    for vcpus in [2, 3] {
        for mode in GOOD {
            let reports = run_ok(workload("unsync-race", 200, 4), vcpus, mode);
            let leader = &reports[0];
            assert_eq!(leader.ops, 200);
            // Own slots after setup and each round, every writer slot each round.
            assert_eq!(
                leader.checks,
                2 * 4 * (1 + 200) + 2 * 4 * (vcpus as u64 - 1) * 200
            );
            // Two flushes per round: after its own writes and after the writers'.
            assert_eq!(leader.tlb_flushes, 2 * 200);
            for w in &reports[1..] {
                assert_eq!((w.ops, w.pte_writes, w.checks), (200, 4 * 200, 0));
            }
        }
    }
}

/// Rounds `1..=iters` of `relink-race` that link at a PDPT entry (`.0`) and that create a new
/// address space (`.1`).
fn relink_kinds(iters: u64) -> (u64, u64) {
    (
        (1..=iters).filter(|r| r % 3 == 1).count() as u64,
        (1..=iters).filter(|r| r % 3 == 2).count() as u64,
    )
}

#[test]
fn relink_race_one_vcpu_checks_across_address_spaces() {
    for mode in GOOD {
        for (iters, size) in [(100, 4), (10, 40)] {
            let [r] = run_ok(workload("relink-race", iters, size), 1, mode)[..] else {
                panic!()
            };
            let (pdpt_links, new_roots) = relink_kinds(iters);
            // Every page, both ends: "before" through the child root, "after" through A and
            // through the child root.
            assert_eq!(r.checks, 3 * 2 * size * iters);
            // Setup: A's direct-map entry, A -> PDPT -> D0, the first child root's two entries;
            // per round: a link and its unlink, a fill and an edit of every page; D1's entry
            // each PDPT round (its table changes), two entries per new child root.
            assert_eq!(
                r.pte_writes,
                5 + 2 * iters + 2 * size * iters + pdpt_links + 2 * new_roots
            );
            // Load A, then child root / A / child root / A each round, then the boot root.
            assert_eq!(r.cr3_loads, 2 + 4 * iters);
            // One flush per unlink; the edit's INVLPGs (a flush above 33 pages).
            if size <= crate::tlb::FLUSH_CEILING as u64 {
                assert_eq!((r.invlpgs, r.tlb_flushes), (size * iters, iters));
            } else {
                assert_eq!((r.invlpgs, r.tlb_flushes), (0, 2 * iters));
            }
            assert_eq!(r.latency.count, iters);
        }
    }
}

#[test]
fn relink_race_multi_vcpu() {
    const ITERS: u64 = 300;
    let (pdpt_links, new_roots) = relink_kinds(ITERS);
    for vcpus in [2, 3] {
        for mode in GOOD {
            let reports = run_ok(workload("relink-race", ITERS, 4), vcpus, mode);
            let parent = &reports[0];
            assert_eq!(parent.checks, 2 * 4 * ITERS);
            assert_eq!(
                parent.pte_writes,
                5 + 2 * ITERS + 2 * 4 * ITERS + pdpt_links + 2 * new_roots
            );
            assert_eq!((parent.cr3_loads, parent.tlb_flushes), (2, ITERS));
            assert_eq!(parent.invlpgs, 4 * ITERS);
            for c in &reports[1..] {
                // The racing reads (one word per page), then both ends after the shootdown.
                assert_eq!((c.ops, c.checks, c.pte_writes), (ITERS, 3 * 4 * ITERS, 0));
                // A CR3 load into each new root, else a flush for the unlink; INVLPG per page.
                assert_eq!(c.cr3_loads, 2 + new_roots);
                assert_eq!(c.tlb_flushes, ITERS - new_roots);
                assert_eq!(c.invlpgs, 4 * ITERS);
            }
        }
    }
}

#[test]
fn mmap_churn_frees_and_reuses_frames() {
    for mode in GOOD {
        // 4 MiB of RAM: ~900 frames. Without freeing, 300 iterations of 32 pages + 2 tables
        // would need ~10000.
        let m = Machine::new(4, 1);
        let r = m
            .run(workload("mmap-churn", 300, 32), mode)
            .pop()
            .unwrap()
            .unwrap();
        assert_eq!(r.ops, 300);
        assert_eq!(r.checks, 300 * 32 * 2);
        // One flush per munmap (tables were unlinked).
        assert_eq!(r.tlb_flushes, 300);
    }
}

#[test]
fn fault_storm() {
    for mode in GOOD {
        let [r] = run_ok(workload("fault-storm", 10, 100), 1, mode)[..] else {
            panic!()
        };
        assert_eq!(r.ops, 10 * 100);
        assert_eq!(r.latency.count, 10 * 100);
        // Per round: 100 maps and 100 unmaps; setup: direct-map entry + 3 tables.
        assert_eq!(r.pte_writes, 4 + 10 * 200);
        assert_eq!(r.tlb_flushes, 10);
        // A read touch checks 3 words, a store touch 1; both kinds happen.
        assert!(
            r.checks > 10 * 100 && r.checks < 3 * 10 * 100,
            "{}",
            r.checks
        );
    }
}

#[test]
fn exit_floor() {
    let m = Machine::new(4, 2);
    let reports: Vec<_> = m
        .run(workload("exit-floor", 1000, 0), TlbMode::None)
        .into_iter()
        .map(Result::unwrap)
        .collect();
    for r in &reports {
        assert_eq!(
            (r.ops, r.hypercalls, r.checks, r.latency.count),
            (1000, 1000, 1, 1000)
        );
    }
    assert_eq!(m.hypercalls(), 2000);

    // One latency sample per 64 hypercalls, the last batch partial.
    let m = Machine::new(4, 1);
    let r = m
        .run(workload("exit-floor", 1000, 64), TlbMode::None)
        .pop()
        .unwrap()
        .unwrap();
    assert_eq!(
        (r.ops, r.hypercalls, r.latency.count),
        (1000, 1000, 1000_u64.div_ceil(64))
    );
}

#[test]
fn every_workload_on_two_vcpus_and_merged_report() {
    for w in Workload::ALL {
        let p = w.params();
        let w = w.with_params(Params {
            iters: p.iters.min(20),
            ..p
        });
        let reports = run_ok(w, 2, TlbMode::Real);
        let mut total = reports[0];
        total.merge(&reports[1]);
        assert_eq!(total.ops, 2 * w.expected_ops(), "{}", w.name());
        assert_eq!(
            total.latency.count,
            reports[0].latency.count + reports[1].latency.count
        );
        assert_eq!(
            w.multi_vcpu(),
            ["unsync-race", "relink-race"].contains(&w.name())
        );
    }
}

#[test]
fn same_seed_same_guest_operations() {
    let a = run_ok(workload("mmap-churn", 50, 8), 1, TlbMode::None);
    let b = run_ok(workload("mmap-churn", 50, 8), 1, TlbMode::None);
    assert_eq!(
        (a[0].pte_writes, a[0].checks),
        (b[0].pte_writes, b[0].checks)
    );
}

#[test]
fn bad_params_are_errors() {
    let m = Machine::new(4, 1);
    for (name, size) in [
        ("cr3-switch", 1),
        ("cr3-switch", 65),
        ("pt-churn", 0),
        ("pt-churn", 4097),
        ("unsync-race", 0),
        ("unsync-race", 513),
        ("mmap-churn", 0),
        ("mmap-churn", 513),
        ("fault-storm", 0),
        ("fault-storm", 4097),
        ("relink-race", 0),
        ("relink-race", 513),
    ] {
        let w = workload(name, 1, size);
        let r = m.run(w, TlbMode::None).pop().unwrap();
        assert!(
            matches!(r, Err(WorkloadError::OutOfRange { param: "size", value, .. }) if value == size),
            "{name} size {size}: {r:?}"
        );
        // The VMM's check before boot is the same check.
        assert_eq!(Err(r.unwrap_err()), w.validate(1));
    }
    // 2 vCPUs x 300 slots do not fit one page table; 2 x 256 do.
    let m = Machine::new(4, 2);
    for r in m.run(workload("unsync-race", 1, 300), TlbMode::None) {
        assert!(
            matches!(
                r,
                Err(WorkloadError::OutOfRange {
                    param: "size",
                    max: 256,
                    ..
                })
            ),
            "{r:?}"
        );
    }
    assert_eq!(workload("unsync-race", 1, 256).validate(2), Ok(()));
    assert!(workload("unsync-race", 1, 257).validate(2).is_err());
    assert!(workload("pt-churn", 1, 64).validate(0).is_err());
}

#[test]
fn iters_are_bounded_by_the_work_of_a_run() {
    for w in Workload::ALL {
        let p = w.params();
        for bad in [0, u64::MAX, MAX_RUN_WORK + 1] {
            let r = w.with_params(Params { iters: bad, ..p }).validate(2);
            assert!(
                matches!(r, Err(WorkloadError::OutOfRange { param: "iters", min: 1, max, .. }) if max < bad || bad == 0),
                "{} iters {bad}: {r:?}",
                w.name()
            );
        }
        assert_eq!(w.validate(2), Ok(()), "{}: defaults are valid", w.name());
    }
    // The bound shrinks with the work of one iteration: 4 units per page for pt-churn.
    let big = workload("pt-churn", 1, 4096);
    let Err(WorkloadError::OutOfRange { max, .. }) = big
        .with_params(Params {
            iters: u64::MAX,
            ..big.params()
        })
        .validate(1)
    else {
        panic!()
    };
    assert_eq!(max, MAX_RUN_WORK / (4 * 4096));
    assert_eq!(
        big.with_params(Params {
            iters: max,
            ..big.params()
        })
        .validate(1),
        Ok(())
    );
    // An out-of-range iters on the guest side is the same error as before boot.
    let m = Machine::new(4, 1);
    let w = workload("exit-floor", 0, 1);
    assert_eq!(
        m.run(w, TlbMode::None).pop().unwrap().unwrap_err(),
        w.validate(1).unwrap_err()
    );
}

#[test]
fn frames_needed_suffice() {
    // Each workload with exactly `frames_needed` free frames per vCPU passes, on one vCPU and
    // on two, at several sizes (both sides of the table-page boundaries).
    for w in Workload::ALL {
        for size in [1, 2, 4, 40, 64, 200, 513, 4096] {
            for vcpus in [1, 2] {
                let w = w.with_params(params(3, size));
                if w.validate(vcpus).is_err() {
                    continue;
                }
                let need = w.frames_needed(vcpus);
                let m = Machine::new(256, vcpus).with_free_frames(need);
                for (id, r) in m.run(w, TlbMode::Real).into_iter().enumerate() {
                    let r = r.unwrap_or_else(|e| {
                        panic!(
                            "{} size {size} on {vcpus} vCPUs, {need} frames: vCPU {id}: {e}",
                            w.name()
                        )
                    });
                    assert_eq!(r.ops, w.expected_ops());
                }
            }
        }
    }
    // Where the count is exact, one frame fewer runs out.
    for (name, size) in [("pt-churn", 40), ("fault-storm", 600), ("cr3-switch", 8)] {
        let w = workload(name, 3, size);
        let m = Machine::new(64, 1).with_free_frames(w.frames_needed(1) - 1);
        assert_eq!(
            m.run(w, TlbMode::None).pop().unwrap(),
            Err(WorkloadError::PageTable(crate::error::PtError::OutOfFrames)),
            "{name}"
        );
    }
}

#[test]
fn out_of_frames_is_an_error() {
    // 1 MiB of RAM cannot hold 4096 pages twice.
    let m = Machine::new(1, 1);
    let r = m
        .run(workload("pt-churn", 1, 4096), TlbMode::None)
        .pop()
        .unwrap();
    assert_eq!(
        r,
        Err(WorkloadError::PageTable(crate::error::PtError::OutOfFrames))
    );
}

// The self-checks have teeth: CPUs that keep stale translations fail them.

#[test]
fn stale_tlb_fails_pt_churn() {
    for size in [4, 40] {
        let c = run_check_failed(
            workload("pt-churn", 5, size),
            1,
            TlbMode::IgnoreInvalidation,
        );
        assert!(c.what.starts_with("pt-churn read after"), "{c:?}");
        assert_ne!(c.expected, c.found);
    }
}

#[test]
fn stale_tlb_fails_unsync_race() {
    for vcpus in [2, 3] {
        let m = Machine::new(64, vcpus);
        let results = m.run(workload("unsync-race", 50, 4), TlbMode::IgnoreInvalidation);
        let Err(WorkloadError::Check(c)) = results[0] else {
            panic!("{results:?}")
        };
        assert!(c.what.starts_with("unsync-race"), "{c:?}");
        // The writers were released, not left spinning.
        for r in &results[1..] {
            assert_eq!(*r, Err(WorkloadError::PeerFailed));
        }
    }
    // One vCPU relies on the CR3 load, so it takes a CPU that ignores that too.
    let c = run_check_failed(workload("unsync-race", 50, 4), 1, TlbMode::IgnoreAll);
    assert!(c.what.starts_with("unsync-race"), "{c:?}");
}

#[test]
fn stale_tlb_fails_relink_race() {
    for vcpus in [2, 3] {
        let m = Machine::new(64, vcpus);
        let results = m.run(workload("relink-race", 200, 4), TlbMode::IgnoreInvalidation);
        let failed: Vec<CheckFailed> = results
            .iter()
            .filter_map(|r| match r {
                Err(WorkloadError::Check(c)) => Some(*c),
                _ => None,
            })
            .collect();
        assert!(!failed.is_empty(), "{results:?}");
        for c in &failed {
            assert!(c.what.starts_with("relink-race"), "{c:?}");
            assert_ne!(c.expected, c.found);
        }
        // Every vCPU stopped: with its own failed check, or released by the one that failed.
        for r in &results {
            assert!(
                matches!(r, Err(WorkloadError::Check(_) | WorkloadError::PeerFailed)),
                "{results:?}"
            );
        }
    }
    // One vCPU relies on its CR3 loads, so it takes a CPU that ignores those too.
    let c = run_check_failed(workload("relink-race", 50, 4), 1, TlbMode::IgnoreAll);
    assert!(c.what.starts_with("relink-race"), "{c:?}");
}

#[test]
fn stale_tlb_fails_cr3_switch() {
    let c = run_check_failed(workload("cr3-switch", 100, 8), 1, TlbMode::IgnoreAll);
    assert!(c.what.starts_with("cr3-switch"), "{c:?}");
}

#[test]
fn stale_tlb_fails_fault_storm_and_mmap_churn() {
    let c = run_check_failed(
        workload("fault-storm", 5, 16),
        1,
        TlbMode::IgnoreInvalidation,
    );
    assert!(c.what.starts_with("fault-storm"), "{c:?}");
    let c = run_check_failed(
        workload("mmap-churn", 100, 16),
        1,
        TlbMode::IgnoreInvalidation,
    );
    assert!(c.what.starts_with("mmap-churn"), "{c:?}");
}

#[test]
fn unsync_race_stress_oversubscribed() {
    // More vCPU threads than this machine's 2 cores: the barrier and the DONE hand-off under
    // preemption, over many rounds.
    let reports = run_ok(workload("unsync-race", 20_000, 8), 4, TlbMode::Real);
    assert_eq!(reports[0].checks, 2 * 8 * (1 + 20_000) + 2 * 8 * 3 * 20_000);
}
