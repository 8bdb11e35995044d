//! Runs one workload on the `native` or the `kvm` backend and prints the JSON result:
//! `cargo run --release -p shadowlab-framework --example run_workload -- <native|kvm>
//! <workload> [vcpus] [iters] [size]`. Until the `shadowlab-vmm` worker grows these backends,
//! this is their command line.

use std::process::ExitCode;
use std::time::Duration;

use shadowlab_framework::kvm::{run_kvm, run_native, GuestParams, RunConfig};
use shadowlab_workloads::{Params, Run, Workload};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = || {
        eprintln!(
            "run_workload: error: usage: run_workload <native|kvm> <{}> [vcpus] [iters] [size]",
            Workload::names().join("|")
        );
        ExitCode::from(2)
    };
    let (Some(backend), Some(name)) = (args.first(), args.get(1)) else {
        return usage();
    };
    if backend != "native" && backend != "kvm" {
        return usage();
    }
    let Some(w) = Workload::from_name(name) else {
        eprintln!(
            "run_workload: error: unknown workload '{name}' (one of {})",
            Workload::names().join(", ")
        );
        return ExitCode::from(2);
    };
    let num = |i: usize, default: u64| -> Result<u64, String> {
        args.get(i).map_or(Ok(default), |s| {
            s.parse().map_err(|e| format!("argument {i} '{s}': {e}"))
        })
    };
    let d = w.params();
    let parsed = (|| Ok::<_, String>((num(2, 1)?, num(3, d.iters)?, num(4, d.size)?)))();
    let (vcpus, iters, size) = match parsed {
        Ok(v) => v,
        Err(e) => {
            eprintln!("run_workload: error: {e}");
            return ExitCode::from(2);
        }
    };
    let w = w.with_params(Params { iters, size, ..d });
    let config = RunConfig {
        nr_vcpus: vcpus as usize,
        timeout: Duration::from_secs(600),
        ..RunConfig::default()
    };
    let params = GuestParams::workload(&w);
    let result = if backend == "kvm" {
        run_kvm(&config, &params)
    } else {
        run_native(&config, &params)
    };
    match result {
        Ok(r) => {
            println!("{}", r.to_json());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("run_workload: error: {e}");
            ExitCode::from(1)
        }
    }
}
