//! The `Sampler` stage: logits to the next token, greedy or seeded sampling.
//!
//! Sampling randomness is derived from the request's seed and the token's
//! position alone, so a sequence restarted elsewhere from its token log draws
//! exactly the same tokens: the sampler keeps no state between steps.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha12Rng;

pub use tokenflow_core::sampling::{SamplingError, SamplingField, SamplingParams};

/// Index of the largest value (the lowest index among equals).
pub fn argmax(values: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in values.iter().enumerate() {
        if v > values[best] {
            best = i;
        }
    }
    best as u32
}

/// Chooses the token at position `position` of a sequence from its `logits`,
/// given the `history` of tokens so far (for the repetition penalty).
pub fn sample(params: &SamplingParams, logits: &[f32], history: &[u32], position: usize) -> u32 {
    let mut logits = logits.to_vec();
    if params.repetition_penalty != 1.0 && params.repetition_penalty > 0.0 {
        let mut seen = history.to_vec();
        seen.sort_unstable();
        seen.dedup();
        for &t in &seen {
            if let Some(l) = logits.get_mut(t as usize) {
                *l = if *l > 0.0 {
                    *l / params.repetition_penalty
                } else {
                    *l * params.repetition_penalty
                };
            }
        }
    }
    if params.is_greedy() {
        return argmax(&logits);
    }
    let mut order: Vec<u32> = (0..logits.len() as u32).collect();
    order.sort_by(|&a, &b| {
        logits[b as usize]
            .total_cmp(&logits[a as usize])
            .then(a.cmp(&b))
    });
    if params.top_k > 0 {
        order.truncate(params.top_k);
    }
    let max = logits[order[0] as usize];
    let mut probs: Vec<f64> = order
        .iter()
        .map(|&t| (((logits[t as usize] - max) / params.temperature) as f64).exp())
        .collect();
    let total: f64 = probs.iter().sum();
    probs.iter_mut().for_each(|p| *p /= total);
    if params.top_p < 1.0 {
        let mut cumulative = 0.0;
        let keep = probs
            .iter()
            .position(|&p| {
                cumulative += p;
                cumulative >= params.top_p as f64
            })
            .map_or(probs.len(), |i| i + 1);
        order.truncate(keep);
        probs.truncate(keep);
    }
    let total: f64 = probs.iter().sum();
    let mut rng = ChaCha12Rng::seed_from_u64(
        params.seed ^ (position as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15),
    );
    let mut draw = rng.random::<f64>() * total;
    for (&t, &p) in order.iter().zip(&probs) {
        draw -= p;
        if draw <= 0.0 {
            return t;
        }
    }
    *order.last().expect("at least one token")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn out_of_range_parameters_are_refused_by_name() {
        for (t, p, r, field) in [
            (f32::NAN, 1.0, 1.0, SamplingField::Temperature),
            (-0.1, 1.0, 1.0, SamplingField::Temperature),
            (f32::INFINITY, 1.0, 1.0, SamplingField::Temperature),
            (1.0, 0.0, 1.0, SamplingField::TopP),
            (1.0, 1.5, 1.0, SamplingField::TopP),
            (1.0, f32::NAN, 1.0, SamplingField::TopP),
            (1.0, 1.0, 0.0, SamplingField::RepetitionPenalty),
            (1.0, 1.0, -2.0, SamplingField::RepetitionPenalty),
            (1.0, 1.0, f32::INFINITY, SamplingField::RepetitionPenalty),
        ] {
            let e = SamplingParams::new(t, 0, p, r, 0).unwrap_err();
            assert_eq!(e.field, field, "{e}");
            assert!(e.to_string().contains(field.option()), "{e}");
        }
        assert_eq!(
            SamplingParams::new(0.0, 0, 1.0, 1.0, 0).unwrap(),
            SamplingParams::greedy()
        );
        assert!(SamplingParams::new(0.7, 40, 0.9, 1.1, 3).is_ok());
    }

    #[test]
    fn greedy_takes_the_first_maximum() {
        assert_eq!(
            sample(&SamplingParams::greedy(), &[0.1, 2.0, 2.0, -1.0], &[], 0),
            1
        );
    }

    #[test]
    fn repetition_penalty_changes_the_choice() {
        let p = SamplingParams {
            repetition_penalty: 2.0,
            ..SamplingParams::greedy()
        };
        assert_eq!(sample(&p, &[1.0, 1.5], &[1], 0), 0);
    }

    #[test]
    fn seeded_sampling_depends_only_on_seed_and_position() {
        let p = SamplingParams {
            temperature: 1.0,
            seed: 42,
            ..SamplingParams::greedy()
        };
        let logits: Vec<f32> = (0..100).map(|i| (i as f32 * 0.37).sin()).collect();
        let a: Vec<u32> = (0..20).map(|pos| sample(&p, &logits, &[], pos)).collect();
        let b: Vec<u32> = (0..20).map(|pos| sample(&p, &logits, &[], pos)).collect();
        assert_eq!(a, b);
        assert!(
            a.iter().any(|&t| t != a[0]),
            "draws at different positions differ"
        );
    }

    #[test]
    fn top_k_one_is_greedy() {
        let p = SamplingParams {
            temperature: 5.0,
            top_k: 1,
            seed: 3,
            ..SamplingParams::greedy()
        };
        let logits = [0.5, 3.0, 2.9, 0.0];
        for pos in 0..50 {
            assert_eq!(sample(&p, &logits, &[], pos), 1);
        }
    }

    #[test]
    fn top_p_keeps_the_nucleus() {
        let p = SamplingParams {
            temperature: 1.0,
            top_p: 0.5,
            seed: 9,
            ..SamplingParams::greedy()
        };
        let logits = [10.0, 0.0, 0.0, 0.0];
        for pos in 0..50 {
            assert_eq!(sample(&p, &logits, &[], pos), 0);
        }
    }
}
