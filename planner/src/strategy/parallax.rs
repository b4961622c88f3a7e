//! Parallax's scheduler, phase 1 (Tong et al., "Parallax: Efficient LLM
//! Inference Service over Decentralized Environment", arXiv 2509.26182), as
//! its code does it: GradientHQ/parallax `src/scheduling/layer_allocation.py`
//! at commit 162354a0 (`DynamicProgrammingLayerAllocator.allocate_from_standby`,
//! `BaseLayerAllocator.adjust_pipeline_layers`, `Node.get_decoder_layer_capacity`).
//!
//! * Each GPU's capacity in decoder layers is half its memory
//!   (`param_mem_ratio` 0.5; the rest is for KV and runtime) over one layer's
//!   weights, less the embedding on a first stage and the head on a last one.
//! * For each pipeline count `k` from 1 to `min(N, Σ capacity / L)`, a
//!   dynamic program over the GPUs in join order (the cluster file's order:
//!   Parallax's code no longer sorts them) finds `s*(k)`, the fewest GPUs that
//!   build `k` disjoint pipelines each covering all `L` layers; the `k` with
//!   the largest `k² / s*(k)` wins (smaller `k` on ties).
//! * Within a pipeline, GPUs in order of capacity get layers water-filled in
//!   proportion to FP16 TFLOPS under their capacities (bisection on the
//!   level, 40 rounds), rounded down, the rest handed out by largest
//!   remainder; GPUs left with no layer, and GPUs in no pipeline, stay on
//!   standby (unused), as with Parallax's default round-robin router.
//! * Routing (Parallax's default `RoundRobinOverFixedPipelinesRouting`):
//!   requests go round robin over the `k` pipelines, each pipeline's GPUs in
//!   turn; the plan's weights say exactly that (each pipeline `1/k`, next hops
//!   within the pipeline), so `interleaved-wrr` serves it as Parallax does.
//!
//! The program's state is (GPU, open pipelines' missing layers as a sorted
//! multiset, pipelines finished), memoised, with Parallax's prunings; past
//! [`STATE_BUDGET`] states for one `k` it stops there (the plan says so).

use std::collections::HashMap;

use super::{Context, Strategy};
use crate::error::PlanError;
use crate::plan::{NextHop, Plan};

/// Share of a GPU's memory for weights (Parallax's `param_mem_ratio`).
pub const PARAM_MEMORY_SHARE: f64 = 0.5;

/// Memoised states per pipeline count before the program gives up on that count.
pub const STATE_BUDGET: usize = 400_000;

/// Largest cluster the dynamic program runs on; above it pipelines are filled
/// greedily in join order (Parallax's `GreedyLayerAllocator`).
pub const DP_MAX_GPUS: usize = 128;

/// Parallax's pipelines.
pub struct ParallaxPipelines;

/// Pipelines filled one after another in join order: each GPU joins the open
/// pipeline, which closes once the GPU can hold the rest with the head.
fn greedy_pipelines(caps: &[Capacity], layers: u32) -> Vec<Vec<usize>> {
    let mut done = Vec::new();
    let mut open: Option<(u32, Vec<usize>)> = None;
    for (i, c) in caps.iter().enumerate() {
        match open.take() {
            None => {
                if c.embed >= layers {
                    done.push(vec![i]);
                } else if c.embed > 0 {
                    open = Some((layers - c.embed, vec![i]));
                }
            }
            Some((left, mut gpus)) => {
                gpus.push(i);
                if c.head >= left {
                    done.push(gpus);
                } else if c.plain >= left {
                    // Holds the rest but not with the head (as the program counts it).
                    open = Some((left - c.head, gpus));
                } else {
                    open = Some((left - c.plain, gpus));
                }
            }
        }
    }
    done
}

/// Layer capacities of one GPU as a middle, first and last stage.
#[derive(Debug, Clone, Copy)]
struct Capacity {
    plain: u32,
    embed: u32,
    head: u32,
}

struct Dp<'a> {
    caps: &'a [Capacity],
    suffix: Vec<u64>,
    layers: u32,
    k: usize,
    memo: HashMap<(usize, Vec<u32>, usize), u32>,
    exhausted: bool,
}

const INF: u32 = u32::MAX / 2;

