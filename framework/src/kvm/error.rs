//! The KVM backend's errors: one variant per failing operation.

use thiserror::Error;

use super::report::GuestFailure;

pub use super::vcpu_fd::Errno;

/// Everything that can stop a KVM-backed run.
#[derive(Debug, Error)]
pub enum KvmError {
    /// `/dev/kvm` could not be opened.
    #[error("/dev/kvm not available: {0}")]
    OpenKvm(#[source] Errno),
    /// KVM_GET_API_VERSION returned something other than 12.
    #[error("KVM API version {0}, expected 12")]
    ApiVersion(i32),
    /// A capability the backend needs is absent.
    #[error("KVM lacks the capability {0}")]
    MissingCap(&'static str),
    /// KVM_CREATE_VM failed.
    #[error("KVM_CREATE_VM: {0}")]
    CreateVm(#[source] Errno),
    /// KVM_GET_SUPPORTED_CPUID failed.
    #[error("KVM_GET_SUPPORTED_CPUID: {0}")]
    GetSupportedCpuid(#[source] Errno),
    /// A memslot could not be set.
    #[error(transparent)]
    Memslot(#[from] super::memslot::MemslotError),
    /// A vCPU ioctl failed.
    #[error(transparent)]
    Vcpu(#[from] super::vcpu_fd::VcpuError),
    /// KVM_GET_STATS_FD failed.
    #[error("KVM_GET_STATS_FD: {0}")]
    GetStatsFd(#[source] std::io::Error),
    /// Reading the binary stats' header failed.
    #[error("reading the KVM binary stats header: {0}")]
    ReadStatsHeader(#[source] std::io::Error),
    /// Reading the binary stats' descriptors failed.
    #[error("reading the KVM binary stats descriptors: {0}")]
    ReadStatsDescriptors(#[source] std::io::Error),
    /// Reading the binary stats' data failed.
    #[error("reading the KVM binary stats data: {0}")]
    ReadStatsData(#[source] std::io::Error),
    /// The binary stats' header or a descriptor is not what the KVM API describes.
    #[error("malformed KVM binary stats: {what}")]
    MalformedStats {
        /// Which part (`header`, `implausible header`, `descriptor`).
        what: &'static str,
    },
    /// More vCPUs than this host's KVM allows (KVM_CAP_MAX_VCPUS).
    #[error("{vcpus} vCPUs, KVM allows {max}")]
    TooManyVcpusForKvm {
        /// vCPUs asked for.
        vcpus: usize,
        /// KVM's limit.
        max: usize,
    },
    /// A vCPU count outside what the boot plan supports.
    #[error("{vcpus} vCPUs: must be 1..={max}")]
    VcpuCount {
        /// vCPUs asked for.
        vcpus: usize,
        /// The most the guest layout has room for.
        max: usize,
    },
    /// A guest RAM size that is not a multiple of 2 MiB in the allowed range.
    #[error("guest RAM {bytes:#x}: must be a multiple of 2 MiB in {min:#x}..={max:#x}")]
    RamSize {
        /// Bytes asked for.
        bytes: u64,
        /// Smallest allowed.
        min: u64,
        /// Largest allowed.
        max: u64,
    },
    /// Guest RAM plus the shadow pool reach the monitor's guest-physical address.
    #[error("RAM + shadow pool end at {end:#x}, past the monitor's address {monitor:#x}")]
    PoolOverlapsMonitor {
        /// Where RAM + pool end.
        end: u64,
        /// The monitor's address.
        monitor: u64,
    },
    /// The shadow MMU gave a vCPU no root after loading its boot CR3 (a VMM bug).
    #[error("vCPU {vcpu} has no shadow root after loading its boot CR3")]
    NoShadowRoot {
        /// vCPU index.
        vcpu: usize,
    },
    /// The run's per-vCPU parts disagree in number (a VMM bug).
    #[error("{vcpus} vCPUs but {kicks} kick states, {plans} boot plans, {cr3s} CR3s")]
    VcpuPartsMismatch {
        /// vCPUs.
        vcpus: usize,
        /// Kick states.
        kicks: usize,
        /// Boot plans.
        plans: usize,
        /// Boot CR3s.
        cr3s: usize,
    },
    /// The guest ELF is malformed or does not fit.
    #[error("guest image: {0}")]
    Elf(#[from] super::elf::ElfError),
    /// Guest RAM is too small for the image, tables, stacks and frames.
    #[error("guest RAM of {ram:#x} bytes too small: {what}")]
    RamTooSmall {
        /// RAM size.
        ram: u64,
        /// What did not fit.
        what: String,
    },
    /// Mapping guest memory failed, or a VMM access to it was out of bounds (a VMM bug:
    /// guest-supplied addresses are validated before they get here).
    #[error("guest memory: {0}")]
    Memory(#[from] crate::mem::MemError),
    /// Setting up the shadow MMU failed.
    #[error("shadow MMU: {0}")]
    Mmu(#[from] crate::mmu::MmuError),
    /// Mapping the shadow pool into the monitor, or filling a replay data page, failed.
    #[error("monitor: {0}")]
    Monitor(#[from] super::monitor::MonitorError),
    /// Installing the kick signal handler failed.
    #[error("installing the vCPU kick signal handler: {0}")]
    SignalHandler(std::io::Error),
    /// Planning or applying the vCPU threads' CPU pinning failed.
    #[error("pinning vCPU threads: {0}")]
    Pin(#[from] crate::pin::PinError),
    /// Spawning a vCPU thread failed.
    #[error("spawning the thread of vCPU {vcpu}: {source}")]
    SpawnThread {
        /// vCPU index.
        vcpu: usize,
        /// The OS error.
        source: std::io::Error,
    },
    /// A vCPU thread panicked (a VMM bug).
    #[error("the thread of vCPU {0} panicked")]
    VcpuThreadPanicked(usize),
    /// The guest failed: an assertion, an exception, a triple fault, an internal error, an
    /// unexpected exit or the watchdog.
    #[error("vCPU {vcpu}: {failure}")]
    GuestFailed {
        /// vCPU index.
        vcpu: usize,
        /// What happened, with registers and the last message.
        failure: Box<GuestFailure>,
    },
}
