//! `shadowlab-vmm`: the per-policy worker. Built once per policy; the `shadowlab` driver runs it
//! as a subprocess and reads its JSON result.

use std::process::ExitCode;

use shadowlab_framework::BUILD_POLICY;

fn version() -> String {
    format!(
        "shadowlab-vmm {}\npolicy: {}{}",
        env!("CARGO_PKG_VERSION"),
        BUILD_POLICY.name,
        if BUILD_POLICY.soundness == shadowlab_policies::Soundness::Unsound {
            " (UNSOUND control build)"
        } else {
            ""
        }
    )
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("--version") | Some("-V") => {
            println!("{}", version());
            ExitCode::SUCCESS
        }
        Some(other) => {
            eprintln!("shadowlab-vmm: error: unknown argument '{other}' (try --version)");
            ExitCode::from(2)
        }
        None => {
            eprintln!("shadowlab-vmm: error: no arguments (try --version)");
            ExitCode::from(2)
        }
    }
}
