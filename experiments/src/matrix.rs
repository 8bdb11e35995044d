//! The matrix: which arms (policy builds) run which groups (backend × workload × vCPUs), in
//! which order, and the presets that name a matrix.
//!
//! A *group* is one (backend, workload, vCPUs); a *cell* is a group with an *arm*. In every
//! group the arms are the policies, plus two A/A controls of the baseline: `rmb-fence-aa` (the
//! `rmb-fence` binary run as a second arm: the same-binary A/A) and `rmb-fence-xl` (`rmb-fence`
//! built a second time with another code layout, [`cross_layout_pad`] bytes of padding ahead
//! of the MMU: the cross-layout A/A) — except on `native`, which is policy-independent and has
//! the one arm `native`. A *block* is one repetition of every cell, in a seeded random order, so that
//! machine drift spreads over all arms (Firecracker's A/B practice); statistics pair arms by
//! block.

use serde::{Deserialize, Serialize};
use shadowlab_schema::Backend;
use shadowlab_workloads::rng::Rng;

/// The baseline every policy's ratio is taken to.
pub const BASELINE: &str = "rmb-fence";
/// The A/A arm: the baseline's binary run a second time.
pub const AA_ARM: &str = "rmb-fence-aa";
/// The cross-layout A/A arm: the baseline built a second time with [`cross_layout_pad`] bytes
/// of padding in `.text` ahead of the MMU (`SHADOWLAB_LAYOUT_PAD`), so that every function of
/// the shadow MMU sits at another address and nothing else changes.
pub const XL_ARM: &str = "rmb-fence-xl";
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

    /// The build this arm runs: its policy's, or [`XL_ARM`] for the cross-layout build.
    pub fn binary(&self) -> &str {
        binary_of(&self.arm)
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
        AA_ARM | XL_ARM | NATIVE_ARM => BASELINE,
        p => p,
    }
}

/// The build that runs `arm`: [`XL_ARM`] (the baseline with another code layout) for the
/// cross-layout arm, otherwise the policy's own build.
pub fn binary_of(arm: &str) -> &str {
    match arm {
        XL_ARM => XL_ARM,
        a => binary_policy(a),
    }
}

