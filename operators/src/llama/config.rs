//! Shape and hyper-parameters of a Llama-architecture model, read from GGUF metadata.

use crate::gguf::{GgufError, GgufFile};
use serde::{Deserialize, Serialize};

/// The hyper-parameters a Llama forward pass needs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LlamaConfig {
    /// Number of transformer blocks.
    pub n_layers: usize,
    /// Width of the hidden state.
    pub hidden: usize,
    /// Width of the SwiGLU feed-forward.
    pub ffn: usize,
    /// Query heads.
    pub n_heads: usize,
    /// Key/value heads (grouped-query attention).
    pub n_kv_heads: usize,
    /// Width of one head.
    pub head_dim: usize,
    /// RoPE frequency base.
    pub rope_base: f32,
    /// RMSNorm epsilon.
    pub rms_eps: f32,
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Longest context the model was trained for.
    pub context_length: usize,
    /// Whether the LM head reuses the token embedding (no `output.weight`).
    pub tied_embeddings: bool,
    /// Bytes of the weights in the file, which stages hold as they are.
    pub weights: WeightSizes,
}

/// Bytes of a model's weights as stored in its GGUF file (blocks stay encoded in
/// memory, so these are also the bytes a stage holds on the CPU backend).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WeightSizes {
    /// Bytes of each block's tensors (matrices and norms), by block index.
    pub blocks: Vec<u64>,
    /// Bytes of the token embedding table.
    pub embed: u64,
    /// Bytes of the final norm and, when not tied, of `output.weight`.
    pub head: u64,
    /// Whether the head reads the embedding table.
    pub tied: bool,
}

impl WeightSizes {
    /// Reads the tensor sizes of a Llama GGUF file with `n_layers` blocks.
    pub fn from_gguf(file: &GgufFile, n_layers: usize) -> Result<Self, GgufError> {
        let mut blocks = vec![0u64; n_layers];
        let (mut embed, mut head, mut tied) = (0, 0, true);
        for t in file.tensors() {
            if let Some(rest) = t.name.strip_prefix("blk.") {
                let layer = rest.split('.').next().and_then(|l| l.parse::<usize>().ok());
                if let Some(b) = layer.and_then(|l| blocks.get_mut(l)) {
                    *b += t.size_bytes;
                }
            } else if t.name == "token_embd.weight" {
                embed = t.size_bytes;
            } else if t.name == "output.weight" || t.name == "output_norm.weight" {
                tied &= t.name != "output.weight";
                head += t.size_bytes;
            }
        }
        Ok(Self {
            blocks,
            embed,
            head,
            tied,
        })
    }

    /// Bytes of every weight once (a tied table counted once).
    pub fn total(&self) -> u64 {
        self.blocks.iter().sum::<u64>() + self.embed + self.head
    }

    /// Bytes a stage of blocks `layers` holds, with the embedding table if `embed`
    /// and the head if `head` (a tied head shares the table with an embed on the same stage).
    pub fn stage(&self, layers: &std::ops::Range<usize>, embed: bool, head: bool) -> u64 {
        let blocks: u64 = self
            .blocks
            .get(layers.clone())
            .map_or(0, |b| b.iter().sum());
        let table = if embed || (head && self.tied) {
            self.embed
        } else {
            0
        };
        blocks + table + if head { self.head } else { 0 }
    }
}

impl LlamaConfig {
    /// Reads the config from the metadata of a GGUF file of architecture `llama`.
    pub fn from_gguf(file: &GgufFile) -> Result<Self, GgufError> {
        let md = &file.metadata;
        let arch = md.str("general.architecture")?;
        if arch != "llama" {
            return Err(GgufError::BadValue {
                key: "general.architecture".into(),
                reason: format!("{arch:?} is not supported (only \"llama\")"),
            });
        }
        let key = |k: &str| format!("llama.{k}");
        let positive = |k: &str| -> Result<usize, GgufError> {
            let v = md.u64(&key(k))?;
            if v == 0 || v > 1 << 24 {
                return Err(GgufError::BadValue {
                    key: key(k),
                    reason: format!("{v} is out of range"),
                });
            }
            Ok(v as usize)
        };
        let n_layers = positive("block_count")?;
        let hidden = positive("embedding_length")?;
        let ffn = positive("feed_forward_length")?;
        let n_heads = positive("attention.head_count")?;
        let n_kv_heads = match md.get(&key("attention.head_count_kv")) {
            Some(_) => positive("attention.head_count_kv")?,
            None => n_heads,
        };
        if !hidden.is_multiple_of(n_heads) || !n_heads.is_multiple_of(n_kv_heads) {
            return Err(GgufError::BadValue {
                key: key("attention.head_count"),
                reason: format!(
                    "{n_heads} heads and {n_kv_heads} KV heads do not divide a hidden size of {hidden}"
                ),
            });
        }
        let head_dim = hidden / n_heads;
        if !head_dim.is_multiple_of(2) {
            return Err(GgufError::BadValue {
                key: key("attention.head_count"),
                reason: format!("head size {head_dim} is odd; RoPE needs pairs"),
            });
        }
        let rope_base = match md.get(&key("rope.freq_base")) {
            Some(_) => md.f64(&key("rope.freq_base"))? as f32,
            None => 10_000.0,
        };
        let rms_eps = md.f64(&key("attention.layer_norm_rms_epsilon"))? as f32;
        let vocab_size = match md.get(&key("vocab_size")) {
            Some(_) => positive("vocab_size")?,
            None => md.strings("tokenizer.ggml.tokens")?.len(),
        };
        let context_length = positive("context_length")?;
        Ok(LlamaConfig {
            n_layers,
            hidden,
            ffn,
            n_heads,
            n_kv_heads,
            head_dim,
            rope_base,
            rms_eps,
            vocab_size,
            context_length,
            tied_embeddings: !file.has_tensor("output.weight"),
            weights: WeightSizes::from_gguf(file, n_layers)?,
        })
    }

    /// Width of the K (and V) projection.
    pub fn kv_dim(&self) -> usize {
        self.n_kv_heads * self.head_dim
    }

    /// Bytes of f32 KV cache one block holds per token of context.
    pub fn kv_bytes_per_token_per_layer(&self) -> u64 {
        (2 * self.kv_dim() * 4) as u64
    }

    /// Parameters of one block.
    pub fn block_params(&self) -> u64 {
        let h = self.hidden as u64;
        let kv = self.kv_dim() as u64;
        let f = self.ffn as u64;
        h * h * 2 + h * kv * 2 + 3 * h * f + 2 * h
    }
}
