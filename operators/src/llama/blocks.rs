//! The `Blocks` stage: a contiguous range of transformer blocks with their KV cache.

use super::batch::{SeqChunk, total_rows};
use super::config::LlamaConfig;
use super::error::StageError;
use super::host_block::{self, HostRope};
use super::linear::Linear;
use super::rope::RopeAngles;
use super::weights::{LoadProgress, vector};
use crate::gguf::GgufFile;
use crate::kv_cache::{HostLayerKv, KvStore, LayerKv, SeqId, SequenceKv};
use crate::quant::Numerics;
use burn::tensor::activation::{silu, softmax};
use burn::tensor::{Bool, Device, Tensor, TensorData};
use std::ops::Range;

/// Weights of one transformer block, matrices stored `[out, in]`.
#[derive(Debug, Clone)]
struct Block {
    attn_norm: Tensor<1>,
    attn_norm_host: Vec<f32>,
    ffn_norm_host: Vec<f32>,
    /// Q, K and V projections side by side: `hidden + 2 kv_dim` outputs.
    qkv: Linear,
    out: Linear,
    ffn_norm: Tensor<1>,
    /// Gate and up projections side by side: `2 ffn` outputs.
    gate_up: Linear,
    down: Linear,
}

/// Blocks `layers` of a Llama model, owning the KV cache of those blocks.
#[derive(Debug)]
pub struct Blocks {
    layers: Range<usize>,
    blocks: Vec<Block>,
    config: LlamaConfig,
    kv: KvStore,
    device: Device,
    /// Whether blocks run on host buffers (the CPU backend) rather than burn tensors.
    host: bool,
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
    /// Loads blocks `layers` from `file`, multiplying under `numerics`; the KV cache
    /// may hold at most `kv_capacity_bytes`.
    pub fn load(
        file: &GgufFile,
        config: &LlamaConfig,
        layers: Range<usize>,
        kv_capacity_bytes: u64,
        numerics: Numerics,
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
            let (q, k, v) = (name("attn_q"), name("attn_k"), name("attn_v"));
            let (gate, up) = (name("ffn_gate"), name("ffn_up"));
            let linear = |names: &[(&str, usize)], input: usize, progress: LoadProgress| {
                Linear::load(file, names, input, numerics, device, progress)
            };
            let attn_norm = vector(file, &name("attn_norm"), h, device, progress)?;
            let ffn_norm = vector(file, &name("ffn_norm"), h, device, progress)?;
            let host = |t: &Tensor<1>| t.to_data().try_to_vec::<f32>().expect("f32 norm");
            blocks.push(Block {
                attn_norm_host: host(&attn_norm),
                ffn_norm_host: host(&ffn_norm),
                attn_norm,
                qkv: linear(&[(&q, h), (&k, kv), (&v, kv)], h, progress)?,
                out: linear(&[(&name("attn_output"), h)], h, progress)?,
                ffn_norm,
                gate_up: linear(&[(&gate, f), (&up, f)], h, progress)?,
                down: linear(&[(&name("ffn_down"), h)], f, progress)?,
            });
        }
        let bytes_per_token = config.kv_bytes_per_token_per_layer() * layers.len() as u64;
        Ok(Self {
            layers,
            blocks,
            config: config.clone(),
            kv: KvStore::new(bytes_per_token, kv_capacity_bytes),
            device: device.clone(),
            host: *device == Device::flex(),
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

    /// Bytes of weights held: the matrices' block bytes as in the file, and the f32 norms.
    pub fn weight_bytes(&self) -> u64 {
        let norms = 2 * self.config.hidden as u64 * 4;
        self.blocks
            .iter()
            .map(|b| {
                norms
                    + b.qkv.weight_bytes()
                    + b.out.weight_bytes()
                    + b.gate_up.weight_bytes()
                    + b.down.weight_bytes()
            })
            .sum()
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
        // On a worker of the pool the products split over, the calling thread takes
        // its share of each product instead of waiting for it: one hand-over per
        // stage call instead of one per product (a decode step has about 120).
        rayon::scope(|_| self.forward_here(chunks, hidden))
    }

    fn forward_here(
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
        let mut states: Vec<_> = chunks
            .iter()
            .map(|c| self.kv.take(c.seq, c.start))
            .collect();
        let x = if self.host {
            self.forward_host(chunks, hidden, &positions, &mut states)
        } else {
            self.forward_tensors(chunks, hidden, &positions, &mut states)
        };
        for (c, mut s) in chunks.iter().zip(states) {
            s.tokens = c.start + c.len;
            self.kv.put(c.seq, s);
        }
        x
    }

    /// The CPU path: every block on host `f32` buffers ([`host_block`]).
    fn forward_host(
        &self,
        chunks: &[SeqChunk],
        hidden: Tensor<2>,
        positions: &[usize],
        states: &mut [SequenceKv],
    ) -> Result<Tensor<2>, StageError> {
        let c = &self.config;
        let rows = positions.len();
        let mut x = hidden
            .into_data()
            .try_into_vec::<f32>()
            .map_err(|e| StageError::Data(format!("{e:?}")))?;
        let rope = HostRope::new(positions, c.head_dim, c.rope_base);
        for (i, block) in self.blocks.iter().enumerate() {
            let mut caches: Vec<&mut HostLayerKv> = states
                .iter_mut()
                .map(|s| {
                    if s.host.len() <= i {
                        s.host.push(HostLayerKv::default());
                    }
                    &mut s.host[i]
                })
                .collect();
            let normed = host_block::rms_norm(&x, &block.attn_norm_host, c.rms_eps);
            let mut qkv = block.qkv.forward_host(normed, rows);
            let attn = host_block::attention(c, &mut qkv, chunks, &rope, &mut caches);
            host_block::add_assign(&mut x, &block.out.forward_host(attn, rows));
            let normed = host_block::rms_norm(&x, &block.ffn_norm_host, c.rms_eps);
            let gate_up = block.gate_up.forward_host(normed, rows);
            let down = block
                .down
                .forward_host(host_block::swiglu(&gate_up, c.ffn), rows);
            host_block::add_assign(&mut x, &down);
        }
        Ok(Tensor::from_data(
            TensorData::new(x, [rows, c.hidden]),
            &self.device,
        ))
    }

    /// The path of other devices: every block as burn tensor operations.
    fn forward_tensors(
        &self,
        chunks: &[SeqChunk],
        hidden: Tensor<2>,
        positions: &[usize],
        states: &mut [SequenceKv],
    ) -> Result<Tensor<2>, StageError> {
        let rope = RopeAngles::new(
            positions,
            self.config.head_dim,
            self.config.rope_base,
            &self.device,
        );
        let masks: Vec<Option<Tensor<3, Bool>>> =
            chunks.iter().map(|c| self.causal_mask(c)).collect();
        let mut x = hidden;
        for (i, block) in self.blocks.iter().enumerate() {
            x = self.block_forward(block, i, x, chunks, &rope, &masks, states);
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
        states: &mut [SequenceKv],
    ) -> Tensor<2> {
        let c = &self.config;
        let rows = x.dims()[0];
        let (h, kv_dim, hd) = (c.hidden, c.kv_dim(), c.head_dim);
        let group = c.n_heads / c.n_kv_heads;

        let normed = rms_norm(x.clone(), &block.attn_norm, c.rms_eps);
        let qkv = block.qkv.forward(normed);
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
        let x = x + block.out.forward(attn);

        let normed = rms_norm(x.clone(), &block.ffn_norm, c.rms_eps);
        let gate_up = block.gate_up.forward(normed);
        let gate = gate_up.clone().narrow(1, 0, c.ffn);
        let up = gate_up.narrow(1, c.ffn, c.ffn);
        x + block.down.forward(silu(gate) * up)
    }
}
