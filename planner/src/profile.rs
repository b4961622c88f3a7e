//! What the planner needs to know about a model: per-layer sizes and costs,
//! and stage times measured on real hardware.

use serde::{Deserialize, Serialize};

/// Static costs of one transformer block.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LayerProfile {
    /// Bytes of the block's weights as stored for execution.
    pub param_bytes: u64,
    /// Floating-point operations per token (2 × multiply-adds), excluding attention over the context.
    pub flops_per_token: f64,
    /// Attention FLOPs per token per token of context (scores and weighted sum).
    pub attention_flops_per_context_token: f64,
    /// Bytes of the hidden state that leaves the block for one token.
    pub activation_bytes_per_token: u64,
    /// Bytes of KV cache the block holds per token of context.
    pub kv_bytes_per_token: u64,
}

/// Whether a measured call processed prompt tokens or single decode steps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// Many tokens of one sequence at once.
    Prefill,
    /// One new token for each sequence of the batch.
    Decode,
}

/// One measured stage call: `layers` blocks run on `device` for a batch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MeasuredStageTime {
    /// Free-form device name, e.g. `cpu-2core` or `rtx3090`.
    pub device: String,
    /// Number of transformer blocks in the stage.
    pub layers: u32,
    /// Prefill or decode.
    pub phase: Phase,
    /// Sequences in the batch.
    pub batch: u32,
    /// Tokens processed by the call (batch for decode, prompt length × batch for prefill).
    pub tokens: u32,
    /// Median wall time of one call in seconds.
    pub seconds: f64,
}

/// Sizes and costs of a whole model, layer by layer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelProfile {
    /// Human-readable model name.
    pub name: String,
    /// Width of the hidden state.
    pub hidden_size: u32,
    /// Vocabulary size (width of the logits).
    pub vocab_size: u32,
    /// Bytes of the token embedding table.
    pub embed_param_bytes: u64,
    /// Bytes of the final norm and LM head (the embedding again when tied).
    pub head_param_bytes: u64,
    /// FLOPs per token of the LM head.
    pub head_flops_per_token: f64,
    /// Whether the head reads the embedding table (then `head_param_bytes`
    /// includes it, and a node holding both ends holds the table once).
    #[serde(default)]
    pub tied_embeddings: bool,
    /// One entry per transformer block, in order.
    pub layers: Vec<LayerProfile>,
    /// Stage times measured on real hardware, if any.
    #[serde(default)]
    pub measured: Vec<MeasuredStageTime>,
    /// Longest sequence (prompt and output) the model takes: the engine ends a
    /// sequence there, so no more KV is ever held for one. `None` (profile
    /// files written before this field) means unbounded.
    #[serde(default)]
    pub context_length: Option<u32>,
}

impl ModelProfile {
    /// The tokens a request of `prompt` prompt tokens and `output` output
    /// tokens really generates: `None` when the prompt leaves no room in the
    /// context (the engine refuses it), otherwise the output cut to what fits,
    /// as the engine's context stop rule cuts it.
    pub fn fit_to_context(&self, prompt: u32, output: u32) -> Option<u32> {
        match self.context_length {
            Some(c) if prompt >= c => None,
            Some(c) => Some(output.min(c - prompt)),
            None => Some(output),
        }
    }

    /// Number of transformer blocks.
    pub fn num_layers(&self) -> usize {
        self.layers.len()
    }

    /// Bytes of weights of blocks `range`.
    pub fn param_bytes(&self, range: std::ops::Range<usize>) -> u64 {
        self.layers[range].iter().map(|l| l.param_bytes).sum()
    }

    /// Bytes of weights of the whole model (embedding and head counted once if tied).
    pub fn total_param_bytes(&self) -> u64 {
        let table_again = if self.tied_embeddings {
            self.embed_param_bytes.min(self.head_param_bytes)
        } else {
            0
        };
        self.embed_param_bytes + self.head_param_bytes - table_again
            + self.param_bytes(0..self.layers.len())
    }
}
