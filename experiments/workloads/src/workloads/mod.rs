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
use crate::report::{Params, Report};
use shadowlab_abi::layout::{direct_map, PAGE_SIZE};

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

/// What every workload does.
#[enum_dispatch]
pub trait Run {
    /// The workload's CLI name (`"pt-churn"`).
    fn name(&self) -> &'static str;
    /// Its parameters.
    fn params(&self) -> Params;
    /// The `ops` a successful run reports on each vCPU, as the parameters imply.
    fn expected_ops(&self) -> u64;
    /// Runs it on one vCPU; every vCPU of the run calls this. Leaves the vCPU on its boot root.
    fn run<C: Cpu>(&self, cpu: &mut C) -> Result<Report, WorkloadError>;
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
