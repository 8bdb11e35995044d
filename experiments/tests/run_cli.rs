//! `shadowlab run`, `merge`, `compare` and `list` end to end, on tiny sim-only matrices with
//! the default-feature worker (rmb-fence) given with `--worker`, for the policy and for the
//! cross-layout arm, so that nothing is built. (That worker has the default layout, so here the
//! cross-layout arm is a second same-layout arm: the driver says so, and records pad 0.)

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn shadowlab() -> Command {
    Command::new(env!("CARGO_BIN_EXE_shadowlab"))
}

/// The rmb-fence worker cargo built beside the driver.
fn vmm() -> PathBuf {
    let w = Path::new(env!("CARGO_BIN_EXE_shadowlab")).with_file_name("shadowlab-vmm");
    assert!(w.exists(), "build the worker first: cargo build --release");
    w
}

/// `--worker` for `arm`: the worker beside the driver.
fn worker(arm: &str) -> String {
    format!("{arm}={}", vmm().display())
}

/// A tiny matrix: rmb-fence and its A/A arms, sim, `workloads` at 1 vCPU, `reps` blocks,
/// without the callgrind pass.
fn tiny(out: &Path, workloads: &str, reps: &str, extra: &[&str]) -> Command {
    let mut c = tiny_counted(out, workloads, reps, extra);
    c.arg("--no-callgrind");
    c
}

/// [`tiny`] with the callgrind pass.
fn tiny_counted(out: &Path, workloads: &str, reps: &str, extra: &[&str]) -> Command {
    let mut c = shadowlab();
    c.args([
        "run",
        "--policies",
        "rmb-fence",
        "--backends",
        "sim",
        "--workloads",
        workloads,
    ])
    .args([
        "--vcpus",
        "1",
        "--reps",
        reps,
        "--iters",
        "30",
        "--worker",
        &worker("rmb-fence"),
        "--worker",
        &worker("rmb-fence-xl"),
        "--out",
    ])
    .arg(out)
    .args(extra);
    c
}

fn text(o: &Output) -> String {
    format!(
        "{}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn manifest(dir: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("manifest.json")).unwrap()).unwrap()
}

/// The (block, arm, backend, workload, vcpus) of every samples.csv row, sorted.
fn cells(dir: &Path) -> Vec<String> {
    let mut r = csv::Reader::from_path(dir.join("samples.csv")).unwrap();
    let mut v: Vec<String> = r
        .records()
        .map(|rec| {
            let rec = rec.unwrap();
            assert_eq!(&rec[8], "pass", "{rec:?}");
            [0, 2, 4, 5, 6].map(|i| rec[i].to_string()).join(" ")
        })
        .collect();
    v.sort();
    v
}

#[test]
fn a_tiny_run_writes_manifest_samples_and_summary() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    let o = tiny(&out, "cr3-switch,pt-churn", "3", &[])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let m = manifest(&out);
    assert_eq!(m["status"], "complete");
    assert_eq!(m["matrix"]["reps"], 3);
    let bins = m["hosts"][0]["binaries"].as_array().unwrap();
    assert_eq!(bins.len(), 2, "rmb-fence and the cross-layout build");
    for bin in bins {
        assert_eq!(bin["policy"], "rmb-fence");
        assert_eq!(bin["sha256"].as_str().unwrap().len(), 64);
        assert_eq!(
            bin["layout_pad"], 0,
            "the worker beside the driver has no pad"
        );
    }
    assert_eq!(
        bins.iter().filter(|b| b["arm"] == "rmb-fence-xl").count(),
        1,
        "{bins:?}"
    );
    assert_eq!(m["matrix"]["cross_layout"], true);
    assert!(
        text(&o).contains("second same-layout floor"),
        "a cross-layout arm of the same layout is named: {}",
        text(&o)
    );
    assert!(!out.join("callgrind.json").exists(), "--no-callgrind");
    assert_eq!(m["source"]["commit"].as_str().unwrap().len(), 40);
    assert!(m["hosts"][0]["host"]["kernel"].is_string());
    // 2 workloads × 3 arms (rmb-fence, rmb-fence-aa, rmb-fence-xl) × 3 blocks, one vCPU each.
    assert_eq!(cells(&out).len(), 18);
    let s: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    assert_eq!(s["groups"].as_array().unwrap().len(), 2);
    let aa = &s["groups"][0]["cells"][1];
    assert_eq!(aa["arm"], "rmb-fence-aa");
    assert!(aa["ratio"]["ci"]["lo"].is_number(), "{aa}");
    assert!(aa["label"]["label"].is_string(), "{aa}");
    assert_eq!(s["groups"][0]["cells"][2]["arm"], "rmb-fence-xl");
    let g = &s["groups"][0];
    let (same, cross) = (
        g["aa_floor"]["floor"].as_f64().unwrap(),
        g["cross_layout_floor"]["floor"].as_f64().unwrap(),
    );
    assert_eq!(g["floor"].as_f64().unwrap(), same.max(cross), "{g}");
    // A run folder is never overwritten.
    let again = tiny(&out, "cr3-switch", "1", &[]).output().unwrap();
    assert_eq!(again.status.code(), Some(1), "{}", text(&again));
    assert!(text(&again).contains("exists already"));
    assert_eq!(
        manifest(&out)["matrix"]["reps"],
        3,
        "the first run is intact"
    );
}

