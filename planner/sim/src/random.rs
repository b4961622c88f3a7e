//! Seeded random streams and the few distributions the simulator draws from
//! (exponential, Weibull, gamma, normal, log-normal), written out so that the
//! same seed gives the same numbers on every platform and version of `rand`'s
//! distribution crates.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// What a random stream is used for; each purpose (and each node) gets its
/// own ChaCha stream, so adding draws to one never shifts another.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// Arrival times.
    Arrivals = 1,
    /// Prompt and output lengths.
    Lengths = 2,
    /// Up and down times of node churn (stream also keyed by node).
    Churn = 3,
}

/// A ChaCha8 generator for `seed`, `purpose` and `index` (a node, or 0).
pub fn stream(seed: u64, purpose: Purpose, index: u64) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(((purpose as u64) << 40) ^ index);
    rng
}

/// A uniform draw in (0, 1].
pub fn open01(rng: &mut ChaCha8Rng) -> f64 {
    1.0 - rng.random::<f64>()
}

/// Exponential with mean `mean`.
pub fn exponential(rng: &mut ChaCha8Rng, mean: f64) -> f64 {
    -open01(rng).ln() * mean
}

/// Weibull with `shape` k and `scale` λ: λ (−ln U)^(1/k).
pub fn weibull(rng: &mut ChaCha8Rng, shape: f64, scale: f64) -> f64 {
    scale * (-open01(rng).ln()).powf(1.0 / shape)
}

/// Standard normal (Box–Muller, one value per call).
pub fn normal(rng: &mut ChaCha8Rng) -> f64 {
    let u1 = open01(rng);
    let u2: f64 = rng.random();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

/// Gamma with `shape` k and `scale` θ (Marsaglia and Tsang 2000; shape < 1
/// through the boost G(k) = G(k + 1) U^(1/k)).
pub fn gamma(rng: &mut ChaCha8Rng, shape: f64, scale: f64) -> f64 {
    if shape < 1.0 {
        let g = gamma(rng, shape + 1.0, 1.0);
        return scale * g * open01(rng).powf(1.0 / shape);
    }
    let d = shape - 1.0 / 3.0;
    let c = 1.0 / (9.0 * d).sqrt();
    loop {
        let x = normal(rng);
        let v = 1.0 + c * x;
        if v <= 0.0 {
            continue;
        }
        let v = v * v * v;
        let u = open01(rng);
        if u.ln() < 0.5 * x * x + d - d * v + d * v.ln() {
            return scale * d * v;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mean(f: impl FnMut() -> f64, n: usize) -> f64 {
        std::iter::repeat_with(f).take(n).sum::<f64>() / n as f64
    }

    #[test]
    fn means_match() {
        let mut r = stream(1, Purpose::Arrivals, 0);
        let n = 200_000;
        assert!((mean(|| exponential(&mut r, 2.0), n) / 2.0 - 1.0).abs() < 0.02);
        assert!((mean(|| gamma(&mut r, 0.25, 4.0), n) / 1.0 - 1.0).abs() < 0.03);
        assert!((mean(|| gamma(&mut r, 3.0, 0.5), n) / 1.5 - 1.0).abs() < 0.02);
        // Weibull mean: λ Γ(1 + 1/k); k = 1 is exponential.
        assert!((mean(|| weibull(&mut r, 1.0, 3.0), n) / 3.0 - 1.0).abs() < 0.02);
        assert!(mean(|| normal(&mut r), n).abs() < 0.01);
    }

    #[test]
    fn streams_are_independent_and_repeatable() {
        let a: Vec<f64> = (0..4)
            .map(|_| stream(5, Purpose::Churn, 3).random())
            .collect();
        assert!(a.windows(2).all(|w| w[0] == w[1]));
        let mut x = stream(5, Purpose::Churn, 3);
        let mut y = stream(5, Purpose::Churn, 4);
        assert_ne!(x.random::<u64>(), y.random::<u64>());
    }
}
