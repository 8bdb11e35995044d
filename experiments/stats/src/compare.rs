//! `shadowlab compare`: one cell in two runs.

use serde::{Deserialize, Serialize};

use crate::error::{check_floor, check_positive, StatsError};
use crate::estimate::{
    median_in_place, percentile_interval, resample_median, BootstrapConfig, Estimate,
};
use crate::label::Label;

/// The noise floor `compare` uses unless told otherwise: 5%.
pub const DEFAULT_COMPARE_FLOOR: f64 = 0.05;

/// The ratio of medians `median(new) / median(old)` of two independent samples (two runs: no
/// blocks in common to pair), with an unpaired percentile-bootstrap interval: each resample
/// draws `old` and `new` with replacement, independently, and takes the ratio of their medians.
/// Above 1: `new` is slower. The estimate's `n` is the smaller of the two sample sizes.
pub fn ratio_of_medians(
    old: &[f64],
    new: &[f64],
    cfg: &BootstrapConfig,
) -> Result<Estimate, StatsError> {
    check_positive("old", old)?;
    check_positive("new", new)?;
    cfg.validate()?;
    let (mut so, mut sn) = (Vec::with_capacity(old.len()), Vec::with_capacity(new.len()));
    let ci = percentile_interval(cfg, |rng| {
        let o = resample_median(rng, old, &mut so);
        resample_median(rng, new, &mut sn) / o
    });
    Ok(Estimate {
        value: median_in_place(&mut new.to_vec()) / median_in_place(&mut old.to_vec()),
        ci,
        n: old.len().min(new.len()),
    })
}

/// One cell of `compare`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Comparison {
    /// `median(new) / median(old)` with its interval.
    pub ratio: Estimate,
    /// The floor it was judged against (a fraction).
    pub floor: f64,
    /// Whether the runs differ: the interval excludes 1 and `|ratio - 1|` exceeds the floor
    /// (the same rule as [`Label`]; `compare` exits 1 when any cell differs).
    pub differs: bool,
    /// What the ratio resolves.
    pub label: Label,
}

/// Compares one cell's per-op times in two runs against `floor` (a fraction; the CLI's
/// default is [`DEFAULT_COMPARE_FLOOR`]).
pub fn compare(
    old: &[f64],
    new: &[f64],
    floor: f64,
    cfg: &BootstrapConfig,
) -> Result<Comparison, StatsError> {
    check_floor(floor)?;
    let ratio = ratio_of_medians(old, new, cfg)?;
    let label = Label::of(&ratio, floor)?;
    Ok(Comparison {
        ratio,
        floor,
        differs: label.is_resolved(),
        label,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::normal;

    #[test]
    fn a_real_change_differs() {
        let cfg = BootstrapConfig::seeded(2);
        let old = normal(1, 15, 200.0, 4.0);
        let new = normal(2, 12, 240.0, 4.0);
        let c = compare(&old, &new, DEFAULT_COMPARE_FLOOR, &cfg).unwrap();
        assert!(c.differs, "{c:?}");
        assert!(c.ratio.ci.contains(1.2), "{:?}", c.ratio.ci);
        assert_eq!(c.ratio.n, 12);
        // And the other way round: faster.
        let back = compare(&new, &old, DEFAULT_COMPARE_FLOOR, &cfg).unwrap();
        assert!(back.differs);
        assert!(back.ratio.value < 1.0);
    }

    #[test]
    fn a_change_inside_the_floor_does_not_differ() {
        // A 3% shift with very little noise: the interval excludes 1, but 3% is inside the
        // 5% floor, so the runs do not differ; with a 1% floor they do.
        let cfg = BootstrapConfig::seeded(3);
        let old = normal(5, 30, 100.0, 0.2);
        let new = normal(6, 30, 103.0, 0.2);
        let c = compare(&old, &new, DEFAULT_COMPARE_FLOOR, &cfg).unwrap();
        assert!(!c.ratio.ci.contains(1.0), "{:?}", c.ratio.ci);
        assert!(!c.differs);
        assert_eq!(c.label.to_string(), "bounded: |Δ| < 5.0% at 95%");
        assert!(compare(&old, &new, 0.01, &cfg).unwrap().differs);
    }

    #[test]
    fn the_same_distribution_does_not_differ() {
        let cfg = BootstrapConfig::seeded(4);
        for seed in 0..10 {
            let old = normal(100 + seed, 10, 300.0, 15.0);
            let new = normal(200 + seed, 10, 300.0, 15.0);
            let c = compare(&old, &new, DEFAULT_COMPARE_FLOOR, &cfg).unwrap();
            assert!(!c.differs, "seed {seed}: {c:?}");
        }
    }

    #[test]
    fn bad_input_is_an_error() {
        let cfg = BootstrapConfig::default();
        assert_eq!(
            compare(&[], &[1.0], 0.05, &cfg),
            Err(StatsError::Empty { what: "old" })
        );
        assert!(matches!(
            compare(&[1.0], &[-2.0], 0.05, &cfg),
            Err(StatsError::NonPositive { what: "new", .. })
        ));
        assert_eq!(
            compare(&[1.0], &[1.0], -0.05, &cfg),
            Err(StatsError::Floor(-0.05))
        );
    }

    #[test]
    fn the_comparison_round_trips_through_json() {
        let c = compare(
            &normal(1, 8, 10.0, 1.0),
            &normal(2, 8, 10.0, 1.0),
            DEFAULT_COMPARE_FLOOR,
            &BootstrapConfig::seeded(1),
        )
        .unwrap();
        let json = serde_json::to_string(&c).unwrap();
        let back: Comparison = serde_json::from_str(&json).unwrap();
        // serde_json (without `float_roundtrip`) may parse the last bit differently.
        let close = |a: f64, b: f64| (a - b).abs() <= 1e-12 * a.abs().max(1.0);
        assert!(close(back.ratio.value, c.ratio.value));
        assert!(close(back.ratio.ci.lo, c.ratio.ci.lo) && close(back.ratio.ci.hi, c.ratio.ci.hi));
        assert_eq!(
            (back.ratio.n, back.floor, back.differs),
            (c.ratio.n, c.floor, c.differs)
        );
        match (back.label, c.label) {
            (
                Label::Bounded {
                    max_abs_delta_pct: a,
                    ..
                },
                Label::Bounded {
                    max_abs_delta_pct: b,
                    ..
                },
            ) => assert!(close(a, b)),
            other => panic!("{other:?}"),
        }
    }
}
