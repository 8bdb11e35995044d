//! The `shadowlab-vmm` worker end to end on the sim backend: one JSON result per run, the
//! verdict and op count from the guest's own checks, one-line errors with exit code 2 for bad
//! arguments.

use std::process::{Command, Output};

/// Runs the worker; a build of the unsound control gets the flag that names it, as the driver
/// would pass it (its refusal without the flag is tested below).
fn worker(args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_shadowlab-vmm"));
    cmd.args(args);
    if UNSOUND_BUILD {
        cmd.arg("--allow-unsound");
    }
    cmd.output().expect("the worker runs")
}

const UNSOUND_BUILD: bool = matches!(
    shadowlab_framework::BUILD_POLICY.soundness,
    shadowlab_policies::Soundness::Unsound
);

#[test]
fn an_unsound_build_refuses_to_run_unless_the_flag_names_it() {
    let out = Command::new(env!("CARGO_BIN_EXE_shadowlab-vmm"))
        .args(["--workload", "exit-floor", "--iters", "10"])
        .output()
        .expect("the worker runs");
    if UNSOUND_BUILD {
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(
            stderr.contains("UNSOUND") && stderr.contains("--allow-unsound"),
            "{stderr}"
        );
        assert!(out.stdout.is_empty());
    } else {
        assert!(out.status.success());
    }
}

fn json(out: &Output) -> serde_json::Value {
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(stdout.lines().count(), 1, "one JSON line: {stdout}");
    serde_json::from_str(&stdout).expect("stdout is JSON")
}

