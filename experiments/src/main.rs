//! `shadowlab`: the driver. Model-checks the policies, builds the worker once per policy, runs
//! the matrix, stores results with their provenance, compares and merges runs, and writes the
//! paper's generated tables and figures.

mod build;
mod callgrind_pass;
mod claims;
mod compare;
mod disasm;
mod error;
mod info;
mod list;
mod matrix;
mod matrix_figure;
mod merge;
mod piece;
mod progress;
mod report;
mod report_callgrind;
mod report_error;
mod report_reproduce;
mod report_run;
mod reproduce;
mod reproduce_record;
mod results;
mod run;
mod summary;
mod verify;
mod worker;

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
    /// Build the worker once per policy and run the matrix (policy × backend × workload ×
    /// vCPUs × blocks); write manifest.json, samples.csv and summary.json.
    Run(run::RunArgs),
    /// List the workloads, policies, backends and presets.
    List,
    /// Compare two runs cell by cell; exit 1 where a change is resolved beyond the floor.
    Compare(compare::CompareArgs),
    /// Join the shard folders of one run into one run folder.
    Merge(merge::MergeArgs),
    /// Write the paper's generated tables and figures (default: into paper/generated/): the
    /// verdict matrix, and what each policy's lockless check compiles to, decoded from the
    /// policy builds of shadowlab-vmm; and, from run folders (default: those named in the
    /// output folder's SOURCE), cost per policy, scaling, lock waits, ours against native, the
    /// perf-stat-like report per cell, and the README's results section.
    Report(report::ReportArgs),
    /// The artifact check: build every policy's worker, verify, run the matrix (the full
    /// preset, or --quick) into target/reproduce/<run-id>, write its report, and compare the
    /// paper's claims and every cell with the committed run; prints `reproduced` or each
    /// difference (exit 1).
    Reproduce(reproduce::ReproduceArgs),
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e)
            if matches!(
                e.kind(),
                clap::error::ErrorKind::DisplayHelp
                    | clap::error::ErrorKind::DisplayVersion
                    | clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
            ) =>
        {
            let _ = e.print();
            return if e.kind() == clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            };
        }
        Err(e) => {
            // One line naming the problem; clap's usage block after it is noise here.
            let msg = e.to_string();
            let first = msg.lines().next().unwrap_or("bad arguments");
            eprintln!(
                "shadowlab: {} (try --help)",
                first.trim_start_matches("error: ").trim()
            );
            return ExitCode::from(2);
        }
    };
    match cli.command {
        Command::Verify(args) => verify::run(&args),
        Command::Info(args) => info::run(&args),
        Command::Run(args) => run::run(&args),
        Command::List => list::run(),
        Command::Compare(args) => compare::run(&args),
        Command::Merge(args) => merge::run(&args),
        Command::Report(args) => report::run(&args),
        Command::Reproduce(args) => reproduce::run(&args),
    }
}
