//! Shared helpers of the KVM integration tests.

/// Returns `true` if /dev/kvm is usable. Otherwise prints ONE loud line to stderr and returns
/// `false`; the test must then return at once (it is skipped, loudly, never silently passed).
pub fn kvm_available(test: &str) -> bool {
    match shadowlab_framework::kvm::kvm_unavailable_reason() {
        None => true,
        Some(reason) => {
            eprintln!("SKIPPED: /dev/kvm not available: {reason} (test {test})");
            false
        }
    }
}

/// Skips the calling test (see [`kvm_available`]) when /dev/kvm is unusable.
#[macro_export]
macro_rules! require_kvm {
    ($name:expr) => {
        if !common::kvm_available($name) {
            return;
        }
    };
}

use shadowlab_framework::kvm::RunResult;
use shadowlab_workloads::{Params, Run, Workload};

/// Runs every workload of `shadowlab-workloads`, unchanged, on 1 and 2 vCPUs with `iters`
/// reduced to `1/divisor` of the default (at least `min`: a correctness test, not a
/// measurement), through `run`; asserts each vCPU's op count and that the run checked
/// something, then hands the result to `after` for the backend's own assertions.
#[allow(dead_code)] // each test binary includes `common`; not all of them use this
pub fn every_workload_on_one_and_two_vcpus(
    divisor: u64,
    min: u64,
    run: impl Fn(&Workload, usize) -> Result<RunResult, String>,
    mut after: impl FnMut(&Workload, usize, &RunResult),
) {
    for w in Workload::ALL {
        let d = w.params();
        let w = w.with_params(Params {
            iters: (d.iters / divisor).max(min),
            ..d
        });
        for n in [1, 2] {
            let r = run(&w, n).unwrap_or_else(|e| panic!("{} on {n} vCPUs: {e}", w.name()));
            let mut checks = 0;
            for v in &r.vcpus {
                let done = v.outcome.as_ref().expect("every vCPU reported DONE");
                let rep = done.report.as_ref().expect("a workload report");
                assert_eq!(rep.ops, w.expected_ops(), "{} vCPU {}", w.name(), v.vcpu);
                checks += rep.checks;
                // The latency histogram crossed the ucall ABI whole: its buckets hold every
                // sample, and its quantiles lie between the exact min and max.
                let lat = rep.latency;
                assert!(
                    lat.count > 0,
                    "{} vCPU {}: no latency samples",
                    w.name(),
                    v.vcpu
                );
                assert_eq!(
                    lat.buckets.iter().sum::<u64>(),
                    lat.count,
                    "{} vCPU {}: latency buckets",
                    w.name(),
                    v.vcpu
                );
                for p in [0, 500, 990, 1000] {
                    let q = lat.percentile(p).expect("samples");
                    assert!(lat.min <= q && q <= lat.max, "{} p{p} {q}", w.name());
                }
            }
            // exit-floor reads nothing back; unsync-race on one vCPU has no reader.
            let checks_nothing = w.name() == "exit-floor" || (w.name() == "unsync-race" && n == 1);
            assert!(
                checks > 0 || checks_nothing,
                "{} on {n} vCPUs checked nothing",
                w.name()
            );
            after(&w, n, &r);
        }
    }
}