/// The padding (bytes) the cross-layout build of run seed `seed` places ahead of the MMU: a
/// number in 64..4096 drawn from the seed, so that a run is reproducible (the same seed, the
/// same layout, the same cached binary) and different seeds sample different layouts. 64 bytes
/// and more moves the MMU's code off its cache lines; below a page, it stays within the
/// distances a linker's ordering choices produce. The build rounds it up to the MMU's 16-byte
/// function alignment.
pub fn cross_layout_pad(seed: u64) -> u64 {
    // A constant of its own ("layout" in ASCII) keeps this draw apart from the block orders'.
    let mut rng = Rng::new(seed ^ 0x6c61_796f_7574);
    64 + rng.below(4096 - 64)
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
    /// Whether the groups have the cross-layout A/A arm [`XL_ARM`] (absent, so false, in runs
    /// made before it existed). Its build's pad is in the manifest's binary records and in
    /// every sample (`result.layout_pad`).
    #[serde(default)]
    pub cross_layout: bool,
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
        if self.cross_layout {
            arms.insert(2.min(arms.len()), XL_ARM.into());
        }
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
///
/// # Run lengths on `sim`
///
/// A sim run's per-op time is the mean over its measured region; the region has to last long
/// enough that timer ticks, page-cache and scheduler events average out inside it, or the A/A
/// floor is the noise of a few events (the quick run of commit 1827957, 2000 iterations
/// everywhere, had sim A/A floors of 13-157%: its cr3-switch regions lasted 0.5 ms). An earlier
/// measurement, sim cr3-switch with 200,000 iterations (~50 ms) and 20 blocks, gave a
/// same-binary A/A interval of about ±2%, i.e. a per-block A/A ratio spread of ~3.5%; a region
/// ~5-8x longer should bring that spread down towards 1.5%. So each sim row's iterations are
/// set from its per-op time at 1 vCPU on the 2-core reference machine (the medians of
/// `bench-results/20261202T163855Z-1827957`, and single runs of the other workloads on a quiet
/// moment of that machine): cr3-switch ~240 ns, pt-churn ~66 µs, unsync-race ~5 µs,
/// mmap-churn ~100 µs, fault-storm ~47 µs an iteration (256 touches; plus ~4x that outside the
/// region to map the pages), exit-floor ~61 ns, relink-race ~24 µs. At 2 vCPUs an op costs
/// 1.1-7x more (relink-race most), so 2-vCPU regions are longer. Targets: `quick` ~0.25 s a
/// region at 1 vCPU, `full` ~0.4 s; the `full` preset also has more blocks, which narrows the
/// interval more than a longer region does (with 5 blocks the bootstrap interval of the median
/// is about the range of the 5 per-block ratios).
///
/// # Blocks
///
/// Measured on the 2-core reference machine with nothing else running (issue 11's note): with
/// these run lengths and 5 blocks the sim A/A floors (the larger of same-binary and
/// cross-layout) were 3.7-15.6% at 1 vCPU in two runs; the same matrix with 10 blocks gave
/// 3.2% (cr3-switch), 6.7% (pt-churn) and 3.4% (unsync-race), and resolved `always-lock` at
/// 1 vCPU (1.07×) which 5 blocks could not. So `quick` runs 10 blocks: the 10-block matrix took
/// 5 min 5 s (`shadowlab run --quick --reps 10 --no-callgrind`, builds cached), the 5-block one
/// 2 min 49 s plus ~1 s of callgrind per arm and workload.
///
/// `full`, estimated from single-run timings (not yet run with these lengths): a sim arm-block
/// ~10 s, × 6 arms × 12 blocks ~12 min; kvm and native ~5 min; callgrind ~1 min; builds ~2.5
/// min: ~20 min.
pub const PRESETS: &[Preset] = &[
    Preset {
        name: "quick",
        about: "a first look, ~6 min on a 2-core machine with builds cached, more the first time",
        rows: &[
            // ~0.24 s at 1 vCPU (~240 ns an op), ~0.37 s at 2.
            PresetRow {
                backend: Backend::Sim,
                workloads: &["cr3-switch"],
                vcpus: &[1, 2],
                iters: 1_000_000,
            },
            // ~0.23 s at 1 vCPU (~66 µs), ~0.45 s at 2.
            PresetRow {
                backend: Backend::Sim,
                workloads: &["pt-churn"],
                vcpus: &[1, 2],
                iters: 3_500,
            },
            // ~0.25 s at 1 vCPU (~5 µs), ~0.8 s at 2.
            PresetRow {
                backend: Backend::Sim,
                workloads: &["unsync-race"],
                vcpus: &[1, 2],
                iters: 50_000,
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
        reps: 10,
    },
    Preset {
        name: "full",
        about: "every workload on every backend, ~20 min on a 2-core machine",
        rows: &[
            // ~0.4 s a region at 1 vCPU (see the per-op times above); 2 vCPUs 0.4-1.3 s.
            PresetRow {
                backend: Backend::Sim,
                workloads: &["cr3-switch"],
                vcpus: &[1, 2],
                iters: 1_600_000,
            },
            PresetRow {
                backend: Backend::Sim,
                workloads: &["pt-churn"],
                vcpus: &[1, 2],
                iters: 6_000,
            },
            PresetRow {
                backend: Backend::Sim,
                workloads: &["unsync-race"],
                vcpus: &[1, 2],
                iters: 80_000,
            },
            PresetRow {
                backend: Backend::Sim,
                workloads: &["mmap-churn"],
                vcpus: &[1, 2],
                iters: 4_000,
            },
            // Mapping the pages (outside the region) costs ~4x the touches (inside): 4000
            // rounds are ~0.2 s of region and ~0.9 s of run at 1 vCPU (0.36 s and ~1.4 s at 2).
            PresetRow {
                backend: Backend::Sim,
                workloads: &["fault-storm"],
                vcpus: &[1, 2],
                iters: 4_000,
            },
            PresetRow {
                backend: Backend::Sim,
                workloads: &["exit-floor"],
                vcpus: &[1, 2],
                iters: 6_000_000,
            },
            // relink-race does ~10 table edits, links and shootdowns a round: ~24 µs at 1 vCPU,
            // ~170 µs at 2 (0.24 s and 1.7 s).
            PresetRow {
                backend: Backend::Sim,
                workloads: &["relink-race"],
                vcpus: &[1, 2],
                iters: 10_000,
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
        reps: 12,
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
            cross_layout: true,
        }
    }

    #[test]
    fn every_non_native_group_has_both_aa_controls_and_old_runs_only_the_first() {
        let s = spec();
        for g in s.groups_of(None) {
            let arms = s.arms(&g);
            if g.backend == Backend::Native {
                assert_eq!(arms, [NATIVE_ARM]);
            } else {
                assert_eq!(arms, [BASELINE, AA_ARM, XL_ARM, "always-lock"], "{g:?}");
            }
        }
        // A manifest written before the cross-layout arm existed has no such field.
        let mut json = serde_json::to_value(&s).unwrap();
        json.as_object_mut().unwrap().remove("cross_layout");
        let old: MatrixSpec = serde_json::from_value(json).unwrap();
        assert!(!old.cross_layout);
        let sim = old.groups_of(None).into_iter().next().unwrap();
        assert_eq!(old.arms(&sim), [BASELINE, AA_ARM, "always-lock"]);
    }

    #[test]
    fn the_cross_layout_arm_runs_the_baseline_with_a_seeded_pad() {
        assert_eq!(binary_policy(XL_ARM), BASELINE);
        assert_eq!(binary_of(XL_ARM), XL_ARM);
        assert_eq!(binary_of(AA_ARM), BASELINE);
        assert_eq!(binary_of("always-lock"), "always-lock");
        let pads: Vec<u64> = (0..200).map(cross_layout_pad).collect();
        assert!(pads.iter().all(|p| (64..4096).contains(p)), "{pads:?}");
        assert_eq!(
            cross_layout_pad(1),
            cross_layout_pad(1),
            "a pure function of the seed"
        );
        let distinct: std::collections::BTreeSet<_> = pads.iter().collect();
        assert!(
            distinct.len() > 150,
            "seeds sample many layouts: {}",
            distinct.len()
        );
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
    fn every_preset_row_is_within_its_workloads_run_length_bound() {
        use shadowlab_workloads::Run;
        for p in PRESETS {
            for (g, iters) in p.groups() {
                let w = shadowlab_workloads::Workload::from_name(&g.workload)
                    .unwrap_or_else(|| panic!("{}: unknown workload {}", p.name, g.workload));
                let params = shadowlab_workloads::Params {
                    iters,
                    ..w.default_params()
                };
                w.with_params(params)
                    .validate(g.vcpus as usize)
                    .unwrap_or_else(|e| panic!("{} {g:?} at {iters} iterations: {e}", p.name));
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
