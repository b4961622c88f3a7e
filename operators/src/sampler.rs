//! The `Sampler` stage: logits to the next token, greedy or seeded sampling.
//!
//! Sampling randomness is derived from the request's seed and the token's
//! position alone, so a sequence restarted elsewhere from its token log draws
//! exactly the same tokens: the sampler keeps no state between steps.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha12Rng;
use serde::{Deserialize, Serialize};

/// How a request's tokens are chosen.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SamplingParams {
    /// 0 (or unset) means greedy.
    pub temperature: f32,
    /// Keep only the `k` most likely tokens (0 = off).
    pub top_k: usize,
    /// Keep the smallest set of tokens whose probability reaches `p` (1.0 = off).
    pub top_p: f32,
    /// Divide positive logits (multiply negative ones) of tokens already seen by this (1.0 = off).
    pub repetition_penalty: f32,
    /// Seed of the request's random draws.
    pub seed: u64,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self::greedy()
    }
}

impl SamplingParams {
    /// Always the most likely token.
    pub fn greedy() -> Self {
        Self {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            repetition_penalty: 1.0,
            seed: 0,
        }
    }

    /// Sampling parameters, each checked: `temperature` finite and at least 0
    /// (0 is greedy), `top_p` in (0, 1], `repetition_penalty` finite and
    /// positive. `top_k` and `seed` take any value (`top_k` 0 is off).
    pub fn new(
        temperature: f32,
        top_k: usize,
        top_p: f32,
        repetition_penalty: f32,
        seed: u64,
    ) -> Result<Self, SamplingError> {
        let params = Self {
            temperature,
            top_k,
            top_p,
            repetition_penalty,
            seed,
        };
        params.validate()?;
        Ok(params)
    }

    /// Checks the ranges of [`SamplingParams::new`] (for parameters built
    /// field by field, or read from a file or a request body).
    pub fn validate(&self) -> Result<(), SamplingError> {
        let bad = |field, value, requirement: &str| {
            Err(SamplingError {
                field,
                value,
                requirement: requirement.into(),
            })
        };
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            return bad(
                SamplingField::Temperature,
                self.temperature,
                "finite and at least 0 (0 is greedy)",
            );
        }
        if !(self.top_p.is_finite() && self.top_p > 0.0 && self.top_p <= 1.0) {
            return bad(SamplingField::TopP, self.top_p, "in (0, 1] (1 is off)");
        }
        if !(self.repetition_penalty.is_finite() && self.repetition_penalty > 0.0) {
            return bad(
                SamplingField::RepetitionPenalty,
                self.repetition_penalty,
                "finite and positive (1 is off)",
            );
        }
        Ok(())
    }

    /// Whether the choice is deterministic argmax.
    pub fn is_greedy(&self) -> bool {
        self.temperature <= 0.0
    }
}

/// Which sampling parameter an error is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SamplingField {
    /// `temperature`.
    Temperature,
    /// `top_p`.
    TopP,
    /// `repetition_penalty`.
    RepetitionPenalty,
}

impl SamplingField {
    /// The command-line option that sets it (`--top-p`).
    pub fn option(self) -> &'static str {
        match self {
            SamplingField::Temperature => "--temperature",
            SamplingField::TopP => "--top-p",
            SamplingField::RepetitionPenalty => "--repetition-penalty",
        }
    }

    /// Its name in request bodies and files (`top_p`, as in the OpenAI API).
    pub fn field(self) -> &'static str {
        match self {
            SamplingField::Temperature => "temperature",
            SamplingField::TopP => "top_p",
            SamplingField::RepetitionPenalty => "repetition_penalty",
        }
    }
}

/// A sampling parameter out of its range.
#[derive(Debug, Clone, PartialEq, thiserror::Error, Serialize, Deserialize)]
#[error("{} (`{}`) = {value}: must be {requirement}", field.option(), field.field())]
pub struct SamplingError {
    /// The parameter.
    pub field: SamplingField,
    /// The value given.
    pub value: f32,
    /// The allowed range.
    pub requirement: String,
}

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
