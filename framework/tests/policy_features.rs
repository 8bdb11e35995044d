//! Build-time policy selection: exactly one `policy-<name>` feature, or the build stops with a
//! `compile_error!` naming the features. These run `cargo check` on the framework in a separate
//! target directory, so they take a few seconds the first time.

use std::path::PathBuf;
use std::process::Command;

fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("framework/ has a parent")
        .to_path_buf()
}

/// `cargo check` of the framework library with the given feature arguments; returns (success,
/// stderr).
fn check_with(features: &[&str]) -> (bool, String) {
    let root = workspace_root();
    let out = Command::new(env!("CARGO"))
        .current_dir(&root)
        .args([
            "check",
            "--offline",
            "--quiet",
            "-p",
            "shadowlab-framework",
            "--lib",
        ])
        .args(features)
        .env("CARGO_TARGET_DIR", root.join("target/policy-feature-check"))
        .output()
        .expect("cargo runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn no_policy_feature_is_a_compile_error_naming_the_features() {
    let (ok, stderr) = check_with(&["--no-default-features"]);
    assert!(!ok, "the build must stop without a policy");
    assert!(
        stderr.contains("no shadow-sync policy selected"),
        "{stderr}"
    );
    for f in [
        "policy-acquire-load",
        "policy-rmb-fence",
        "policy-always-lock",
        "policy-seqcst-fence",
        "policy-no-barrier",
    ] {
        assert!(stderr.contains(f), "error does not name {f}: {stderr}");
    }
    assert!(
        !stderr.contains("error[E"),
        "cascading rustc errors: {stderr}"
    );
}

#[test]
fn two_policy_features_are_a_compile_error_naming_both() {
    // The default (policy-rmb-fence) plus another.
    let (ok, stderr) = check_with(&["--features", "policy-acquire-load"]);
    assert!(!ok, "the build must stop with two policies");
    assert!(
        stderr.contains("two shadow-sync policies selected")
            && stderr.contains("policy-acquire-load")
            && stderr.contains("policy-rmb-fence"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("error[E"),
        "cascading rustc errors: {stderr}"
    );
}

#[test]
fn each_single_policy_feature_builds() {
    for f in [
        "policy-acquire-load",
        "policy-always-lock",
        "policy-seqcst-fence",
        "policy-no-barrier",
    ] {
        let (ok, stderr) = check_with(&["--no-default-features", "--features", f]);
        assert!(ok, "{f} alone must build: {stderr}");
    }
}
