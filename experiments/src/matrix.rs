//! The matrix: which arms (policy builds) run which groups (backend × workload × vCPUs), in
//! which order, and the presets that name a matrix.
//!
//! A *group* is one (backend, workload, vCPUs); a *cell* is a group with an *arm*. In every
//! group the arms are the policies, plus `rmb-fence-aa` (the `rmb-fence` binary run as a second
//! arm: the A/A control) — except on `native`, which is policy-independent and has the one arm
//! `native`. A *block* is one repetition of every cell, in a seeded random order, so that
//! machine drift spreads over all arms (Firecracker's A/B practice); statistics pair arms by
//! block.

use serde::{Deserialize, Serialize};
use shadowlab_schema::Backend;
use shadowlab_workloads::rng::Rng;

/// The baseline every policy's ratio is taken to.
pub const BASELINE: &str = "rmb-fence";
/// The A/A arm: the baseline's binary run a second time.
pub const AA_ARM: &str = "rmb-fence-aa";
/// The arm name of the `native` backend (any binary: no policy runs).
pub const NATIVE_ARM: &str = "native";
/// The unsound negative control, run only when a flag names it.
pub const UNSOUND: &str = "no-barrier";

/// One (backend, workload, vCPUs).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Group {
    /// Backend.
    pub backend: Backend,
    /// Workload name.
    pub workload: String,
    /// vCPUs.
    pub vcpus: u32,
}

/// One arm in one group.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Cell {
    /// The group.
    pub group: Group,
    /// `rmb-fence`, `rmb-fence-aa`, `native`, ...
    pub arm: String,
}

impl Cell {
    /// The policy whose binary runs this arm.
    pub fn policy(&self) -> &str {
        binary_policy(&self.arm)
    }

    /// `arm backend workload vN`, for progress lines.
    pub fn label(&self) -> String {
        format!(
            "{} {} {} v{}",
            self.arm, self.group.backend, self.group.workload, self.group.vcpus
        )
    }
}

/// The policy whose binary runs `arm`.
pub fn binary_policy(arm: &str) -> &str {
    match arm {
        AA_ARM | NATIVE_ARM => BASELINE,
        p => p,
    }
}

/// `K/N`: the K-th (1-based) of N slices.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shard {
    /// 1..=n.
    pub k: u32,
    /// Slices.
    pub n: u32,
}

impl std::str::FromStr for Shard {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("--shard '{s}' must be K/N with 1 <= K <= N");
        let (k, n) = s.split_once('/').ok_or_else(bad)?;
        let (k, n) = (
            k.trim().parse::<u32>().map_err(|_| bad())?,
            n.trim().parse::<u32>().map_err(|_| bad())?,
        );
        if k == 0 || n == 0 || k > n {
            return Err(bad());
        }
        Ok(Shard { k, n })
    }
}

impl std::fmt::Display for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.k, self.n)
    }
}

/// A whole matrix, before sharding. Two shards of one run have equal specs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MatrixSpec {
    /// Policies built and run (the baseline first; `no-barrier` only when named).
    pub policies: Vec<String>,
    /// Groups, in the preset's order.
    pub groups: Vec<Group>,
    /// Iterations per worker run of each group (same order as `groups`; 0: the workload's
    /// default).
    pub iters: Vec<u64>,
    /// Blocks (repetitions of every cell).
    pub reps: u32,
    /// Seed of the block order.
    pub seed: u64,
    /// Whether the workers pinned their vCPU threads (`--pin`, the default; `--no-pin` turns
    /// it off). Each sample records the mapping the worker made.
    #[serde(default)]
    pub pin: bool,
}

impl MatrixSpec {
    /// The iterations of `group`'s worker runs (0: the workload's default).
    pub fn iters_of(&self, group: &Group) -> u64 {
        self.groups
            .iter()
            .position(|g| g == group)
            .and_then(|i| self.iters.get(i).copied())
            .unwrap_or(0)
    }

    /// The arms of `group`.
    pub fn arms(&self, group: &Group) -> Vec<String> {
        if group.backend == Backend::Native {
            return vec![NATIVE_ARM.into()];
        }
        let mut arms = self.policies.clone();
        arms.insert(1.min(arms.len()), AA_ARM.into());
        arms
    }

