//! `shadowlab-vmm --version` names the policy the binary was built with.

use std::process::Command;

#[test]
fn version_names_the_build_policy() {
    let out = Command::new(env!("CARGO_BIN_EXE_shadowlab-vmm"))
        .arg("--version")
        .output()
        .expect("the worker runs");
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    let expected = format!("policy: {}", shadowlab_framework::BUILD_POLICY.name);
    assert!(
        stdout.lines().any(|l| l == expected),
        "no line `{expected}` in: {stdout}"
    );
    // The workspace's default build is KVM's current choice.
    if cfg!(feature = "policy-rmb-fence") {
        assert_eq!(shadowlab_framework::BUILD_POLICY.name, "rmb-fence");
    }
}

#[test]
fn unknown_argument_is_a_one_line_error_with_exit_code_2() {
    let out = Command::new(env!("CARGO_BIN_EXE_shadowlab-vmm"))
        .arg("--bogus")
        .output()
        .expect("the worker runs");
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("--bogus"), "{stderr}");
}
