//! The `Blocks` stage: a contiguous range of transformer blocks with their KV cache.

use super::batch::{SeqChunk, total_rows};
use super::config::LlamaConfig;
use super::error::StageError;
use super::linear::LinearKernel;
use super::rope::RopeAngles;
use super::weights::{LoadProgress, matrix, stacked, vector};
use crate::gguf::GgufFile;
use crate::kv_cache::{KvStore, LayerKv, SeqId};
use burn::tensor::activation::{silu, softmax};
use burn::tensor::{Bool, Device, Tensor, TensorData};
use std::ops::Range;

/// Weights of one transformer block, matrices stored `[out, in]`.
#[derive(Debug, Clone)]
struct Block {
    attn_norm: Tensor<1>,
    /// Q, K and V projections stacked: `[hidden + 2 kv_dim, hidden]`.
    qkv: Tensor<2>,
    out: Tensor<2>,
    ffn_norm: Tensor<1>,
    /// Gate and up projections stacked: `[2 ffn, hidden]`.
    gate_up: Tensor<2>,
    down: Tensor<2>,
}

/// Blocks `layers` of a Llama model, owning the KV cache of those blocks.
#[derive(Debug)]
pub struct Blocks {
    layers: Range<usize>,
    blocks: Vec<Block>,
    config: LlamaConfig,
    kv: KvStore,
    device: Device,
    linear: LinearKernel,
}

/// Root-mean-square norm over the last dimension, scaled by `weight`.
pub fn rms_norm(x: Tensor<2>, weight: &Tensor<1>, eps: f32) -> Tensor<2> {
    let inv = x
        .clone()
        .powi_scalar(2)
        .mean_dim(1)
        .add_scalar(eps)
        .sqrt()
        .recip();
    x * inv * weight.clone().unsqueeze_dim(0)
}

impl Blocks {
    /// Loads blocks `layers` from `file`; the KV cache may hold at most `kv_capacity_bytes`.
    pub fn load(
        file: &GgufFile,
        config: &LlamaConfig,
        layers: Range<usize>,
        kv_capacity_bytes: u64,
        device: &Device,
        progress: LoadProgress,
    ) -> Result<Self, StageError> {
        if layers.start >= layers.end || layers.end > config.n_layers {
            return Err(StageError::BadLayerRange {
                start: layers.start,
                end: layers.end,
                n_layers: config.n_layers,
            });
        }
        let (h, kv, f) = (config.hidden, config.kv_dim(), config.ffn);
        let mut blocks = Vec::with_capacity(layers.len());
        for l in layers.clone() {
            let name = |t: &str| format!("blk.{l}.{t}.weight");
            let q = matrix(file, &name("attn_q"), h, h, progress)?;
            let k = matrix(file, &name("attn_k"), h, kv, progress)?;
            let v = matrix(file, &name("attn_v"), h, kv, progress)?;
            let gate = matrix(file, &name("ffn_gate"), h, f, progress)?;
            let up = matrix(file, &name("ffn_up"), h, f, progress)?;
            blocks.push(Block {
                attn_norm: vector(file, &name("attn_norm"), h, device, progress)?,
                qkv: stacked(vec![q, k, v], h, device),
                out: stacked(
                    vec![matrix(file, &name("attn_output"), h, h, progress)?],
                    h,
                    device,
                ),
                ffn_norm: vector(file, &name("ffn_norm"), h, device, progress)?,
                gate_up: stacked(vec![gate, up], h, device),
                down: stacked(
                    vec![matrix(file, &name("ffn_down"), f, h, progress)?],
                    f,
                    device,
                ),
            });
        }
        let bytes_per_token = config.kv_bytes_per_token_per_layer() * layers.len() as u64;
        Ok(Self {
            layers,
            blocks,
            config: config.clone(),
            kv: KvStore::new(bytes_per_token, kv_capacity_bytes),
            device: device.clone(),
            linear: LinearKernel::for_device(device),
        })
    }

    /// The block range this stage runs.
    pub fn layers(&self) -> Range<usize> {
        self.layers.clone()
    }

    /// The model's hyper-parameters.
    pub fn config(&self) -> &LlamaConfig {
        &self.config
    }

    /// The KV state of this stage.
    pub fn kv(&self) -> &KvStore {
        &self.kv
    }

    /// Forgets sequence `seq`, returning the KV bytes freed.
    pub fn free(&mut self, seq: SeqId) -> u64 {
        self.kv.free(seq)
    }

    /// Forgets every sequence (the stage lost its state, as on a node failure).
    pub fn clear(&mut self) {
        self.kv.clear();
    }

    /// The device the weights live on.
    pub fn device(&self) -> Device {
        self.device.clone()
    }

    /// Bytes of weights held.
    pub fn weight_bytes(&self) -> u64 {
        self.config.block_params() * 4 * self.blocks.len() as u64
    }

