//! Real guests on /dev/kvm, `native` mode: the guest runs on its own page tables.

mod common;

use shadowlab_workloads::Run;

use std::time::Duration;

use shadowlab_framework::kvm::{
    program, run_native, run_native_reports, FailureKind, FaultInjection, GuestParams, KvmError,
    RunConfig,
};

fn params(program: u64, iters: u64) -> GuestParams {
    GuestParams {
        program,
        iters,
        seed: 1,
        params: [0; 4],
    }
}

fn config(nr_vcpus: usize) -> RunConfig {
    RunConfig {
        nr_vcpus,
        timeout: Duration::from_secs(30),
        ..RunConfig::default()
    }
}

#[test]
fn nop_loop_runs_on_one_and_two_vcpus() {
    require_kvm!("nop_loop_runs_on_one_and_two_vcpus");
    for n in [1, 2] {
        let r = run_native(&config(n), &params(program::NOP_LOOP, 1000))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(r.vcpus.len(), n);
        for v in &r.vcpus {
            let d = v.outcome.as_ref().unwrap();
            assert_eq!(d.ops, 1000);
            assert_eq!(v.exits.nop, 1000, "every NOP is one exit");
            assert!(d.tsc_end > d.tsc_start);
        }
        assert_eq!(r.total_ops(), 1000 * n as u64);
        eprintln!(
            "native nop x{n}: {}",
            serde_json::to_string(&r.kvm_vcpu_stats.get("exits")).unwrap()
        );
    }
}

#[test]
fn sync_and_printf_reach_the_vmm() {
    require_kvm!("sync_and_printf_reach_the_vmm");
    let r =
        run_native(&config(2), &params(program::SYNC_PRINTF, 0)).unwrap_or_else(|e| panic!("{e}"));
    for v in &r.vcpus {
        assert_eq!(v.syncs, vec![(1, v.vcpu as u64), (2, 42)]);
        assert_eq!(v.prints, vec![format!("hello from vCPU {} of 2", v.vcpu)]);
        assert_eq!(v.outcome.as_ref().unwrap().ops, 3);
    }
}

#[test]
fn guest_assert_surfaces_with_file_line_and_message() {
    require_kvm!("guest_assert_surfaces_with_file_line_and_message");
    let err = run_native(&config(1), &params(program::ASSERT_FAIL, 0)).unwrap_err();
    let KvmError::GuestFailed { vcpu, failure } = &err else {
        panic!("wrong error: {err}")
    };
    assert_eq!(*vcpu, 0);
    match &failure.kind {
        FailureKind::Assert {
            file,
            line,
            message,
        } => {
            assert!(file.ends_with("programs.rs"), "file {file}");
            assert!(*line > 0);
            assert_eq!(message, "deliberate failure: 1 + 1 = 2, not 3");
        }
        other => panic!("expected an assert, got {other:?}"),
    }
    let text = err.to_string();
    assert!(
        text.contains("GUEST_ASSERT failed at") && text.contains("programs.rs:"),
        "{text}"
    );
    assert!(failure.regs.is_some(), "the report carries registers");
}

#[test]
fn triple_fault_is_reported_not_hung() {
    require_kvm!("triple_fault_is_reported_not_hung");
    // The guest cannot break the monitor's IDT from CPL3, so the test boots it without one.
    let cfg = RunConfig {
        inject: Some(FaultInjection::NoIdt),
        ..config(1)
    };
    let err = run_native(&cfg, &params(program::UD2, 0)).unwrap_err();
    let KvmError::GuestFailed { failure, .. } = &err else {
        panic!("wrong error: {err}")
    };
    assert_eq!(failure.kind, FailureKind::TripleFault, "{err}");
    let regs = failure.regs.as_ref().expect("registers");
    eprintln!("triple fault report: {err}");
    assert_ne!(regs.cr3, 0);
    assert!(err.to_string().contains("triple fault"));
}

