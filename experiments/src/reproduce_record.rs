//! `reproduce.json`: what `shadowlab reproduce` writes into the run it made (each stage's time,
//! the run it compared with, the verdict), and what `shadowlab report` reads back from a
//! committed reproduce run to state the expected time in the paper (`reproduce-time.tex`).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The file's name inside the run folder.
pub const FILE: &str = "reproduce.json";

/// One stage's elapsed time.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StageTime {
    /// build, verify, run, report, check.
    pub stage: String,
    /// Seconds.
    pub seconds: f64,
}

/// `<new run>/reproduce.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReproduceRecord {
    /// The committed run compared with.
    pub against: PathBuf,
    /// Each stage's elapsed time, in order.
    pub stages: Vec<StageTime>,
    /// `reproduced` or `differs`.
    pub verdict: String,
    /// One line per difference.
    pub differences: Vec<String>,
}

impl ReproduceRecord {
    /// The sum of the stage times.
    pub fn total_seconds(&self) -> f64 {
        self.stages.iter().map(|s| s.seconds).sum()
    }
}

/// Why `reproduce.json` could not be read.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// Reading the file failed.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// It is not a reproduce record.
    #[error("{path} is not a reproduce record: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What serde said.
        source: serde_json::Error,
    },
}

/// The record in run folder `dir`, if it has one.
pub fn read(dir: &Path) -> Result<Option<ReproduceRecord>, RecordError> {
    let path = dir.join(FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(RecordError::Read { path, source }),
    };
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|source| RecordError::Parse { path, source })
}
