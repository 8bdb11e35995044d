//! `shadowlab verify` end to end: the matrix is printed, with interleavings, and the exit code
//! says whether every verdict is the expected one.

use std::process::Command;

#[test]
fn verify_prints_the_expected_matrix_and_exits_zero() {
    let out = Command::new(env!("CARGO_BIN_EXE_shadowlab"))
        .arg("verify")
        .output()
        .expect("shadowlab runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let row = |name: &str| {
        stdout
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("no row for {name}:\n{stdout}"))
            .to_string()
    };
    let a = row("acquire-load");
    assert!(a.contains("VIOLATION") && a.contains("correct ("), "{a}");
    let n = row("no-barrier (UNSOUND control)");
    assert!(n.contains("VIOLATION") && n.contains("correct ("), "{n}");
    for p in ["rmb-fence", "always-lock", "seqcst-fence"] {
        let r = row(p);
        assert_eq!(r.matches("correct (").count(), 2, "{r}");
        assert!(!r.contains("VIOLATION"), "{r}");
    }
    assert_eq!(stdout.matches("first violating execution").count(), 2);
    assert!(stdout.contains("every verdict is the expected one"));
    assert!(stdout.contains("model-checked 10 cells with loom in"));
}

#[test]
fn bad_subcommand_is_an_error_not_a_panic() {
    let out = Command::new(env!("CARGO_BIN_EXE_shadowlab"))
        .arg("verfy")
        .output()
        .expect("shadowlab runs");
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("verfy"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn info_describes_the_host_and_what_it_lacks() {
    let out = Command::new(env!("CARGO_BIN_EXE_shadowlab"))
        .arg("info")
        .output()
        .expect("shadowlab runs");
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    for field in [
        "flavour:",
        "/dev/kvm:",
        "capabilities:",
        "perf:",
        "missing:",
    ] {
        assert!(stdout.contains(field), "no '{field}' in:\n{stdout}");
    }
    let json = Command::new(env!("CARGO_BIN_EXE_shadowlab"))
        .args(["info", "--json"])
        .output()
        .expect("shadowlab runs");
    assert!(json.status.success());
    let v: serde_json::Value = serde_json::from_slice(&json.stdout).expect("JSON");
    assert!(v.is_object(), "{v}");
}