#[test]
fn guest_exception_is_reported_with_its_vector() {
    require_kvm!("guest_exception_is_reported_with_its_vector");
    let err = run_native(&config(1), &params(program::UD2, 0)).unwrap_err();
    let KvmError::GuestFailed { failure, .. } = &err else {
        panic!("wrong error: {err}")
    };
    match &failure.kind {
        FailureKind::Exception { frame, .. } => {
            assert_eq!(frame.vector, 6, "#UD");
            assert_eq!(frame.cs & 3, 3, "raised at CPL3");
        }
        other => panic!("expected #UD, got {other:?}"),
    }
}

#[test]
fn bad_hypercall_arguments_fail_the_call_cleanly() {
    require_kvm!("bad_hypercall_arguments_fail_the_call_cleanly");
    let r = run_native(&config(1), &params(program::BAD_HYPERCALL, 0))
        .unwrap_or_else(|e| panic!("{e}"));
    let v = &r.vcpus[0];
    let checks = v.outcome.as_ref().unwrap().ops;
    assert_eq!(checks, 8, "every bad call was refused with a status");
    assert_eq!(v.exits.ucall_rejected, checks);
    assert_eq!(
        v.syncs,
        vec![(1, checks)],
        "a good call still works afterwards"
    );
}

#[test]
fn unhandled_page_fault_reports_cr2_and_error_code() {
    require_kvm!("unhandled_page_fault_reports_cr2_and_error_code");
    let err = run_native(&config(1), &params(program::PAGE_FAULT, 0)).unwrap_err();
    let KvmError::GuestFailed { failure, .. } = &err else {
        panic!("wrong error: {err}")
    };
    match &failure.kind {
        FailureKind::Exception { frame, cr2 } => {
            assert_eq!(frame.vector, 14);
            assert_eq!(*cr2, shadowlab_abi::layout::WORKLOAD_BASE);
            assert_eq!(frame.error_code & 1, 0, "not-present fault");
        }
        other => panic!("expected #PF, got {other:?}: {err}"),
    }
}

#[test]
fn the_watchdog_stops_a_spinning_guest() {
    require_kvm!("the_watchdog_stops_a_spinning_guest");
    let cfg = RunConfig {
        timeout: Duration::from_millis(300),
        ..config(2)
    };
    let r = run_native_reports(&cfg, &params(program::SPIN, 0)).unwrap();
    for v in &r.vcpus {
        match &v.outcome {
            Err(f) => assert_eq!(f.kind, FailureKind::Timeout { millis: 300 }),
            Ok(d) => panic!("spinning vCPU reported DONE: {d:?}"),
        }
        assert!(v.exits.kicked >= 1);
    }
}

/// Every workload of `shadowlab-workloads`, unchanged, on native with 1 and 2 vCPUs (with
/// reduced iterations: this is a correctness test, not a measurement).
#[test]
fn every_workload_runs_on_native_with_one_and_two_vcpus() {
    require_kvm!("every_workload_runs_on_native_with_one_and_two_vcpus");
    common::every_workload_on_one_and_two_vcpus(
        10,
        10,
        |w, n| run_native(&config(n), &GuestParams::workload(w)).map_err(|e| e.to_string()),
        |w, n, r| {
            eprintln!(
                "native {} x{n}: ops {} in {:.1} ms; kvm: {:?}",
                w.name(),
                r.total_ops(),
                r.elapsed_ns as f64 / 1e6,
                shadowlab_framework::kvm::stats::MMU_STATS
                    .iter()
                    .map(|k| (*k, r.kvm_vm_stats.get(*k).copied().unwrap_or(0)))
                    .collect::<Vec<_>>()
            );
        },
    );
}

