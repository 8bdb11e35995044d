//! `shadowlab list`: workloads, policies, backends and presets.

use std::process::ExitCode;

use shadowlab_schema::Backend;

use crate::matrix::{PRESETS, UNSOUND};

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
        } else if p.name == crate::matrix::BASELINE {
            " (baseline; also run as the A/A arm rmb-fence-aa)"
        } else {
            ""
        };
        println!("  {:<14} {}{note}", p.name, p.feature());
    }
    println!(
        "backends: {} (native: policy-independent, the host's reference)",
        Backend::ALL.map(Backend::name).join(", ")
    );
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