#[test]
fn every_workload_passes_on_sim_with_its_op_count_and_counters() {
    for (w, vcpus) in [
        ("cr3-switch", "1"),
        ("pt-churn", "1"),
        ("unsync-race", "2"),
        ("mmap-churn", "1"),
        ("fault-storm", "2"),
        ("exit-floor", "1"),
        ("relink-race", "2"),
    ] {
        let out = worker(&[
            "--backend",
            "sim",
            "--workload",
            w,
            "--vcpus",
            vcpus,
            "--iters",
            "50",
            "--seed",
            "3",
        ]);
        assert!(
            out.status.success(),
            "{w}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let r = json(&out);
        assert_eq!(r["verdict"], "pass", "{w}: {r}");
        assert_eq!(r["workload"], w);
        assert_eq!(r["backend"], "sim");
        assert_eq!(r["policy"]["name"], shadowlab_framework::BUILD_POLICY.name);
        assert_eq!(r["vcpus"].as_u64(), Some(vcpus.parse::<u64>().unwrap()));
        assert_eq!(r["params"]["iters"], 50);
        assert_eq!(r["params"]["seed"], 3);
        assert!(r["ops"].as_u64().unwrap() > 0);
        assert_eq!(r["ops"], r["expected_ops"], "{w}");
        assert!(r["elapsed_ns"].as_u64().unwrap() > 0);
        assert_eq!(
            r["per_vcpu"].as_array().unwrap().len(),
            vcpus.parse::<usize>().unwrap()
        );
        let mmu = &r["mmu"];
        assert!(mmu["faults"].as_u64().unwrap() > 0, "{w}: {mmu}");
        assert!(mmu["lock"].is_object(), "{w}: lock stats: {mmu}");
    }
}

#[test]
fn the_paths_each_workload_exists_for_are_taken() {
    let stats = |w: &str, vcpus: &str| {
        let out = worker(&["--workload", w, "--vcpus", vcpus, "--iters", "100"]);
        assert!(out.status.success());
        json(&out)["mmu"].clone()
    };
    let cr3 = stats("cr3-switch", "1");
    // cr3-switch is the lockless fast path: a lockless policy skips the lock on (nearly) every
    // CR3 load; always-lock takes it every time.
    let skips = cr3["sync_roots_lockless_skips"].as_u64().unwrap();
    if shadowlab_framework::BUILD_POLICY.lockless {
        assert!(skips >= 100, "{cr3}");
    } else {
        assert_eq!(skips, 0, "{cr3}");
        let writes = cr3["lock"]["write_acquisitions"].as_u64().unwrap();
        assert!(writes >= cr3["sync_roots"].as_u64().unwrap(), "{cr3}");
    }
    assert_eq!(cr3["unsyncs"], 0, "{cr3}");
    let churn = stats("pt-churn", "1");
    assert!(churn["unsyncs"].as_u64().unwrap() >= 100, "{churn}");
    assert!(churn["pages_synced"].as_u64().unwrap() >= 100, "{churn}");
    let race = stats("unsync-race", "2");
    assert!(race["unsyncs"].as_u64().unwrap() > 0, "{race}");
    // relink-race links tables at new upper-level entries (emulated writes) and its flushes
    // and INVLPGs sync what the parent wrote.
    let relink = stats("relink-race", "2");
    assert!(
        relink["emulated_writes"].as_u64().unwrap() >= 100,
        "{relink}"
    );
    assert!(relink["syncs"].as_u64().unwrap() > 0, "{relink}");
    let mmap = stats("mmap-churn", "1");
    assert!(mmap["pages_zapped"].as_u64().unwrap() > 0, "{mmap}");
    assert!(mmap["emulated_writes"].as_u64().unwrap() > 0, "{mmap}");
}

#[test]
fn bad_arguments_are_one_line_errors_with_exit_code_2() {
    for args in [
        &["--workload", "no-such-workload"][..],
        &["--workload", "pt-churn", "--vcpus", "0"],
        &["--workload", "pt-churn", "--vcpus", "lots"],
        &["--workload", "pt-churn", "--backend", "xen"],
        &["--workload", "pt-churn", "--ram-mib", "1"],
        &["--backend", "sim"],
        &["--frobnicate"],
    ] {
        let out = worker(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        assert!(out.stdout.is_empty(), "{args:?}");
    }
}

#[test]
fn a_pool_too_small_for_the_roots_is_a_one_line_error_not_a_panic() {
    let out = worker(&[
        "--workload",
        "cr3-switch",
        "--vcpus",
        "8",
        "--pool-pages",
        "16",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn a_single_vcpu_run_is_deterministic_for_a_seed() {
    let run = |seed: &str| {
        let r = json(&worker(&[
            "--workload",
            "mmap-churn",
            "--iters",
            "40",
            "--seed",
            seed,
        ]));
        let mut mmu = r["mmu"].clone();
        // Wall-clock lock wait varies; everything counted must not.
        mmu.as_object_mut().unwrap().remove("lock");
        (mmu, r["per_vcpu"][0]["checks"].clone())
    };
    assert_eq!(run("11"), run("11"));
}

mod common;

#[test]
fn kvm_and_native_backends_run_workloads_with_kvm_stats_beside_ours() {
    require_kvm!("kvm_and_native_backends_run_workloads_with_kvm_stats_beside_ours");
    for backend in ["kvm", "native"] {
        for (w, vcpus) in [("pt-churn", "1"), ("unsync-race", "2")] {
            let out = worker(&[
                "--backend",
                backend,
                "--workload",
                w,
                "--vcpus",
                vcpus,
                "--iters",
                "20",
            ]);
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(out.status.success(), "{backend} {w}: {stderr}");
            let r = json(&out);
            assert_eq!(r["verdict"], "pass", "{backend} {w}: {r}");
            assert_eq!(r["backend"], backend);
            assert_eq!(r["ops"], r["expected_ops"]);
            let stats = &r["backend_stats"]["kvm_vm_stats"];
            for s in ["mmu_unsync", "mmu_pte_write", "mmu_shadow_zapped"] {
                assert!(stats[s].is_u64(), "{backend} {w}: no KVM stat {s}: {stats}");
            }
            // Our MMU's counters sit beside the host's on kvm; native has none of ours.
            if backend == "kvm" {
                assert!(r["mmu"]["faults"].as_u64().unwrap() > 0, "{r}");
            } else {
                assert!(r["mmu"].is_null(), "{r}");
            }
        }
    }
}

/// Runs the worker with `args`, which must be refused before any VM is built: exit 2, one line
/// on stderr containing every one of `needles`, nothing on stdout.
fn refused(args: &[&str], needles: &[&str]) {
    let out = worker(args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
    assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr}");
    assert!(stderr.starts_with("shadowlab-vmm: "), "{args:?}: {stderr}");
    for n in needles {
        assert!(stderr.contains(n), "{args:?}: no '{n}' in: {stderr}");
    }
    assert!(out.stdout.is_empty(), "{args:?}: no JSON result");
}

// The checks below run before /dev/kvm is opened, so they need no KVM: each is the same
// one-line refusal on every backend.
const BACKENDS: [&str; 3] = ["sim", "kvm", "native"];

#[test]
fn a_ram_size_kvm_cannot_lay_out_is_a_one_line_error() {
    // Odd MiB (2 MiB units), above the 2 GiB the layout reaches, and fine on sim.
    for ram in ["63", "4096"] {
        for backend in ["kvm", "native"] {
            refused(
                &[
                    "--backend",
                    backend,
                    "--workload",
                    "exit-floor",
                    "--ram-mib",
                    ram,
                ],
                &[&format!("--ram-mib {ram}"), "multiple of 2 in 4..=2048"],
            );
        }
    }
    let out = worker(&[
        "--workload",
        "exit-floor",
        "--iters",
        "10",
        "--ram-mib",
        "63",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_workload_size_out_of_range_is_refused_before_boot() {
    for backend in BACKENDS {
        refused(
            &[
                "--backend",
                backend,
                "--workload",
                "pt-churn",
                "--size",
                "100000",
            ],
            &["--size 100000", "1..=4096", "pt-churn"],
        );
        // Per vCPU count: 3 vCPUs share one page table's 512 slots.
        refused(
            &[
                "--backend",
                backend,
                "--workload",
                "unsync-race",
                "--vcpus",
                "3",
                "--size",
                "200",
            ],
            &["--size 200", "1..=170", "unsync-race"],
        );
    }
}

#[test]
fn iters_beyond_the_run_length_bound_are_refused_before_boot() {
    for backend in BACKENDS {
        refused(
            &[
                "--backend",
                backend,
                "--workload",
                "exit-floor",
                "--iters",
                "18446744073709551615",
            ],
            &[
                "--iters 18446744073709551615",
                "1..=1000000000",
                "exit-floor",
            ],
        );
        // The bound follows the work of one iteration: 4 units per page for pt-churn.
        refused(
            &[
                "--backend",
                backend,
                "--workload",
                "pt-churn",
                "--size",
                "1000",
                "--iters",
                "250001",
            ],
            &["--iters 250001", "1..=250000"],
        );
    }
}

#[test]
fn a_workload_that_needs_more_frames_than_the_ram_leaves_is_refused_before_boot() {
    // pt-churn --size 4096 needs two frames per page and its tables: 8203 frames per vCPU.
    for backend in BACKENDS {
        refused(
            &[
                "--backend",
                backend,
                "--workload",
                "pt-churn",
                "--size",
                "4096",
                "--ram-mib",
                "16",
            ],
            &["--size 4096", "needs 8203", "--ram-mib 16"],
        );
        // relink-race's parent needs 8 frames per page; 8 vCPUs split 32 MiB eight ways.
        refused(
            &[
                "--backend",
                backend,
                "--workload",
                "relink-race",
                "--size",
                "512",
                "--vcpus",
                "8",
                "--ram-mib",
                "32",
            ],
            &["--size 512", "needs 4106", "--vcpus 8"],
        );
    }
    // With the RAM it needs, the same size runs and passes.
    let out = worker(&[
        "--workload",
        "pt-churn",
        "--size",
        "4096",
        "--ram-mib",
        "34",
        "--iters",
        "2",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(json(&out)["verdict"], "pass");
}
