//! The cost model: time of a stage on a GPU for a batch (compute roofline and
//! memory-bandwidth bound with efficiency factors), link time, memory for weights
//! and KV, and the decode capacity that every strategy sizes stages with.
//! Efficiencies are calibrated per GPU kind from measured stage times when the
//! model profile carries some for that device name.

use std::collections::HashMap;
use std::ops::Range;

use crate::cluster::Link;
use crate::gpu_catalog::GpuKind;
use crate::options::{CostOptions, PlanOptions, Workload};
use crate::profile::{ModelProfile, Phase};

/// Efficiency factors of one GPU kind.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Efficiency {
    /// Fraction of peak FLOP/s.
    pub compute: f64,
    /// Fraction of peak memory bandwidth.
    pub memory: f64,
}

/// Prefix sums of a model's per-layer figures, and the workload and knobs.
#[derive(Debug, Clone)]
pub struct CostModel {
    n: usize,
    params: Vec<f64>,
    flops: Vec<f64>,
    attn: Vec<f64>,
    kv: Vec<f64>,
    act: Vec<f64>,
    embed_bytes: f64,
    head_bytes: f64,
    tied: bool,
    head_flops: f64,
    /// Request mix.
    pub workload: Workload,
    /// Knobs.
    pub options: CostOptions,
    calibrated: HashMap<String, Efficiency>,
}

fn prefix(v: impl Iterator<Item = f64>) -> Vec<f64> {
    let mut out = vec![0.0];
    let mut acc = 0.0;
    for x in v {
        acc += x;
        out.push(acc);
    }
    out
}

impl CostModel {
    /// Builds the model, calibrating efficiencies from `model.measured`.
    pub fn new(model: &ModelProfile, opts: &PlanOptions) -> CostModel {
        let l = &model.layers;
        let mut cm = CostModel {
            n: l.len(),
            params: prefix(l.iter().map(|x| x.param_bytes as f64)),
            flops: prefix(l.iter().map(|x| x.flops_per_token)),
            attn: prefix(l.iter().map(|x| x.attention_flops_per_context_token)),
            kv: prefix(l.iter().map(|x| x.kv_bytes_per_token as f64)),
            act: l
                .iter()
                .map(|x| x.activation_bytes_per_token as f64)
                .collect(),
            embed_bytes: model.embed_param_bytes as f64,
            head_bytes: model.head_param_bytes as f64,
            tied: model.tied_embeddings,
            head_flops: model.head_flops_per_token,
            workload: opts.workload,
            options: opts.cost,
            calibrated: HashMap::new(),
        };
        cm.calibrate(model);
        cm
    }

    /// Number of layers.
    pub fn num_layers(&self) -> usize {
        self.n
    }

    fn sum(v: &[f64], r: &Range<usize>) -> f64 {
        v[r.end] - v[r.start]
    }

    fn calibrate(&mut self, model: &ModelProfile) {
        // Per device: prefill FLOP/s, and decode bytes/s with the batch measured.
        type Samples = (Vec<f64>, Vec<(u32, f64)>);
        let mut samples: HashMap<String, Samples> = HashMap::new();
        for m in &model.measured {
            if m.seconds <= 0.0 || m.layers == 0 || m.layers as usize > self.n || m.tokens == 0 {
                continue;
            }
            let r = 0..m.layers as usize;
            let flops = m.tokens as f64 * Self::sum(&self.flops, &r);
            let bytes = Self::sum(&self.params, &r);
            let e = samples.entry(key(&m.device)).or_default();
            match m.phase {
                Phase::Prefill => e.0.push(flops / m.seconds),
                Phase::Decode => e.1.push((m.batch, bytes / m.seconds)),
            }
        }
        for (dev, (fl, bw)) in samples {
            // Bandwidth from the smallest decode batch only: larger batches become
            // compute-bound (on a CPU already at 4), and reading their time as
            // memory time made every step of the simulator 3 to 4 times too slow.
            let smallest = bw.iter().map(|x| x.0).min();
            let memory: Vec<f64> = bw
                .iter()
                .filter(|x| Some(x.0) == smallest)
                .map(|x| x.1)
                .collect();
            // Stored as achieved FLOP/s and bytes/s; turned into fractions per GPU kind on use.
            self.calibrated.insert(
                dev,
                Efficiency {
                    compute: median(fl).unwrap_or(f64::NAN),
                    memory: median(memory).unwrap_or(f64::NAN),
                },
            );
        }
    }

    /// Efficiencies for a GPU kind: measured when the profile has samples named like it.
    pub fn efficiency(&self, gpu: &GpuKind) -> Efficiency {
        let mut e = Efficiency {
            compute: self.options.compute_efficiency,
            memory: self.options.memory_efficiency,
        };
        if let Some(c) = self.calibrated.get(&key(&gpu.name)) {
            if c.compute.is_finite() {
                e.compute = (c.compute / gpu.flops()).clamp(1e-4, 1.0);
            }
            if c.memory.is_finite() {
                e.memory = (c.memory / gpu.bandwidth()).clamp(1e-4, 1.0);
            }
        }
        e
    }

