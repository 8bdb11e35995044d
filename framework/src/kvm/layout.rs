//! The VM's guest-physical layout and memslots.
//!
//! ```text
//! gpa 0 .. ram_size            memslot 0: guest RAM (<= 2 GiB, so a ucall's 32-bit gpa reaches it)
//!   0x1000                     boot-info page (shadowlab-abi::BOOT_INFO_GPA)
//!   0x2000                     shared page (start barrier, workload coordination)
//!   0x100000                   guest image (linked at DIRECT_MAP_BASE + 0x100000)
//!   after the image            per-vCPU guard page + stack, boot page tables, free frames
//! MONITOR_GPA .. +MONITOR_SIZE memslot 1: the VMM's monitor (GDT, IDT, stubs, TSSes, the
//!                              monitor's page tables, IST stacks), mapped at MONITOR_BASE
//!                              (PML4 slot 511), supervisor-only; its tables also map the shadow
//!                              pool at `monitor::POOL_VA` (kvm backend: the replay routine's
//!                              SPTE stores). Outside guest RAM: the guest's frame allocator can
//!                              never hand it out.
//! SHADOW_POOL_GPA ..           memslot 2 (kvm backend): the shadow MMU's page-table pool.
//! ```

/// Memslot of guest RAM.
pub const RAM_SLOT: u32 = 0;
/// Memslot of the monitor.
pub const MONITOR_SLOT: u32 = 1;
/// Memslot of the shadow pool (kvm backend).
pub const SHADOW_POOL_SLOT: u32 = 2;

/// Guest-physical base of the monitor.
pub const MONITOR_GPA: u64 = 0x1_0000_0000;
/// Guest-physical base of the shadow pool.
pub const SHADOW_POOL_GPA: u64 = 0x2_0000_0000;

/// Guest-physical address of the shared page.
pub const SHARED_GPA: u64 = 0x2000;

/// Smallest guest RAM accepted.
pub const MIN_RAM: u64 = 4 << 20;
/// Largest guest RAM accepted (ucall messages are addressed with 32 bits).
pub const MAX_RAM: u64 = 2 << 30;
/// Default guest RAM.
pub const DEFAULT_RAM: u64 = 64 << 20;

/// Stack of each vCPU (below it, one unmapped guard page). The guest's frame for a workload
/// holds its `Report` and the report block (15 KiB each, mostly the latency histogram's
/// buckets) plus whatever the inlined workloads keep (the race workloads hold a report per
/// role): 64 KiB overflowed once `relink-race` was added, so there is room to spare.
pub const STACK_SIZE: u64 = 256 << 10;