    /// The groups shard `shard` runs: every N-th group from the (K-1)-th, so that all arms of
    /// a group stay together (they are paired by block) and a shard's share is deterministic.
    pub fn groups_of(&self, shard: Option<Shard>) -> Vec<Group> {
        self.groups
            .iter()
            .enumerate()
            .filter(|(i, _)| shard.is_none_or(|s| *i as u32 % s.n == s.k - 1))
            .map(|(_, g)| g.clone())
            .collect()
    }

    /// Every cell of `groups`.
    pub fn cells(&self, groups: &[Group]) -> Vec<Cell> {
        groups
            .iter()
            .flat_map(|g| {
                self.arms(g).into_iter().map(|arm| Cell {
                    group: g.clone(),
                    arm,
                })
            })
            .collect()
    }

    /// The order of block `block`: `cells` shuffled (Fisher–Yates) with a generator seeded by
    /// the run's seed and the block number.
    pub fn block_order(&self, cells: &[Cell], block: u32) -> Vec<Cell> {
        let mut order = cells.to_vec();
        let mut rng =
            Rng::new(self.seed ^ (u64::from(block) + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
        for i in (1..order.len()).rev() {
            let j = rng.below(i as u64 + 1) as usize;
            order.swap(i, j);
        }
        order
    }
}

/// One row of a preset: `backend`, `workload`, at each of `vcpus`.
#[derive(Clone, Copy, Debug)]
pub struct PresetRow {
    /// Backend.
    pub backend: Backend,
    /// Workloads.
    pub workloads: &'static [&'static str],
    /// vCPU counts.
    pub vcpus: &'static [u32],
    /// Iterations per worker run (0: the workload's default): per row, because one operation
    /// costs 50 ns on sim and several ms on kvm.
    pub iters: u64,
}

/// A named matrix.
#[derive(Clone, Copy, Debug)]
pub struct Preset {
    /// `quick`, `full`.
    pub name: &'static str,
    /// What it is for and how long it takes on the reference 2-core machine.
    pub about: &'static str,
    /// Its groups.
    pub rows: &'static [PresetRow],
    /// Blocks.
    pub reps: u32,
}

/// The presets: data, printed by `shadowlab list` and named in the README.
pub const PRESETS: &[Preset] = &[
    Preset {
        name: "quick",
        about: "a first look, <= 5 min on a 2-core machine",
        rows: &[
            PresetRow {
                backend: Backend::Sim,
                workloads: &["cr3-switch", "pt-churn", "unsync-race"],
                vcpus: &[1, 2],
                iters: 2000,
            },
            PresetRow {
                backend: Backend::Kvm,
                workloads: &["cr3-switch", "pt-churn"],
                vcpus: &[1],
                iters: 2000,
            },
            PresetRow {
                backend: Backend::Native,
                workloads: &["cr3-switch", "pt-churn"],
                vcpus: &[1],
                iters: 2000,
            },
        ],
        reps: 5,
    },
    Preset {
        name: "full",
        about: "every workload on every backend, <= 30 min on a 2-core machine",
        rows: &[
            PresetRow {
                backend: Backend::Sim,
                workloads: &[
                    "cr3-switch",
                    "pt-churn",
                    "unsync-race",
                    "mmap-churn",
                    "fault-storm",
                    "exit-floor",
                ],
                vcpus: &[1, 2],
                iters: 5000,
            },
            // relink-race does ~10 table edits, links and shootdowns a round.
            PresetRow {
                backend: Backend::Sim,
                workloads: &["relink-race"],
                vcpus: &[1, 2],
                iters: 1000,
            },
            // On kvm and native an iteration of pt-churn costs ~3.5 ms (2 vCPUs: 300 take
            // 2.8 s) and of unsync-race ~2.6 ms at 2 vCPUs; cr3-switch and exit-floor ~0.2 ms.
            PresetRow {
                backend: Backend::Kvm,
                workloads: &["cr3-switch", "exit-floor"],
                vcpus: &[1, 2],
                iters: 2000,
            },
            PresetRow {
                backend: Backend::Kvm,
                workloads: &["pt-churn", "unsync-race"],
                vcpus: &[1, 2],
                iters: 300,
            },
            PresetRow {
                backend: Backend::Native,
                workloads: &["cr3-switch", "exit-floor"],
                vcpus: &[1, 2],
                iters: 2000,
            },
            PresetRow {
                backend: Backend::Native,
                workloads: &["pt-churn", "unsync-race"],
                vcpus: &[1, 2],
                iters: 300,
            },
            // A relink-race round on kvm with 2 vCPUs costs ~25-50 ms (dozens of exits).
            PresetRow {
                backend: Backend::Kvm,
                workloads: &["relink-race"],
                vcpus: &[2],
                iters: 50,
            },
            PresetRow {
                backend: Backend::Native,
                workloads: &["relink-race"],
                vcpus: &[2],
                iters: 50,
            },
            // mmap-churn (~0.7 ms an iteration on kvm) and fault-storm (one round maps and
            // first-touches `size` pages) at 1 vCPU.
            PresetRow {
                backend: Backend::Kvm,
                workloads: &["mmap-churn", "fault-storm"],
                vcpus: &[1],
                iters: 100,
            },
            PresetRow {
                backend: Backend::Native,
                workloads: &["mmap-churn", "fault-storm"],
                vcpus: &[1],
                iters: 100,
            },
        ],
        reps: 10,
    },
];

impl Preset {
    /// The preset named `name`.
    pub fn by_name(name: &str) -> Option<&'static Preset> {
        PRESETS.iter().find(|p| p.name == name)
    }

