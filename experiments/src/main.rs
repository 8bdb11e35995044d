//! `shadowlab`: the driver. Model-checks the policies, and (as later issues land) builds the
//! worker once per policy, runs the workloads, stores results and reports.

mod info;
mod verify;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// shadowlab: what a memory-barrier choice in a shadow MMU costs, and whether it is correct.
#[derive(Parser, Debug)]
#[command(name = "shadowlab", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Model-check every shadow-sync policy with loom, under a relaxed (C11) and an acquire
    /// (x86) page-walker model, and compare with the expected verdict matrix.
    Verify(verify::VerifyArgs),
    /// Describe this host: KVM flavour (bare-metal VMX/SVM, nested, software/paravirtual), the
    /// capabilities the framework relies on, perf counters, and what is missing.
    Info(info::InfoArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Verify(args) => verify::run(&args),
        Command::Info(args) => info::run(&args),
    }
}
