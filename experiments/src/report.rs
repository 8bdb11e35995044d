//! `shadowlab report`: writes the paper's generated tables and figures into one folder
//! (default `paper/generated/`).
//!
//! It makes the pieces that need no benchmark run:
//! - `verdict-matrix.svg`, `verdict-matrix.tex`: the loom verdict matrix ([`crate::matrix_figure`]);
//! - `compiles-to.md`, `compiles-to.tex`: the lockless check's fast path decoded from each
//!   policy build of `shadowlab-vmm` ([`crate::disasm`]);
//!
//! and, from the run folders given (`shadowlab report bench-results/<run-id>`), the run-based
//! pieces of [`crate::report_run`]: cost per policy, scaling with vCPUs on sim, the MMU lock
//! waits, ours against native, the perf-stat-like report per cell; and the README's results
//! section (between `<!-- generated:results -->` and `<!-- /generated -->`).
//!
//! **Which run.** `report` writes `SOURCE` into the output folder, naming the run folders it
//! used (relative to the workspace root). Without run folders on the command line, `report`
//! and `report --check` use the ones `SOURCE` names, so `shadowlab report --check` (in
//! `scripts/test`) checks every generated file, run-based ones included, against the
//! committed `bench-results/`. Every piece is a [`Piece`] (a file name and its bytes);
//! [`write_all`] writes them atomically (temporary file, then rename). The paper includes each
//! run-based file under `\IfFileExists`, so it builds before any run exists.
//!
//! **Figures in LaTeX.** SVG is what is generated and committed; `paper/latexmkrc` converts each
//! `generated/*.svg` to PDF with `rsvg-convert` (Debian `librsvg2-bin`) when the paper is built,
//! so no binary PDF (whose bytes carry a creation date) needs to be committed or compared.
//!
//! `--check` makes every piece in memory and compares it with what is in the folder, byte for
//! byte: the test that the committed paper is not stale.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use shadowlab_experiments::worker_build;
use shadowlab_policies::model::verdict_matrix;

use crate::disasm::{self, PolicyListing};
use crate::matrix_figure;
use crate::report_run;

/// The workspace root: where `paper/` and `target/` are (this crate is `<root>/experiments`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// Options of `shadowlab report`.
#[derive(clap::Args, Debug)]
pub struct ReportArgs {
    /// Run folders (`bench-results/<run-id>`) to make the run-based pieces from [default: the
    /// ones named in the output folder's SOURCE file, if any].
    #[arg(value_name = "RUN_DIR")]
    runs: Vec<PathBuf>,
    /// The README whose results section (between `<!-- generated:results -->` and
    /// `<!-- /generated -->`) is rewritten from the runs [default: README.md at the root].
    #[arg(long, value_name = "FILE")]
    readme: Option<PathBuf>,
    /// Output folder (created if missing).
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Where the policy builds are: DIR/<policy>/shadowlab-vmm [default: target/policy-builds/bin]
    #[arg(long, value_name = "DIR")]
    workers: Option<PathBuf>,
    /// Fail on a missing policy build instead of building it with cargo.
    #[arg(long)]
    no_build: bool,
    /// Write nothing: compare what would be written with the output folder, byte for byte, and
    /// exit 1 naming every file that differs.
    #[arg(long)]
    check: bool,
}

pub use crate::piece::Piece;
pub use crate::report_error::ReportError;

/// The pieces made from the model alone (no binary, no run): reproducible on any machine.
pub fn model_pieces() -> Result<Vec<Piece>, ReportError> {
    let cells = verdict_matrix();
    Ok(vec![
        Piece {
            name: "verdict-matrix.svg",
            bytes: matrix_figure::svg(&cells)?.into_bytes(),
        },
        Piece {
            name: "verdict-matrix.tex",
            bytes: matrix_figure::latex(&cells)?.into_bytes(),
        },
    ])
}

/// The names of [`binary_pieces`].
pub const BINARY_PIECE_NAMES: [&str; 2] = ["compiles-to.md", "compiles-to.tex"];

/// The pieces made from the policy builds: depend on the toolchain that built them.
pub fn binary_pieces(listings: &[PolicyListing]) -> Vec<Piece> {
    vec![
        Piece {
            name: BINARY_PIECE_NAMES[0],
            bytes: disasm::render_markdown(listings).into_bytes(),
        },
        Piece {
            name: BINARY_PIECE_NAMES[1],
            bytes: disasm::render_latex(listings).into_bytes(),
        },
    ]
}

