//! The monitor's set-up and replay errors.

use super::layout::REPLAY_CAPACITY;
use crate::mem::MemError;

/// A monitor set-up step that failed.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum MonitorError {
    /// The pool does not fit the monitor's pool mapping.
    #[error("shadow pool of {pool_bytes} bytes does not fit the monitor's mapping (4 GiB)")]
    PoolTooLarge {
        /// Pool size.
        pool_bytes: u64,
    },
    /// More SPTE addresses than one replay data page holds.
    #[error("{0} SPTE addresses for one replay (at most {REPLAY_CAPACITY})")]
    ReplayTooLong(usize),
    /// Writing the monitor failed.
    #[error("monitor memory: {0}")]
    Mem(#[from] MemError),
}
