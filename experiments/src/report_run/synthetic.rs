//! A small synthetic run for the tests: a manifest, samples and summary written with the
//! results folder's own writers, with known per-op values, so that each table's content can
//! be checked (a resolved and a bounded policy, the A/A floor, a counter the host could not
//! count, lock waits only under `always-lock`, a `native` group beside `kvm`).

use std::collections::BTreeMap;
use std::path::Path;

use shadowlab_schema::Backend;

use crate::build::SourceState;
use crate::matrix::{Cell, Group, MatrixSpec};
use crate::results::{self, Manifest, Outcome, Sample, SampleKey, Status};
use crate::summary::summarise;

/// Blocks in the synthetic run.
pub const BLOCKS: u32 = 4;

/// The per-op value of `arm` in block `b` (baseline 100; always-lock 150, resolved;
/// acquire-load and the A/A arms within 1%, bounded).
fn per_op(arm: &str, backend: Backend, b: u32) -> f64 {
    let base = match backend {
        Backend::Native => 40.0,
        _ => 100.0,
    };
    let (k, shift) = match arm {
        "always-lock" => (1.5, 1),
        "acquire-load" => (1.002, 2),
        "rmb-fence-aa" => (1.001, 3),
        "rmb-fence-xl" => (0.998, 1),
        _ => (1.0, 0),
    };
    // Each arm's own noise, a few percent, so that ratios have intervals of some width.
    let noise = [0.0, 0.02, -0.015, 0.01][(b as usize + shift) % 4];
    base * k * (1.0 + 0.01 * b as f64) * (1.0 + noise)
}

fn sample(cell: &Cell, b: u32, vcpu: u32, task_clock_counted: bool) -> Sample {
    let arm = cell.arm.as_str();
    let v = per_op(arm, cell.group.backend, b);
    let ops = 1000 * cell.group.vcpus;
    let mut c: BTreeMap<String, String> = BTreeMap::new();
    let mut put = |k: &str, v: String| {
        c.insert(k.to_string(), v);
    };
    put("result.ops", ops.to_string());
    put("result.elapsed_ns", "2000000".into());
    let wait = if arm == "always-lock" { 300_000 } else { 0 };
    put("mmu.lock.read_wait_ns", "0".into());
    put("mmu.lock.write_wait_ns", wait.to_string());
    put("mmu.faults", "42".into());
    put("mmu.recycled", "0".into());
    if cell.group.backend != Backend::Sim {
        put("backend.kvm_vm_stats.mmu_unsync", "7".into());
        put("backend.kvm_vm_stats.pages_2m", "0".into());
        put("backend.kvm_vcpu_stats.exits", "900".into());
    }
    if task_clock_counted {
        put("vcpu.perf.task_clock_ns.status", "counted".into());
        put("vcpu.perf.task_clock_ns.value", "1000000".into());
        put("vcpu.perf.task_clock_ns.time_enabled_ns", "1000000".into());
        put("vcpu.perf.task_clock_ns.time_running_ns", "1000000".into());
    } else {
        put("vcpu.perf.task_clock_ns.status", "not-supported".into());
        put("vcpu.perf.task_clock_ns.reason", "no task clock".into());
    }
    put("vcpu.perf.page_faults.status", "counted".into());
    put("vcpu.perf.page_faults.value", "500".into());
    put("vcpu.perf.page_faults.time_enabled_ns", "1000".into());
    put("vcpu.perf.page_faults.time_running_ns", "500".into());
    put("vcpu.perf.cycles.status", "not-supported".into());
    put(
        "vcpu.perf.cycles.reason",
        "No such file or directory (os error 2)".into(),
    );
    Sample {
        key: SampleKey {
            block: b,
            seq: 0,
            arm: arm.into(),
            policy: crate::matrix::binary_policy(arm).into(),
            backend: cell.group.backend,
            workload: cell.group.workload.clone(),
            vcpus: cell.group.vcpus,
            vcpu: Some(vcpu),
            outcome: Outcome::Pass,
            reason: String::new(),
            per_op: Some(v),
            unit: if cell.group.backend == Backend::Sim {
                "ns".into()
            } else {
                "tsc".into()
            },
        },
        counters: c,
    }
}

/// The synthetic samples: sim cr3-switch with 1 and 2 vCPUs, kvm and native cr3-switch with 1;
/// arms rmb-fence, acquire-load, always-lock, rmb-fence-aa (and rmb-fence-xl with `xl`).
pub fn samples(xl: bool, task_clock_counted: bool) -> Vec<Sample> {
    let mut arms = vec!["rmb-fence", "acquire-load", "always-lock", "rmb-fence-aa"];
    if xl {
        arms.push("rmb-fence-xl");
    }
    let groups = [
        (Backend::Sim, 1),
        (Backend::Sim, 2),
        (Backend::Kvm, 1),
        (Backend::Native, 1),
    ];
    let mut out = Vec::new();
    for b in 0..BLOCKS {
        for (backend, vcpus) in groups {
            let group = Group {
                backend,
                workload: "cr3-switch".into(),
                vcpus,
            };
            let names: Vec<&str> = if backend == Backend::Native {
                vec!["native"]
            } else {
                arms.clone()
            };
            for arm in names {
                let cell = Cell {
                    group: group.clone(),
                    arm: arm.into(),
                };
                for v in 0..vcpus {
                    out.push(sample(&cell, b, v, task_clock_counted));
                }
            }
        }
    }
    out
}

/// Writes the synthetic run into `dir` (created) with the results folder's writers.
pub fn write_run(dir: &Path, id: &str, xl: bool, task_clock_counted: bool) {
    std::fs::create_dir_all(dir).unwrap();
    let samples = samples(xl, task_clock_counted);
    let manifest = Manifest {
        results_version: results::RESULTS_VERSION,
        worker_schema_version: 1,
        run_id: id.into(),
        source: SourceState {
            commit: "0".repeat(40),
            dirty: false,
            dirty_hash: "clean".into(),
        },
        preset: "custom".into(),
        matrix: MatrixSpec {
            policies: vec!["rmb-fence".into()],
            groups: vec![],
            iters: vec![],
            reps: BLOCKS,
            seed: 1,
            pin: true,
            cross_layout: false,
        },
        shards: vec![],
        hosts: vec![],
        status: Status::Complete,
    };
    results::write_json(dir, results::MANIFEST, &manifest).unwrap();
    results::write_atomic(
        dir,
        results::SAMPLES,
        &results::samples_csv(&samples).unwrap(),
    )
    .unwrap();
    let summary = summarise(&samples, Status::Complete, 1);
    results::write_json(dir, results::SUMMARY, &summary).unwrap();
}
