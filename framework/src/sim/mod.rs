//! The simulated backend: software vCPUs on threads, over the same shadow MMU and pool format
//! as the KVM backend.
//!
//! # API
//!
//! ```text
//! let cfg = SimConfig { vcpus: 2, seed: 1, ram_bytes: 64 << 20, pool_pages: 4096 };
//! let run = sim::run(&cfg, |cpu: &mut SimCpu<'_, BuildPolicy>| workload(cpu))?;   // BuildPolicy
//! let run = sim::run_with::<RmbFence, _, _>(&cfg, |cpu| ..)?;                      // any policy
//! run.results      // Vec<R>, one per vCPU, in vCPU order
//! run.mmu          // MmuStats (serde): faults, unsyncs, syncs, lock acquisitions/wait, ...
//! run.cpus         // Vec<SimCpuStats> (serde): TLB hits, walks, flushes, ...
//! // Each vCPU thread pinned to its own host CPU (crate::pin), recorded in run.pinning:
//! let run = sim::run_with_options::<P, _, _>(&cfg, RunOptions { pin: true }, |cpu| ..)?;
//!
//! // Lower level, for property tests that drive vCPUs by hand:
//! let vm = SimVm::<P>::new(&cfg)?;  let mut cpu = vm.cpu(0)?;
//! cpu.try_write_u64(gva, v)?; cpu.try_load_cr3(root)?; cpu.flush_tlb(); cpu.invlpg(gva);
//! cpu.set_privilege(Privilege::Supervisor); cpu.try_fetch(gva)?;   // user by default
//! cpu.guest_translate(gva) vs cpu.shadow_translate(gva)    // + mmu::check_translation
//! vm.mmu().audit()
//! ```
//!
//! [`SimCpu`] implements the workloads' [`shadowlab_workloads::Cpu`]: reads, writes and
//! instruction fetches, at the vCPU's [`Privilege`] (user by default, as the `kvm` guest runs
//! at CPL3; the #PF error code carries U and I/D as hardware sets them, NX is enforced as with
//! EFER.NXE = 1, and a non-canonical address is #GP before any lookup), go
//! through a software TLB ([`tlb::SoftTlb`], entries kept until INVLPG, flush, CR3 load or a
//! fault on the page) and, on a miss, a hardware-like walk of the shadow tables in the pool
//! that sets their A/D bits ([`crate::mmu::shadow_walk`]); a failed walk enters
//! [`crate::mmu::Mmu::page_fault`], the handler the KVM backend calls on a #PF exit. CR3 loads
//! and TLB flushes run `kvm_mmu_sync_roots` with the build's policy; INVLPG runs
//! `kvm_mmu_invlpg`. Each access runs "in guest mode" (KVM's `vcpu->mode`), so remote TLB
//! flushes requested by other vCPUs are honoured before the next access and wait for an
//! access in flight.
//!
//! Every vCPU boots on its own PML4 with the direct map of guest RAM (see
//! [`crate::mem::boot`]); `Cpu::free_frames` gives it a disjoint range of guest frames and
//! `Cpu::shared_page` the one zeroed page all vCPUs share. Guest RAM is reached through a
//! seeded gfn → mfn permutation, so a backend bug that used a gpa as a machine address would
//! read the wrong frame and fail the workloads' self-checks.
//!
//! A guest-fatal event (a guest page fault the workload did not expect, an MMU error such as a
//! bad CR3) stops that vCPU like a triple fault: inside the `Cpu` methods, which cannot return
//! errors, it unwinds the vCPU's thread with a private payload (no panic message, no panic
//! hook), [`run`] catches it and returns [`SimError::Vcpu`] naming the vCPU and the fault;
//! other vCPUs stop at their next access or `pause()`. A panic of the workload closure itself
//! (e.g. a failed assertion in a test) is propagated unchanged.
//!
//! With one vCPU a run is deterministic for a given seed: the seed draws the gfn → mfn
//! permutation, and nothing else is random.
//!
//! Each vCPU thread runs the closure inside [`crate::measure::shadowlab_measured_region`],
//! within its perf-counter bracket: the region callgrind collects for exact instruction counts.

