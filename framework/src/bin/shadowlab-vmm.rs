//! `shadowlab-vmm`: the per-policy worker. Built once per policy; the `shadowlab` driver runs it
//! as a subprocess and reads its JSON result from stdout.
//!
//! Exit codes: 0 the run passed; 3 the run finished but failed its checks (the JSON result is
//! still printed, with `verdict: fail` and the guest's message); 2 bad arguments (every parameter
//! is checked before a VM is built: workload ranges, `--iters`, `--ram-mib`, frames per vCPU); 1
//! the VM could not be set up. Errors are one line on stderr.

use std::process::ExitCode;

use clap::Parser;
use shadowlab_framework::worker::{self, Verdict, WorkerArgs};
use shadowlab_framework::BUILD_POLICY;

// The layout knob's padding (SHADOWLAB_LAYOUT_PAD, see framework/build.rs and
// shadowlab_framework::layout): in this crate, whose objects the linker places ahead of the
// library's, so that the MMU's code follows it.
include!(concat!(env!("OUT_DIR"), "/layout_pad_asm.rs"));

/// The padding this binary holds, bytes: measured between its symbols, so that it is what the
/// linker kept (referencing them is also what keeps the section from `--gc-sections`).
fn layout_pad_bytes() -> usize {
    let start = core::ptr::addr_of!(shadowlab_layout_pad_start) as usize;
    let end = core::ptr::addr_of!(shadowlab_layout_pad_end) as usize;
    end - start
}

fn version() -> String {
    let mut v = format!(
        "shadowlab-vmm {}\npolicy: {}\nlayout-pad: {}",
        env!("CARGO_PKG_VERSION"),
        BUILD_POLICY.name,
        layout_pad_bytes()
    );
    if BUILD_POLICY.soundness == shadowlab_policies::Soundness::Unsound {
        v.push_str("\nWARNING: UNSOUND negative-control build (runs only with --allow-unsound)");
    }
    v
}

fn main() -> ExitCode {
    let args = match WorkerArgs::try_parse() {
        Ok(a) => a,
        Err(e) if e.kind() == clap::error::ErrorKind::DisplayHelp => {
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            // clap's first line names the problem; the usage lines after it are noise here.
            let msg = e.to_string();
            let first = msg.lines().next().unwrap_or("bad arguments");
            eprintln!(
                "shadowlab-vmm: {}",
                first.trim_start_matches("error: ").trim()
            );
            return ExitCode::from(2);
        }
    };
    if args.version {
        println!("{}", version());
        return ExitCode::SUCCESS;
    }
    match worker::run(&args) {
        Ok(result) => {
            match serde_json::to_string(&result) {
                Ok(json) => println!("{json}"),
                Err(e) => {
                    eprintln!("shadowlab-vmm: error: cannot serialise the result: {e}");
                    return ExitCode::from(1);
                }
            }
            if result.verdict == Verdict::Pass {
                ExitCode::SUCCESS
            } else {
                eprintln!(
                    "shadowlab-vmm: {} on {:?} FAILED: {}",
                    result.workload,
                    result.backend,
                    result.failure.as_deref().unwrap_or("unknown failure")
                );
                ExitCode::from(3)
            }
        }
        Err(e) => {
            eprintln!("shadowlab-vmm: error: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}
