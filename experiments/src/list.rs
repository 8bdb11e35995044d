//! `shadowlab list`: workloads, policies, backends and presets.

use std::process::ExitCode;

use shadowlab_schema::Backend;

use crate::matrix::{AA_ARM, BASELINE, NATIVE_ARM, PRESETS, UNSOUND, XL_ARM};

/// Every policy name, the baseline first.
pub fn policy_names() -> Vec<&'static str> {
    let mut v: Vec<&'static str> = shadowlab_policies::ALL.iter().map(|p| p.name).collect();
    v.sort_by_key(|p| *p != crate::matrix::BASELINE);
    v
}

/// Prints the lists.
pub fn run() -> ExitCode {
    println!(
        "workloads: {}",
        shadowlab_workloads::Workload::names().join(", ")
    );
    println!("policies:");
    for p in shadowlab_policies::ALL {
        let note = if p.name == UNSOUND {
            " (UNSOUND control: only with --with-unsound-control)"
        } else if p.name == BASELINE {
            " (baseline; also run as the A/A arms rmb-fence-aa and rmb-fence-xl)"
        } else {
            ""
        };
        println!("  {:<14} {}{note}", p.name, p.feature());
    }
    println!(
        "backends: {} (native: policy-independent, the host's reference)",
        Backend::ALL.map(Backend::name).join(", ")
    );
    println!("arms of a sim or kvm group:");
    println!("  <policy>       each policy's build (the baseline {BASELINE} first)");
    println!("  {AA_ARM:<14} the {BASELINE} binary a second time: the same-binary A/A control");
    println!(
        "  {XL_ARM:<14} {BASELINE} built with a code-layout pad (64..4096 bytes ahead of the \
         MMU, drawn from --seed): the cross-layout A/A control"
    );
    println!("arms of a native group: {NATIVE_ARM}");
    println!("presets:");
    for p in PRESETS {
        println!("  {:<6} {} — {} blocks", p.name, p.about, p.reps);
        for r in p.rows {
            let v: Vec<String> = r.vcpus.iter().map(u32::to_string).collect();
            println!(
                "         {:<6} {} at {} vCPU, {} iterations a run",
                r.backend.name(),
                r.workloads.join(", "),
                v.join(","),
                r.iters
            );
        }
    }
    ExitCode::SUCCESS
}
