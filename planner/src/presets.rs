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
}

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
        let layer = LayerProfile {
            param_bytes: params * b,
            flops_per_token: 2.0 * (attn_params + mlp_params) as f64,
            attention_flops_per_context_token: 4.0 * h as f64,
            activation_bytes_per_token: h * b,
            kv_bytes_per_token: 2 * kv_dim * b,
        };
        let v = self.vocab as u64;
        ModelProfile {
            name: name.to_string(),
            hidden_size: self.hidden,
            vocab_size: self.vocab,
            embed_param_bytes: v * h * b,
            head_param_bytes: v * h * b + h * b,
            head_flops_per_token: 2.0 * (v * h) as f64,
            layers: vec![layer; self.layers as usize],
            measured: Vec::new(),
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
        },
    ),
];

/// The profile of a preset, by name (case-insensitive, `-`/`_` ignored), in FP16.
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
