//! The run-based pieces made from a small synthetic run (see [`super::synthetic`]).

use std::path::PathBuf;

use super::synthetic::write_run;
use super::*;

fn run(xl: bool, task_clock: bool) -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("20990101T000000Z-synthetic");
    write_run(&dir, "20990101T000000Z-synthetic", xl, task_clock);
    (tmp, dir)
}

fn text(pieces: &[Piece], name: &str) -> String {
    String::from_utf8(
        pieces
            .iter()
            .find(|p| p.name == name)
            .unwrap()
            .bytes
            .clone(),
    )
    .unwrap()
}

#[test]
fn cost_table_shows_floor_labels_and_intervals() {
    let (_t, dir) = run(false, true);
    let input = RunInput::load(&[dir]).unwrap();
    let md = tables::cost_markdown(&input);
    assert!(md.contains("## sim cr3-switch, 2 vCPUs"), "{md}");
    assert!(md.contains("A/A floor ±"), "{md}");
    assert!(
        !md.contains("cross-layout"),
        "no xl arm, no cross-layout floor: {md}"
    );
    let always = md
        .lines()
        .find(|l| l.starts_with("| `always-lock`"))
        .unwrap();
    assert!(always.contains("| resolved 1.5"), "{always}");
    let acquire = md
        .lines()
        .find(|l| l.starts_with("| `acquire-load`"))
        .unwrap();
    assert!(acquire.contains("| bounded \\|Δ\\| < "), "{acquire}");
    assert!(md.contains("| `rmb-fence` | 4/4 |"), "{md}");
    assert!(
        md.contains("| `native` | 4/4 |") && md.contains("host reference"),
        "{md}"
    );
    let tex = tables::cost_latex(&input);
    assert!(
        tex.contains("\\toprule") && tex.contains("\\bottomrule"),
        "{tex}"
    );
    assert!(tex.contains("resolved $1.5"), "{tex}");
    assert!(tex.contains("bounded $|\\Delta| <"), "{tex}");
    assert!(tex.contains("A/A floor $\\pm$"), "{tex}");
    let readme = tables::readme_markdown(&input);
    assert!(readme.contains("`always-lock` vs `rmb-fence`"), "{readme}");
    assert!(
        !readme.contains("`rmb-fence-aa` vs"),
        "controls left out: {readme}"
    );
    assert!(!readme.contains("| native |"), "{readme}");
}

#[test]
fn a_cross_layout_arm_gives_a_second_floor() {
    let (_t, dir) = run(true, true);
    let input = RunInput::load(&[dir]).unwrap();
    let md = tables::cost_markdown(&input);
    assert!(md.contains("(cross-layout)"), "{md}");
    assert!(md.contains("cross-layout A/A: bounded"), "{md}");
    let svg = figures::cost_svg(&input).unwrap();
    assert!(
        svg.contains("A/A floor, cross-layout"),
        "legend names the band"
    );
}

#[test]
fn perf_stat_says_not_supported_and_gives_each_block() {
    let (_t, dir) = run(false, true);
    let input = RunInput::load(&[dir]).unwrap();
    let md = perf_stat::markdown(&input);
    let kvm = md
        .split("## ")
        .find(|s| s.starts_with("kvm cr3-switch, 1 vCPU — `always-lock`"))
        .unwrap();
    assert!(kvm.contains("<not supported>      cycles"), "{kvm}");
    // task-clock: 1,000,000 ns over 1,000 ops, counted all the time.
    assert!(kvm.contains("1,000,000      task-clock (ns)"), "{kvm}");
    assert!(kvm.contains("1,000 per op   (100.0%)"), "{kvm}");
    // page-faults ran half the time it was enabled.
    assert!(kvm.contains("(50.0%)"), "{kvm}");
    assert!(kvm.contains("KVM binary stats"), "{kvm}");
    assert!(kvm.contains("kvm_vm_stats.mmu_unsync"), "{kvm}");
    assert!(
        !kvm.contains("pages_2m"),
        "zero KVM stats are left out: {kvm}"
    );
    assert!(
        kvm.contains("mmu.faults") && kvm.contains("zero: "),
        "{kvm}"
    );
    // Two vCPUs: summed over the vCPU threads.
    let sim2 = md
        .split("## ")
        .find(|s| s.starts_with("sim cr3-switch, 2 vCPUs — `rmb-fence`"))
        .unwrap();
    assert!(sim2.contains("2,000,000      task-clock (ns)"), "{sim2}");
    let tex = perf_stat::latex(&input);
    assert!(
        tex.contains("\\textless{}not supported\\textgreater{} on this host: \\texttt{cycles}"),
        "{tex}"
    );
}

