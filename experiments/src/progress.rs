//! Progress: an `indicatif` bar with the time left on a terminal; one plain line per cell
//! otherwise (CI logs, files).

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressStyle};

/// The run's progress display.
pub struct Progress {
    bar: Option<ProgressBar>,
    total: u64,
    done: u64,
}

impl Progress {
    /// `total` worker runs to go.
    pub fn new(total: u64) -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let b = ProgressBar::new(total);
            if let Ok(style) = ProgressStyle::with_template(
                "{elapsed_precise} [{bar:30}] {pos}/{len} ETA {eta} {msg}",
            ) {
                b.set_style(style.progress_chars("=> "));
            }
            b
        });
        Progress {
            bar,
            total,
            done: 0,
        }
    }

    /// A message that is not a cell (builds, ...).
    pub fn note(&self, msg: &str) {
        match &self.bar {
            Some(b) => b.println(msg),
            None => eprintln!("{msg}"),
        }
    }

    /// One worker run finished.
    pub fn cell(&mut self, block: u32, label: &str, result: &str) {
        self.done += 1;
        match &self.bar {
            Some(b) => {
                b.set_message(format!("block {block}: {label}: {result}"));
                b.inc(1);
            }
            None => eprintln!(
                "[{}/{}] block {block} {label}: {result}",
                self.done, self.total
            ),
        }
    }

    /// Done (or stopped).
    pub fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}
