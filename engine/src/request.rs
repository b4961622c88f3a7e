//! Requests and the token log that is the source of truth of a sequence.

use serde::{Deserialize, Serialize};
use tokenflow_operators::{SamplingParams, SeqId};

/// A generation request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Request {
    /// Unique id of the sequence.
    pub id: SeqId,
    /// Prompt token ids.
    pub prompt: Vec<u32>,
    /// Most tokens to generate.
    pub max_tokens: usize,
    /// How tokens are chosen.
    pub sampling: SamplingParams,
    /// Token ids that end the sequence (e.g. EOS, `<|im_end|>`); empty to always run to `max_tokens`.
    pub stop_tokens: Vec<u32>,
    /// Texts that end the sequence once the decoded output contains one (the
    /// dataflow engine checks them when it has a tokenizer; the token that
    /// completes the text is part of the output).
    #[serde(default)]
    pub stop_strings: Vec<String>,
}

impl Request {
    /// A greedy request for `max_tokens` tokens after `prompt`, with no stop condition.
    pub fn greedy(id: SeqId, prompt: Vec<u32>, max_tokens: usize) -> Self {
        Self {
            id,
            prompt,
            max_tokens,
            sampling: SamplingParams::greedy(),
            stop_tokens: Vec::new(),
            stop_strings: Vec::new(),
        }
    }
}

/// Why a sequence ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum FinishReason {
    /// A stop token or stop string was generated (it is part of the output).
    Stop,
    /// `max_tokens` were generated.
    Length,
}

/// Everything needed to rebuild a sequence anywhere: its prompt and the tokens generated so far.
///
/// KV caches are derived state; re-running these tokens through the stages (a
/// prefill) rebuilds them, and the sampler draws from the seed and position alone.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct TokenLog {
    /// Prompt token ids.
    pub prompt: Vec<u32>,
    /// Generated token ids, in order.
    pub generated: Vec<u32>,
}

impl TokenLog {
    /// All known tokens: prompt then generated.
    pub fn tokens(&self) -> impl Iterator<Item = u32> + '_ {
        self.prompt.iter().chain(self.generated.iter()).copied()
    }

    /// Number of known tokens.
    pub fn len(&self) -> usize {
        self.prompt.len() + self.generated.len()
    }

    /// Whether no token is known.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
