//! The model profile the planner consumes: static sizes and costs per layer
//! from the GGUF config, and stage times measured on this machine.

use crate::kv_cache::SeqId;
use crate::llama::{LlamaConfig, LlamaModel, SeqChunk, StageError};
use burn::tensor::{Device, Tensor};
use std::time::Instant;
use tokenflow_planner::profile::{LayerProfile, MeasuredStageTime, ModelProfile, Phase};

/// Static profile of a model as executed here: weights held as the file's bytes
/// (blocks stay encoded in memory), FLOPs and KV from the shape.
pub fn static_profile(name: &str, config: &LlamaConfig) -> ModelProfile {
    let h = config.hidden as u64;
    let matmul_params = config.block_params() - 2 * h;
    let w = &config.weights;
    let layers = (0..config.n_layers)
        .map(|l| LayerProfile {
            param_bytes: w.blocks.get(l).copied().unwrap_or(0),
            flops_per_token: 2.0 * matmul_params as f64,
            attention_flops_per_context_token: 4.0 * (config.n_heads * config.head_dim) as f64,
            activation_bytes_per_token: h * 4,
            kv_bytes_per_token: config.kv_bytes_per_token_per_layer(),
        })
        .collect();
    ModelProfile {
        name: name.to_string(),
        hidden_size: config.hidden as u32,
        vocab_size: config.vocab_size as u32,
        embed_param_bytes: w.embed,
        // A tied head reads the table: a stage with the head holds it (as the
        // engine's placement counts it), once when it has the embedding too.
        head_param_bytes: w.head + if w.tied { w.embed } else { 0 },
        tied_embeddings: w.tied,
        head_flops_per_token: 2.0 * (h * config.vocab_size as u64) as f64,
        layers,
        measured: Vec::new(),
        context_length: u32::try_from(config.context_length).ok(),
    }
}

/// Median of `repeats` timings of `f`.
fn median_seconds(
    repeats: usize,
    mut f: impl FnMut() -> Result<(), StageError>,
) -> Result<f64, StageError> {
    let mut times = Vec::with_capacity(repeats);
    for _ in 0..repeats {
        let t = Instant::now();
        f()?;
        times.push(t.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    Ok(times[times.len() / 2])
}

/// What [`measure_blocks`] measures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StageMeasurement {
    /// Blocks in the measured stage.
    pub layers: usize,
    /// Tokens of the measured prefill.
    pub prompt: usize,
    /// Tokens already cached before the measured decode steps.
    pub context: usize,
    /// Decode batch sizes.
    pub batches: Vec<usize>,
    /// Timed calls per measurement (the median is kept).
    pub repeats: usize,
}

/// Measures one `Blocks` stage on `device`: a prefill, and decode at each batch size.
pub fn measure_blocks(
    model: &LlamaModel,
    device_name: &str,
    device: &Device,
    spec: &StageMeasurement,
) -> Result<Vec<MeasuredStageTime>, StageError> {
    let c = &model.config;
    let StageMeasurement {
        layers,
        prompt,
        context,
        ref batches,
        repeats,
    } = *spec;
    let mut stage = model.blocks(0..layers, u64::MAX, device, &mut |_, _| {})?;
    let random = |rows: usize| {
        Tensor::<2>::random(
            [rows, c.hidden],
            burn::tensor::Distribution::Normal(0.0, 1.0),
            device,
        )
    };
    let sync = |t: Tensor<2>| t.into_data();
    let mut out = Vec::new();
    let prefill = median_seconds(repeats, || {
        let chunk = [SeqChunk::new(0, 0, prompt)];
        sync(stage.forward(&chunk, random(prompt))?);
        Ok(())
    })?;
    out.push(MeasuredStageTime {
        device: device_name.to_string(),
        layers: layers as u32,
        phase: Phase::Prefill,
        batch: 1,
        tokens: prompt as u32,
        seconds: prefill,
    });
    for &batch in batches {
        let seqs: Vec<SeqId> = (1..=batch as SeqId).collect();
        for &s in &seqs {
            stage.forward(&[SeqChunk::new(s, 0, context)], random(context))?;
        }
        let mut pos = context;
        let decode = median_seconds(repeats, || {
            let chunks: Vec<SeqChunk> = seqs.iter().map(|&s| SeqChunk::new(s, pos, 1)).collect();
            sync(stage.forward(&chunks, random(batch))?);
            pos += 1;
            Ok(())
        })?;
        for &s in &seqs {
            stage.free(s);
        }
        out.push(MeasuredStageTime {
            device: device_name.to_string(),
            layers: layers as u32,
            phase: Phase::Decode,
            batch: batch as u32,
            tokens: batch as u32,
            seconds: decode,
        });
    }
    Ok(out)
}
