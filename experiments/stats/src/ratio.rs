//! A policy's ratio to the baseline arm, paired by block, and the A/A noise floor.

use serde::{Deserialize, Serialize};

use crate::error::{check_positive, StatsError};
use crate::estimate::{median_in_place, percentile_interval, BootstrapConfig, Estimate};

/// A policy's cost relative to the baseline arm (`rmb-fence`), paired by block.
///
/// `policy[i]` and `baseline[i]` are the per-op times of the two arms in block `i` (a block
/// runs every cell once, in a random order, so both arms of a block saw the same machine
/// state). The ratio of each block, `policy[i] / baseline[i]`, cancels what drifts from block to
/// block; the estimate is the median of those ratios, and its interval a percentile bootstrap
/// over blocks (blocks resampled with replacement, the median of their ratios each time).
/// Above 1: the policy is slower.
pub fn paired_ratio(
    policy: &[f64],
    baseline: &[f64],
    cfg: &BootstrapConfig,
) -> Result<Estimate, StatsError> {
    paired("policy", policy, "baseline", baseline, cfg)
}

fn paired(
    left: &'static str,
    a: &[f64],
    right: &'static str,
    b: &[f64],
    cfg: &BootstrapConfig,
) -> Result<Estimate, StatsError> {
    check_positive(left, a)?;
    check_positive(right, b)?;
    if a.len() != b.len() {
        return Err(StatsError::LengthMismatch {
            left,
            left_len: a.len(),
            right,
            right_len: b.len(),
        });
    }
    cfg.validate()?;
    let ratios: Vec<f64> = a.iter().zip(b).map(|(x, y)| x / y).collect();
    let mut scratch = Vec::with_capacity(ratios.len());
    let ci = percentile_interval(cfg, |rng| {
        crate::estimate::resample_median(rng, &ratios, &mut scratch)
    });
    Ok(Estimate {
        value: median_in_place(&mut ratios.clone()),
        ci,
        n: ratios.len(),
    })
}

/// The noise floor one A/A pair shows: two arms that run the same code must have a ratio of
/// 1, so any distance from 1 is noise.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct NoiseFloor {
    /// The A/A ratio (arm B over arm A, paired by block) with its interval.
    pub ratio: Estimate,
    /// The floor, a fraction (0.04 = 4%): how far from 1 the A/A interval reaches,
    /// `max(|lo - 1|, |hi - 1|)`.
    ///
    /// Why this and not the interval's half-width: an A/A pair can also be off-centre (the
    /// second arm of a block runs warmer, or a layout is luckier), and a policy's ratio could
    /// be shifted the same way for the same reason. The reach from 1 counts both the spread
    /// and the offset; it is never smaller than the half-width when the interval holds 1.
    pub floor: f64,
}

/// The noise floor of an A/A pair: `arm_a[i]` and `arm_b[i]` are two arms of the same build in
/// block `i` (or, for the cross-layout floor, two layouts of it). See [`NoiseFloor::floor`].
pub fn aa_floor(
    arm_a: &[f64],
    arm_b: &[f64],
    cfg: &BootstrapConfig,
) -> Result<NoiseFloor, StatsError> {
    let ratio = paired("A/A arm B", arm_b, "A/A arm A", arm_a, cfg)?;
    Ok(NoiseFloor {
        floor: ratio.ci.max_abs_delta(),
        ratio,
    })
}

/// The floor a cell is judged against: `max(same-binary floor, cross-layout floor)`. The
/// cross-layout control (the same policy linked with another code layout) is optional until
/// the driver runs it; without it the floor is the same-binary one.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Floor {
    /// Two arms of the same binary.
    pub same_binary: NoiseFloor,
    /// Two code layouts of the same policy, when measured.
    pub cross_layout: Option<NoiseFloor>,
    /// The larger of the two floors (a fraction).
    pub floor: f64,
}

