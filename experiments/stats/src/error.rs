//! Bad input to the statistics.

use thiserror::Error;

/// Why a statistic could not be computed. `what` names the sample (e.g. `"baseline"`).
#[derive(Clone, Debug, PartialEq, Error)]
pub enum StatsError {
    /// A sample with no values.
    #[error("{what}: no samples")]
    Empty {
        /// The sample.
        what: &'static str,
    },
    /// Two samples that must pair up (one value per block) have different lengths.
    #[error(
        "{left} has {left_len} samples but {right} has {right_len}: they must pair up by block"
    )]
    LengthMismatch {
        /// The first sample.
        left: &'static str,
        /// Its length.
        left_len: usize,
        /// The second sample.
        right: &'static str,
        /// Its length.
        right_len: usize,
    },
    /// A NaN or infinite value.
    #[error("{what}[{index}] is {value}, not a finite number")]
    NonFinite {
        /// The sample.
        what: &'static str,
        /// Where in it.
        index: usize,
        /// The value.
        value: f64,
    },
    /// A zero or negative time where a ratio is taken.
    #[error("{what}[{index}] is {value}: a ratio needs times above 0")]
    NonPositive {
        /// The sample.
        what: &'static str,
        /// Where in it.
        index: usize,
        /// The value.
        value: f64,
    },
    /// A confidence level outside (0, 1).
    #[error("confidence level {0} is not in (0, 1)")]
    Level(f64),
    /// A bootstrap with no resamples.
    #[error("the bootstrap needs at least one resample")]
    NoResamples,
    /// A noise floor that is negative or not finite.
    #[error("noise floor {0} is not a finite fraction >= 0")]
    Floor(f64),
}

/// Checks `xs` is non-empty and finite.
pub(crate) fn check_finite(what: &'static str, xs: &[f64]) -> Result<(), StatsError> {
    if xs.is_empty() {
        return Err(StatsError::Empty { what });
    }
    match xs.iter().position(|x| !x.is_finite()) {
        Some(index) => Err(StatsError::NonFinite {
            what,
            index,
            value: xs[index],
        }),
        None => Ok(()),
    }
}

/// Checks `xs` is non-empty, finite and above 0 (times a ratio is taken of).
pub(crate) fn check_positive(what: &'static str, xs: &[f64]) -> Result<(), StatsError> {
    check_finite(what, xs)?;
    match xs.iter().position(|&x| x <= 0.0) {
        Some(index) => Err(StatsError::NonPositive {
            what,
            index,
            value: xs[index],
        }),
        None => Ok(()),
    }
}

/// Checks a noise floor (a fraction: 0.05 = 5%).
pub(crate) fn check_floor(floor: f64) -> Result<(), StatsError> {
    if floor.is_finite() && floor >= 0.0 {
        Ok(())
    } else {
        Err(StatsError::Floor(floor))
    }
}
