//! How to run: the configuration of a KVM-backed run and its choices.

use std::time::Duration;

pub use shadowlab_schema::HostCoherence;

use super::layout::DEFAULT_RAM;

/// How the guest's hypercalls reach the VMM.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum HypercallPath {
    /// Port I/O (`out`), as the ABI is specified. On a host that refuses CPL3 port I/O the
    /// `out` arrives as a #GP through the monitor and is emulated by the VMM.
    PortIo,
    /// Stores to the MMIO window (`shadowlab_abi::HYPERCALL_MMIO_GPA`): one exit.
    Mmio,
    /// MMIO on a software-virtualised host (`/sys/module/kvm_pvm`, see the
    /// [host notes](super#this-host)), port I/O elsewhere.
    Auto,
}

impl HypercallPath {
    /// Resolves `Auto` on this host.
    pub fn resolve(self) -> HypercallPath {
        match self {
            HypercallPath::Auto if std::path::Path::new("/sys/module/kvm_pvm").exists() => {
                HypercallPath::Mmio
            }
            HypercallPath::Auto => HypercallPath::PortIo,
            p => p,
        }
    }
}

/// Broken machine state a test may ask for, to exercise the VMM's failure reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultInjection {
    /// Boot the vCPUs with an empty IDT (limit 0): any guest exception becomes a triple fault
    /// (the guest itself cannot break the monitor's IDT: it runs at CPL3).
    NoIdt,
    /// `kvm` backend: handle the MMU's TLB-flush requests without making the host drop its
    /// shadows of the pool, i.e. without the remote/local flush (no replay, no memslot
    /// cycle). Stale translations follow, and the workloads' self-checks must catch them.
    SkipHostFlush,
    /// `kvm` backend, [`HostCoherence::Replay`]: run the replay routine without its stores
    /// (only its CR3 reload), to show that the stores in guest context are what makes the
    /// host drop its stale translations.
    ReplayWithoutStores,
}

/// Default of [`RunConfig::replay_page_zap_min`], as measured ([host notes](super#this-host):
/// whole-page replays).
pub const DEFAULT_REPLAY_PAGE_ZAP_MIN: usize = 4;

/// How to run.
#[derive(Clone, Debug, PartialEq)]
pub struct RunConfig {
    /// vCPUs.
    pub nr_vcpus: usize,
    /// Guest RAM in bytes (multiple of 2 MiB).
    pub ram_size: u64,
    /// The watchdog: a run that has not finished by then is stopped and fails.
    pub timeout: Duration,
    /// The hypercall path.
    pub hypercall: HypercallPath,
    /// Deliberately broken state, for tests of the failure reports.
    pub inject: Option<FaultInjection>,
    /// Pages in the shadow pool (`kvm` backend).
    pub pool_pages: u64,
    /// How the `kvm` backend keeps the host coherent with its SPTE changes.
    pub host_coherence: HostCoherence,
    /// [`HostCoherence::Replay`]: a pool page with at least this many changed SPTEs in one
    /// replay is dropped by the host as a whole (one store) rather than entry by entry
    /// (`usize::MAX`: never; 1: always).
    pub replay_page_zap_min: usize,
    /// [`HostCoherence::Replay`]: always enter the replay routine by hand (saved and restored
    /// registers), the fallback normally taken only when an event is already being delivered
    /// to the guest. For tests of that path.
    pub replay_by_hand: bool,
    /// Pin each vCPU thread to its own host CPU where there are enough ([`crate::pin`]).
    pub pin: bool,
}

impl Default for RunConfig {
    fn default() -> Self {
        Self {
            nr_vcpus: 1,
            ram_size: DEFAULT_RAM,
            timeout: Duration::from_secs(60),
            hypercall: HypercallPath::Auto,
            inject: None,
            pool_pages: 4096,
            host_coherence: HostCoherence::Replay,
            replay_page_zap_min: DEFAULT_REPLAY_PAGE_ZAP_MIN,
            replay_by_hand: false,
            pin: false,
        }
    }
}
