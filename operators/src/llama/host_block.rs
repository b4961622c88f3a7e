//! A transformer block on the CPU in host memory: the path `Blocks` takes on the
//! burn-flex device.
//!
//! The same arithmetic as the burn path of `blocks.rs` (RMSNorm, RoPE on adjacent
//! pairs, grouped-query attention with a causal mask, SwiGLU), on `f32` slices.
//! burn-flex runs each tensor op for several microseconds whatever its size, and
//! attention over one sequence takes about 25 of them per block; here a decode
//! step costs what its arithmetic costs, and the KV cache grows in place instead
//! of being concatenated anew each step.

use super::batch::SeqChunk;
use super::config::LlamaConfig;
use crate::kv_cache::HostLayerKv;
use crate::quant::KernelSet;
use rayon::prelude::*;

/// `x · weight / rms(x)` for each row of `x` (`[rows, hidden]`).
pub fn rms_norm(x: &[f32], weight: &[f32], eps: f32) -> Vec<f32> {
    let hidden = weight.len();
    let mut out = vec![0f32; x.len()];
    for (row, dst) in x.chunks_exact(hidden).zip(out.chunks_exact_mut(hidden)) {
        let mean = row.iter().map(|v| v * v).sum::<f32>() / hidden as f32;
        let inv = 1.0 / (mean + eps).sqrt();
        for ((d, v), w) in dst.iter_mut().zip(row).zip(weight) {
            *d = v * inv * w;
        }
    }
    out
}

/// Cosines and sines of the RoPE angles of each row's position: `[rows, head_dim / 2]`.
#[derive(Debug)]
pub struct HostRope {
    cos: Vec<f32>,
    sin: Vec<f32>,
    pairs: usize,
}

impl HostRope {
    /// Angles for tokens at `positions`, heads of width `head_dim`, frequency base `base`.
    pub fn new(positions: &[usize], head_dim: usize, base: f32) -> Self {
        let (cos, sin) = super::rope::angles(positions, head_dim, base);
        Self {
            cos,
            sin,
            pairs: head_dim / 2,
        }
    }

    /// Rotates the adjacent pairs of every head of row `row` of `heads` (`[heads, head_dim]`).
    fn apply(&self, row: usize, heads: &mut [f32]) {
        let cos = &self.cos[row * self.pairs..(row + 1) * self.pairs];
        let sin = &self.sin[row * self.pairs..(row + 1) * self.pairs];
        for head in heads.chunks_exact_mut(2 * self.pairs) {
            for ((pair, c), s) in head.chunks_exact_mut(2).zip(cos).zip(sin) {
                let (e, o) = (pair[0], pair[1]);
                pair[0] = e * c - o * s;
                pair[1] = e * s + o * c;
            }
        }
    }
}

/// Splits the `[rows, hidden + 2 kv_dim]` output of the QKV projection, rotates
/// Q and K, appends K and V to each chunk's cache and returns the attention
/// output `[rows, hidden]`.
pub fn attention(
    config: &LlamaConfig,
    qkv: &mut [f32],
    chunks: &[SeqChunk],
    rope: &HostRope,
    caches: &mut [&mut HostLayerKv],
) -> Vec<f32> {
    let (h, kv_dim, hd) = (config.hidden, config.kv_dim(), config.head_dim);
    let width = h + 2 * kv_dim;
    let rows = qkv.len() / width;
    for (r, row) in qkv.chunks_exact_mut(width).enumerate() {
        let (q, rest) = row.split_at_mut(h);
        rope.apply(r, q);
        rope.apply(r, &mut rest[..kv_dim]);
    }
    let mut out = vec![0f32; rows * h];
    // Each chunk's rows and cache are its own: chunks run in parallel.
    let mut work = Vec::with_capacity(chunks.len());
    let (mut qkv_rest, mut out_rest) = (&*qkv, out.as_mut_slice());
    for (c, cache) in chunks.iter().zip(caches.iter_mut()) {
        let (mine, rest) = qkv_rest.split_at(c.len * width);
        let (dst, tail) = out_rest.split_at_mut(c.len * h);
        (qkv_rest, out_rest) = (rest, tail);
        work.push((c, mine, &mut **cache, dst));
    }
    let kernels = KernelSet::detect();
    let run = |(c, mine, cache, dst): (&SeqChunk, &[f32], &mut HostLayerKv, &mut [f32])| {
        for row in mine.chunks_exact(width) {
            cache.keys.extend_from_slice(&row[h..h + kv_dim]);
            cache.values.extend_from_slice(&row[h + kv_dim..]);
        }
        attend(config, kernels, c, mine, cache, dst, hd);
    };
    if work.len() > 1 {
        work.into_par_iter().for_each(run);
    } else {
        work.into_iter().for_each(run);
    }
    out
}

/// Attention of one chunk's queries over its cache (which already holds the chunk's keys).
fn attend(
    config: &LlamaConfig,
    kernels: KernelSet,
    c: &SeqChunk,
    qkv: &[f32],
    cache: &HostLayerKv,
    out: &mut [f32],
    hd: usize,
) {
    let (h, kv_dim) = (config.hidden, config.kv_dim());
    let width = h + 2 * kv_dim;
    let group = config.n_heads / config.n_kv_heads;
    let scale = 1.0 / (hd as f32).sqrt();
    let mut scores = Vec::with_capacity(c.start + c.len);
    for i in 0..c.len {
        // Causal: query `start + i` sees keys 0..=start + i.
        let context = c.start + i + 1;
        let q_row = &qkv[i * width..i * width + h];
        for head in 0..config.n_heads {
            let kv_head = head / group;
            let q = &q_row[head * hd..(head + 1) * hd];
            scores.clear();
            scores.extend((0..context).map(|t| {
                let k = &cache.keys[t * kv_dim + kv_head * hd..][..hd];
                kernels.dot_f32(q, k) * scale
            }));
            let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let mut sum = 0f32;
            for s in scores.iter_mut() {
                *s = (*s - max).exp();
                sum += *s;
            }
            let dst = &mut out[i * h + head * hd..i * h + (head + 1) * hd];
            dst.fill(0.0);
            for (t, &p) in scores.iter().enumerate() {
                let v = &cache.values[t * kv_dim + kv_head * hd..][..hd];
                let p = p / sum;
                for (d, v) in dst.iter_mut().zip(v) {
                    *d += p * v;
                }
            }
        }
    }
}

/// `silu(gate) · up` for the `[rows, 2 ffn]` output of the gate-up projection.
pub fn swiglu(gate_up: &[f32], ffn: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(gate_up.len() / 2);
    for row in gate_up.chunks_exact(2 * ffn) {
        let (gate, up) = row.split_at(ffn);
        out.extend(gate.iter().zip(up).map(|(g, u)| g / (1.0 + (-g).exp()) * u));
    }
    out
}

/// `x += y`, element by element.
pub fn add_assign(x: &mut [f32], y: &[f32]) {
    for (a, b) in x.iter_mut().zip(y) {
        *a += b;
    }
}
