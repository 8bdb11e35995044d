//! Deterministic pseudo-randomness and the data patterns the self-checks compare.
//!
//! Every data frame a workload maps is stamped (through the direct map) with a value derived
//! from the run's seed, the frame's guest-physical address and a tag (the round). A read through
//! the workload's virtual address that returns anything else is a stale or wrong translation:
//! the frame a stale TLB entry still points at holds another gpa's or another round's value.

/// SplitMix64's finaliser: a cheap bijective mix of 64 bits.
#[inline]
pub const fn mix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The value stamped into word 0 of data frame `gpa` for round `tag` of a run seeded `seed`.
/// Word 511 holds its complement, so a translation to the wrong page *offset* is caught too.
#[inline]
pub const fn pattern(seed: u64, gpa: u64, tag: u64) -> u64 {
    mix64(seed ^ mix64(gpa ^ tag.rotate_left(40)))
}

/// A small deterministic generator (SplitMix64 stream): same seed, same sequence, on every
/// backend.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// A generator for `seed`.
    pub const fn new(seed: u64) -> Self {
        Rng(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        mix64(self.0)
    }

    /// A value in `0..n` (`n > 0`; returns 0 for `n == 0`). Lemire's multiply-shift: the bias is
    /// below 2^-32 for the small `n` the workloads use.
    pub fn below(&mut self, n: u64) -> u64 {
        ((self.next_u64() as u128 * n as u128) >> 64) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pattern_depends_on_every_input() {
        let p = pattern(1, 0x1000, 3);
        assert_ne!(p, pattern(2, 0x1000, 3));
        assert_ne!(p, pattern(1, 0x2000, 3));
        assert_ne!(p, pattern(1, 0x1000, 4));
    }

    #[test]
    fn rng_is_deterministic_and_bounded() {
        let mut a = Rng::new(7);
        let mut b = Rng::new(7);
        for _ in 0..1000 {
            let x = a.below(10);
            assert_eq!(x, b.below(10));
            assert!(x < 10);
        }
        assert_eq!(Rng::new(1).below(0), 0);
        // All ten values show up in 100 draws (not stuck), and seeds give different streams.
        let mut c = Rng::new(42);
        let mut seen = [false; 10];
        for _ in 0..100 {
            seen[c.below(10) as usize] = true;
        }
        assert!(seen.iter().all(|&s| s));
        assert_ne!(Rng::new(1).next_u64(), Rng::new(2).next_u64());
    }
}
