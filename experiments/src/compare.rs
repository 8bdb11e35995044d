//! `shadowlab compare <run-a> <run-b>`: per cell, the ratio of B's median per-op time to A's,
//! with a bootstrap interval. Exit 1 only where the interval excludes 1 and the change exceeds
//! the noise floor (`--floor`, 5% by default).

use std::path::PathBuf;
use std::process::ExitCode;

use shadowlab_stats::{compare, BootstrapConfig, DEFAULT_COMPARE_FLOOR};

use crate::error::DriverError;
use crate::results;
use crate::summary::per_block;

/// Options of `shadowlab compare`.
#[derive(clap::Args, Debug)]
pub struct CompareArgs {
    /// The old run's folder.
    run_a: PathBuf,
    /// The new run's folder.
    run_b: PathBuf,
    /// Noise floor, a fraction (0.05 = 5%).
    #[arg(long, default_value_t = DEFAULT_COMPARE_FLOOR)]
    floor: f64,
}

/// Runs `shadowlab compare`.
pub fn run(args: &CompareArgs) -> ExitCode {
    match inner(args) {
        Ok(true) => ExitCode::from(1),
        Ok(false) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("shadowlab compare: error: {e}");
            ExitCode::from(e.exit_code().max(2))
        }
    }
}

fn inner(args: &CompareArgs) -> Result<bool, DriverError> {
    if !(args.floor.is_finite() && args.floor >= 0.0) {
        return Err(DriverError::Usage(format!(
            "--floor {} must be a fraction >= 0",
            args.floor
        )));
    }
    let a = results::load(&args.run_a, true)?;
    let b = results::load(&args.run_b, true)?;
    let (va, vb) = (per_block(&a.samples), per_block(&b.samples));
    let cfg = BootstrapConfig::seeded(a.manifest.matrix.seed);
    let mut any = false;
    println!(
        "{:<8} {:<12} {:>2}  {:<14} {:>24}  verdict",
        "backend", "workload", "v", "arm", "B/A [95% CI]"
    );
    for (cell, xa) in &va {
        let Some(xb) = vb.get(cell) else { continue };
        let (xa, xb): (Vec<f64>, Vec<f64>) = (
            xa.values().copied().collect(),
            xb.values().copied().collect(),
        );
        let (ratio, verdict) = match compare(&xa, &xb, args.floor, &cfg) {
            Ok(c) => {
                any |= c.differs;
                (
                    format!(
                        "{:.3} [{:.3}, {:.3}]",
                        c.ratio.value, c.ratio.ci.lo, c.ratio.ci.hi
                    ),
                    if c.differs {
                        format!("CHANGED: {}", c.label)
                    } else {
                        c.label.to_string()
                    },
                )
            }
            Err(e) => ("-".into(), format!("not compared: {e}")),
        };
        println!(
            "{:<8} {:<12} {:>2}  {:<14} {:>24}  {verdict}",
            cell.group.backend.name(),
            cell.group.workload,
            cell.group.vcpus,
            cell.arm,
            ratio
        );
    }
    Ok(any)
}
