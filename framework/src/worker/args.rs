//! The worker's command line.

use clap::Parser;

pub use shadowlab_schema::{Backend, HostCoherence};

/// `shadowlab-vmm`: runs one workload on one backend with the shadow-sync policy this binary
/// was built with, and prints one JSON result on stdout.
#[derive(Parser, Debug, Clone)]
#[command(name = "shadowlab-vmm", disable_version_flag = true)]
pub struct WorkerArgs {
    /// Print the version and the build's policy, then exit.
    #[arg(long, short = 'V')]
    pub version: bool,
    /// Backend.
    #[arg(long, value_enum, default_value_t = Backend::Sim)]
    pub backend: Backend,
    /// Workload: cr3-switch, pt-churn, unsync-race, mmap-churn, fault-storm, exit-floor,
    /// relink-race.
    #[arg(long, required_unless_present = "version")]
    pub workload: Option<String>,
    /// vCPUs.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub vcpus: u32,
    /// Iterations of the workload's main loop (0: the workload's default). At most 10^9
    /// page-level operations per run (shadowlab_workloads::MAX_RUN_WORK): the
    /// bound is `10^9 / work per iteration`, checked before the guest boots.
    #[arg(long, default_value_t = 0)]
    pub iters: u64,
    /// The workload's size knob (0: the workload's default).
    #[arg(long, default_value_t = 0)]
    pub size: u64,
    /// Seed for the workload's data and for the gfn → backing-frame map.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Guest RAM in MiB.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(4..=4096))]
    pub ram_mib: u64,
    /// Shadow-page pool size in 4 KiB pages.
    #[arg(long, default_value_t = 4096, value_parser = clap::value_parser!(u64).range(16..=1_048_576))]
    pub pool_pages: u64,
    /// Watchdog for the kvm and native backends, seconds: a run not done by then fails.
    #[arg(long, default_value_t = 600, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub timeout_s: u64,
    /// `kvm` backend: how the host is kept coherent with SPTE changes: `replay` (re-store the
    /// changed SPTEs in guest context, the default) or `cycle-slot` (delete and re-add the
    /// pool's memslot with the vCPUs parked; the slower first design, for comparison).
    #[arg(long, value_enum, default_value_t = HostCoherence::Replay)]
    pub host_coherence: HostCoherence,
    /// `--host-coherence replay`: a pool page with at least this many changed SPTEs in one
    /// replay is dropped by the host as a whole (one store) rather than entry by entry.
    #[arg(long, default_value_t = crate::kvm::DEFAULT_REPLAY_PAGE_ZAP_MIN as u64, value_parser = clap::value_parser!(u64).range(1..))]
    pub replay_page_zap_min: u64,
    /// Pin each vCPU thread to its own host CPU (of those the process may use), round-robin
    /// where vCPUs outnumber them; the result records the mapping and `oversubscribed`.
    /// Every backend: sim, kvm and native pin their vCPU threads the same way.
    #[arg(long)]
    pub pin: bool,
    /// Allow running a build of an UNSOUND policy (the no-barrier negative control).
    #[arg(long)]
    pub allow_unsound: bool,
}