mod cpu;
pub mod tlb;

use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use shadowlab_policies::SyncPolicy;

pub use crate::mem::boot::{BootOptions, BootTables};
pub use cpu::{Privilege, SimCpu, SimCpuStats};

use crate::measure::shadowlab_measured_region;
use crate::mem::boot::{build_boot_tables, BootError};
use crate::mem::{FrameMap, GuestMemory, MemConfig, MemError};
use crate::mmu::{GuestFault, Mmu, MmuError, MmuStats};
use crate::perf::{PerfCounts, ThreadCounters};
use crate::pin::{self, PinError, Pinning};
use crate::BuildPolicy;

/// Parameters of a simulated VM.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct SimConfig {
    /// vCPUs (threads).
    pub vcpus: usize,
    /// Seed of the gfn → mfn permutation (and of anything a workload derives from it).
    pub seed: u64,
    /// Bytes of guest RAM.
    pub ram_bytes: u64,
    /// Pages in the shadow pool.
    pub pool_pages: u64,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            vcpus: 1,
            seed: 0,
            ram_bytes: 64 << 20,
            pool_pages: 4096,
        }
    }
}

/// Why a simulated vCPU stopped.
#[derive(Debug, thiserror::Error)]
pub enum SimFault {
    /// The guest's tables deny an access the workload made.
    #[error("{0}")]
    Guest(GuestFault),
    /// The MMU failed (bad CR3, pool exhausted, ...).
    #[error("shadow MMU: {0}")]
    Mmu(#[from] MmuError),
    /// An access that is not 8-byte aligned.
    #[error("misaligned 8-byte access at {0:#x}")]
    Misaligned(u64),
    /// The same access kept faulting.
    #[error(
        "access at {gva:#x} faulted {MAX} times in a row without progress",
        MAX = 10_000
    )]
    Livelock {
        /// The address.
        gva: u64,
    },
    /// The MMU asked to emulate a read (only writes are ever emulated).
    #[error("emulation requested for a read at guest-physical {gpa:#x}")]
    UnexpectedEmulation {
        /// Guest-physical address.
        gpa: u64,
    },
    /// [`shadowlab_workloads::Cpu::fetch`] found something other than `ret` at the address
    /// (a workload bug: the guest backends would execute it).
    #[error("fetch at {gva:#x} found opcode byte {byte:#04x}, not ret")]
    NotRet {
        /// The address fetched.
        gva: u64,
        /// The byte found.
        byte: u8,
    },
    /// Another vCPU of the run stopped; this one stopped with it.
    #[error("stopped because another vCPU failed")]
    OtherVcpuFailed,
}

