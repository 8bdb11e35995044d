//! `shadowlab verify`: the loom verdict matrix.

use std::io::Write;
use std::process::ExitCode;
use std::time::Instant;

use shadowlab_policies::model::{verdict_matrix, Cell, Verdict, WalkerModel};

/// Options of `shadowlab verify`.
#[derive(clap::Args, Debug)]
pub struct VerifyArgs {
    /// Print the violating interleavings one event per line (default: on).
    #[arg(long, default_value_t = false)]
    no_interleavings: bool,
}

/// Runs the matrix, prints it, and exits non-zero if any verdict is not the expected one.
pub fn run(args: &VerifyArgs) -> ExitCode {
    let start = Instant::now();
    let cells = verdict_matrix();
    let elapsed = start.elapsed();
    let mut out = std::io::stdout().lock();
    // A closed stdout (e.g. `| head`) is not an error worth a panic.
    let _ = print_matrix(&mut out, &cells, !args.no_interleavings);
    let wrong: Vec<&Cell> = cells.iter().filter(|c| !c.as_expected()).collect();
    let _ = writeln!(
        out,
        "\nmodel-checked {} cells with loom in {:.1} ms; {}",
        cells.len(),
        elapsed.as_secs_f64() * 1e3,
        if wrong.is_empty() {
            "every verdict is the expected one".to_string()
        } else {
            format!("{} verdict(s) differ from the expected matrix", wrong.len())
        }
    );
    if wrong.is_empty() {
        ExitCode::SUCCESS
    } else {
        for c in wrong {
            eprintln!("shadowlab verify: error: {}", mismatch(c));
        }
        ExitCode::FAILURE
    }
}

/// One line for a cell whose verdict is not the expected one.
pub fn mismatch(c: &Cell) -> String {
    format!(
        "{} under {}: expected {:?}, got {}",
        c.policy.label(),
        c.walker.name(),
        c.expected,
        c.verdict.cell()
    )
}

fn print_matrix(out: &mut impl Write, cells: &[Cell], interleavings: bool) -> std::io::Result<()> {
    let name_w = cells
        .iter()
        .map(|c| c.policy.label().len())
        .max()
        .unwrap_or(6)
        .max("policy".len());
    let col_w = cells
        .iter()
        .map(|c| c.verdict.cell().len() + 2)
        .chain(WalkerModel::ALL.iter().map(|w| w.name().len()))
        .max()
        .unwrap_or(20);
    writeln!(
        out,
        "shadowlab verify: the unsync protocol of DESIGN.md, each policy's own is_unsync_root()"
    )?;
    writeln!(
        out,
        "under loom (exhaustive, no preemption bound); a VIOLATION is an execution in which a \
         guest wrote its PTE\nthrough SPTE.W = 1, flushed, and kvm_mmu_sync_roots() skipped the \
         sync.\n"
    )?;
    write!(out, "{:<name_w$}", "policy")?;
    for w in WalkerModel::ALL {
        write!(out, "  {:<col_w$}", w.name())?;
    }
    writeln!(out)?;
    writeln!(
        out,
        "{}",
        "-".repeat(name_w + WalkerModel::ALL.len() * (col_w + 2))
    )?;
    for row in cells.chunks(WalkerModel::ALL.len()) {
        write!(out, "{:<name_w$}", row[0].policy.label())?;
        for c in row {
            let mark = if c.as_expected() { "" } else { " !!" };
            write!(out, "  {:<col_w$}", format!("{}{mark}", c.verdict.cell()))?;
        }
        writeln!(out)?;
    }
    if interleavings {
        for c in cells {
            if let Verdict::Violation { interleaving, .. } = &c.verdict {
                writeln!(
                    out,
                    "\nVIOLATION: {} under the {} — first violating execution:",
                    c.policy.label(),
                    c.walker.name()
                )?;
                for (i, e) in interleaving.iter().enumerate() {
                    writeln!(out, "  {:>2}. {e}", i + 1)?;
                }
            }
        }
    }
    writeln!(
        out,
        "\nper cell: time, and the paths loom's executions took (walk saw SPTE.W = 0 / saw 1 and \
         synced / saw 1 and skipped the sync):"
    )?;
    for c in cells {
        let cov = c.verdict.coverage();
        writeln!(
            out,
            "  {:<name_w$}  {:<32} {:>8.1} ms   {:>3} / {:>3} / {:>3}",
            c.policy.label(),
            c.walker.name(),
            c.elapsed.as_secs_f64() * 1e3,
            cov.write_faulted,
            cov.synced,
            cov.skipped
        )?;
    }
    Ok(())
}
