//! Whether performance counters work here, tried with `perf_event_open` (the `perf-event`
//! crate): a hardware `instructions` counter and a software `task-clock`.

use std::fmt;

use perf_event::events::{Hardware, Software};
use perf_event::Builder;
use serde::{Deserialize, Serialize};

/// Which counters are available.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PerfInfo {
    /// A hardware `instructions` counter opened and counted.
    pub hw_instructions: bool,
    /// Why not, if not.
    pub hw_error: Option<String>,
    /// A software `task-clock` counter opened and counted.
    pub sw_task_clock: bool,
    /// Why not, if not.
    pub sw_error: Option<String>,
}

/// Opens a counter of `kind` on this thread, runs a little work, and checks it counted.
fn try_counter<K: Into<perf_event::events::Event>>(kind: K) -> Result<u64, String> {
    let mut c = Builder::new()
        .kind(kind)
        .build()
        .map_err(|e| e.to_string())?;
    c.enable().map_err(|e| e.to_string())?;
    let mut x = 0u64;
    for i in 0..100_000u64 {
        x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(i));
    }
    c.disable().map_err(|e| e.to_string())?;
    let n = c.read().map_err(|e| e.to_string())?;
    if n == 0 {
        return Err("opened but counted nothing".into());
    }
    Ok(n)
}

impl PerfInfo {
    /// Tries the counters.
    pub fn detect() -> Self {
        let hw = try_counter(Hardware::INSTRUCTIONS);
        let sw = try_counter(Software::TASK_CLOCK);
        Self {
            hw_instructions: hw.is_ok(),
            hw_error: hw.err(),
            sw_task_clock: sw.is_ok(),
            sw_error: sw.err(),
        }
    }
}

impl fmt::Display for PerfInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.hw_error {
            None => write!(f, "hardware counters yes")?,
            Some(e) => write!(f, "hardware counters NO ({e})")?,
        }
        match &self.sw_error {
            None => write!(f, "; software counters yes"),
            Some(e) => write!(f, "; software counters NO ({e})"),
        }
    }
}
