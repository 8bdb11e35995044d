//! The six workloads of DESIGN.md, `relink-race` (issue 7), and the [`Workload`] enum that
//! dispatches between them.
//!
//! Every vCPU of a run calls [`Run::run`] on the same `Workload` value with its own [`Cpu`] and
//! gets its own [`Report`]. Only `unsync-race` and `relink-race` coordinate their vCPUs; the
//! others run the same loop independently on each vCPU, each in address spaces of its own
//! built from its own `free_frames()` (so N vCPUs of `pt-churn` contend for the VMM's MMU lock,
//! not for data).
//!
//! Self-checks: every data frame is stamped through the direct map with
//! [`pattern`](crate::rng::pattern)`(seed, gpa, round)` in word 0 and its complement in word 511,
//! and the workload reads both back through its own virtual address after each change of the
//! mapping and the invalidation a kernel would issue. A stale or wrong translation reads another
//! frame's or another round's value and the run stops with [`WorkloadError::Check`].

use enum_dispatch::enum_dispatch;

use crate::cpu::{CheckFailed, Cpu};
use crate::error::WorkloadError;
use crate::report::{Counted, Params, Report};
use core::ops::RangeInclusive;
use shadowlab_abi::layout::{direct_map, PAGE_SIZE, PT_ENTRIES};

mod cr3_switch;
mod exit_floor;
mod fault_storm;
mod mmap_churn;
mod pt_churn;
mod relink_race;
mod unsync_race;

pub use cr3_switch::Cr3Switch;
pub use exit_floor::ExitFloor;
pub use fault_storm::FaultStorm;
pub use mmap_churn::MmapChurn;
pub use pt_churn::PtChurn;
pub use relink_race::RelinkRace;
pub use unsync_race::UnsyncRace;

/// What every workload does. Implemented once, for every [`Spec`], by the blanket impl below;
/// [`Workload`] dispatches it to the workload it holds.
#[enum_dispatch]
pub trait Run {
    /// The workload's CLI name (`"pt-churn"`).
    fn name(&self) -> &'static str;
    /// Its parameters.
    fn params(&self) -> Params;
    /// The `ops` a successful run reports on each vCPU, as the parameters imply.
    fn expected_ops(&self) -> u64;
    /// Checks every parameter against what the workload accepts on `nr_vcpus` vCPUs: the size
    /// range ([`Spec::check`]) and the run-length bound on `iters` ([`MAX_RUN_WORK`]). [`Run::run`]
    /// does this first on every vCPU; a VMM calls it before it boots a guest.
    fn validate(&self, nr_vcpus: usize) -> Result<(), WorkloadError>;
    /// At most how many frames of its `free_frames()` any one vCPU allocates at once
    /// ([`Spec::frames_needed`]); meaningful once [`Run::validate`] has passed.
    fn frames_needed(&self, nr_vcpus: usize) -> u64;
    /// Runs it on one vCPU; every vCPU of the run calls this. Leaves the vCPU on its boot root.
    fn run<C: Cpu>(&self, cpu: &mut C) -> Result<Report, WorkloadError>;
}

/// Most page-level operations (CR3 loads, PTE writes, invalidations, touches, hypercalls) one
/// run may do per vCPU, as [`Spec::work_per_iter`] counts them: `iters` is capped at
/// `MAX_RUN_WORK / work_per_iter`. On the slowest backend measured (`kvm` on a nested host,
/// ~100 µs per exit) a run where every one of them exits ends within about a day; on `sim`
/// (~0.1-1 µs each) within minutes. A run can therefore not silently take days, nor overflow
/// the op counters (`iters = u64::MAX` is an error, not a run until the watchdog).
pub const MAX_RUN_WORK: u64 = 1_000_000_000;

/// One workload: what it is called, its defaults, what it accepts and how much it needs, and
/// its measured body. `impl<W: Spec> Run for W` turns this into a [`Run`]: the prologue
/// (validation, the [`Counted`] wrapper, an empty [`Report`]) and the epilogue (filling in the
/// counted MMU operations) are written there once.
pub trait Spec {
    /// The CLI name (`"pt-churn"`).
    const NAME: &'static str;
    /// The default parameters.
    const DEFAULT: Params;

    /// This instance's parameters.
    fn params(&self) -> Params;

    /// The `ops` a successful run reports on each vCPU. One op per iteration unless the
    /// workload says otherwise.
    fn expected_ops(p: Params) -> u64 {
        p.iters
    }

    /// Checks the workload's own parameters (`size`, per vCPU count where it matters);
    /// `iters` is bounded by [`Run::validate`] through [`Spec::work_per_iter`].
    fn check(p: Params, nr_vcpus: usize) -> Result<(), WorkloadError>;