/// The build of `policy` under `workers`, built with cargo first if it is missing and
/// `build` is set. Each build goes through one cargo target directory,
/// `target/policy-builds` (the one `scripts/test` uses for the other policies, so that the
/// dependencies are compiled once), and is copied to `workers/<policy>/shadowlab-vmm`.
pub fn policy_build(
    policy: &'static str,
    feature: &str,
    workers: &Path,
    build: bool,
) -> Result<PathBuf, ReportError> {
    let dest = workers.join(policy).join("shadowlab-vmm");
    if !dest.exists() {
        if !build {
            return Err(ReportError::MissingWorker { policy, path: dest });
        }
        let root = workspace_root();
        eprintln!("shadowlab report: building shadowlab-vmm with {feature} ...");
        let built = worker_build::build_worker(&root, &root.join("target/policy-builds"), policy)?;
        worker_build::install(&built, &dest)?;
    }
    let actual = crate::worker::policy_of(&dest)?;
    if actual != policy {
        return Err(ReportError::WrongPolicy {
            policy,
            path: dest,
            actual,
        });
    }
    Ok(dest)
}

/// Every policy build under `workers`, decoded, in the paper's policy order.
pub fn policy_listings(workers: &Path, build: bool) -> Result<Vec<PolicyListing>, ReportError> {
    shadowlab_policies::ALL
        .iter()
        .map(|p| {
            let bin = policy_build(p.name, p.feature(), workers, build)?;
            Ok(PolicyListing {
                policy: p.name,
                listing: disasm::listing(&bin)?,
            })
        })
        .collect()
}

/// Every piece of the report.
pub fn pieces(workers: &Path, build: bool) -> Result<Vec<Piece>, ReportError> {
    let mut all = model_pieces()?;
    all.extend(binary_pieces(&policy_listings(workers, build)?));
    // Run-based pieces go here (see the module doc).
    Ok(all)
}

/// Writes each piece into `out` (created if missing): a temporary file, then a rename.
pub fn write_all(out: &Path, pieces: &[Piece]) -> Result<(), ReportError> {
    std::fs::create_dir_all(out).map_err(|source| ReportError::Io {
        what: "create the output folder",
        path: out.to_path_buf(),
        source,
    })?;
    for p in pieces {
        write_file(&out.join(p.name), &p.bytes)?;
    }
    Ok(())
}

/// Writes `bytes` to `dest`: a temporary file beside it, then a rename.
pub fn write_file(dest: &Path, bytes: &[u8]) -> Result<(), ReportError> {
    let dir = dest.parent().unwrap_or(Path::new("."));
    let name = dest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    std::fs::write(&tmp, bytes).map_err(|source| ReportError::Io {
        what: "write",
        path: tmp.clone(),
        source,
    })?;
    std::fs::rename(&tmp, dest).map_err(|source| ReportError::Io {
        what: "rename to",
        path: dest.to_path_buf(),
        source,
    })?;
    Ok(())
}

/// The names of the pieces whose file in `out` is missing or differs.
pub fn stale(out: &Path, pieces: &[Piece]) -> Vec<&'static str> {
    pieces
        .iter()
        .filter(|p| std::fs::read(out.join(p.name)).ok().as_deref() != Some(&p.bytes[..]))
        .map(|p| p.name)
        .collect()
}

/// The README after the run-based pieces: its path and the bytes it should hold.
pub struct ReadmeUpdate {
    /// The README.
    pub path: PathBuf,
    /// Its contents with the results section rewritten.
    pub bytes: Vec<u8>,
}

/// The run-based pieces from `runs` (none given: those `out/SOURCE` names; none there: no
/// pieces), and the README with its results section made from them.
pub fn run_pieces(
    root: &Path,
    out: &Path,
    runs: &[PathBuf],
    readme: &Path,
) -> Result<(Vec<Piece>, Option<ReadmeUpdate>), ReportError> {
    let runs = if runs.is_empty() {
        report_run::committed_sources(root, out)?
    } else {
        runs.to_vec()
    };
    if runs.is_empty() {
        return Ok((Vec::new(), None));
    }
    let input = report_run::RunInput::load(&runs)?;
    let sources: Vec<String> = runs
        .iter()
        .map(|d| report_run::source_name(root, d))
        .collect();
    let mut pieces = report_run::pieces(&input, &sources)?;
    // The exact instruction counts (callgrind.json), from the first run that has them.
    if let Some(record) = &input.instructions {
        pieces.extend(crate::report_callgrind::pieces(record));
    }
    // How long reproduce took, where the first run was made by it (the committed run is).
    if let Some(record) = &input.reproduce {
        pieces.extend(crate::report_reproduce::pieces(
            record,
            &input.manifests[0],
            &report_run::source_name(root, &runs[0]),
        ));
    }
    // The paper's claims checked against the first run, and the tolerances
    // ([`crate::claims::pieces`]).
    pieces.extend(crate::claims::pieces(&runs[0])?);
    let text = std::fs::read_to_string(readme).map_err(|source| ReportError::Io {
        what: "read",
        path: readme.to_path_buf(),
        source,
    })?;
    let readme_dir = readme.parent().unwrap_or(Path::new("."));
    let body =
        report_run::readme::section(&input, &sources, &report_run::readme::link(readme_dir, out));
    let bytes = report_run::readme::splice(&text, &body, readme)?.into_bytes();
    Ok((
        pieces,
        Some(ReadmeUpdate {
            path: readme.to_path_buf(),
            bytes,
        }),
    ))
}

