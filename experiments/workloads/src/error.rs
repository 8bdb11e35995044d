//! The errors a workload can stop with.
//!
//! Hand-written `Display` and `core::error::Error` instead of `thiserror`: this crate is linked
//! into the `no_std` guest, and the workspace's `thiserror` is built with its `std` feature.

use core::fmt;

use crate::cpu::CheckFailed;
use crate::walk::WalkFault;

/// A page-table or frame-allocator operation that could not be done.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PtError {
    /// No free guest frame is left in this vCPU's `free_frames()`.
    OutOfFrames,
    /// A frame handed back to the allocator is not one it gave out (or is not page-aligned).
    BadFrame {
        /// The guest-physical address passed.
        gpa: u64,
    },
    /// `map` of an address whose leaf PTE is already present.
    AlreadyMapped {
        /// The virtual address.
        gva: u64,
    },
    /// `unmap`/`protect`/`remap` of an address that is not mapped.
    NotMapped {
        /// The virtual address.
        gva: u64,
    },
    /// A virtual address that is non-canonical, unaligned, or in the direct-map or monitor
    /// slot, which the page-table manager never edits.
    BadAddress {
        /// The virtual address.
        gva: u64,
    },
    /// A PML4 slot that may not be shared into a new root (the monitor's, or out of range).
    BadSlot {
        /// The slot.
        slot: usize,
    },
    /// An upper-level entry has PS set: large pages are not used in this layout.
    LargePage {
        /// The virtual address.
        gva: u64,
        /// The level of the entry (3 = PDPTE, 2 = PDE).
        level: u32,
    },
}

impl fmt::Display for PtError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            PtError::OutOfFrames => write!(f, "out of guest frames"),
            PtError::BadFrame { gpa } => write!(f, "frame {gpa:#x} was not allocated here"),
            PtError::AlreadyMapped { gva } => write!(f, "{gva:#x} is already mapped"),
            PtError::NotMapped { gva } => write!(f, "{gva:#x} is not mapped"),
            PtError::BadAddress { gva } => {
                write!(f, "{gva:#x} is not a workload address (non-canonical, unaligned or reserved slot)")
            }
            PtError::BadSlot { slot } => write!(f, "PML4 slot {slot} cannot be shared"),
            PtError::LargePage { gva, level } => {
                write!(f, "large page at level {level} on the walk of {gva:#x}")
            }
        }
    }
}

impl core::error::Error for PtError {}

/// Why a workload run stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WorkloadError {
    /// A self-check failed: something read through a virtual address is not what was mapped.
    Check(CheckFailed),
    /// A page-table operation failed.
    PageTable(PtError),
    /// The guest's own page tables do not translate an address the workload relies on.
    Walk(WalkFault),
    /// The parameters do not fit the run (a vCPU id outside the run's vCPUs).
    BadParams {
        /// Which parameter and why.
        what: &'static str,
    },
    /// A parameter is outside the range this workload accepts with these parameters and this
    /// vCPU count (see [`crate::workloads::Spec::check`]).
    OutOfRange {
        /// The workload's name.
        workload: &'static str,
        /// The parameter (`"size"`, `"iters"`).
        param: &'static str,
        /// The value given.
        value: u64,
        /// Smallest value accepted.
        min: u64,
        /// Largest value accepted.
        max: u64,
        /// What the parameter counts and why the bound is what it is.
        note: &'static str,
    },
    /// Another vCPU of the run failed (and said so on the shared page) while this one waited
    /// for it.
    PeerFailed,
    /// A wait for the other vCPUs spun [`crate::sync::SPIN_LIMIT`] times without progress.
    Timeout {
        /// What was waited for.
        what: &'static str,
    },
}

impl fmt::Display for WorkloadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WorkloadError::Check(c) => write!(
                f,
                "self-check failed: {} at {:#x}: expected {:#x}, found {:#x}",
                c.what, c.gva, c.expected, c.found
            ),
            WorkloadError::PageTable(e) => write!(f, "page-table operation failed: {e}"),
            WorkloadError::Walk(w) => write!(f, "guest page-table walk failed: {w:?}"),
            WorkloadError::BadParams { what } => write!(f, "bad parameters: {what}"),
            WorkloadError::OutOfRange {
                workload,
                param,
                value,
                min,
                max,
                note,
            } => write!(
                f,
                "--{param} {value} is out of range {min}..={max} for {workload} ({note})"
            ),
            WorkloadError::PeerFailed => write!(f, "another vCPU of the run failed"),
            WorkloadError::Timeout { what } => write!(f, "timed out waiting for {what}"),
        }
    }
}

impl core::error::Error for WorkloadError {}

impl From<CheckFailed> for WorkloadError {
    fn from(c: CheckFailed) -> Self {
        WorkloadError::Check(c)
    }
}

impl From<PtError> for WorkloadError {
    fn from(e: PtError) -> Self {
        WorkloadError::PageTable(e)
    }
}

impl From<WalkFault> for WorkloadError {
    fn from(w: WalkFault) -> Self {
        WorkloadError::Walk(w)
    }
}

/// Why a report block's words (`shadowlab_abi::report_words`) are not a [`crate::Report`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReportWordsError {
    /// Not exactly `report_words::TOTAL` words.
    Length {
        /// Words given.
        len: usize,
    },
    /// The latency histogram is inconsistent.
    Histogram(crate::hist::HistError),
}

impl fmt::Display for ReportWordsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReportWordsError::Length { len } => write!(
                f,
                "report block of {len} words (expected {})",
                shadowlab_abi::report_words::TOTAL
            ),
            ReportWordsError::Histogram(e) => write!(f, "report block: {e}"),
        }
    }
}

impl core::error::Error for ReportWordsError {
    fn source(&self) -> Option<&(dyn core::error::Error + 'static)> {
        match self {
            ReportWordsError::Length { .. } => None,
            ReportWordsError::Histogram(e) => Some(e),
        }
    }
}
