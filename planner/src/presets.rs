//! Model profiles for large published shapes, computed from their public configs,
//! and loading a model given as a preset name or a profile file.

use std::path::Path;

use crate::error::{PlanError, positive};
use crate::profile::{LayerProfile, ModelProfile};

/// A decoder-only transformer shape in the LLaMA family.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LlamaShape {
    /// Transformer blocks.
    pub layers: u32,
    /// Hidden size.
    pub hidden: u32,
    /// MLP intermediate size.
    pub intermediate: u32,
    /// Attention heads.
    pub heads: u32,
    /// Key/value heads (grouped-query attention).
    pub kv_heads: u32,
    /// Vocabulary size.
    pub vocab: u32,
    /// Bytes per parameter and per cached value (2 for FP16).
    pub dtype_bytes: u32,
    /// How the weights are stored (activations and KV stay at `dtype_bytes`).
    pub format: WeightFormat,
    /// Context length (`max_position_embeddings` of `config.json`).
    pub context: u32,
}

/// The storage of a preset's weight matrices.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightFormat {
    /// `dtype_bytes` per parameter.
    Dense,
    /// llama.cpp's `Q4_K_M` mix (`llama-quant.cpp`): `Q4_K` (4.5 bits per weight)
    /// everywhere, `Q6_K` (6.5625 bits) for `output.weight` and for `attn_v` and
    /// `ffn_down` of the layers `use_more_bits` picks (the first and last eighth
    /// and every third in between), and `Q5_K` (5.5 bits) for the other `attn_v`
    /// of models whose KV heads are shared by 8 query heads (the 70B rule). Norms stay f32.
    Q4KM,
}

/// Bytes of `params` weights of a GGUF block type with `block_bytes` per 256 weights.
fn k_quant_bytes(params: u64, block_bytes: u64) -> u64 {
    params.div_ceil(256) * block_bytes
}

/// llama.cpp's `use_more_bits(i, n)`.
fn use_more_bits(i: u64, n: u64) -> bool {
    i < n / 8 || i >= 7 * n / 8 || (i - n / 8) % 3 == 2
}

const Q4_K: u64 = 144;
const Q5_K: u64 = 176;
const Q6_K: u64 = 210;

impl LlamaShape {
    /// The per-layer and whole-model profile of this shape.
    pub fn profile(&self, name: &str) -> ModelProfile {
        let h = self.hidden as u64;
        let head_dim = h / self.heads as u64;
        let kv_dim = head_dim * self.kv_heads as u64;
        let b = self.dtype_bytes as u64;
        let attn_params = 2 * h * h + 2 * h * kv_dim;
        let mlp_params = 3 * h * self.intermediate as u64;
        let params = attn_params + mlp_params + 2 * h;
        let v = self.vocab as u64;
        let n = self.layers as u64;
        let layer = |i: u64| {
            let param_bytes = match self.format {
                WeightFormat::Dense => params * b,
                WeightFormat::Q4KM => {
                    let more = use_more_bits(i, n);
                    let v_type = if more {
                        Q6_K
                    } else if self.heads / self.kv_heads >= 8 {
                        Q5_K
                    } else {
                        Q4_K
                    };
                    let down = if more { Q6_K } else { Q4_K };
                    k_quant_bytes(
                        2 * h * h + h * kv_dim + 2 * h * self.intermediate as u64,
                        Q4_K,
                    ) + k_quant_bytes(h * kv_dim, v_type)
                        + k_quant_bytes(h * self.intermediate as u64, down)
                        + 2 * h * 4
                }
            };
            LayerProfile {
                param_bytes,
                flops_per_token: 2.0 * (attn_params + mlp_params) as f64,
                attention_flops_per_context_token: 4.0 * h as f64,
                activation_bytes_per_token: h * b,
                kv_bytes_per_token: 2 * kv_dim * b,
            }
        };
        let (embed, head) = match self.format {
            WeightFormat::Dense => (v * h * b, v * h * b + h * b),
            WeightFormat::Q4KM => (
                k_quant_bytes(v * h, Q4_K),
                k_quant_bytes(v * h, Q6_K) + h * 4,
            ),
        };
        ModelProfile {
            name: name.to_string(),
            hidden_size: self.hidden,
            vocab_size: self.vocab,
            embed_param_bytes: embed,
            head_param_bytes: head,
            head_flops_per_token: 2.0 * (v * h) as f64,
            tied_embeddings: false,
            layers: (0..n).map(layer).collect(),
            measured: Vec::new(),
            context_length: Some(self.context),
        }
    }
}

