//! A tiny Llama-shaped model with deterministic random weights, written as GGUF,
//! so tests exercise the whole stack (reader, quantized weights, tokenizer,
//! stages) in seconds without downloading anything.

use crate::gguf::{GgmlType, GgufError, GgufWriter, MetadataValue};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::path::Path;

/// Shape of the tiny model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TinyModelSpec {
    /// Transformer blocks.
    pub n_layers: usize,
    /// Hidden width (a multiple of 32, for the quantized tensors).
    pub hidden: usize,
    /// Feed-forward width (a multiple of 32).
    pub ffn: usize,
    /// Query heads.
    pub n_heads: usize,
    /// KV heads.
    pub n_kv_heads: usize,
    /// Seed of the weights.
    pub seed: u64,
}

impl Default for TinyModelSpec {
    fn default() -> Self {
        Self {
            n_layers: 6,
            hidden: 64,
            ffn: 128,
            n_heads: 4,
            n_kv_heads: 2,
            seed: 7,
        }
    }
}

/// The special tokens of the tiny vocabulary (ids 0, 1, 2), as in SmolLM2.
pub const TINY_SPECIALS: [&str; 3] = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"];

/// GPT-2's reversible mapping of bytes to printable characters.
pub fn byte_to_unicode() -> Vec<char> {
    let printable: Vec<u32> = (b'!' as u32..=b'~' as u32)
        .chain(0xA1..=0xAC)
        .chain(0xAE..=0xFF)
        .collect();
    let mut map = vec!['\0'; 256];
    for &b in &printable {
        map[b as usize] = char::from_u32(b).expect("printable");
    }
    let mut extra = 0;
    for b in 0..256u32 {
        if !printable.contains(&b) {
            map[b as usize] = char::from_u32(256 + extra).expect("valid");
            extra += 1;
        }
    }
    map
}

/// Builds the GGUF image of the tiny model described by `spec`.
pub fn tiny_model_gguf(spec: &TinyModelSpec) -> Result<GgufWriter, GgufError> {
    let bytes = byte_to_unicode();
    let mut tokens: Vec<String> = TINY_SPECIALS.iter().map(|s| s.to_string()).collect();
    tokens.extend(bytes.iter().map(|c| c.to_string()));
    let space = bytes[b' ' as usize];
    let merges: Vec<(String, String)> = vec![
        (space.to_string(), "t".into()),
        ("h".into(), "e".into()),
        (format!("{space}t"), "he".into()),
        ("i".into(), "n".into()),
        ("e".into(), "r".into()),
        (space.to_string(), "a".into()),
        ("o".into(), "n".into()),
    ];
    for (a, b) in &merges {
        tokens.push(format!("{a}{b}"));
    }
    let vocab = tokens.len().next_multiple_of(32);
    for i in tokens.len()..vocab {
        tokens.push(format!("<unused{i}>"));
    }
    let mut types = vec![1i32; vocab];
    types[..TINY_SPECIALS.len()].fill(3);

    let s = spec;
    let head_dim = s.hidden / s.n_heads;
    let kv_dim = s.n_kv_heads * head_dim;
    let mut w = GgufWriter::new();
    let str_array =
        |v: Vec<String>| MetadataValue::Array(v.into_iter().map(MetadataValue::String).collect());
    w.metadata(
        "general.architecture",
        MetadataValue::String("llama".into()),
    )
    .metadata(
        "general.name",
        MetadataValue::String("tokenflow-tiny".into()),
    )
    .metadata("llama.block_count", MetadataValue::U32(s.n_layers as u32))
    .metadata("llama.context_length", MetadataValue::U32(512))
    .metadata(
        "llama.embedding_length",
        MetadataValue::U32(s.hidden as u32),
    )
    .metadata(
        "llama.feed_forward_length",
        MetadataValue::U32(s.ffn as u32),
    )
    .metadata(
        "llama.attention.head_count",
        MetadataValue::U32(s.n_heads as u32),
    )
    .metadata(
        "llama.attention.head_count_kv",
        MetadataValue::U32(s.n_kv_heads as u32),
    )
    .metadata("llama.rope.freq_base", MetadataValue::F32(10000.0))
    .metadata(
        "llama.attention.layer_norm_rms_epsilon",
        MetadataValue::F32(1e-5),
    )
    .metadata("llama.vocab_size", MetadataValue::U32(vocab as u32))
    .metadata("tokenizer.ggml.model", MetadataValue::String("gpt2".into()))
    .metadata("tokenizer.ggml.pre", MetadataValue::String("smollm".into()))
    .metadata("tokenizer.ggml.tokens", str_array(tokens))
    .metadata(
        "tokenizer.ggml.token_type",
        MetadataValue::Array(types.into_iter().map(MetadataValue::I32).collect()),
    )
    .metadata(
        "tokenizer.ggml.merges",
        str_array(merges.iter().map(|(a, b)| format!("{a} {b}")).collect()),
    )
    .metadata("tokenizer.ggml.bos_token_id", MetadataValue::U32(1))
    .metadata("tokenizer.ggml.eos_token_id", MetadataValue::U32(2))
    .metadata("tokenizer.ggml.add_bos_token", MetadataValue::Bool(false));

    let mut rng = ChaCha8Rng::seed_from_u64(s.seed);
    let mut random = |n: usize, scale: f32| -> Vec<f32> {
        (0..n).map(|_| rng.random_range(-scale..scale)).collect()
    };
    let h = s.hidden as u64;
    w.tensor(
        "token_embd.weight",
        &[h, vocab as u64],
        GgmlType::Q8_0,
        &random(s.hidden * vocab, 1.0),
    )?;
    w.tensor(
        "output_norm.weight",
        &[h],
        GgmlType::F32,
        &random(s.hidden, 0.2)
            .iter()
            .map(|v| 1.0 + v)
            .collect::<Vec<_>>(),
    )?;
    let proj = 1.0 / (s.hidden as f32).sqrt() * 1.7;
    for l in 0..s.n_layers {
        // Alternate storage types so every supported dequantizer runs through the model.
        let ty = [
            GgmlType::Q4_1,
            GgmlType::Q8_0,
            GgmlType::F16,
            GgmlType::Q4_0,
        ][l % 4];
        let name = |t: &str| format!("blk.{l}.{t}.weight");
        let norm = |r: &mut dyn FnMut(usize, f32) -> Vec<f32>| {
            r(s.hidden, 0.2).iter().map(|v| 1.0 + v).collect::<Vec<_>>()
        };
        let attn_norm = norm(&mut random);
        let ffn_norm = norm(&mut random);
        w.tensor(name("attn_norm"), &[h], GgmlType::F32, &attn_norm)?;
        w.tensor(name("ffn_norm"), &[h], GgmlType::F32, &ffn_norm)?;
        let (kv, ffn) = (kv_dim as u64, s.ffn as u64);
        let matrices = [
            ("attn_q", [h, h]),
            ("attn_k", [h, kv]),
            ("attn_v", [h, kv]),
            ("attn_output", [h, h]),
            ("ffn_gate", [h, ffn]),
            ("ffn_up", [h, ffn]),
            ("ffn_down", [ffn, h]),
        ];
        for (tensor, shape) in matrices {
            let values = random((shape[0] * shape[1]) as usize, proj);
            w.tensor(name(tensor), &shape, ty, &values)?;
        }
    }
    Ok(w)
}

/// Writes the tiny model described by `spec` to `path`.
pub fn write_tiny_model(spec: &TinyModelSpec, path: impl AsRef<Path>) -> Result<(), GgufError> {
    tiny_model_gguf(spec)?.write(path)
}
