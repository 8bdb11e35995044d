//! What a cell's ratio can say: resolved or bounded.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::{check_floor, StatsError};
use crate::estimate::{Ci, Estimate};

/// What a ratio (a policy to the baseline, or one run to another) resolves, against a noise
/// floor. Never a bare number: either the ratio with its interval, or a bound on the change.
///
/// The rule ([`Label::of`]):
/// - **resolved** when the interval excludes 1 *and* `|ratio - 1|` exceeds the floor: the
///   change is real (not sampling noise: the interval) and larger than what two arms of the
///   same code differ by (not machine noise: the floor);
/// - **bounded** otherwise, with `x = max(|lo - 1|, |hi - 1|, floor)`: at the interval's level
///   the change is smaller than `x`. The interval's reach from 1 is what the data bound; the
///   floor is added because no change below it can be told from noise, however tight the
///   interval.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "label", rename_all = "snake_case")]
pub enum Label {
    /// The change is resolved: this ratio, with this interval.
    Resolved {
        /// The ratio (above 1: slower).
        ratio: f64,
        /// Its interval, which excludes 1.
        ci: Ci,
    },
    /// Only bounded: `|Δ| < max_abs_delta_pct` % at `level`.
    Bounded {
        /// The bound, in percent.
        max_abs_delta_pct: f64,
        /// The confidence level of the interval behind it (0.95 = 95%).
        level: f64,
    },
}

impl Label {
    /// Labels `ratio` against `floor` (a fraction: 0.05 = 5%); see [`Label`] for the rule.
    pub fn of(ratio: &Estimate, floor: f64) -> Result<Label, StatsError> {
        check_floor(floor)?;
        let ci = ratio.ci;
        if !ci.contains(1.0) && (ratio.value - 1.0).abs() > floor {
            Ok(Label::Resolved {
                ratio: ratio.value,
                ci,
            })
        } else {
            Ok(Label::Bounded {
                max_abs_delta_pct: 100.0 * ci.max_abs_delta().max(floor),
                level: ci.level,
            })
        }
    }

    /// Whether the change is resolved.
    pub fn is_resolved(&self) -> bool {
        matches!(self, Label::Resolved { .. })
    }
}

impl fmt::Display for Label {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Label::Resolved { ratio, ci } => {
                write!(f, "resolved: {ratio:.2}× [{:.2}, {:.2}]", ci.lo, ci.hi)
            }
            Label::Bounded {
                max_abs_delta_pct,
                level,
            } => write!(
                f,
                "bounded: |Δ| < {max_abs_delta_pct:.1}% at {}%",
                // 0.95 -> "95", 0.995 -> "99.5"
                (level * 1000.0).round() / 10.0
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::normal;
    use crate::{aa_floor, paired_ratio, BootstrapConfig};

    fn est(value: f64, lo: f64, hi: f64) -> Estimate {
        Estimate {
            value,
            ci: Ci {
                lo,
                hi,
                level: 0.95,
            },
            n: 10,
        }
    }

    #[test]
    fn the_rule_at_its_edges() {
        // Excludes 1 and clears the floor.
        let l = Label::of(&est(1.82, 1.75, 1.90), 0.05).unwrap();
        assert_eq!(l.to_string(), "resolved: 1.82× [1.75, 1.90]");
        // Faster is resolved too.
        assert!(Label::of(&est(0.8, 0.75, 0.85), 0.05)
            .unwrap()
            .is_resolved());
        // Excludes 1 but inside the floor: bounded by the floor.
        let l = Label::of(&est(1.03, 1.02, 1.04), 0.05).unwrap();
        assert_eq!(l.to_string(), "bounded: |Δ| < 5.0% at 95%");
        // Holds 1: bounded by the interval's reach (beyond the floor).
        let l = Label::of(&est(1.01, 0.97, 1.041), 0.02).unwrap();
        assert_eq!(l.to_string(), "bounded: |Δ| < 4.1% at 95%");
        assert!(!l.is_resolved());
        // Zero floor: the interval alone decides.
        assert!(Label::of(&est(1.001, 1.0005, 1.002), 0.0)
            .unwrap()
            .is_resolved());
        for bad in [-0.01, f64::NAN, f64::INFINITY] {
            assert!(matches!(
                Label::of(&est(1.0, 0.9, 1.1), bad),
                Err(StatsError::Floor(_))
            ));
        }
    }

    #[test]
    fn the_label_serialises_tagged() {
        let l = Label::of(&est(1.5, 1.4, 1.6), 0.05).unwrap();
        let json = serde_json::to_string(&l).unwrap();
        assert_eq!(
            json,
            r#"{"label":"resolved","ratio":1.5,"ci":{"lo":1.4,"hi":1.6,"level":0.95}}"#
        );
        assert_eq!(serde_json::from_str::<Label>(&json).unwrap(), l);
        let b = Label::of(&est(1.0, 0.99, 1.02), 0.05).unwrap();
        let json = serde_json::to_string(&b).unwrap();
        assert_eq!(
            json,
            r#"{"label":"bounded","max_abs_delta_pct":5.0,"level":0.95}"#
        );
    }

    /// `n` blocks: a baseline, a second baseline arm (A/A) and a policy at `ratio`, each with
    /// `noise` relative jitter.
    fn blocks(seed: u64, n: usize, ratio: f64, noise: f64) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
        let base: Vec<f64> = normal(seed, n, 230.0, 10.0);
        let arm = |s: u64, r: f64| -> Vec<f64> {
            base.iter()
                .zip(normal(s, n, 1.0, noise))
                .map(|(b, j)| r * b * j)
                .collect()
        };
        (arm(seed + 1, 1.0), arm(seed + 2, 1.0), arm(seed + 3, ratio))
    }

    #[test]
    fn a_clear_slowdown_is_resolved() {
        // Ratio 1.5, 1% noise, 20 blocks.
        let (a, b, policy) = blocks(100, 20, 1.5, 0.01);
        let cfg = BootstrapConfig::seeded(9);
        let floor = aa_floor(&a, &b, &cfg).unwrap();
        let ratio = paired_ratio(&policy, &a, &cfg).unwrap();
        let label = Label::of(&ratio, floor.floor).unwrap();
        match label {
            Label::Resolved { ratio: r, ci } => {
                assert!(ci.contains(1.5), "{ci:?}");
                assert!((r - 1.5).abs() < 0.02);
                assert!(ci.hi - ci.lo < 0.05);
            }
            other => panic!("{other}"),
        }
        assert!(label.to_string().starts_with("resolved: 1.5"), "{label}");
    }

    #[test]
    fn no_change_in_noise_is_bounded() {
        // Ratio 1.0, 3% noise: every seed must come back bounded, and the bound must hold
        // the true |Δ| = 0 with room (it is at least the floor) but not be absurd.
        let cfg = BootstrapConfig::seeded(4);
        for seed in 0..20 {
            let (a, b, policy) = blocks(1000 + 10 * seed, 20, 1.0, 0.03);
            let floor = aa_floor(&a, &b, &cfg).unwrap();
            let ratio = paired_ratio(&policy, &a, &cfg).unwrap();
            match Label::of(&ratio, floor.floor).unwrap() {
                Label::Bounded {
                    max_abs_delta_pct,
                    level,
                } => {
                    assert_eq!(level, 0.95);
                    assert!(max_abs_delta_pct >= 100.0 * floor.floor);
                    assert!(max_abs_delta_pct < 10.0, "{max_abs_delta_pct}");
                }
                other => panic!("seed {seed}: {other} (floor {})", floor.floor),
            }
        }
    }
}