    /// Weight bytes of layers `r`, with the embedding if `r` starts at 0 and the head if it ends at n.
    pub fn weight_bytes(&self, r: &Range<usize>) -> f64 {
        let mut b = Self::sum(&self.params, r);
        if r.start == 0 {
            b += self.embed_bytes;
        }
        if r.end == self.n {
            b += self.head_bytes;
            if self.tied && r.start == 0 {
                // The head's table is the embedding, already counted.
                b -= self.embed_bytes;
            }
        }
        b
    }

    /// KV bytes of one sequence at full context over layers `r`.
    pub fn kv_bytes_per_sequence(&self, r: &Range<usize>) -> f64 {
        Self::sum(&self.kv, r) * self.workload.max_context() as f64
    }

    /// Usable memory of a GPU after the reserve.
    pub fn usable_memory(&self, gpu: &GpuKind) -> f64 {
        gpu.memory_bytes() * (1.0 - self.options.memory_reserve)
    }

    /// Largest decode batch that fits next to the weights (0: does not fit one sequence).
    pub fn max_batch(&self, gpu: &GpuKind, r: &Range<usize>) -> u32 {
        let free = self.usable_memory(gpu) - self.weight_bytes(r);
        if free <= 0.0 {
            return 0;
        }
        let per = self.kv_bytes_per_sequence(r);
        let b = if per > 0.0 {
            (free / per).floor()
        } else {
            f64::MAX
        };
        b.min(self.options.max_batch as f64) as u32
    }

    /// Whether layers `r` fit on the GPU with at least one sequence of KV.
    pub fn fits(&self, gpu: &GpuKind, r: &Range<usize>) -> bool {
        self.max_batch(gpu, r) >= 1
    }

    /// Bytes needed for weights plus `batch` sequences of KV.
    pub fn memory_needed(&self, r: &Range<usize>, batch: u32) -> f64 {
        self.weight_bytes(r) + batch as f64 * self.kv_bytes_per_sequence(r)
    }

    /// Time of one call of layers `r`: `decode` sequences one token each at mean
    /// context, plus `prefill` prompt tokens, as max(compute, memory) + overhead.
    pub fn step_time(&self, gpu: &GpuKind, r: &Range<usize>, decode: f64, prefill: f64) -> f64 {
        let e = self.efficiency(gpu);
        let ctx = self.workload.mean_decode_context();
        let mut flops = (decode + prefill) * Self::sum(&self.flops, r)
            + decode * ctx * Self::sum(&self.attn, r)
            + prefill * (self.workload.prompt_tokens as f64 / 2.0) * Self::sum(&self.attn, r);
        if r.end == self.n {
            let seqs = decode + if prefill > 0.0 { 1.0 } else { 0.0 };
            flops += seqs * self.head_flops;
        }
        let bytes = self.weight_bytes(r) + decode * ctx * Self::sum(&self.kv, r);
        let compute = flops / (gpu.flops() * e.compute);
        let memory = bytes / (gpu.bandwidth() * e.memory);
        compute.max(memory) + self.overhead(gpu)
    }

    /// Fixed time per stage call: the option's, except for GPU kinds whose
    /// prefill and decode were both measured: their efficiencies include it (adding it
    /// again made a calibrated CPU step 2 ms slower than measured).
    fn overhead(&self, gpu: &GpuKind) -> f64 {
        let measured = self
            .calibrated
            .get(&key(&gpu.name))
            .is_some_and(|c| c.compute.is_finite() && c.memory.is_finite());
        if measured {
            0.0
        } else {
            self.options.step_overhead_s
        }
    }

    /// Prefill time of one prompt over layers `r`.
    pub fn prefill_time(&self, gpu: &GpuKind, r: &Range<usize>) -> f64 {
        self.step_time(gpu, r, 0.0, self.workload.prompt_tokens as f64)
    }

    /// Decode tokens per second the GPU pushes through layers `r` at its largest
    /// batch, charging each token its share of prefill when the options say so.
    pub fn decode_capacity(&self, gpu: &GpuKind, r: &Range<usize>) -> f64 {
        let b = self.max_batch(gpu, r);
        if b == 0 || r.is_empty() {
            return 0.0;
        }
        self.capacity_at_batch(gpu, r, b as f64)
    }

    /// Tokens per second through layers `r` at decode batch `b`.
    pub fn capacity_at_batch(&self, gpu: &GpuKind, r: &Range<usize>, b: f64) -> f64 {
        let mut t = self.step_time(gpu, r, b, 0.0);
        if self.options.include_prefill && self.workload.output_tokens > 0 {
            let e = self.efficiency(gpu);
            let per_tok = self.workload.prompt_tokens as f64 / self.workload.output_tokens as f64;
            let flops = Self::sum(&self.flops, r)
                + self.workload.prompt_tokens as f64 / 2.0 * Self::sum(&self.attn, r);
            t += b * per_tok * flops / (gpu.flops() * e.compute);
        }
        b / t
    }

