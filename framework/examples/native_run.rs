//! Runs one workload (or built-in guest program) on the `native` backend and prints the JSON
//! result: `cargo run --release -p shadowlab-framework --example native_run -- <workload> [vcpus]
//! [iters] [size]`. Until the `shadowlab-vmm` worker grows `--backend native`, this is the
//! command line for native runs.

use std::process::ExitCode;
use std::time::Duration;

use shadowlab_framework::kvm::{run_native, GuestParams, RunConfig};
use shadowlab_workloads::{Params, Run, Workload};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(name) = args.first() else {
        eprintln!(
            "native_run: error: usage: native_run <{}> [vcpus] [iters] [size]",
            Workload::names().join("|")
        );
        return ExitCode::from(2);
    };
    let Some(w) = Workload::from_name(name) else {
        eprintln!(
            "native_run: error: unknown workload '{name}' (one of {})",
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
    let parsed = (|| Ok::<_, String>((num(1, 1)?, num(2, d.iters)?, num(3, d.size)?)))();
    let (vcpus, iters, size) = match parsed {
        Ok(v) => v,
        Err(e) => {
            eprintln!("native_run: error: {e}");
            return ExitCode::from(2);
        }
    };
    let w = w.with_params(Params { iters, size, ..d });
    let config = RunConfig {
        nr_vcpus: vcpus as usize,
        timeout: Duration::from_secs(600),
        ..RunConfig::default()
    };
    match run_native(&config, &GuestParams::workload(&w)) {
        Ok(r) => {
            println!("{}", r.to_json());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("native_run: error: {e}");
            ExitCode::from(1)
        }
    }
}
