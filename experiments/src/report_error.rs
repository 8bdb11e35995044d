//! Why `shadowlab report` could not make its pieces: one variant per way to fail, from the
//! model, the policy builds and the run folders.

use std::path::PathBuf;

use crate::disasm::DisasmError;
use crate::matrix_figure::FigureError;

/// Why a report could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// A run's `reproduce.json` could not be read.
    #[error(transparent)]
    Reproduce(#[from] crate::reproduce_record::RecordError),
    /// A run's `callgrind.json` could not be read.
    #[error(transparent)]
    Callgrind(#[from] crate::report_callgrind::CallgrindReportError),
    /// Drawing or tabulating the verdict matrix failed.
    #[error(transparent)]
    Figure(#[from] FigureError),
    /// A policy build could not be decoded.
    #[error(transparent)]
    Disasm(#[from] DisasmError),
    /// A policy build is missing and `--no-build` was given.
    #[error("no {policy} build at {path} (run without --no-build to build it)")]
    MissingWorker {
        /// The policy.
        policy: &'static str,
        /// Where it was looked for.
        path: PathBuf,
    },
    /// Building or installing a policy's worker failed.
    #[error("{0}")]
    Build(#[from] shadowlab_experiments::worker_build::BuildWorkerError),
    /// A binary at a policy's path was built with another policy.
    #[error("{path} was built with policy {actual}, not {policy}")]
    WrongPolicy {
        /// The policy wanted.
        policy: &'static str,
        /// The binary.
        path: PathBuf,
        /// What its `--version` says.
        actual: String,
    },
    /// Asking a worker for its policy failed.
    #[error(transparent)]
    Worker(#[from] crate::worker::WorkerError),
    /// A run folder that cannot be read as a complete shadowlab run.
    #[error("cannot report on {path}: {why}")]
    BadRun {
        /// The folder.
        path: PathBuf,
        /// Why.
        why: String,
    },
    /// Two run folders hold the same group.
    #[error("the group {group} is in both {first} and {second}; give each group once")]
    DuplicateGroup {
        /// The group.
        group: String,
        /// The first run holding it.
        first: String,
        /// The second.
        second: String,
    },
    /// plotters' SVG backend failed on a run-based figure.
    #[error("drawing {figure}: {source}")]
    Draw {
        /// The figure.
        figure: &'static str,
        /// What plotters said.
        source: plotters::drawing::DrawingAreaErrorKind<std::io::Error>,
    },
    /// The README has no results section to rewrite.
    #[error("{path} has no section between <!-- generated:results --> and <!-- /generated --> to write the results into")]
    ReadmeMarkers {
        /// The README.
        path: PathBuf,
    },
    /// The claims could not be read or checked against a run.
    #[error(transparent)]
    Claims(#[from] crate::claims::ClaimsError),
    /// A file or folder could not be written or read.
    #[error("cannot {what} {path}: {source}")]
    Io {
        /// The operation.
        what: &'static str,
        /// The path.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
}
