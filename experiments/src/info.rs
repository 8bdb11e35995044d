//! `shadowlab info`: what this host offers the framework, and what it lacks.

use std::process::ExitCode;

/// Options of `shadowlab info`.
#[derive(clap::Args, Debug)]
pub struct InfoArgs {
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

/// Prints the host description. Exits 0 even where /dev/kvm is missing: saying so is the job.
pub fn run(args: &InfoArgs) -> ExitCode {
    let info = shadowlab_framework::host::detect();
    if args.json {
        match serde_json::to_string_pretty(&info) {
            Ok(j) => println!("{j}"),
            Err(e) => {
                eprintln!("shadowlab info: error: {e}");
                return ExitCode::FAILURE;
            }
        }
    } else {
        print!("{info}");
        println!(
            "policy:       the driver is policy-agnostic; each shadowlab-vmm build names its own \
             (this workspace's default build: {})",
            shadowlab_framework::BUILD_POLICY.name
        );
    }
    ExitCode::SUCCESS
}
