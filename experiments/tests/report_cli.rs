//! `shadowlab report` end to end: bad input is one line on stderr with a non-zero exit, and
//! nothing is written when a piece cannot be made.

use std::process::Command;

fn tmp(name: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!(
        "shadowlab-report-cli-{}-{name}",
        std::process::id()
    ))
}

#[test]
fn a_missing_policy_build_with_no_build_is_one_line_and_writes_nothing() {
    let workers = tmp("workers");
    let out = tmp("out");
    std::fs::create_dir_all(&workers).unwrap();
    let run = Command::new(env!("CARGO_BIN_EXE_shadowlab"))
        .args(["report", "--no-build", "--workers"])
        .arg(&workers)
        .arg("--out")
        .arg(&out)
        .output()
        .expect("shadowlab runs");
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with("shadowlab report: error: no acquire-load build at"),
        "{stderr}"
    );
    assert!(
        !out.exists(),
        "nothing may be written when a piece cannot be made"
    );
    std::fs::remove_dir_all(&workers).unwrap();
}

#[test]
fn a_worker_that_is_not_an_elf_is_one_line() {
    let workers = tmp("junk-workers");
    let dir = workers.join("acquire-load");
    std::fs::create_dir_all(&dir).unwrap();
    let bin = dir.join("shadowlab-vmm");
    // A script that claims the right policy but is no ELF binary.
    std::fs::write(&bin, "#!/bin/sh\necho 'policy: acquire-load'\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    let run = Command::new(env!("CARGO_BIN_EXE_shadowlab"))
        .args(["report", "--no-build", "--check", "--workers"])
        .arg(&workers)
        .output()
        .expect("shadowlab runs");
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("is not an ELF binary"), "{stderr}");
    std::fs::remove_dir_all(&workers).unwrap();
}

#[test]
fn a_run_folder_with_a_corrupt_count_is_one_line_and_writes_nothing() {
    // The committed run, copied, with its callgrind.json replaced by something that is not a
    // callgrind record.
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let source = std::fs::read_to_string(root.join("paper/generated/SOURCE")).unwrap();
    let committed = root.join(source.lines().next().unwrap().trim());
    let run = tmp("corrupt-count-run");
    let out = tmp("corrupt-count-out");
    std::fs::create_dir_all(&run).unwrap();
    for f in ["manifest.json", "samples.csv", "summary.json"] {
        std::fs::copy(committed.join(f), run.join(f)).unwrap();
    }
    std::fs::write(run.join("callgrind.json"), "{\"valgrind\": 3").unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_shadowlab"))
        .args(["report", "--no-build"])
        .arg(&run)
        .arg("--out")
        .arg(&out)
        .output()
        .expect("shadowlab runs");
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("callgrind.json"), "{stderr}");
    assert!(!out.exists());
    std::fs::remove_dir_all(&run).unwrap();
}

#[test]
fn an_unknown_option_is_exit_2() {
    let run = Command::new(env!("CARGO_BIN_EXE_shadowlab"))
        .args(["report", "--no-such-option"])
        .output()
        .expect("shadowlab runs");
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(2), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
}

#[test]
fn a_missing_run_folder_is_one_line_and_writes_nothing() {
    let out = tmp("run-out");
    let run = Command::new(env!("CARGO_BIN_EXE_shadowlab"))
        .args(["report", "--no-build", "--out"])
        .arg(&out)
        .arg("/nonexistent/bench-results/run")
        .output()
        .expect("shadowlab runs");
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with(
            "shadowlab report: error: cannot report on /nonexistent/bench-results/run: manifest.json:"
        ),
        "{stderr}"
    );
    assert!(!out.exists(), "nothing may be written");
}

/// A committed run folder (any under bench-results/), if there is one.
fn committed_run() -> Option<std::path::PathBuf> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../bench-results");
    let mut dirs: Vec<_> = std::fs::read_dir(root)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("summary.json").exists())
        .collect();
    dirs.sort();
    dirs.pop()
}

#[test]
fn a_readme_without_the_results_markers_is_one_line() {
    let Some(runs) = committed_run() else {
        println!("SKIPPED: no committed run under bench-results/");
        return;
    };
    let out = tmp("markers-out");
    let readme = tmp("README.md");
    std::fs::write(&readme, "# a README without the markers\n").unwrap();
    let run = Command::new(env!("CARGO_BIN_EXE_shadowlab"))
        .args(["report", "--no-build", "--out"])
        .arg(&out)
        .arg("--readme")
        .arg(&readme)
        .arg(&runs)
        .output()
        .expect("shadowlab runs");
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("has no section between <!-- generated:results -->"),
        "{stderr}"
    );
    assert!(!out.exists(), "nothing may be written");
    std::fs::remove_file(&readme).unwrap();
}