/// Known presets: (name, shape). Shapes from the models' public `config.json` files.
pub const PRESETS: &[(&str, LlamaShape)] = &[
    // meta-llama/Llama-2-70b-hf config.json: 80 layers, hidden 8192, intermediate 28672,
    // 64 heads, 8 KV heads, vocab 32000.
    (
        "Llama-2-70B",
        LlamaShape {
            layers: 80,
            hidden: 8192,
            intermediate: 28672,
            heads: 64,
            kv_heads: 8,
            vocab: 32000,
            dtype_bytes: 2,
            format: WeightFormat::Dense,
            context: 4096,
        },
    ),
    // meta-llama/Meta-Llama-3-8B config.json: 32 layers, hidden 4096, intermediate 14336,
    // 32 heads, 8 KV heads, vocab 128256.
    (
        "Llama-3-8B",
        LlamaShape {
            layers: 32,
            hidden: 4096,
            intermediate: 14336,
            heads: 32,
            kv_heads: 8,
            vocab: 128256,
            dtype_bytes: 2,
            format: WeightFormat::Dense,
            context: 8192,
        },
    ),
    // LLaMA-1 30B (a.k.a. 33B), Touvron et al. 2023 table 2 and the HF conversion's
    // config.json: 60 layers, hidden 6656, intermediate 17920, 52 heads (no GQA), vocab 32000.
    (
        "LLaMA-30B",
        LlamaShape {
            layers: 60,
            hidden: 6656,
            intermediate: 17920,
            heads: 52,
            kv_heads: 52,
            vocab: 32000,
            dtype_bytes: 2,
            format: WeightFormat::Dense,
            context: 2048,
        },
    ),
    // The same shapes as GGUF files quantized by llama.cpp to Q4_K_M, the most
    // downloaded GGUF variant (e.g. TheBloke/Llama-2-70B-GGUF's 41.42 GB file).
    (
        "Llama-2-70B-Q4_K_M",
        LlamaShape {
            layers: 80,
            hidden: 8192,
            intermediate: 28672,
            heads: 64,
            kv_heads: 8,
            vocab: 32000,
            dtype_bytes: 2,
            format: WeightFormat::Q4KM,
            context: 4096,
        },
    ),
    (
        "Llama-3-8B-Q4_K_M",
        LlamaShape {
            layers: 32,
            hidden: 4096,
            intermediate: 14336,
            heads: 32,
            kv_heads: 8,
            vocab: 128256,
            dtype_bytes: 2,
            format: WeightFormat::Q4KM,
            context: 8192,
        },
    ),
];

/// The profile of a preset, by name (case-insensitive, `-`/`_` ignored).
pub fn model(name: &str) -> Result<ModelProfile, PlanError> {
    let key = |s: &str| s.to_lowercase().replace(['-', '_', ' '], "");
    PRESETS
        .iter()
        .find(|(n, _)| key(n) == key(name))
        .map(|(n, shape)| shape.profile(n))
        .ok_or_else(|| PlanError::UnknownPreset {
            name: name.to_string(),
            known: PRESETS
                .iter()
                .map(|(n, _)| *n)
                .collect::<Vec<_>>()
                .join(", "),
        })
}

