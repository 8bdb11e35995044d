//! Synthetic samples for the tests.

use shadowlab_workloads::rng::Rng;

/// A uniform value in (0, 1).
fn uniform(rng: &mut Rng) -> f64 {
    // 53 random bits, shifted off 0 by half a step.
    ((rng.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64
}

/// `n` samples of N(mu, sigma^2) (Box-Muller), seeded.
pub fn normal(seed: u64, n: usize, mu: f64, sigma: f64) -> Vec<f64> {
    let mut rng = Rng::new(seed);
    (0..n)
        .map(|_| {
            let (u1, u2) = (uniform(&mut rng), uniform(&mut rng));
            mu + sigma * (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
        })
        .collect()
}
