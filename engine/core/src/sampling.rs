//! How a request's tokens are chosen: the parameters every executor carries
//! and checks (the draw itself is the operators' `sampler`).

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