/// A preset name, or a path to a `ModelProfile` in JSON or TOML.
pub fn load_model(spec: &str) -> Result<ModelProfile, PlanError> {
    let path = Path::new(spec);
    let profile = if path.exists() {
        let text = std::fs::read_to_string(path).map_err(|e| PlanError::Io {
            path: spec.to_string(),
            message: e.to_string(),
        })?;
        let parse = |message: String| PlanError::Parse {
            path: spec.to_string(),
            message,
        };
        match path.extension().and_then(|e| e.to_str()) {
            Some("json") => serde_json::from_str(&text).map_err(|e| parse(e.to_string()))?,
            Some("toml") => toml::from_str(&text).map_err(|e| parse(e.to_string()))?,
            _ => {
                return Err(PlanError::UnsupportedFormat {
                    path: spec.to_string(),
                });
            }
        }
    } else {
        model(spec)?
    };
    check_model(&profile)?;
    Ok(profile)
}

/// Checks a profile's figures, naming the first bad field.
pub fn check_model(m: &ModelProfile) -> Result<(), PlanError> {
    if m.layers.is_empty() {
        return Err(PlanError::InvalidField {
            field: "model.layers".into(),
            message: "the model has no layer".into(),
        });
    }
    positive("model.hidden_size", m.hidden_size as f64)?;
    for (i, l) in m.layers.iter().enumerate() {
        positive(
            &format!("model.layers[{i}].param_bytes"),
            l.param_bytes as f64,
        )?;
        positive(
            &format!("model.layers[{i}].flops_per_token"),
            l.flops_per_token,
        )?;
        positive(
            &format!("model.layers[{i}].activation_bytes_per_token"),
            l.activation_bytes_per_token as f64,
        )?;
        crate::error::non_negative(
            &format!("model.layers[{i}].attention_flops_per_context_token"),
            l.attention_flops_per_context_token,
        )?;
    }
    crate::error::non_negative("model.head_flops_per_token", m.head_flops_per_token)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn preset_sizes_match_published_parameter_counts() {
        // Published: Llama-2-70B 68.98e9 params, Llama-3-8B 8.03e9, LLaMA-30B 32.5e9.
        for (name, params) in [
            ("llama-2-70b", 68.98e9),
            ("Llama-3-8B", 8.03e9),
            ("LLaMA_30B", 32.53e9),
        ] {
            let m = model(name).unwrap();
            let p = m.total_param_bytes() as f64 / 2.0;
            assert!((p / params - 1.0).abs() < 0.01, "{name}: {p} vs {params}");
        }
    }

    #[test]
    fn quantized_presets_have_the_bytes_of_their_gguf_files() {
        // TheBloke/Llama-2-70B-GGUF, llama-2-70b.Q4_K_M.gguf: 41.42 GB.
        let m = model("Llama-2-70B-Q4_K_M").unwrap();
        let bytes = m.embed_param_bytes
            + m.head_param_bytes
            + m.layers.iter().map(|l| l.param_bytes).sum::<u64>();
        assert!((bytes as f64 / 41.42e9 - 1.0).abs() < 0.01, "{bytes}");
        let fp16 = model("Llama-2-70B").unwrap();
        assert_eq!(
            m.layers[0].kv_bytes_per_token,
            fp16.layers[0].kv_bytes_per_token
        );
        assert!(m.layers[0].param_bytes < fp16.layers[0].param_bytes / 3);
    }

    #[test]
    fn unknown_preset_lists_known() {
        let err = model("gpt-5").unwrap_err().to_string();
        assert!(err.contains("Llama-2-70B"), "{err}");
    }

    #[test]
    fn zero_flops_named() {
        let mut m = model("Llama-3-8B").unwrap();
        m.layers[3].flops_per_token = 0.0;
        let err = check_model(&m).unwrap_err().to_string();
        assert!(err.contains("model.layers[3].flops_per_token"), "{err}");
    }
}
