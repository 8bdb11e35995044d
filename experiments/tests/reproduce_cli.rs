//! `shadowlab reproduce` end to end, for what must fail before any build or run: bad arguments
//! and a run to compare with that is not one are one line on stderr with exit code 2, and
//! nothing is created.

use std::process::Command;

fn reproduce(args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_shadowlab"))
        .arg("reproduce")
        .args(args)
        .output()
        .expect("shadowlab runs");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn bad_arguments_are_one_line_with_exit_2() {
    let not_a_run = tempfile::tempdir().unwrap();
    let out = not_a_run.path().join("new-run");
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["--quik"], "--quik"),
        (vec!["--reps", "many"], "many"),
        (vec!["--shard", "1/2"], "--shard"),
        (
            vec!["--against", not_a_run.path().to_str().unwrap()],
            "not a readable shadowlab results folder",
        ),
        (
            vec!["--quick", "--workloads", "no-such-workload"],
            "unknown workload 'no-such-workload'",
        ),
        (vec!["--quick", "--backends", "xen"], "xen"),
        (vec!["--quick", "--reps", "0"], "--reps must be at least 1"),
        (vec!["--quick", "--policies", "no-barrier"], "UNSOUND"),
    ];
    for (args, names) in cases {
        let mut args = args.clone();
        let o = out.to_str().unwrap();
        args.extend(["--out", o]);
        let (code, stderr) = reproduce(&args);
        assert_eq!(code, Some(2), "{args:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr}");
        assert!(stderr.contains(names), "{args:?}: {stderr}");
        assert!(!out.exists(), "{args:?} created {}", out.display());
    }
}

#[test]
fn an_existing_out_folder_is_refused_before_anything_runs() {
    let dir = tempfile::tempdir().unwrap();
    let (code, stderr) = reproduce(&["--quick", "--out", dir.path().to_str().unwrap()]);
    assert_eq!(code, Some(1), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("exists already"), "{stderr}");
}
