//! Guest memory, shared by every backend.
//!
//! - [`MemRegion`]: one anonymous mmap; every access is a bounds- and alignment-checked
//!   volatile or atomic operation returning [`MemError`]; no Rust reference into guest memory
//!   is ever handed out. The KVM backend registers `host_addr()`/`len()` as one memslot at
//!   guest-physical 0.
//! - [`GuestMemory`]: the machine-physical layout on top of it (guest RAM backing frames, the
//!   shadow pool, the monitor area) and the gfn → mfn map ([`FrameMap`], a seeded permutation
//!   unless `Identity` is asked for).
//! - [`GuestPhys`]: guest-physical memory as the VMM's exit handling sees it, implemented by
//!   both (identity for a region, through the frame map for [`GuestMemory`]).
//! - [`boot`]: boot page tables (the direct map of guest RAM) for each vCPU.

pub mod boot;
mod layout;
mod phys;
mod region;

pub use layout::{FrameMap, GuestMemory, MemConfig, MONITOR_FRAMES};
pub use phys::GuestPhys;
pub use region::{MemError, MemRegion, PAGE_SIZE};