/// Why a simulated run failed.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// The configuration is unusable.
    #[error("bad sim config: {0}")]
    Config(&'static str),
    /// Guest memory could not be set up.
    #[error("guest memory: {0}")]
    Mem(#[from] MemError),
    /// Boot page tables could not be built.
    #[error("boot tables: {0}")]
    Boot(#[from] BootError),
    /// The MMU could not be set up.
    #[error("shadow MMU: {0}")]
    Mmu(#[from] MmuError),
    /// The vCPU threads could not be pinned (`RunOptions::pin`).
    #[error("pinning the vCPU threads: {0}")]
    Pin(#[from] PinError),
    /// A vCPU stopped.
    #[error("vCPU {vcpu}: {fault}")]
    Vcpu {
        /// Which vCPU.
        vcpu: usize,
        /// Why.
        fault: SimFault,
    },
}

/// The unwinding payload that stops a vCPU thread (see the module docs).
pub(crate) struct SimAbort(pub(crate) SimFault);

/// A simulated VM: guest memory, boot tables, the shadow MMU.
pub struct SimVm<P: SyncPolicy> {
    mem: Arc<GuestMemory>,
    mmu: Mmu<P>,
    boot: BootTables,
    aborted: AtomicBool,
    start: Instant,
    cfg: SimConfig,
}

impl<P: SyncPolicy> SimVm<P> {
    /// Builds guest memory (frame map permuted by `cfg.seed`), the boot tables and the MMU.
    pub fn new(cfg: &SimConfig) -> Result<Self, SimError> {
        if cfg.vcpus == 0 {
            return Err(SimError::Config("vcpus must be at least 1"));
        }
        let mem = Arc::new(GuestMemory::new(MemConfig {
            ram_bytes: cfg.ram_bytes,
            pool_pages: cfg.pool_pages,
            frame_map: FrameMap::Permuted { seed: cfg.seed },
        })?);
        // With U, as the kvm backend builds them: the vCPUs run at CPL3 by default.
        let boot = build_boot_tables(&mem, cfg.vcpus, BootOptions { user: true })?;
        let mmu = Mmu::new(Arc::clone(&mem), cfg.vcpus)?;
        Ok(SimVm {
            mem,
            mmu,
            boot,
            aborted: AtomicBool::new(false),
            start: Instant::now(),
            cfg: *cfg,
        })
    }

    /// vCPU `id`, booted on its PML4. Create each vCPU once, on the thread that runs it.
    pub fn cpu(&self, id: usize) -> Result<SimCpu<'_, P>, SimError> {
        if id >= self.cfg.vcpus {
            return Err(SimError::Config("vCPU index out of range"));
        }
        SimCpu::new(self, id).map_err(|fault| SimError::Vcpu { vcpu: id, fault })
    }

    /// The shadow MMU.
    pub fn mmu(&self) -> &Mmu<P> {
        &self.mmu
    }

    /// Guest memory.
    pub fn mem(&self) -> &Arc<GuestMemory> {
        &self.mem
    }

    /// The boot tables (each vCPU's root and free frames).
    pub fn boot(&self) -> &BootTables {
        &self.boot
    }

    /// The configuration.
    pub fn config(&self) -> &SimConfig {
        &self.cfg
    }

    /// vCPUs.
    pub fn nr_vcpus(&self) -> usize {
        self.cfg.vcpus
    }

    fn aborted(&self) -> bool {
        self.aborted.load(Ordering::Relaxed)
    }

    fn set_aborted(&self) {
        self.aborted.store(true, Ordering::Relaxed)
    }

    fn elapsed_ns(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }
}

/// The outcome of [`run`].
#[derive(Debug)]
pub struct SimRun<R> {
    /// What the closure returned on each vCPU, in vCPU order.
    pub results: Vec<R>,
    /// The MMU's counters at the end of the run.
    pub mmu: MmuStats,
    /// Each vCPU's access-path counters.
    pub cpus: Vec<SimCpuStats>,
    /// Each vCPU thread's perf counters over its run of the closure.
    pub perf: Vec<PerfCounts>,
    /// Wall-clock time of the run (threads started to last joined).
    pub elapsed: Duration,
    /// Where each vCPU thread was pinned (`None` if the run did not pin them).
    pub pinning: Option<Pinning>,
}

/// How [`run_with_options`] runs the vCPU threads.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RunOptions {
    /// Pin each vCPU thread to its own host CPU ([`crate::pin::plan`]: round-robin over the
    /// allowed CPUs where vCPUs outnumber them, and `oversubscribed` says so).
    pub pin: bool,
}

/// Runs `f` on `cfg.vcpus` threads, one simulated vCPU each, with the build's policy.
pub fn run<R, F>(cfg: &SimConfig, f: F) -> Result<SimRun<R>, SimError>
where
    R: Send,
    F: Fn(&mut SimCpu<'_, BuildPolicy>) -> R + Sync,
{
    run_with::<BuildPolicy, R, F>(cfg, f)
}

/// [`run`] with the given options, with the build's policy (the worker).
pub fn run_options<R, F>(cfg: &SimConfig, opts: RunOptions, f: F) -> Result<SimRun<R>, SimError>
where
    R: Send,
    F: Fn(&mut SimCpu<'_, BuildPolicy>) -> R + Sync,
{
    run_with_options::<BuildPolicy, R, F>(cfg, opts, f)
}

/// [`run`] with an explicit policy (tests and benchmarks that compare policies in one build).
pub fn run_with<P, R, F>(cfg: &SimConfig, f: F) -> Result<SimRun<R>, SimError>
where
    P: SyncPolicy,
    R: Send,
    F: Fn(&mut SimCpu<'_, P>) -> R + Sync,
{
    run_with_options::<P, R, F>(cfg, RunOptions::default(), f)
}

/// [`run_with`] with options: with `opts.pin`, each vCPU thread first pins itself
/// ([`crate::pin::pin_vcpu`]) to the CPU the plan gives it, and the run records the mapping.
pub fn run_with_options<P, R, F>(
    cfg: &SimConfig,
    opts: RunOptions,
    f: F,
) -> Result<SimRun<R>, SimError>
where
    P: SyncPolicy,
    R: Send,
    F: Fn(&mut SimCpu<'_, P>) -> R + Sync,
{
    let vm = SimVm::<P>::new(cfg)?;
    // Planned on this thread, whose affinity mask the vCPU threads inherit.
    let plan = if opts.pin {
        Some(pin::plan(cfg.vcpus)?)
    } else {
        None
    };
    let t0 = Instant::now();
    type Outcome<R> = Result<(R, SimCpuStats, PerfCounts, Option<usize>), SimError>;
    let outcomes: Vec<Outcome<R>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..cfg.vcpus)
            .map(|id| {
                let (vm, f, plan) = (&vm, &f, &plan);
                s.spawn(move || -> Outcome<R> {
                    // Pinned before anything else, so the vCPU's memory is first touched and
                    // its caches warmed on the CPU it will run on.
                    let pinned = match plan {
                        Some(plan) => Some(
                            pin::pin_vcpu(plan, id)
                                .map_err(SimError::Pin)
                                .inspect_err(|_| vm.set_aborted())?,
                        ),
                        None => None,
                    };
                    let mut cpu = vm.cpu(id).inspect_err(|_| vm.set_aborted())?;
                    // This thread's counters, around the measured region only.
                    let mut counters = ThreadCounters::open();
                    counters.start();
                    let ran = shadowlab_measured_region(|| {
                        catch_unwind(AssertUnwindSafe(|| f(&mut cpu)))
                    });
                    let perf = counters.stop();
                    match ran {
                        Ok(r) => Ok((r, cpu.stats(), perf, pinned)),
                        Err(payload) => match payload.downcast::<SimAbort>() {
                            Ok(abort) => Err(SimError::Vcpu {
                                vcpu: id,
                                fault: abort.0,
                            }),
                            Err(other) => {
                                vm.set_aborted();
                                resume_unwind(other)
                            }
                        },
                    }
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|p| resume_unwind(p)))
            .collect()
    });
    let elapsed = t0.elapsed();
    // Report the first real failure, not the vCPUs that merely stopped with it.
    let mut first_other = None;
    let mut results = Vec::with_capacity(outcomes.len());
    let mut cpus = Vec::with_capacity(outcomes.len());
    let mut perf = Vec::with_capacity(outcomes.len());
    let mut pinning = plan.as_ref().map(Pinning::unfilled);
    for (id, o) in outcomes.into_iter().enumerate() {
        match o {
            Ok((r, s, p, cpu)) => {
                results.push(r);
                cpus.push(s);
                perf.push(p);
                if let Some(pinning) = pinning.as_mut() {
                    pinning.map[id] = cpu;
                }
            }
            Err(SimError::Vcpu {
                fault: SimFault::OtherVcpuFailed,
                vcpu,
            }) => {
                first_other.get_or_insert(SimError::Vcpu {
                    vcpu,
                    fault: SimFault::OtherVcpuFailed,
                });
            }
            Err(e) => return Err(e),
        }
    }
    if let Some(e) = first_other {
        return Err(e);
    }
    Ok(SimRun {
        results,
        mmu: vm.mmu.stats(),
        cpus,
        perf,
        elapsed,
        pinning,
    })
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod fetch_race;
