//! The worker reports its layout pad and, with `--pin`, where its vCPU threads ran.

use std::process::Command;

use serde_json::Value;

fn worker(args: &[&str]) -> (String, Value) {
    let out = Command::new(env!("CARGO_BIN_EXE_shadowlab-vmm"))
        .args(args)
        .output()
        .expect("the worker runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let json = serde_json::from_str(&stdout).unwrap_or(Value::Null);
    (stdout, json)
}

/// `--version` prints the padding the binary holds, measured between its symbols, and it is
/// the pad the build asked for; the JSON result carries the same number.
#[test]
fn version_and_result_report_the_layout_pad() {
    let pad = shadowlab_framework::layout::LAYOUT_PAD;
    let (version, _) = worker(&["--version"]);
    let expected = format!("layout-pad: {pad}");
    assert!(
        version.lines().any(|l| l == expected),
        "no `{expected}` in: {version}"
    );
    let (_, result) = worker(&["--workload", "cr3-switch", "--iters", "50"]);
    assert_eq!(result["layout_pad"], Value::from(pad));
    assert_eq!(result["pinning"], Value::Null, "not pinned without --pin");
}

/// `--pin`: every vCPU on a CPU the process may use, one each where there are enough, shared
/// (and `oversubscribed`) where there are not.
#[test]
fn pin_records_each_vcpu_cpu_and_oversubscription() {
    let allowed = shadowlab_framework::pin::allowed_cpus().unwrap();
    for vcpus in [1, allowed.len() + 1] {
        let n = vcpus.to_string();
        let (_, r) = worker(&[
            "--workload",
            "cr3-switch",
            "--iters",
            "50",
            "--vcpus",
            &n,
            "--pin",
        ]);
        assert_eq!(r["verdict"], "pass");
        let p = &r["pinning"];
        let map: Vec<u64> = p["map"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c.as_u64().expect("every vCPU pinned"))
            .collect();
        assert_eq!(map.len(), vcpus);
        assert!(map.iter().all(|&c| allowed.contains(&(c as usize))));
        assert_eq!(p["oversubscribed"], Value::from(vcpus > allowed.len()));
        let distinct: std::collections::BTreeSet<_> = map.iter().collect();
        assert_eq!(distinct.len(), vcpus.min(allowed.len()), "{map:?}");
    }
}