impl Floor {
    /// Combines the two A/A controls.
    pub fn new(same_binary: NoiseFloor, cross_layout: Option<NoiseFloor>) -> Self {
        let floor = cross_layout.map_or(same_binary.floor, |c| c.floor.max(same_binary.floor));
        Floor {
            same_binary,
            cross_layout,
            floor,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::normal;

    /// `n` blocks of a baseline that drifts strongly from block to block (the machine warms
    /// up, another tenant comes and goes), with 1% noise of its own.
    fn drifting_baseline(seed: u64, n: usize) -> Vec<f64> {
        let noise = normal(seed, n, 1.0, 0.01);
        (0..n)
            .map(|i| 200.0 * (1.0 + 0.3 * ((i % 7) as f64 / 7.0)) * noise[i])
            .collect()
    }

    #[test]
    fn pairing_cancels_the_drift_between_blocks() {
        let n = 30;
        let base = drifting_baseline(1, n);
        let jitter = normal(2, n, 1.0, 0.01);
        let policy: Vec<f64> = base.iter().zip(&jitter).map(|(b, j)| 1.2 * b * j).collect();
        let cfg = BootstrapConfig::seeded(3);
        let paired = paired_ratio(&policy, &base, &cfg).unwrap();
        assert!(paired.ci.contains(1.2), "{paired:?}");
        assert!((paired.value - 1.2).abs() < 0.01);
        // Unpaired, the ratio of medians sees the drift as noise: a much wider interval.
        let unpaired = crate::ratio_of_medians(&base, &policy, &cfg).unwrap();
        assert!(
            unpaired.ci.half_width() > 3.0 * paired.ci.half_width(),
            "paired {paired:?} unpaired {unpaired:?}"
        );
        assert_eq!(paired.n, n);
    }

    #[test]
    fn bad_pairs_are_errors() {
        let cfg = BootstrapConfig::default();
        assert_eq!(
            paired_ratio(&[1.0, 2.0], &[1.0], &cfg),
            Err(StatsError::LengthMismatch {
                left: "policy",
                left_len: 2,
                right: "baseline",
                right_len: 1
            })
        );
        assert_eq!(
            paired_ratio(&[], &[], &cfg),
            Err(StatsError::Empty { what: "policy" })
        );
        assert!(matches!(
            paired_ratio(&[1.0], &[0.0], &cfg),
            Err(StatsError::NonPositive {
                what: "baseline",
                index: 0,
                ..
            })
        ));
        assert!(matches!(
            aa_floor(&[1.0, f64::NAN], &[1.0, 1.0], &cfg),
            Err(StatsError::NonFinite { index: 1, .. })
        ));
        assert_eq!(
            paired_ratio(&[1.0, 2.0], &[1.0], &cfg)
                .unwrap_err()
                .to_string(),
            "policy has 2 samples but baseline has 1: they must pair up by block"
        );
    }

    #[test]
    fn the_aa_floor_grows_with_the_noise_and_holds_one() {
        let n = 40;
        let cfg = BootstrapConfig::seeded(5);
        let mut last = 0.0;
        for (i, sigma) in [0.005, 0.02, 0.05].into_iter().enumerate() {
            let base = drifting_baseline(10 + i as u64, n);
            let a: Vec<f64> = base
                .iter()
                .zip(normal(20 + i as u64, n, 1.0, sigma))
                .map(|(b, j)| b * j)
                .collect();
            let b: Vec<f64> = base
                .iter()
                .zip(normal(30 + i as u64, n, 1.0, sigma))
                .map(|(b, j)| b * j)
                .collect();
            let f = aa_floor(&a, &b, &cfg).unwrap();
            assert!(f.ratio.ci.contains(1.0), "sigma {sigma}: {f:?}");
            assert!(f.floor >= f.ratio.ci.half_width());
            // The ratio of two N(1, s) has sd ~ s * sqrt(2); its median's interval reaches a
            // fraction of that: the floor is of the order of the noise, not 0, not 10x.
            assert!(
                f.floor > 0.1 * sigma && f.floor < 3.0 * sigma,
                "{sigma}: {f:?}"
            );
            assert!(f.floor > last);
            last = f.floor;
        }
    }

    #[test]
    fn the_floor_is_the_larger_of_the_two_controls() {
        let cfg = BootstrapConfig::seeded(1);
        let a = normal(1, 20, 100.0, 1.0);
        let tight = aa_floor(&a, &normal(2, 20, 100.0, 1.0), &cfg).unwrap();
        let loose = aa_floor(&a, &normal(3, 20, 104.0, 6.0), &cfg).unwrap();
        assert!(loose.floor > tight.floor);
        assert_eq!(Floor::new(tight, None).floor, tight.floor);
        assert_eq!(Floor::new(tight, Some(loose)).floor, loose.floor);
        assert_eq!(Floor::new(loose, Some(tight)).floor, loose.floor);
    }
}
