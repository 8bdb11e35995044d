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
    let info = shadowlab_host::detect();
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
        // The driver links no VMM and selects no policy: it asks the worker built beside it.
        let worker = crate::worker::beside_driver();
        match crate::worker::policy_of(&worker) {
            Ok(p) => println!(
                "policy:       the driver is policy-agnostic; the worker beside it ({}) was built \
                 with {p}",
                worker.display()
            ),
            Err(e) => println!("policy:       the driver is policy-agnostic; {e}"),
        }
    }
    ExitCode::SUCCESS
}