    /// Bytes of hidden state sent after layer `end - 1` for one token.
    pub fn activation_bytes(&self, end: usize) -> f64 {
        if end == 0 || end > self.n {
            return self.act.first().copied().unwrap_or(0.0);
        }
        self.act[end - 1]
    }

    /// Generated tokens per second a link can carry at the boundary after layer
    /// `end - 1`. With `include_prefill`, each generated token also carries its
    /// share of the prompt's activations, as its capacity on a node carries its
    /// share of the prefill compute.
    pub fn link_capacity(&self, link: &Link, end: usize) -> f64 {
        let mut b = self.activation_bytes(end);
        if self.options.include_prefill && self.workload.output_tokens > 0 {
            b *= 1.0 + self.workload.prompt_tokens as f64 / self.workload.output_tokens as f64;
        }
        if b <= 0.0 {
            f64::INFINITY
        } else {
            link.bandwidth_bps / b
        }
    }

    /// Time to send `tokens` tokens of hidden state over a link at a boundary.
    pub fn link_time(&self, link: &Link, end: usize, tokens: f64) -> f64 {
        link.time(tokens * self.activation_bytes(end))
    }

    /// Weight bytes of the whole model.
    pub fn total_weight_bytes(&self) -> f64 {
        self.weight_bytes(&(0..self.n))
    }
}

fn key(s: &str) -> String {
    s.to_lowercase().replace(['-', '_', ' '], "")
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    Some(v[v.len() / 2])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpu_catalog::GpuCatalog;
    use crate::presets;
    use crate::profile::MeasuredStageTime;

    #[test]
    fn decode_is_memory_bound_at_batch_one_and_capacity_grows_with_batch() {
        let m = presets::model("Llama-3-8B").unwrap();
        let cm = CostModel::new(&m, &PlanOptions::default());
        let g = GpuCatalog::builtin().get("RTX4090").unwrap().clone();
        let r = 0..8;
        let t1 = cm.step_time(&g, &r, 1.0, 0.0);
        let bytes = cm.weight_bytes(&r);
        let expect = bytes / (g.bandwidth() * 0.7) + 0.002;
        assert!((t1 / expect - 1.0).abs() < 0.05, "{t1} vs {expect}");
        assert!(cm.capacity_at_batch(&g, &r, 16.0) > 8.0 * cm.capacity_at_batch(&g, &r, 1.0));
    }

    #[test]
    fn max_batch_zero_when_weights_do_not_fit() {
        let m = presets::model("Llama-2-70B").unwrap();
        let cm = CostModel::new(&m, &PlanOptions::default());
        let g = GpuCatalog::builtin().get("RTX3060").unwrap().clone();
        assert_eq!(cm.max_batch(&g, &(0..80)), 0);
        assert!(cm.max_batch(&g, &(10..12)) > 0);
    }

    #[test]
    fn measurements_calibrate_efficiency() {
        let mut m = presets::model("Llama-3-8B").unwrap();
        let g = GpuCatalog::builtin().get("T4").unwrap().clone();
        let bytes = m.param_bytes(0..4) as f64;
        // Measured decode: 4 layers read at 50% of T4 peak bandwidth.
        m.measured.push(MeasuredStageTime {
            device: "t4".into(),
            layers: 4,
            phase: Phase::Decode,
            batch: 1,
            tokens: 1,
            seconds: bytes / (g.bandwidth() * 0.5),
        });
        // Batches of 4 and 16 that took longer are compute-bound: no bandwidth figure.
        for (batch, slower) in [(4, 3.0), (16, 20.0)] {
            m.measured.push(MeasuredStageTime {
                device: "t4".into(),
                layers: 4,
                phase: Phase::Decode,
                batch,
                tokens: batch,
                seconds: slower * bytes / (g.bandwidth() * 0.5),
            });
        }
        let cm = CostModel::new(&m, &PlanOptions::default());
        assert!((cm.efficiency(&g).memory - 0.5).abs() < 1e-9);
        assert!((cm.efficiency(&g).compute - 0.5).abs() < 1e-9); // default kept
        // Measured times include the per-call overhead: it is not added again.
        let mut slow_calls = PlanOptions::default();
        slow_calls.cost.step_overhead_s = 1.0;
        let r = 0..4;
        let uncalibrated = CostModel::new(&presets::model("Llama-3-8B").unwrap(), &slow_calls);
        assert!(uncalibrated.step_time(&g, &r, 1.0, 0.0) >= 1.0);
        // Decode measured alone leaves compute at its default, without the overhead.
        let decode_only = CostModel::new(&m, &slow_calls);
        assert!(decode_only.step_time(&g, &r, 1.0, 0.0) >= 1.0);
        m.measured.push(MeasuredStageTime {
            device: "t4".into(),
            layers: 4,
            phase: Phase::Prefill,
            batch: 1,
            tokens: 64,
            seconds: 0.01,
        });
        let calibrated = CostModel::new(&m, &slow_calls);
        assert!(calibrated.step_time(&g, &r, 1.0, 0.0) < 1.0);
    }
}