#[test]
fn three_shards_merged_cover_exactly_the_unsharded_run() {
    let tmp = tempfile::tempdir().unwrap();
    let wl = "cr3-switch,pt-churn,unsync-race,exit-floor";
    let whole = tmp.path().join("whole");
    let o = tiny(&whole, wl, "2", &[]).output().unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let mut shards: Vec<PathBuf> = Vec::new();
    for k in 1..=3 {
        let d = tmp.path().join(format!("shard{k}"));
        let o = tiny(&d, wl, "2", &["--shard", &format!("{k}/3")])
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", text(&o));
        shards.push(d);
    }
    assert!(cells(&shards[0]).len() < cells(&whole).len());
    let merged = tmp.path().join("merged");
    let o = shadowlab()
        .arg("merge")
        .args(&shards)
        .arg("--out")
        .arg(&merged)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(cells(&merged), cells(&whole));
    let m = manifest(&merged);
    assert_eq!(
        m["hosts"].as_array().unwrap().len(),
        3,
        "each shard's host kept"
    );
    assert_eq!(m["shards"].as_array().unwrap().len(), 3);
    // A shard of another matrix is refused.
    let other = tmp.path().join("other");
    let o = tiny(&other, "cr3-switch", "2", &["--shard", "1/3"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let o = shadowlab()
        .arg("merge")
        .args([&shards[0], &other])
        .arg("--out")
        .arg(tmp.path().join("bad"))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("another matrix"), "{}", text(&o));
    assert!(!tmp.path().join("bad").exists());
    // A run compared with itself: every ratio is 1, nothing changed, exit 0.
    let o = shadowlab()
        .arg("compare")
        .args([&merged, &merged])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert_eq!(stdout.matches(" 1.000 [").count(), 12, "{stdout}");
    assert_eq!(stdout.matches("bounded").count(), 12, "{stdout}");
}

#[test]
fn ctrl_c_keeps_the_finished_repetitions_and_marks_the_run_interrupted() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    let child = tiny(&out, "cr3-switch,pt-churn", "200", &[])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    // Wait for the first sample row (the header plus one line).
    loop {
        let rows = std::fs::read_to_string(out.join("samples.csv"))
            .map(|s| s.lines().count())
            .unwrap_or(0);
        if rows >= 2 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "no sample appeared"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // SAFETY: kill(2) on the pid of a child we spawned and have not waited for.
    let rc = unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) };
    assert_eq!(rc, 0);
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(130), "{}", text(&o));
    let m = manifest(&out);
    assert_eq!(m["status"], "interrupted");
    assert!(m["hosts"][0]["ended"].is_string());
    let n = cells(&out).len();
    assert!((1..800).contains(&n), "{n} samples kept");
    let s: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    assert_eq!(s["status"], "interrupted");
    // compare and merge refuse an incomplete run.
    let o = shadowlab()
        .arg("compare")
        .args([&out, &out])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("incomplete"), "{}", text(&o));
}