/// Both hypercall paths work: port I/O (on this kind of host, a #GP the VMM emulates) and the
/// MMIO window, including the refusal of a bad message address (RAX = u32::MAX on each path).
#[test]
fn both_hypercall_paths_carry_ucalls_and_refusals() {
    require_kvm!("both_hypercall_paths_carry_ucalls_and_refusals");
    use shadowlab_framework::kvm::HypercallPath;
    for path in [HypercallPath::PortIo, HypercallPath::Mmio] {
        let cfg = RunConfig {
            hypercall: path,
            ..config(1)
        };
        let r = run_native(&cfg, &params(program::NOP_LOOP, 200))
            .unwrap_or_else(|e| panic!("{path:?}: {e}"));
        assert_eq!(r.vcpus[0].exits.nop, 200, "{path:?}");
        let r = run_native(&cfg, &params(program::BAD_HYPERCALL, 0))
            .unwrap_or_else(|e| panic!("{path:?}: {e}"));
        assert_eq!(r.vcpus[0].outcome.as_ref().unwrap().ops, 8, "{path:?}");
    }
}

/// Counts the flush-before-entry hook; everything else is native.
#[derive(Default)]
struct CountFlushes {
    flushes: std::sync::atomic::AtomicU64,
}

impl shadowlab_framework::kvm::MmuHooks for CountFlushes {
    fn page_fault(
        &self,
        v: usize,
        gva: u64,
        ec: u64,
    ) -> Result<shadowlab_framework::kvm::PfAction, shadowlab_framework::kvm::HookError> {
        shadowlab_framework::kvm::NativeMmu.page_fault(v, gva, ec)
    }
    fn load_cr3(
        &self,
        v: usize,
        root: u64,
    ) -> Result<Option<u64>, shadowlab_framework::kvm::HookError> {
        shadowlab_framework::kvm::NativeMmu.load_cr3(v, root)
    }
    fn invlpg(&self, v: usize, gva: u64) -> Result<bool, shadowlab_framework::kvm::HookError> {
        shadowlab_framework::kvm::NativeMmu.invlpg(v, gva)
    }
    fn flush_tlb(&self, v: usize) -> Result<bool, shadowlab_framework::kvm::HookError> {
        shadowlab_framework::kvm::NativeMmu.flush_tlb(v)
    }
    fn emulated_write(
        &self,
        v: usize,
        gpa: u64,
        value: u64,
        len: u8,
    ) -> Result<(), shadowlab_framework::kvm::HookError> {
        shadowlab_framework::kvm::NativeMmu.emulated_write(v, gpa, value, len)
    }
    fn flush_before_entry(
        &self,
        _v: usize,
    ) -> Result<Option<u64>, shadowlab_framework::kvm::HookError> {
        self.flushes
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Ok(None)
    }
}

/// A remote TLB-flush request reaches a vCPU that never exits on its own (it spins in the
/// guest): the kick forces it out of KVM_RUN and the flush hook runs before it re-enters.
/// Without the kick the request would wait forever and the count would stay 0.
#[test]
fn remote_flush_request_kicks_a_spinning_vcpu_and_runs_the_flush_hook() {
    require_kvm!("remote_flush_request_kicks_a_spinning_vcpu_and_runs_the_flush_hook");
    use shadowlab_framework::kvm::{
        make_all_cpus_request, new_kicks, run_native_with, REQ_TLB_FLUSH,
    };
    use std::sync::atomic::Ordering;
    let hooks = CountFlushes::default();
    let kicks = new_kicks(2);
    let cfg = RunConfig {
        timeout: Duration::from_millis(1500),
        ..config(2)
    };
    let r = std::thread::scope(|s| {
        s.spawn(|| {
            for _ in 0..10 {
                std::thread::sleep(Duration::from_millis(50));
                make_all_cpus_request(&kicks, REQ_TLB_FLUSH, None);
            }
        });
        run_native_with(&cfg, &params(program::SPIN, 0), &hooks, &kicks).unwrap()
    });
    let flushes = hooks.flushes.load(Ordering::SeqCst);
    let kicked: u64 = r.vcpus.iter().map(|v| v.exits.kicked).sum();
    eprintln!("remote flush: {flushes} flushes before entry, {kicked} kicked exits");
    assert!(
        flushes >= 2,
        "each spinning vCPU flushed at least once: {flushes}"
    );
    assert!(kicked >= 2);
    for v in &r.vcpus {
        assert!(matches!(
            v.outcome.as_ref().unwrap_err().kind,
            FailureKind::Timeout { .. }
        ));
    }
}