/// Runs `shadowlab report`.
pub fn run(args: &ReportArgs) -> ExitCode {
    let root = workspace_root();
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| root.join("paper/generated"));
    let workers = args
        .workers
        .clone()
        .unwrap_or_else(|| root.join("target/policy-builds/bin"));
    let readme = args
        .readme
        .clone()
        .unwrap_or_else(|| root.join("README.md"));
    let made = run_pieces(&root, &out, &args.runs, &readme).and_then(|(run, readme)| {
        let mut all = pieces(&workers, !args.no_build)?;
        all.extend(run);
        Ok((all, readme))
    });
    let (made, readme) = match made {
        Ok(p) => p,
        Err(e) => {
            eprintln!("shadowlab report: error: {e}");
            return ExitCode::FAILURE;
        }
    };
    if args.check {
        let mut differ: Vec<PathBuf> = stale(&out, &made).iter().map(|n| out.join(n)).collect();
        if let Some(r) = &readme {
            if std::fs::read(&r.path).ok().as_deref() != Some(&r.bytes[..]) {
                differ.push(r.path.clone());
            }
        }
        if differ.is_empty() {
            println!(
                "shadowlab report --check: {} files in {}{} are what report makes",
                made.len(),
                out.display(),
                if readme.is_some() {
                    " and the README's results section"
                } else {
                    ""
                }
            );
            return ExitCode::SUCCESS;
        }
        for path in &differ {
            eprintln!(
                "shadowlab report --check: {} differs from what report makes (rerun shadowlab report)",
                path.display()
            );
        }
        return ExitCode::FAILURE;
    }
    if let Err(e) = write_all(&out, &made) {
        eprintln!("shadowlab report: error: {e}");
        return ExitCode::FAILURE;
    }
    for p in &made {
        println!("wrote {}", out.join(p.name).display());
    }
    if let Some(r) = readme {
        if let Err(e) = write_file(&r.path, &r.bytes) {
            eprintln!("shadowlab report: error: {e}");
            return ExitCode::FAILURE;
        }
        println!("wrote the results section of {}", r.path.display());
    }
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The model's pieces are reproducible on any machine: the committed ones must be exactly
    /// what report makes now.
    #[test]
    fn committed_model_pieces_are_what_report_makes() {
        let out = workspace_root().join("paper/generated");
        let made = model_pieces().unwrap();
        let differ = stale(&out, &made);
        assert!(
            differ.is_empty(),
            "stale in paper/generated: {differ:?} (run: cargo run --release --bin shadowlab -- report)"
        );
    }

    /// The disassembly depends on the toolchain. Where the five policy builds are present and
    /// were built by the compiler the committed listing names, it must be exactly what report
    /// makes from them; otherwise what is checked is what holds for any toolchain: the
    /// committed listing covers every policy and states the x86-64 / AArch64 fact.
    #[test]
    fn committed_compiles_to_is_what_report_makes_from_these_builds() {
        let root = workspace_root();
        let md = std::fs::read_to_string(root.join("paper/generated/compiles-to.md"))
            .expect("paper/generated/compiles-to.md is committed");
        for p in shadowlab_policies::ALL {
            assert!(
                md.contains(&format!("\n## `{}`\n", p.name)),
                "{} missing",
                p.name
            );
        }
        assert!(md.contains("AArch64 is where they differ"), "{md}");
        assert!(md.contains("`dmb ishld`") && md.contains("`ldar`"), "{md}");
        match policy_listings(&root.join("target/policy-builds/bin"), false) {
            Ok(listings) => {
                let compiler = listings[0].listing.compiler.clone().unwrap_or_default();
                if !md.contains(&compiler) {
                    println!(
                        "SKIPPED exact comparison: the builds are by {compiler}, the committed \
                         listing by another compiler"
                    );
                    return;
                }
                let out = root.join("paper/generated");
                let differ = stale(&out, &binary_pieces(&listings));
                assert!(
                    differ.is_empty(),
                    "stale in paper/generated: {differ:?} (run: cargo run --release --bin shadowlab -- report)"
                );
            }
            Err(e) => println!("SKIPPED exact comparison: {e}"),
        }
    }

    /// Nothing in paper/generated/ that report does not make (the PDFs there are converted from
    /// the SVGs by paper/latexmkrc and ignored by git).
    #[test]
    fn paper_generated_holds_only_what_report_makes() {
        let out = workspace_root().join("paper/generated");
        let mut made: Vec<String> = model_pieces()
            .unwrap()
            .iter()
            .map(|p| p.name.to_string())
            .chain(BINARY_PIECE_NAMES.iter().map(|n| n.to_string()))
            .collect();
        if out.join(report_run::SOURCE).exists() {
            let root = workspace_root();
            let (run, _) = run_pieces(&root, &out, &[], &root.join("README.md")).unwrap();
            made.extend(run.iter().map(|p| p.name.to_string()));
        }
        made.sort();
        made.dedup();
        let mut present: Vec<String> = std::fs::read_dir(&out)
            .expect("paper/generated exists")
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| !n.starts_with('.') && !n.ends_with(".pdf"))
            .collect();
        present.sort();
        assert_eq!(present, made);
    }

    /// The run-based pieces in paper/generated/ and the README's results section are exactly
    /// what report makes from the committed run that paper/generated/SOURCE names.
    #[test]
    fn committed_run_pieces_and_readme_are_what_report_makes() {
        let root = workspace_root();
        let out = root.join("paper/generated");
        let readme = root.join("README.md");
        let (made, update) = run_pieces(&root, &out, &[], &readme).unwrap();
        let Some(update) = update else {
            println!("SKIPPED: paper/generated/SOURCE names no committed run");
            return;
        };
        for dir in report_run::committed_sources(&root, &out).unwrap() {
            assert!(
                dir.starts_with(root.join("bench-results")),
                "{} is not a committed run under bench-results/",
                dir.display()
            );
        }
        let differ = stale(&out, &made);
        assert!(
            differ.is_empty(),
            "stale in paper/generated: {differ:?} (run: cargo run --release --bin shadowlab -- report)"
        );
        assert!(
            std::fs::read(&readme).unwrap() == update.bytes,
            "README.md's results section is stale (run: cargo run --release --bin shadowlab -- report)"
        );
    }

    /// A run-based piece or the README section edited by hand is named by the check.
    #[test]
    fn an_edited_run_piece_or_readme_section_is_caught() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        let run = root.join("bench-results/20990101T000000Z-synthetic");
        report_run::synthetic::write_run(&run, "20990101T000000Z-synthetic", false, true);
        let out = root.join("paper/generated");
        let readme = root.join("README.md");
        std::fs::write(
            &readme,
            "# x\n<!-- generated:results -->\n<!-- /generated -->\nafter\n",
        )
        .unwrap();
        let (made, update) = run_pieces(root, &out, std::slice::from_ref(&run), &readme).unwrap();
        let update = update.unwrap();
        let body = String::from_utf8(update.bytes.clone()).unwrap();
        assert!(
            body.contains("](paper/generated/cost-per-policy.svg)"),
            "{body}"
        );
        assert!(body.ends_with("<!-- /generated -->\nafter\n"), "{body}");
        write_all(&out, &made).unwrap();
        write_file(&readme, &update.bytes).unwrap();
        assert_eq!(
            std::fs::read_to_string(out.join("SOURCE")).unwrap(),
            "bench-results/20990101T000000Z-synthetic\n"
        );
        // Without a run named, the one SOURCE names is used: the same pieces.
        let (again, update2) = run_pieces(root, &out, &[], &readme).unwrap();
        assert_eq!(again, made);
        assert_eq!(update2.unwrap().bytes, update.bytes);
        assert!(stale(&out, &made).is_empty());
        std::fs::write(out.join("perf-stat.md"), b"edited by hand").unwrap();
        assert_eq!(stale(&out, &made), vec!["perf-stat.md"]);
    }

    #[test]
    fn write_then_check_round_trips_and_a_change_is_named() {
        let dir = std::env::temp_dir().join(format!("shadowlab-report-{}", std::process::id()));
        let made = model_pieces().unwrap();
        write_all(&dir, &made).unwrap();
        assert!(stale(&dir, &made).is_empty());
        std::fs::write(dir.join("verdict-matrix.tex"), b"edited by hand").unwrap();
        assert_eq!(stale(&dir, &made), vec!["verdict-matrix.tex"]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn an_unwritable_output_folder_is_a_one_line_error() {
        let e = write_all(Path::new("/proc/shadowlab-no/such"), &[]).unwrap_err();
        assert!(matches!(e, ReportError::Io { .. }), "{e}");
        assert_eq!(e.to_string().lines().count(), 1);
        let e = policy_build(
            "rmb-fence",
            "policy-rmb-fence",
            Path::new("/nonexistent"),
            false,
        )
        .unwrap_err();
        assert!(matches!(e, ReportError::MissingWorker { .. }), "{e}");
    }
}