#[test]
fn lock_wait_share_uses_task_clock_or_says_it_did_not() {
    let (_t, dir) = run(false, true);
    let input = RunInput::load(&[dir]).unwrap();
    let rows = lock_wait::rows(&input);
    let al = rows
        .iter()
        .find(|r| r.arm == "always-lock" && r.group == "sim cr3-switch, 1 vCPU")
        .unwrap();
    // 300 µs of waiting over 1 ms of task-clock.
    assert!((al.share.unwrap().value - 0.3).abs() < 1e-9, "{al:?}");
    assert_eq!(al.denominator, lock_wait::Denominator::TaskClock);
    let rb = rows.iter().find(|r| r.arm == "rmb-fence").unwrap();
    assert_eq!(rb.share.unwrap().value, 0.0);
    assert!(lock_wait::markdown(&rows).contains("| 30.0% [30.0%, 30.0%] | task-clock |"));

    let (_t2, dir) = run(false, false);
    let rows = lock_wait::rows(&RunInput::load(&[dir]).unwrap());
    let al = rows.iter().find(|r| r.arm == "always-lock").unwrap();
    assert_eq!(al.denominator, lock_wait::Denominator::Elapsed);
    // 300 µs over 2 ms elapsed × 1 vCPU.
    assert!((al.share.unwrap().value - 0.15).abs() < 1e-9, "{al:?}");
    assert!(lock_wait::svg(&rows).unwrap().contains("elapsed x vCPUs"));
}

#[test]
fn ours_against_native_pairs_kvm_with_native_by_block() {
    let (_t, dir) = run(false, true);
    let rows = native::rows(&RunInput::load(&[dir]).unwrap());
    let names: Vec<&str> = rows.iter().map(|r| r.arm.as_str()).collect();
    assert_eq!(names, ["rmb-fence", "acquire-load", "always-lock"]);
    let r = &rows[0];
    assert_eq!(r.workload, "cr3-switch, 1 vCPU");
    let ratio = r.ratio.unwrap().value;
    assert!((2.4..2.6).contains(&ratio), "100/40 per op: {ratio}");
    assert!(native::markdown(&rows).contains("| cr3-switch, 1 vCPU | `rmb-fence` |"));
}

#[test]
fn pieces_are_deterministic_and_every_figure_is_svg() {
    let (_t, dir) = run(true, true);
    let input = RunInput::load(std::slice::from_ref(&dir)).unwrap();
    let sources = vec!["bench-results/x".to_string()];
    let a = pieces(&input, &sources).unwrap();
    let b = pieces(&RunInput::load(&[dir]).unwrap(), &sources).unwrap();
    assert_eq!(a, b, "two renders are byte-equal");
    let names: Vec<&str> = a.iter().map(|p| p.name).collect();
    for n in RUN_PIECE_NAMES {
        assert!(names.contains(&n), "{n}");
    }
    assert_eq!(text(&a, SOURCE), "bench-results/x\n");
    for n in RUN_PIECE_NAMES.iter().filter(|n| n.ends_with(".svg")) {
        let t = text(&a, n);
        assert!(
            t.starts_with("<svg") && t.trim_end().ends_with("</svg>"),
            "{n}"
        );
    }
    assert!(text(&a, "scaling-vcpus.svg").contains("sim cr3-switch"));
    assert!(text(&a, "cost-per-policy.svg").contains("kvm cr3-switch, 1 vCPU"));
}

#[test]
fn bad_run_folders_are_one_line_errors() {
    let e = RunInput::load(&[PathBuf::from("/nonexistent/run")]).unwrap_err();
    assert!(matches!(e, ReportError::BadRun { .. }), "{e}");
    assert!(
        e.to_string()
            .starts_with("cannot report on /nonexistent/run: "),
        "{e}"
    );
    assert_eq!(e.to_string().lines().count(), 1);
    let (_t, dir) = run(false, true);
    std::fs::write(dir.join(crate::results::SUMMARY), "{").unwrap();
    let e = RunInput::load(&[dir]).unwrap_err();
    assert!(e.to_string().contains("summary.json"), "{e}");
    let (_t1, a) = run(false, true);
    let (_t2, b) = run(false, true);
    let e = RunInput::load(&[a, b]).unwrap_err();
    assert!(matches!(e, ReportError::DuplicateGroup { .. }), "{e}");
    assert_eq!(e.to_string().lines().count(), 1);
}

#[test]
fn source_names_are_relative_to_the_root_and_read_back() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let run = root.join("bench-results/r1");
    std::fs::create_dir_all(&run).unwrap();
    assert_eq!(source_name(root, &run), "bench-results/r1");
    let out = root.join("paper/generated");
    std::fs::create_dir_all(&out).unwrap();
    assert!(committed_sources(root, &out).unwrap().is_empty());
    std::fs::write(out.join(SOURCE), "bench-results/r1\n").unwrap();
    assert_eq!(committed_sources(root, &out).unwrap(), vec![run]);
}
