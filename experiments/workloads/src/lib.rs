//! The workloads, written once against the [`Cpu`] trait: linked into the paravirtual guest for
//! the `kvm` and `native` backends, called directly by the `sim` backend.
//!
//! `no_std`, no `alloc` (the guest has no heap: fixed arrays and free lists threaded through
//! guest frames), and free of host-side code: the guest links it.
//!
//! - [`Workload`]: the six workloads of DESIGN.md, chosen by name ([`Workload::from_name`]),
//!   run per vCPU with [`Run::run`], each returning a [`Report`] or a [`WorkloadError`]
//!   (a failed self-check is [`WorkloadError::Check`] with the [`CheckFailed`] details).
//! - [`FrameAlloc`], [`PageTables`], [`TlbGather`]: the guest's frame allocator and page-table
//!   manager; every PTE store goes through the direct map with [`Cpu::write_u64`].
//! - [`walk`](walk::walk) over [`PhysRead`]: the reference page walker, for comparing the
//!   guest's tables with a shadow MMU's.
#![no_std]

pub mod cpu;
pub mod error;
pub mod frames;
pub mod hist;
#[cfg(feature = "serde")]
mod hist_serde;
pub mod paging;
pub mod report;
pub mod rng;
pub mod sync;
pub mod tlb;
pub mod walk;
pub mod words;
pub mod workloads;

// Host-side tests only: the mock machine and the property tests use std (threads, Vec).
#[cfg(test)]
extern crate std;
#[cfg(test)]
mod mock;
#[cfg(test)]
mod paging_props;

pub use cpu::{CheckFailed, Cpu, RET};
pub use error::{PtError, ReportWordsError, WorkloadError};
pub use frames::FrameAlloc;
pub use hist::{HistError, Histogram};
pub use paging::{Flags, PageTables};
pub use report::{Params, Report};
pub use tlb::TlbGather;
pub use walk::{walk, Access, FaultKind, PhysRead, Translation, WalkFault};
pub use workloads::{Run, Spec, Workload, MAX_RUN_WORK};
