//! Real guests on /dev/kvm, `kvm` backend: CR3 always holds a shadow root of our MMU.

mod common;

use std::time::Duration;

use shadowlab_framework::kvm::{program, run_kvm, GuestParams, RunConfig};

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

/// Every workload, unchanged, on our shadow MMU (reduced iterations: correctness, not speed).
#[test]
fn every_workload_runs_on_the_shadow_mmu_with_one_and_two_vcpus() {
    require_kvm!("every_workload_runs_on_the_shadow_mmu_with_one_and_two_vcpus");
    use shadowlab_workloads::{Params, Run, Workload};
    for w in Workload::ALL {
        let d = w.params();
        let w = w.with_params(Params {
            iters: (d.iters / 20).max(5),
            ..d
        });
        for n in [1, 2] {
            let r = run_kvm(&config(n), &GuestParams::workload(&w))
                .unwrap_or_else(|e| panic!("{} on {n} vCPUs: {e}", w.name()));
            let mut checks = 0;
            for v in &r.vcpus {
                let rep = v
                    .outcome
                    .as_ref()
                    .unwrap()
                    .report
                    .as_ref()
                    .expect("a workload report");
                assert_eq!(rep.ops, w.expected_ops(), "{} vCPU {}", w.name(), v.vcpu);
                checks += rep.checks;
            }
            let checks_nothing = w.name() == "exit-floor" || (w.name() == "unsync-race" && n == 1);
            assert!(
                checks > 0 || checks_nothing,
                "{} on {n} vCPUs checked nothing",
                w.name()
            );
            let faults: u64 = r.vcpus.iter().map(|v| v.exits.page_fault_fixed).sum();
            let emulated: u64 = r.vcpus.iter().map(|v| v.exits.emulated_write).sum();
            eprintln!(
                "kvm {} x{n}: ops {} in {:.1} ms; faults fixed {faults}, emulated writes {emulated}, host flushes {:?}",
                w.name(),
                r.total_ops(),
                r.elapsed_ns as f64 / 1e6,
                r.host_flushes
            );
        }
    }
}

/// The flush before re-entry is what keeps translations coherent: with it skipped, the
/// workloads' self-checks catch a stale translation (pt-churn on one vCPU: the local flush;
/// unsync-race on two: the remote one). With it, the same runs pass (test above).
#[test]
fn without_the_flush_before_entry_a_stale_translation_is_caught() {
    require_kvm!("without_the_flush_before_entry_a_stale_translation_is_caught");
    use shadowlab_framework::kvm::{FailureKind, FaultInjection, KvmError};
    use shadowlab_workloads::{Params, Run, Workload};
    for (name, n) in [("pt-churn", 1), ("unsync-race", 2)] {
        let w = Workload::from_name(name).unwrap();
        let w = w.with_params(Params {
            iters: 50,
            ..w.params()
        });
        let cfg = RunConfig {
            inject: Some(FaultInjection::SkipHostFlush),
            ..config(n)
        };
        let err = run_kvm(&cfg, &GuestParams::workload(&w)).expect_err(name);
        eprintln!("{name} x{n} without the flush: {err}");
        let KvmError::GuestFailed { failure, .. } = &err else {
            panic!("{name}: wrong error: {err}")
        };
        match &failure.kind {
            FailureKind::Assert { message, .. } => {
                assert!(message.contains("self-check failed"), "{message}")
            }
            other => panic!("{name}: expected a failed self-check, got {other:?}"),
        }
    }
}