impl Dp<'_> {
    /// Fewest GPUs from `i` on that finish `k − f` pipelines, given open ones missing `r` layers.
    fn solve(&mut self, i: usize, r: &[u32], f: usize) -> u32 {
        if f == self.k && r.is_empty() {
            return 0;
        }
        let n = self.caps.len();
        if i == n {
            return INF;
        }
        let need = self.k as i64 - f as i64 - r.len() as i64;
        let open: u64 = r.iter().map(|&x| x as u64).sum();
        if need < 0
            || self.suffix[i] < open + need.max(0) as u64 * self.layers as u64
            || f + r.len() + (n - i) < self.k
        {
            return INF;
        }
        let key = (i, r.to_vec(), f);
        if let Some(&v) = self.memo.get(&key) {
            return v;
        }
        if self.memo.len() >= STATE_BUDGET {
            self.exhausted = true;
            return INF;
        }
        let mut best = self.solve(i + 1, r, f);
        let c = self.caps[i];
        for j in 0..r.len() {
            if j > 0 && r[j] == r[j - 1] {
                continue; // the same residual twice: the same choice
            }
            let (next, done) = self.join(r, j, c);
            let v = 1 + self.solve(i + 1, &next, f + usize::from(done));
            best = best.min(v);
        }
        if need > 0 {
            if c.embed >= self.layers {
                best = best.min(1 + self.solve(i + 1, r, f + 1));
            } else {
                let mut next = r.to_vec();
                next.push(self.layers - c.embed);
                next.sort_unstable();
                best = best.min(1 + self.solve(i + 1, &next, f));
            }
        }
        self.memo.insert(key, best);
        best
    }

    /// GPU with capacity `c` joins the open pipeline missing `r[j]` layers.
    fn join(&self, r: &[u32], j: usize, c: Capacity) -> (Vec<u32>, bool) {
        let mut next = r.to_vec();
        let left = r[j] as i64 - c.plain as i64;
        if left > 0 {
            next[j] = left as u32;
            next.sort_unstable();
            return (next, false);
        }
        let with_head = r[j] as i64 - c.head as i64;
        if with_head <= 0 {
            next.remove(j);
            (next, true)
        } else {
            next[j] = with_head as u32;
            next.sort_unstable();
            (next, false)
        }
    }

    /// The pipelines (GPU indices in join order) of the optimum.
    fn backtrack(&mut self) -> Option<Vec<Vec<usize>>> {
        let total = self.solve(0, &[], 0);
        if total >= INF {
            return None;
        }
        let mut open: Vec<(u32, Vec<usize>)> = Vec::new();
        let mut done: Vec<Vec<usize>> = Vec::new();
        let mut left = total;
        for i in 0..self.caps.len() {
            if left == 0 {
                break;
            }
            open.sort_by_key(|p| p.0);
            let r: Vec<u32> = open.iter().map(|p| p.0).collect();
            let f = done.len();
            if self.solve(i + 1, &r, f) == left {
                continue;
            }
            let c = self.caps[i];
            let mut taken = false;
            for j in 0..r.len() {
                let (next, fin) = self.join(&r, j, c);
                if 1 + self.solve(i + 1, &next, f + usize::from(fin)) == left {
                    let (mut res, mut gpus) = open.remove(j);
                    gpus.push(i);
                    if fin {
                        done.push(gpus);
                    } else {
                        res = if res > c.plain {
                            res - c.plain
                        } else {
                            res - c.head
                        };
                        open.push((res, gpus));
                    }
                    taken = true;
                    break;
                }
            }
            if !taken {
                if c.embed >= self.layers {
                    done.push(vec![i]);
                } else {
                    open.push((self.layers - c.embed, vec![i]));
                }
            }
            left -= 1;
        }
        (open.is_empty() && done.len() == self.k).then_some(done)
    }
}

