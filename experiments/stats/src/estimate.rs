//! Medians, quantiles and the percentile bootstrap.

use serde::{Deserialize, Serialize};
use shadowlab_workloads::rng::Rng;

use crate::error::{check_finite, StatsError};

/// How a bootstrap interval is computed.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct BootstrapConfig {
    /// Resamples drawn (10,000 by default: the interval's end points then move by well under
    /// a tenth of its width from one seed to another).
    pub resamples: u32,
    /// Confidence level, in (0, 1) (0.95 by default).
    pub level: f64,
    /// Seed of the resampling: the same input and seed give the same interval.
    pub seed: u64,
}

impl Default for BootstrapConfig {
    fn default() -> Self {
        BootstrapConfig {
            resamples: 10_000,
            level: 0.95,
            seed: 0,
        }
    }
}

impl BootstrapConfig {
    /// The default configuration with `seed`.
    pub fn seeded(seed: u64) -> Self {
        BootstrapConfig {
            seed,
            ..Self::default()
        }
    }

    pub(crate) fn validate(&self) -> Result<(), StatsError> {
        if self.resamples == 0 {
            return Err(StatsError::NoResamples);
        }
        if self.level.is_nan() || self.level <= 0.0 || self.level >= 1.0 {
            return Err(StatsError::Level(self.level));
        }
        Ok(())
    }
}

/// A confidence interval `[lo, hi]` at `level`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Ci {
    /// Lower end.
    pub lo: f64,
    /// Upper end.
    pub hi: f64,
    /// Confidence level (0.95 = 95%).
    pub level: f64,
}

impl Ci {
    /// Whether `x` lies in the interval (ends included).
    pub fn contains(&self, x: f64) -> bool {
        self.lo <= x && x <= self.hi
    }

    /// Half the width.
    pub fn half_width(&self) -> f64 {
        (self.hi - self.lo) / 2.0
    }

    /// For an interval of a ratio: how far from 1 it reaches, `max(|lo - 1|, |hi - 1|)` (a
    /// fraction: 0.04 = 4%). At the interval's level, `|ratio - 1|` is below this.
    pub fn max_abs_delta(&self) -> f64 {
        (self.lo - 1.0).abs().max((self.hi - 1.0).abs())
    }
}

/// A point estimate with its confidence interval and the number of values behind it.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Estimate {
    /// The estimate (a median, or a median of ratios).
    pub value: f64,
    /// Its bootstrap interval.
    pub ci: Ci,
    /// Values it was computed from (repetitions or blocks).
    pub n: usize,
}

/// The median of `xs` (the mean of the two middle values when their number is even).
pub fn median(xs: &[f64]) -> Result<f64, StatsError> {
    check_finite("samples", xs)?;
    let mut v = xs.to_vec();
    Ok(median_in_place(&mut v))
}

/// The quantile `p` (in [0, 1], clamped) of sorted `xs` by linear interpolation between the
/// closest ranks (Hyndman and Fan's type 7, R's and numpy's default). `xs` must be non-empty
/// and sorted ascending.
pub fn quantile_sorted(xs: &[f64], p: f64) -> f64 {
    debug_assert!(!xs.is_empty());
    let h = (xs.len() - 1) as f64 * p.clamp(0.0, 1.0);
    let i = h.floor() as usize;
    match xs.get(i + 1) {
        Some(&next) => xs[i] + (h - i as f64) * (next - xs[i]),
        None => xs[i],
    }
}

/// The median of `xs` with its percentile-bootstrap interval: `cfg.resamples` resamples of
/// `xs.len()` values drawn with replacement, the median of each, and the
/// `(1 - level) / 2` and `(1 + level) / 2` quantiles of those medians.
pub fn median_ci(xs: &[f64], cfg: &BootstrapConfig) -> Result<Estimate, StatsError> {
    check_finite("samples", xs)?;
    cfg.validate()?;
    let mut scratch = Vec::with_capacity(xs.len());
    let ci = percentile_interval(cfg, |rng| resample_median(rng, xs, &mut scratch));
    Ok(Estimate {
        value: median_in_place(&mut xs.to_vec()),
        ci,
        n: xs.len(),
    })
}

/// The median of `v`, reordering it. `v` is non-empty and finite.
pub(crate) fn median_in_place(v: &mut [f64]) -> f64 {
    let len = v.len();
    let (below, &mut m, _) = v.select_nth_unstable_by(len / 2, f64::total_cmp);
    if len % 2 == 1 {
        m
    } else {
        // Even: the other middle value is the largest of the lower half.
        let lower = below.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        (lower + m) / 2.0
    }
}

/// The median of one resample of `xs` (drawn with replacement into `scratch`).
pub(crate) fn resample_median(rng: &mut Rng, xs: &[f64], scratch: &mut Vec<f64>) -> f64 {
    scratch.clear();
    let n = xs.len() as u64;
    scratch.extend((0..n).map(|_| xs[rng.below(n) as usize]));
    median_in_place(scratch)
}