    /// Page-level operations one iteration does on the busiest vCPU, roughly (an upper bound
    /// within a small factor), for the [`MAX_RUN_WORK`] bound. Called after [`Spec::check`].
    fn work_per_iter(_p: Params, _nr_vcpus: usize) -> u64 {
        1
    }

    /// At most how many frames any one vCPU allocates from its `free_frames()` at once (data
    /// frames, page-table pages, roots), counting frames freed and reused once. Called after
    /// [`Spec::check`]; the workload tests run every workload with exactly this many.
    fn frames_needed(p: Params, nr_vcpus: usize) -> u64;

    /// The workload on one vCPU, after validation: fills `report` (ops, checks, PTE writes,
    /// latency); the blanket [`Run::run`] adds the counted MMU operations.
    fn body<C: Cpu>(
        &self,
        cpu: &mut Counted<'_, C>,
        report: &mut Report,
    ) -> Result<(), WorkloadError>;
}

impl<W: Spec> Run for W {
    fn name(&self) -> &'static str {
        W::NAME
    }

    fn params(&self) -> Params {
        Spec::params(self)
    }

    fn expected_ops(&self) -> u64 {
        W::expected_ops(Spec::params(self))
    }

    fn validate(&self, nr_vcpus: usize) -> Result<(), WorkloadError> {
        let p = Spec::params(self);
        if nr_vcpus == 0 {
            return Err(WorkloadError::BadParams {
                what: "a run needs at least one vCPU",
            });
        }
        W::check(p, nr_vcpus)?;
        let per_iter = W::work_per_iter(p, nr_vcpus).max(1);
        in_range(
            W::NAME,
            "iters",
            p.iters,
            1..=(MAX_RUN_WORK / per_iter).max(1),
            "iterations; a run is capped at 10^9 page-level operations, MAX_RUN_WORK",
        )
    }

    fn frames_needed(&self, nr_vcpus: usize) -> u64 {
        W::frames_needed(Spec::params(self), nr_vcpus)
    }

    fn run<C: Cpu>(&self, cpu: &mut C) -> Result<Report, WorkloadError> {
        self.validate(cpu.nr_vcpus())?;
        require(cpu.id() < cpu.nr_vcpus(), "vCPU id out of range")?;
        let mut cpu = Counted::new(cpu);
        let mut report = Report::default();
        self.body(&mut cpu, &mut report)?;
        cpu.fill(&mut report);
        Ok(report)
    }
}

/// Times ops back to back: each [`OpTimer::lap`] records the time since the previous lap (or
/// the start) as one op's latency and counts the op.
pub(crate) struct OpTimer {
    t: u64,
}

impl OpTimer {
    /// Starts timing now.
    pub(crate) fn start<C: Cpu>(cpu: &mut C) -> Self {
        OpTimer { t: cpu.timestamp() }
    }

    /// One op ended now.
    pub(crate) fn lap<C: Cpu>(&mut self, cpu: &mut C, report: &mut Report) {
        let now = cpu.timestamp();
        report.latency.record(now.wrapping_sub(self.t));
        self.t = now;
        report.ops += 1;
    }

    /// `n` ops (`n >= 1`) ended now: one latency sample of their mean, `n` ops counted. A
    /// timestamp earlier than the previous lap's fails the check `what`.
    pub(crate) fn lap_batch<C: Cpu>(
        &mut self,
        cpu: &mut C,
        report: &mut Report,
        n: u64,
        what: &'static str,
    ) -> Result<(), CheckFailed> {
        let now = cpu.timestamp();
        if now < self.t {
            return Err(CheckFailed {
                what,
                gva: 0,
                expected: self.t,
                found: now,
            });
        }
        report.latency.record((now - self.t) / n);
        self.t = now;
        report.ops += n;
        Ok(())
    }
}

/// `Err(OutOfRange)` unless `value` is in `range`.
pub(crate) fn in_range(
    workload: &'static str,
    param: &'static str,
    value: u64,
    range: RangeInclusive<u64>,
    note: &'static str,
) -> Result<(), WorkloadError> {
    if range.contains(&value) {
        Ok(())
    } else {
        Err(WorkloadError::OutOfRange {
            workload,
            param,
            value,
            min: *range.start(),
            max: *range.end(),
            note,
        })
    }
}

/// At most how many page-table pages (PDPT, PDs, PTs) mapping `pages` consecutive pages from a
/// 1 GiB-aligned address in a PML4 slot of their own takes (WORKLOAD_BASE is 512 GiB aligned).
pub(crate) const fn table_frames(pages: u64) -> u64 {
    let entries = PT_ENTRIES as u64;
    1 + pages.div_ceil(entries * entries) + pages.div_ceil(entries)
}

