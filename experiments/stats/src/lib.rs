//! The statistics of the experiment driver (issue 9, item 3): what a matrix of runs can say
//! about a policy's cost, with honest uncertainty. Pure functions over per-op times; no I/O.
//!
//! - [`median_ci`]: a cell's median per-op time over its repetitions, with a percentile
//!   bootstrap confidence interval ([`Estimate`]).
//! - [`paired_ratio`]: a policy's ratio to the baseline arm (`rmb-fence`), paired by block: the
//!   median of the per-block ratios, with a bootstrap interval over blocks.
//! - [`aa_floor`] / [`Floor`]: the A/A control. Two arms of the same build (and later two code
//!   layouts) must give a ratio of 1; how far from 1 their interval reaches is the noise floor.
//! - [`Label`]: every cell is `resolved` (its interval excludes 1 and the ratio clears the
//!   floor) or `bounded` ("|Δ| < x% at 95%"). Never a bare number.
//! - [`compare`]: two runs of one cell, unpaired: the ratio of their medians with an interval,
//!   and whether they differ beyond a noise floor ([`DEFAULT_COMPARE_FLOOR`]).
//!
//! Every bootstrap is seeded ([`BootstrapConfig::seed`]): the same input and seed give the same
//! interval, bit for bit. Bad input (empty samples, mismatched lengths, NaN or infinite values,
//! non-positive times where a ratio is taken, a bad configuration) is a [`StatsError`].

mod compare;
mod error;
mod estimate;
mod label;
mod ratio;

pub use compare::{compare, ratio_of_medians, Comparison, DEFAULT_COMPARE_FLOOR};
pub use error::StatsError;
pub use estimate::{median, median_ci, quantile_sorted, BootstrapConfig, Ci, Estimate};
pub use label::Label;
pub use ratio::{aa_floor, paired_ratio, Floor, NoiseFloor};

#[cfg(test)]
mod testutil;