#[test]
fn bad_input_is_a_one_line_error_and_writes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    let cases: &[(&[&str], i32, &str)] = &[
        (&["--workloads", "nope"], 2, "unknown workload 'nope'"),
        (
            &["--policies", "rmb-fence,nope"],
            2,
            "unknown policy 'nope'",
        ),
        (&["--backends", "tcg"], 2, "unknown backend 'tcg'"),
        (&["--preset", "huge"], 2, "unknown preset 'huge'"),
        (&["--vcpus", "0"], 2, "at least one vCPU"),
        (
            &["--backends", "kvm", "--vcpus", "100000"],
            2,
            "--vcpus 100000",
        ),
        (&["--policies", "no-barrier"], 2, "--with-unsound-control"),
        (&["--shard", "4/3"], 2, "K/N"),
    ];
    for (args, code, msg) in cases {
        let mut c = shadowlab();
        c.args(["run", "--iters", "10", "--reps", "1", "--out"])
            .arg(&out)
            .args(*args);
        let o = c.output().unwrap();
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(*code), "{args:?}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "{args:?}: {stderr}");
        assert!(stderr.contains(msg), "{args:?}: {stderr}");
        assert!(!out.exists(), "{args:?} wrote {}", out.display());
    }
    // A worker of the wrong policy: the error, and no folder left behind.
    let vmm = vmm();
    let mut c = shadowlab();
    c.args([
        "run",
        "--policies",
        "rmb-fence,always-lock",
        "--backends",
        "sim",
        "--reps",
        "1",
    ])
    .arg("--worker")
    .arg(format!("always-lock={}", vmm.display()))
    .arg("--worker")
    .arg(format!("rmb-fence={}", vmm.display()))
    .arg("--out")
    .arg(&out);
    let o = c.output().unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("not always-lock"), "{}", text(&o));
    assert!(!out.exists());
    // An unwritable output folder.
    let o = tiny(Path::new("/proc/shadowlab-run"), "cr3-switch", "1", &[])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("cannot create"),
        "{}",
        text(&o)
    );
    // compare and merge of a folder that is not a run, or a corrupt one.
    let junk = tmp.path().join("junk");
    std::fs::create_dir(&junk).unwrap();
    let o = shadowlab()
        .arg("compare")
        .args([&junk, &junk])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("not a readable shadowlab results folder"));
    std::fs::write(
        junk.join("manifest.json"),
        "{\"results_version\": 1, \"trunc",
    )
    .unwrap();
    let o = shadowlab()
        .args(["merge"])
        .arg(&junk)
        .arg("--out")
        .arg(tmp.path().join("m"))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("manifest.json"), "{}", text(&o));
    assert!(!tmp.path().join("m").exists());
}

/// The callgrind pass: shard 1 counts every sim workload of the whole matrix, the other shards
/// none, and merge carries shard 1's record. Both arms run the same binary here, so their
/// counts must be identical (a deterministic run).
#[test]
fn shard_one_counts_instructions_and_merge_carries_them() {
    let tmp = tempfile::tempdir().unwrap();
    let wl = "cr3-switch,unsync-race";
    let mut shards = Vec::new();
    for k in 1..=2 {
        let d = tmp.path().join(format!("shard{k}"));
        let o = tiny_counted(&d, wl, "1", &["--shard", &format!("{k}/2")])
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", text(&o));
        if k == 1 {
            assert!(text(&o).contains("callgrind") || text(&o).contains("instruction counts"));
        }
        shards.push(d);
    }
    assert!(
        !shards[1].join("callgrind.json").exists(),
        "only shard 1 counts"
    );
    let record = std::fs::read_to_string(shards[0].join("callgrind.json")).unwrap();
    let r: serde_json::Value = serde_json::from_str(&record).unwrap();
    assert_eq!(r["backend"], "sim");
    assert_eq!(r["vcpus"], 1);
    match r["valgrind"]["status"].as_str().unwrap() {
        "available" => {
            let entries = r["entries"].as_array().unwrap();
            // Both workloads of the matrix (shard 1 runs only cr3-switch), both builds.
            assert_eq!(entries.len(), 4, "{record}");
            for w in ["cr3-switch", "unsync-race"] {
                let of = |arm: &str| {
                    entries
                        .iter()
                        .find(|e| e["workload"] == w && e["arm"] == arm)
                        .unwrap_or_else(|| panic!("{w} {arm}: {record}"))
                };
                let (a, b) = (of("rmb-fence"), of("rmb-fence-xl"));
                assert_eq!(a["outcome"], "counted", "{record}");
                assert!(a["instructions"].as_u64().unwrap() > 0);
                assert_eq!(a["instructions"], b["instructions"], "{record}");
                assert_eq!(a["ops"], a["iters"], "{record}");
                assert_eq!(a["seed"], 1);
            }
        }
        "not-available" => {
            eprintln!("valgrind not available: the record says so");
            assert!(r["valgrind"]["reason"].is_string());
        }
        other => panic!("valgrind status {other}"),
    }
    let merged = tmp.path().join("merged");
    let o = shadowlab()
        .arg("merge")
        .args(&shards)
        .arg("--out")
        .arg(&merged)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let carried: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(merged.join("callgrind.json")).unwrap())
            .unwrap();
    assert_eq!(carried, r);
}

#[test]
fn list_names_every_preset_and_the_unsound_flag() {
    let o = shadowlab().arg("list").output().unwrap();
    assert!(o.status.success());
    let s = String::from_utf8_lossy(&o.stdout);
    for w in [
        "quick",
        "full",
        "cr3-switch",
        "no-barrier",
        "--with-unsound-control",
        "native",
        "rmb-fence-aa",
        "rmb-fence-xl",
    ] {
        assert!(s.contains(w), "{w}: {s}");
    }
}