/// One of the workloads, with its parameters. Dispatch is `enum_dispatch` (a `match`, no
/// `dyn`); the hot loops inside each workload are monomorphic in the `Cpu`.
#[enum_dispatch(Run)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Workload {
    /// `cr3-switch`.
    Cr3Switch,
    /// `pt-churn`.
    PtChurn,
    /// `unsync-race`.
    UnsyncRace,
    /// `mmap-churn`.
    MmapChurn,
    /// `fault-storm`.
    FaultStorm,
    /// `exit-floor`.
    ExitFloor,
    /// `relink-race`.
    RelinkRace,
}

impl Workload {
    /// Every workload, with its default parameters, in DESIGN.md's order, then `relink-race`
    /// (last, so that the guest's workload numbers of the first six stay the same).
    pub const ALL: [Workload; 7] = [
        Workload::Cr3Switch(Cr3Switch {
            params: Cr3Switch::DEFAULT,
        }),
        Workload::PtChurn(PtChurn {
            params: PtChurn::DEFAULT,
        }),
        Workload::UnsyncRace(UnsyncRace {
            params: UnsyncRace::DEFAULT,
        }),
        Workload::MmapChurn(MmapChurn {
            params: MmapChurn::DEFAULT,
        }),
        Workload::FaultStorm(FaultStorm {
            params: FaultStorm::DEFAULT,
        }),
        Workload::ExitFloor(ExitFloor {
            params: ExitFloor::DEFAULT,
        }),
        Workload::RelinkRace(RelinkRace {
            params: RelinkRace::DEFAULT,
        }),
    ];

    /// The workload called `name`, with its default parameters.
    pub fn from_name(name: &str) -> Option<Workload> {
        Self::ALL.into_iter().find(|w| w.name() == name)
    }

    /// The names of all workloads (for the CLI's help and error messages).
    pub fn names() -> [&'static str; 7] {
        Self::ALL.map(|w| w.name())
    }

    /// This workload's default parameters.
    pub fn default_params(&self) -> Params {
        Self::from_name(self.name()).map_or(self.params(), |w| w.params())
    }

    /// Whether the vCPUs of a run cooperate (`unsync-race`, `relink-race`: run them on 2+ vCPUs
    /// to get the race; on one they degrade, see [`UnsyncRace`] and [`RelinkRace`]). The others
    /// run independently on each vCPU.
    pub fn multi_vcpu(&self) -> bool {
        matches!(self, Workload::UnsyncRace(_) | Workload::RelinkRace(_))
    }

    /// The same workload with other parameters.
    pub fn with_params(self, params: Params) -> Workload {
        match self {
            Workload::Cr3Switch(_) => Cr3Switch { params }.into(),
            Workload::PtChurn(_) => PtChurn { params }.into(),
            Workload::UnsyncRace(_) => UnsyncRace { params }.into(),
            Workload::MmapChurn(_) => MmapChurn { params }.into(),
            Workload::FaultStorm(_) => FaultStorm { params }.into(),
            Workload::ExitFloor(_) => ExitFloor { params }.into(),
            Workload::RelinkRace(_) => RelinkRace { params }.into(),
        }
    }
}

/// Stamps data frame `gpa` through the direct map: `value` in word 0, `!value` in word 511.
pub(crate) fn stamp<C: Cpu>(cpu: &mut C, gpa: u64, value: u64) {
    cpu.write_u64(direct_map(gpa), value);
    cpu.write_u64(direct_map(gpa + PAGE_SIZE - 8), !value);
}

/// Reads the page at `gva` through the workload's mapping and compares it with the stamp
/// `value`: both ends of the page, so a wrong page or a wrong offset is caught.
pub(crate) fn check_page<C: Cpu>(
    cpu: &mut C,
    report: &mut Report,
    what: &'static str,
    gva: u64,
    value: u64,
) -> Result<(), CheckFailed> {
    check_word(cpu, report, what, gva, value)?;
    check_word(cpu, report, what, gva + PAGE_SIZE - 8, !value)
}

/// Reads `gva` and compares it with `expected`.
pub(crate) fn check_word<C: Cpu>(
    cpu: &mut C,
    report: &mut Report,
    what: &'static str,
    gva: u64,
    expected: u64,
) -> Result<(), CheckFailed> {
    let found = cpu.read_u64(gva);
    if found != expected {
        return Err(CheckFailed {
            what,
            gva,
            expected,
            found,
        });
    }
    report.checks += 1;
    Ok(())
}

/// `Err(BadParams)` unless `cond`.
pub(crate) fn require(cond: bool, what: &'static str) -> Result<(), WorkloadError> {
    if cond {
        Ok(())
    } else {
        Err(WorkloadError::BadParams { what })
    }
}

#[cfg(test)]
mod tests;