/// Water-fills `layers` over the pipeline's GPUs (sorted by capacity) in
/// proportion to their TFLOPS under each GPU's capacity; returns (GPU, layers).
fn water_fill(
    ctx: &Context,
    caps: &[Capacity],
    pipeline: &[usize],
    layers: u32,
    by_capacity: bool,
) -> Option<Vec<(usize, u32)>> {
    let mut gpus = pipeline.to_vec();
    if by_capacity {
        gpus.sort_by(|&a, &b| caps[b].plain.cmp(&caps[a].plain).then(a.cmp(&b)));
    }
    let n = gpus.len();
    let cap: Vec<f64> = (0..n)
        .map(|k| {
            let c = caps[gpus[k]];
            let layers = if k == 0 {
                c.embed
            } else if k == n - 1 {
                c.head
            } else {
                c.plain
            };
            layers as f64
        })
        .collect();
    let power: Vec<f64> = gpus
        .iter()
        .map(|&i| ctx.cluster.nodes[i].gpu.fp16_tflops.max(1e-9))
        .collect();
    let total = layers as f64;
    let (mut lo, mut hi) = (0.0, (0..n).map(|k| cap[k] / power[k]).fold(0.0, f64::max));
    for _ in 0..40 {
        let mid = 0.5 * (lo + hi);
        let got: f64 = (0..n).map(|k| cap[k].min(mid * power[k])).sum();
        if got >= total {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    let t: Vec<f64> = (0..n).map(|k| cap[k].min(hi * power[k])).collect();
    let mut got: Vec<u32> = (0..n).map(|k| t[k].floor().min(cap[k]) as u32).collect();
    let mut left = layers as i64 - got.iter().map(|&x| x as i64).sum::<i64>();
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&a, &b| {
        (t[b] - t[b].floor())
            .total_cmp(&(t[a] - t[a].floor()))
            .then(a.cmp(&b))
    });
    for &k in order.iter().cycle().take(4 * n) {
        if left <= 0 {
            break;
        }
        if (got[k] as f64) < cap[k] {
            got[k] += 1;
            left -= 1;
        }
    }
    (left == 0).then(|| gpus.into_iter().zip(got).collect())
}

impl Strategy for ParallaxPipelines {
    fn name(&self) -> &'static str {
        "parallax"
    }
    fn citation(&self) -> &'static str {
        "Parallax (arXiv 2509.26182), GradientHQ/parallax src/scheduling/layer_allocation.py @162354a0"
    }
    fn plan(&self, ctx: &Context) -> Result<Plan, PlanError> {
        ctx.check_total_memory()?;
        let n = ctx.n();
        if n < 1 {
            return Err(PlanError::Infeasible {
                strategy: self.name().into(),
                reason: "the model has no layers".into(),
            });
        }
        // One decoder layer's weights, and the embedding and head on their own.
        let middle = if n > 2 {
            ctx.cost.weight_bytes(&(1..n - 1)) / (n - 2) as f64
        } else {
            ctx.cost.weight_bytes(&(0..n)) / n as f64
        };
        let embed = (ctx.cost.weight_bytes(&(0..1)) - middle).max(0.0);
        let head = (ctx.cost.weight_bytes(&(n - 1..n)) - middle).max(0.0);
        let caps: Vec<Capacity> = ctx
            .cluster
            .nodes
            .iter()
            .map(|x| {
                let mem = x.gpu.memory_bytes() * PARAM_MEMORY_SHARE;
                let layers = |m: f64| (m.max(0.0) / middle.max(1.0)).floor().min(n as f64) as u32;
                Capacity {
                    plain: layers(mem),
                    embed: layers(mem - embed),
                    head: layers(mem - head),
                }
            })
            .collect();
        let total: u64 = caps.iter().map(|c| c.plain as u64).sum();
        let layers = n as u32;
        if total < layers as u64 {
            return Err(PlanError::Infeasible {
                strategy: self.name().into(),
                reason: format!(
                    "half of every GPU's memory holds {total} layers, fewer than the model's {layers}"
                ),
            });
        }
        let mut suffix = vec![0u64; caps.len() + 1];
        for i in (0..caps.len()).rev() {
            suffix[i] = suffix[i + 1] + caps[i].plain as u64;
        }
        let k_max = caps.len().min((total / layers as u64) as usize);
        let mut best: Option<(f64, usize, Vec<Vec<usize>>)> = None;
        let mut cut_short = Vec::new();
        let dp_counts = if caps.len() > DP_MAX_GPUS { 0 } else { k_max };
        for k in 1..=dp_counts {
            let mut dp = Dp {
                caps: &caps,
                suffix: suffix.clone(),
                layers,
                k,
                memo: HashMap::new(),
                exhausted: false,
            };
            let found = dp.backtrack();
            if dp.exhausted {
                cut_short.push(k);
            }
            if let Some(p) = found {
                let stages: usize = p.iter().map(Vec::len).sum();
                let score = (k * k) as f64 / stages as f64;
                if best.as_ref().is_none_or(|b| score > b.0) {
                    best = Some((score, k, p));
                }
            }
            if dp.exhausted && k > 1 && best.is_some() {
                break;
            }
        }
        let mut greedy = false;
        if best.is_none() {
            // Too many GPUs for the program (or it found nothing within its
            // budget): Parallax's greedy allocator, pipelines filled in join order.
            let p = greedy_pipelines(&caps, layers);
            if !p.is_empty() {
                let stages: usize = p.iter().map(Vec::len).sum();
                let k = p.len();
                best = Some(((k * k) as f64 / stages as f64, k, p));
                greedy = true;
            }
        }
        let Some((score, _, pipelines)) = best else {
            return Err(PlanError::Infeasible {
                strategy: self.name().into(),
                reason: "no pipeline can be built from the GPUs' layer capacities".into(),
            });
        };
        let mut chains: Vec<Vec<(usize, std::ops::Range<usize>)>> = Vec::new();
        let (mut reordered, mut dropped) = (0, 0);
        for p in &pipelines {
            // Parallax orders a pipeline by capacity, which can leave the
            // embedding or head on a GPU the program did not count them on;
            // then the program's order is used, and failing that the
            // pipeline is dropped (Parallax raises an error).
            let fill = match water_fill(ctx, &caps, p, layers, true) {
                Some(f) => f,
                None => match water_fill(ctx, &caps, p, layers, false) {
                    Some(f) => {
                        reordered += 1;
                        f
                    }
                    None => {
                        dropped += 1;
                        continue;
                    }
                },
            };
            let mut start = 0usize;
            let mut chain = Vec::new();
            for (i, got) in fill {
                if got == 0 {
                    continue;
                }
                chain.push((i, start..start + got as usize));
                start += got as usize;
            }
            chains.push(chain);
        }
        if chains.is_empty() {
            return Err(PlanError::Infeasible {
                strategy: self.name().into(),
                reason: "water-filling could not place every layer on any pipeline".into(),
            });
        }
        let k = chains.len();
        let spans: Vec<(usize, std::ops::Range<usize>)> =
            chains.iter().flatten().cloned().collect();
        for (i, r) in &spans {
            if !ctx.cost.fits(&ctx.cluster.nodes[*i].gpu, r) {
                return Err(PlanError::Infeasible {
                    strategy: self.name().into(),
                    reason: format!(
                        "node {} cannot hold layers {r:?} with KV for one sequence",
                        ctx.cluster.nodes[*i].id
                    ),
                });
            }
        }
        let mut plan = Plan::from_spans(self.name(), ctx.cluster, n, &ctx.model.name, &spans);
        // Round robin over fixed pipelines: each pipeline 1/k, next hops inside it.
        let pipeline_of: HashMap<&str, usize> = chains
            .iter()
            .enumerate()
            .flat_map(|(p, c)| {
                c.iter()
                    .map(move |(i, _)| (ctx.cluster.nodes[*i].id.as_str(), p))
            })
            .collect();
        let starts: Vec<(usize, usize)> = plan
            .stages
            .iter()
            .map(|s| (s.start as usize, s.end as usize))
            .collect();
        for (s, st) in plan.stages.iter_mut().enumerate() {
            for rep in &mut st.replicas {
                rep.weight = 1.0 / k as f64;
                rep.next.clear();
                if let (Some(p), Some(&(next_start, _))) = (
                    pipeline_of.get(rep.node.as_str()).copied(),
                    starts.get(s + 1),
                ) && let Some((i, _)) = chains[p].iter().find(|(_, r)| r.contains(&next_start))
                {
                    rep.next.push(NextHop {
                        node: ctx.cluster.nodes[*i].id.clone(),
                        weight: 1.0,
                    });
                }
            }
        }
        let used: usize = chains.iter().map(Vec::len).sum();
        plan.notes.push(format!(
            "{k} pipelines of {used} GPUs (k^2/s* = {score:.3}), {} GPUs on standby",
            ctx.cluster.len() - used
        ));
        if reordered + dropped > 0 {
            plan.notes.push(format!(
                "{reordered} pipelines filled in the program's order, {dropped} dropped: ordered by capacity they could not hold every layer"
            ));
        }
        if greedy {
            plan.notes.push(format!(
                "greedy allocation in join order (the program runs up to {DP_MAX_GPUS} GPUs)"
            ));
        }
        if !cut_short.is_empty() {
            plan.notes.push(format!(
                "the program stopped at {STATE_BUDGET} states for k = {cut_short:?}"
            ));
        }
        plan.validate_with(ctx.cluster, ctx.model, ctx.options)?;
        Ok(plan)
    }
}