    /// Its groups, in table order, with their iterations.
    pub fn groups(&self) -> Vec<(Group, u64)> {
        self.rows
            .iter()
            .flat_map(|r| {
                r.workloads.iter().flat_map(move |w| {
                    r.vcpus.iter().map(move |&v| {
                        let g = Group {
                            backend: r.backend,
                            workload: (*w).into(),
                            vcpus: v,
                        };
                        (g, r.iters)
                    })
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> MatrixSpec {
        let (groups, iters) = Preset::by_name("quick")
            .unwrap()
            .groups()
            .into_iter()
            .unzip();
        MatrixSpec {
            policies: vec!["rmb-fence".into(), "always-lock".into()],
            groups,
            iters,
            reps: 3,
            seed: 7,
            pin: true,
        }
    }

    #[test]
    fn the_full_preset_runs_every_workload_on_every_backend() {
        let full = Preset::by_name("full").unwrap();
        for w in shadowlab_workloads::Workload::names() {
            for b in [Backend::Sim, Backend::Kvm, Backend::Native] {
                assert!(
                    full.rows
                        .iter()
                        .any(|r| r.backend == b && r.workloads.contains(&w)),
                    "full preset: no {w} on {b:?}"
                );
            }
        }
    }

    #[test]
    fn shards_partition_the_groups() {
        let s = spec();
        let all = s.groups_of(None);
        let mut joined: Vec<Group> = (1..=3)
            .flat_map(|k| s.groups_of(Some(Shard { k, n: 3 })))
            .collect();
        joined.sort();
        let mut sorted = all.clone();
        sorted.sort();
        assert_eq!(joined, sorted);
        assert!(s.groups_of(Some(Shard { k: 1, n: 3 })).len() < all.len());
    }

    #[test]
    fn a_block_is_a_seeded_permutation_of_every_cell() {
        let s = spec();
        let cells = s.cells(&s.groups_of(None));
        let a = s.block_order(&cells, 0);
        assert_eq!(a, s.block_order(&cells, 0));
        assert_ne!(a, s.block_order(&cells, 1));
        let mut sorted = a.clone();
        sorted.sort();
        let mut want = cells.clone();
        want.sort();
        assert_eq!(sorted, want);
        let native = cells.iter().filter(|c| c.arm == NATIVE_ARM).count();
        assert_eq!(native, 2, "native once per kvm workload, no policy arms");
        assert!(cells.iter().any(|c| c.arm == AA_ARM));
    }

    #[test]
    fn shard_syntax() {
        assert_eq!("2/3".parse::<Shard>(), Ok(Shard { k: 2, n: 3 }));
        for bad in ["0/3", "4/3", "3", "a/b", "1/0"] {
            assert!(bad.parse::<Shard>().is_err(), "{bad}");
        }
    }
}
