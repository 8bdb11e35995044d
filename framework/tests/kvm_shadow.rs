//! Real guests on /dev/kvm, `kvm` backend: CR3 always holds a shadow root of our MMU.

mod common;

use shadowlab_workloads::Run;

use std::time::Duration;

use shadowlab_abi::layout::WORKLOAD_BASE;
use shadowlab_framework::kvm::{
    program, run_kvm, run_kvm_reports, FailureKind, GuestParams, HostCoherence, HostCoherenceStats,
    RunConfig, RunResult,
};
use shadowlab_framework::BuildPolicy;

fn config(nr_vcpus: usize) -> RunConfig {
    RunConfig {
        nr_vcpus,
        timeout: Duration::from_secs(60),
        ..RunConfig::default()
    }
}

#[test]
fn builtin_programs_run_on_shadow_tables() {
    require_kvm!("builtin_programs_run_on_shadow_tables");
    let r = run_kvm(&config(1), &GuestParams::builtin(program::SYNC_PRINTF, 0))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        r.vcpus[0].prints,
        vec!["hello from vCPU 0 of 1".to_string()]
    );
    assert!(
        r.vcpus[0].exits.page_fault_fixed > 0,
        "the guest ran on shadow tables built by faults"
    );
    let r = run_kvm(&config(1), &GuestParams::builtin(program::NOP_LOOP, 100))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(r.vcpus[0].exits.nop, 100);
    eprintln!(
        "kvm nop: {:?} host flushes {:?}",
        r.vcpus[0].exits, r.host_flushes
    );
}