    /// Runs the blocks over `hidden` (`[rows, hidden]`, the tokens of `chunks` stacked).
    ///
    /// Each chunk must continue its sequence's cache (or start at 0, which restarts
    /// it). Admission is all-or-nothing: on error nothing is changed.
    pub fn forward(
        &mut self,
        chunks: &[SeqChunk],
        hidden: Tensor<2>,
    ) -> Result<Tensor<2>, StageError> {
        let rows = total_rows(chunks);
        if hidden.dims() != [rows, self.config.hidden] {
            return Err(StageError::BatchMismatch(format!(
                "hidden {:?} for chunks of {rows} rows",
                hidden.dims()
            )));
        }
        let mut seen = std::collections::HashSet::with_capacity(chunks.len());
        for c in chunks {
            if c.len == 0 || !seen.insert(c.seq) {
                return Err(StageError::BatchMismatch(format!(
                    "sequence {} appears twice or with an empty chunk",
                    c.seq
                )));
            }
            if c.start + c.len > self.config.context_length {
                return Err(StageError::ContextExceeded {
                    seq: c.seq,
                    position: c.start + c.len,
                    context: self.config.context_length,
                });
            }
        }
        let plan: Vec<(SeqId, usize, usize)> =
            chunks.iter().map(|c| (c.seq, c.start, c.len)).collect();
        self.kv.admit(&plan)?;

        let positions: Vec<usize> = chunks
            .iter()
            .flat_map(|c| c.start..c.start + c.len)
            .collect();
        let rope = RopeAngles::new(
            &positions,
            self.config.head_dim,
            self.config.rope_base,
            &self.device,
        );
        let masks: Vec<Option<Tensor<3, Bool>>> =
            chunks.iter().map(|c| self.causal_mask(c)).collect();
        let mut states: Vec<_> = chunks
            .iter()
            .map(|c| self.kv.take(c.seq, c.start))
            .collect();

        let mut x = hidden;
        for (i, block) in self.blocks.iter().enumerate() {
            x = self.block_forward(block, i, x, chunks, &rope, &masks, &mut states);
        }
        for (c, mut s) in chunks.iter().zip(states) {
            s.tokens = c.start + c.len;
            self.kv.put(c.seq, s);
        }
        Ok(x)
    }

    /// Mask of the scores a prefill chunk may not see (keys after the query), grouped as
    /// `[1, group × len, context]`; `None` for single-token chunks, which see everything.
    fn causal_mask(&self, c: &SeqChunk) -> Option<Tensor<3, Bool>> {
        if c.len == 1 {
            return None;
        }
        let group = self.config.n_heads / self.config.n_kv_heads;
        let context = c.start + c.len;
        let mut mask = Vec::with_capacity(group * c.len * context);
        for _ in 0..group {
            for i in 0..c.len {
                mask.extend((0..context).map(|j| j > c.start + i));
            }
        }
        Some(Tensor::from_data(
            TensorData::new(mask, [1, group * c.len, context]),
            &self.device,
        ))
    }

    #[allow(clippy::too_many_arguments)]
    fn block_forward(
        &self,
        block: &Block,
        layer: usize,
        x: Tensor<2>,
        chunks: &[SeqChunk],
        rope: &RopeAngles,
        masks: &[Option<Tensor<3, Bool>>],
        states: &mut [crate::kv_cache::SequenceKv],
    ) -> Tensor<2> {
        let c = &self.config;
        let rows = x.dims()[0];
        let (h, kv_dim, hd) = (c.hidden, c.kv_dim(), c.head_dim);
        let group = c.n_heads / c.n_kv_heads;

        let normed = rms_norm(x.clone(), &block.attn_norm, c.rms_eps);
        let qkv = self.linear.forward(normed, &block.qkv);
        let q = rope.apply(qkv.clone().narrow(1, 0, h).reshape([rows, c.n_heads, hd]));
        let k = rope.apply(
            qkv.clone()
                .narrow(1, h, kv_dim)
                .reshape([rows, c.n_kv_heads, hd]),
        );
        let v = qkv
            .narrow(1, h + kv_dim, kv_dim)
            .reshape([rows, c.n_kv_heads, hd]);

        let scale = 1.0 / (hd as f32).sqrt();
        let mut outputs = Vec::with_capacity(chunks.len());
        let mut row = 0;
        for ((chunk, state), mask) in chunks.iter().zip(states.iter_mut()).zip(masks) {
            let len = chunk.len;
            // [len, kv_heads, hd] -> [kv_heads, len, hd]
            let k_new = k.clone().narrow(0, row, len).swap_dims(0, 1);
            let v_new = v.clone().narrow(0, row, len).swap_dims(0, 1);
            let (keys, values) = match state.layers.get(layer) {
                Some(prev) => (
                    Tensor::cat(vec![prev.keys.clone(), k_new], 1),
                    Tensor::cat(vec![prev.values.clone(), v_new], 1),
                ),
                None => (k_new, v_new),
            };
            // Queries grouped by the KV head they share: [kv_heads, group × len, hd].
            let q_chunk = q
                .clone()
                .narrow(0, row, len)
                .reshape([len, c.n_kv_heads, group, hd])
                .permute([1, 2, 0, 3])
                .reshape([c.n_kv_heads, group * len, hd]);
            let mut scores = q_chunk
                .matmul(keys.clone().swap_dims(1, 2))
                .mul_scalar(scale);
            if let Some(mask) = mask {
                let context = keys.dims()[1];
                scores = scores.mask_fill(
                    mask.clone().expand([c.n_kv_heads, group * len, context]),
                    f32::NEG_INFINITY,
                );
            }
            let attn = softmax(scores, 2).matmul(values.clone());
            outputs.push(
                attn.reshape([c.n_kv_heads, group, len, hd])
                    .permute([2, 0, 1, 3])
                    .reshape([len, h]),
            );
            let entry = LayerKv { keys, values };
            if layer < state.layers.len() {
                state.layers[layer] = entry;
            } else {
                state.layers.push(entry);
            }
            row += len;
        }
        let attn = if outputs.len() == 1 {
            outputs.pop().expect("one output")
        } else {
            Tensor::cat(outputs, 0)
        };
        let x = x + self.linear.forward(attn, &block.out);

        let normed = rms_norm(x.clone(), &block.ffn_norm, c.rms_eps);
        let gate_up = self.linear.forward(normed, &block.gate_up);
        let gate = gate_up.clone().narrow(1, 0, c.ffn);
        let up = gate_up.narrow(1, c.ffn, c.ffn);
        x + self.linear.forward(silu(gate) * up, &block.down)
    }
}