/// The percentile interval of `cfg.resamples` bootstrap statistics, each drawn by `draw` from
/// one generator seeded `cfg.seed` (so the result depends only on the input and the seed).
pub(crate) fn percentile_interval(
    cfg: &BootstrapConfig,
    mut draw: impl FnMut(&mut Rng) -> f64,
) -> Ci {
    let mut rng = Rng::new(cfg.seed);
    let mut stats: Vec<f64> = (0..cfg.resamples).map(|_| draw(&mut rng)).collect();
    stats.sort_unstable_by(f64::total_cmp);
    let tail = (1.0 - cfg.level) / 2.0;
    Ci {
        lo: quantile_sorted(&stats, tail),
        hi: quantile_sorted(&stats, 1.0 - tail),
        level: cfg.level,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::normal;

    #[test]
    fn median_of_known_samples() {
        assert_eq!(median(&[3.0]).unwrap(), 3.0);
        assert_eq!(median(&[5.0, 1.0, 3.0]).unwrap(), 3.0);
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]).unwrap(), 2.5);
        assert_eq!(median(&[7.0, 7.0]).unwrap(), 7.0);
        assert_eq!(median(&[-1.0, 10.0, 0.0, 2.0, 100.0]).unwrap(), 2.0);
    }

    #[test]
    fn quantiles_interpolate_like_type_7() {
        let xs = [10.0, 20.0, 30.0, 40.0, 50.0];
        assert_eq!(quantile_sorted(&xs, 0.0), 10.0);
        assert_eq!(quantile_sorted(&xs, 1.0), 50.0);
        assert_eq!(quantile_sorted(&xs, 0.5), 30.0);
        assert_eq!(quantile_sorted(&xs, 0.125), 15.0);
        assert_eq!(quantile_sorted(&xs, 2.0), 50.0);
        assert_eq!(quantile_sorted(&[4.0], 0.3), 4.0);
    }

    #[test]
    fn bad_input_is_an_error() {
        let cfg = BootstrapConfig::default();
        assert_eq!(median(&[]), Err(StatsError::Empty { what: "samples" }));
        assert!(matches!(
            median_ci(&[1.0, f64::NAN], &cfg),
            Err(StatsError::NonFinite { index: 1, .. })
        ));
        assert!(matches!(
            median(&[f64::INFINITY]),
            Err(StatsError::NonFinite { index: 0, .. })
        ));
        for level in [0.0, 1.0, -0.5, f64::NAN] {
            let bad = BootstrapConfig { level, ..cfg };
            assert!(matches!(median_ci(&[1.0], &bad), Err(StatsError::Level(_))));
        }
        let none = BootstrapConfig {
            resamples: 0,
            ..cfg
        };
        assert_eq!(median_ci(&[1.0], &none), Err(StatsError::NoResamples));
        // The messages are one line and name the sample.
        let e = median(&[]).unwrap_err().to_string();
        assert_eq!(e, "samples: no samples");
    }

    #[test]
    fn the_interval_is_deterministic_for_a_seed() {
        let xs = normal(1, 50, 100.0, 5.0);
        let a = median_ci(&xs, &BootstrapConfig::seeded(7)).unwrap();
        let b = median_ci(&xs, &BootstrapConfig::seeded(7)).unwrap();
        assert_eq!(a, b);
        let c = median_ci(&xs, &BootstrapConfig::seeded(8)).unwrap();
        assert_ne!(a.ci, c.ci, "another seed draws other resamples");
        assert_eq!(a.value, c.value);
        // ...but with 10,000 resamples the end points barely move.
        assert!((a.ci.lo - c.ci.lo).abs() < 0.2 * a.ci.half_width());
        assert!((a.ci.hi - c.ci.hi).abs() < 0.2 * a.ci.half_width());
    }

    #[test]
    fn the_interval_of_a_normal_median_has_the_textbook_width() {
        // The median of n normal samples has standard error ~ sqrt(pi / 2) * sigma / sqrt(n);
        // a 95% interval is ~ 2 * 1.96 of those wide.
        let (n, mu, sigma) = (400, 250.0, 10.0);
        let xs = normal(3, n, mu, sigma);
        let e = median_ci(&xs, &BootstrapConfig::seeded(1)).unwrap();
        let se = (std::f64::consts::PI / 2.0).sqrt() * sigma / (n as f64).sqrt();
        let want = 2.0 * 1.96 * se;
        let got = e.ci.hi - e.ci.lo;
        assert!(
            got > 0.6 * want && got < 1.6 * want,
            "width {got}, want ~{want}"
        );
        assert!(e.ci.contains(e.value));
        assert!(e.ci.contains(mu), "{:?}", e.ci);
        assert_eq!(e.n, n);
    }

    #[test]
    fn a_constant_sample_has_a_zero_width_interval() {
        let e = median_ci(&[42.0; 9], &BootstrapConfig::default()).unwrap();
        assert_eq!((e.value, e.ci.lo, e.ci.hi), (42.0, 42.0, 42.0));
        assert_eq!(e.ci.half_width(), 0.0);
    }

    #[test]
    fn coverage_is_near_the_nominal_level() {
        // 300 experiments of 31 normal samples, each with its own 95% interval: about 95% of
        // the intervals must hold the true median. (The percentile bootstrap of a median is
        // a little conservative at small n; the band allows for that and for the 300 trials'
        // own binomial noise, sd ~ 1.3%.)
        let trials = 300;
        let cfg = BootstrapConfig {
            resamples: 2_000,
            ..BootstrapConfig::default()
        };
        let mut hits = 0;
        for t in 0..trials {
            let xs = normal(1000 + t, 31, 10.0, 1.0);
            let e = median_ci(&xs, &BootstrapConfig { seed: t, ..cfg }).unwrap();
            hits += usize::from(e.ci.contains(10.0));
        }
        let coverage = hits as f64 / trials as f64;
        assert!((0.89..=0.995).contains(&coverage), "coverage {coverage}");
    }
}