/// `Cpu::fetch` is a real call at CPL3 through a page the guest mapped, and the hardware,
/// walking our shadow tables, enforces what the guest's tables say: after the guest makes the
/// page NX (a read still works and caches the translation) the call takes #PF with P|U|I/D;
/// after it clears U, a read takes #PF with P|U. Fails if the shadow leaf never got NX or
/// always got U.
#[test]
fn a_user_call_runs_and_nx_and_u_of_the_shadow_leaf_are_enforced() {
    require_kvm!("a_user_call_runs_and_nx_and_u_of_the_shadow_leaf_are_enforced");
    // (case, SYNC values seen, #PF error code: P=1, U=4, I/D=16).
    for (case, syncs, error_code) in [
        (program::FETCH_NX, vec![1, 2], 0x15),
        (program::FETCH_SUPERVISOR, vec![1], 0x5),
    ] {
        let r = run_kvm_reports::<BuildPolicy>(
            &config(1),
            &GuestParams::builtin(program::FETCH_PROBE, case),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let v = &r.vcpus[0];
        let seen: Vec<u64> = v
            .syncs
            .iter()
            .filter(|s| s.0 == program::FETCH_STAGE)
            .map(|s| s.1)
            .collect();
        assert_eq!(seen, syncs, "case {case}: {:?}", v.outcome);
        match &v.outcome {
            Err(f) => match &f.kind {
                FailureKind::Exception { frame, cr2 } => {
                    assert_eq!(frame.vector, 14, "case {case}: {f}");
                    assert_eq!(*cr2, WORKLOAD_BASE, "case {case}: {f}");
                    assert_eq!(frame.error_code, error_code, "case {case}: {f}");
                }
                other => panic!("case {case}: expected #PF, got {other:?}"),
            },
            Ok(d) => panic!("case {case}: the permission was not enforced: DONE {d:?}"),
        }
        eprintln!(
            "kvm fetch probe case {case}: {:?}",
            v.outcome.as_ref().err()
        );
    }
}

/// Every workload, unchanged, on our shadow MMU (reduced iterations: correctness, not speed).
#[test]
fn every_workload_runs_on_the_shadow_mmu_with_one_and_two_vcpus() {
    require_kvm!("every_workload_runs_on_the_shadow_mmu_with_one_and_two_vcpus");
    common::every_workload_on_one_and_two_vcpus(
        20,
        5,
        |w, n| run_kvm(&config(n), &GuestParams::workload(w)).map_err(|e| e.to_string()),
        |w, n, r| {
            let faults: u64 = r.vcpus.iter().map(|v| v.exits.page_fault_fixed).sum();
            let emulated: u64 = r.vcpus.iter().map(|v| v.exits.emulated_write).sum();
            let hc = coherence(r);
            eprintln!(
                "kvm {} x{n}: ops {} in {:.1} ms; faults fixed {faults}, emulated writes {emulated}, host coherence {hc:?}",
                w.name(),
                r.total_ops(),
                r.elapsed_ns as f64 / 1e6,
            );
            // The default keeps the host coherent by replays alone, one (at least) per flush.
            assert_eq!(hc.mode, HostCoherence::Replay);
            assert_eq!(hc.slot_cycles, 0, "{}", w.name());
            assert!(hc.replay_runs >= hc.flushes, "{}: {hc:?}", w.name());
        },
    );
}

fn coherence(r: &RunResult) -> HostCoherenceStats {
    r.host_coherence
        .expect("the kvm backend reports its host coherence")
}

/// Each way of keeping the host coherent passes the workloads that change SPTEs the most
/// (pt-churn, mmap-churn: local flushes; unsync-race on two vCPUs: remote ones), and does
/// what it says: replays of single-SPTE stores only, of whole-page stores only, replays
/// entered by hand (saved and restored registers), and the memslot cycle.
#[test]
fn every_host_coherence_variant_keeps_the_workloads_correct() {
    require_kvm!("every_host_coherence_variant_keeps_the_workloads_correct");
    use shadowlab_workloads::{Params, Run, Workload};
    let variants: [(&str, RunConfig); 4] = [
        (
            "single-SPTE stores",
            RunConfig {
                replay_page_zap_min: usize::MAX,
                ..config(1)
            },
        ),
        (
            "whole-page stores",
            RunConfig {
                replay_page_zap_min: 1,
                ..config(1)
            },
        ),
        (
            "entered by hand",
            RunConfig {
                replay_by_hand: true,
                ..config(1)
            },
        ),
        (
            "memslot cycle",
            RunConfig {
                host_coherence: HostCoherence::CycleSlot,
                ..config(1)
            },
        ),
    ];
    for (name, n) in [("pt-churn", 1), ("mmap-churn", 1), ("unsync-race", 2)] {
        let w = Workload::from_name(name).unwrap();
        let w = w.with_params(Params {
            iters: 30,
            ..w.params()
        });
        for (what, cfg) in &variants {
            let cfg = RunConfig {
                nr_vcpus: n,
                ..cfg.clone()
            };
            let r = run_kvm(&cfg, &GuestParams::workload(&w))
                .unwrap_or_else(|e| panic!("{name} x{n}, {what}: {e}"));
            assert_eq!(r.total_ops(), w.expected_ops() * n as u64);
            let hc = coherence(&r);
            let by_hand: u64 = r.vcpus.iter().map(|v| v.exits.replay_by_hand).sum();
            eprintln!("{name} x{n}, {what}: {hc:?}, by hand {by_hand}");
            assert!(hc.flushes > 0, "{name}: no flush to keep coherent");
            match *what {
                "single-SPTE stores" => {
                    assert_eq!(hc.pages_replayed, 0);
                    assert_eq!(hc.replay_stores, hc.sptes_replayed);
                    assert!(hc.sptes_replayed > 0);
                }
                "whole-page stores" => {
                    assert!(hc.pages_replayed > 0);
                    assert_eq!(hc.replay_stores, hc.pages_replayed);
                }
                "entered by hand" => assert_eq!(by_hand, hc.replay_runs),
                _ => {
                    assert_eq!(hc.mode, HostCoherence::CycleSlot);
                    assert_eq!((hc.slot_cycles, hc.replay_runs), (hc.flushes, 0));
                }
            }
        }
    }
}

/// The flush before re-entry is what keeps translations coherent: with it skipped (no replay,
/// no memslot cycle), the workloads' self-checks catch a stale translation (pt-churn on one
/// vCPU: the local flush; unsync-race on two: the remote one). The same happens when the
/// replay routine runs without its SPTE stores (only its CR3 reload): the stores made in
/// guest context are what the host hears. With them, the same runs pass (tests above).
#[test]
fn without_the_flush_before_entry_a_stale_translation_is_caught() {
    require_kvm!("without_the_flush_before_entry_a_stale_translation_is_caught");
    use shadowlab_framework::kvm::{FailureKind, FaultInjection, KvmError};
    use shadowlab_workloads::{Params, Run, Workload};
    for inject in [
        FaultInjection::SkipHostFlush,
        FaultInjection::ReplayWithoutStores,
    ] {
        for (name, n) in [("pt-churn", 1), ("unsync-race", 2)] {
            let w = Workload::from_name(name).unwrap();
            let w = w.with_params(Params {
                iters: 50,
                ..w.params()
            });
            let cfg = RunConfig {
                inject: Some(inject),
                ..config(n)
            };
            let err = run_kvm(&cfg, &GuestParams::workload(&w)).expect_err(name);
            eprintln!("{name} x{n} with {inject:?}: {err}");
            let KvmError::GuestFailed { failure, .. } = &err else {
                panic!("{name}: wrong error: {err}")
            };
            match &failure.kind {
                FailureKind::Assert { message, .. } => {
                    assert!(message.contains("self-check failed"), "{message}")
                }
                other => panic!("{name}, {inject:?}: expected a failed self-check, got {other:?}"),
            }
        }
    }
}
