//! An analytic model of what a plan serves: goodput (generated tokens per
//! second of requests within the SLO) at a given arrival rate, SLO and node
//! failure rate, the measure of the simulator's study.
//!
//! Where the throughput bound of [`crate::flow`] stops, this model goes on, and
//! counts what the simulator shows the bound misses:
//!
//! * **KV held on every stage.** A sequence reserves KV for its prompt and
//!   output on each node of its path for its whole life (time to first token
//!   plus its decode), so by Little's law node `i` holds
//!   `N_i = λ_i · (TTFT + O · ITL)` sequences; past its KV room requests queue.
//!   Deep pipelines make every sequence's life longer and fill every stage.
//! * **Batches.** A node runs its `N_i` resident sequences in batches of at most
//!   `max_batch` (one wave per token: the batch of a pipelined stage is its
//!   resident sequences), so its decode step is `t_i(min(N_i, B))` and a token
//!   cycle lasts at least `⌈N_i / B⌉` steps.
//! * **Prefill.** Each prompt's compute on each hop, in chunks, shares the node
//!   with decode steps (decode steps are stretched by `1 / (1 − u_prefill)`),
//!   and the prompt's activations cross each link at its bandwidth (chunks
//!   pipelined over hops); home uplinks are servers of their own.
//! * **Queueing.** Time to first token waits for the most utilised node as an
//!   M/M/1 queue would (Kleinrock, *Queueing Systems* I, §3.2): the chance of
//!   waiting longer than `w` is `ρ · e^{−(1−ρ) w / s}`. Prompt lengths spread
//!   over ±75% of their mean (the spread of the Azure conversation trace that
//!   Helix and the study use), so long prompts miss a tight TTFT first.
//! * **Overload.** Above the highest sustainable rate (bisection on the
//!   conditions above) the queue grows over the demand window
//!   ([`ServiceTarget::window_s`]): requests meet the TTFT bound only while the
//!   backlog is short, and the run ends when the backlog has drained.
//! * **Failures** (rates from each node's MTBF/MTTR times
//!   [`ServiceTarget::failure_speedup`]): a failed replica restarts the
//!   sequences it held, which re-prefill their prompt and half their output
//!   (the planner's [`crate::expected_recovery`] reasoning); a stage left with
//!   no live replica is re-planned, which resets every node whose layers move
//!   and stops service until the moved weights are loaded.
//!
//! The model is calibrated by the same cost model as every strategy
//! ([`CostModel::step_time`], activation and KV bytes), so measured stage
//! times calibrate it too. Its predictions sit next to the simulator's in the
//! study (`planner/README.md`), cell by cell.

use std::ops::Range;

use serde::{Deserialize, Serialize};

use crate::cluster::{Cluster, Link};
use crate::cost::CostModel;
use crate::options::PlanOptions;
use crate::plan::Plan;

/// Prompt and output lengths are taken as uniform over ±this share of their mean.
pub const LENGTH_SPREAD: f64 = 0.75;

/// Bandwidth at which moved weights are assumed to load after a re-plan, bytes/s
/// (10 Gbit/s, the simulator's default weight source), capped by the node's downlink.
const WEIGHT_SOURCE_BPS: f64 = 10e9 / 8.0;

/// What the model predicts for one plan.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServicePrediction {
    /// Arrival rate the prediction is for, requests/s.
    pub request_rate: f64,
    /// Generated tokens per second of requests within the SLO.
    pub goodput_tok_s: f64,
    /// Share of requests within the SLO.
    pub slo_share: f64,
    /// Mean time to first token, seconds (at the sustainable rate when overloaded).
    pub ttft_s: f64,
    /// Mean inter-token latency, seconds.
    pub itl_s: f64,
    /// Highest arrival rate the plan sustains, requests/s.
    pub max_rate: f64,
    /// Utilisation of the busiest node at the predicted rate.
    pub utilisation: f64,
    /// Node (or its uplink, `id^up`) that limits the sustainable rate.
    pub bottleneck: String,
    /// Share of requests lost to failures (restarts past the SLO, re-plan outages).
    pub failure_loss: f64,
}

impl ServicePrediction {
    /// A plan that serves nothing.
    fn nothing(rate: f64, why: &str) -> ServicePrediction {
        ServicePrediction {
            request_rate: rate,
            goodput_tok_s: 0.0,
            slo_share: 0.0,
            ttft_s: f64::INFINITY,
            itl_s: f64::INFINITY,
            max_rate: 0.0,
            utilisation: f64::INFINITY,
            bottleneck: why.to_string(),
            failure_loss: 0.0,
        }
    }
}

/// One node of the plan, with what the model needs of it.
struct NodeTerm {
    id: String,
    /// Request share through the node.
    share: f64,
    /// Layers the node holds.
    span: Range<usize>,
    /// Index of the node in the cluster.
    gpu: usize,
    /// One chunk's time with no decode beside it.
    chunk_s: f64,
    /// Sequences of KV room for a mean request.
    kv_seqs: f64,
    /// Failures per second (after the speed-up).
    fail_rate: f64,
    /// Steady-state availability.
    availability: f64,
    /// Mean time to repair, seconds (after the speed-up).
    repair_s: f64,
    /// Bytes per request sent off the node by its span (prompt and output
    /// activations), and the uplink that carries them.
    up_bytes: f64,
    uplink_bps: Option<f64>,
}

/// One directed link between consecutive stages, a FIFO server of its own.
struct LinkTerm {
    /// Cluster indices of its ends.
    from: usize,
    to: usize,
    /// Stage boundary (index of the stage it leaves).
    boundary: usize,
    /// Share of requests whose path takes it.
    p: f64,
    /// Seconds of the link one request occupies (its prompt and output activations).
    occupancy_s: f64,
    /// Time of one decode token's activations, and of one prompt chunk's.
    decode_s: f64,
    chunk_s: f64,
}

/// The plan reduced to per-node terms and expected per-token path terms.
struct Shape {
    nodes: Vec<NodeTerm>,
    /// (node index in `nodes`, share of the stage, fraction of the node's
    /// span that the stage is) for every stage's replicas.
    stages: Vec<Vec<(usize, f64, f64)>>,
    /// Expected latency of the sampled token back to the first stage.
    feedback_s: f64,
    /// Every directed link the plan's routing uses between stages.
    links: Vec<LinkTerm>,
    /// Number of stage boundaries.
    boundaries: usize,
    /// Rate at which some stage loses its last live replica, per second.
    stage_loss_rate: f64,
    /// Longest time a node takes to load its span's weights (after a re-plan).
    max_span_load_s: f64,
}

fn link_time(link: &Link, bytes: f64) -> f64 {
    link.time(bytes)
}

fn shape(plan: &Plan, cluster: &Cluster, cm: &CostModel, options: &PlanOptions) -> Option<Shape> {
    let w = &options.workload;
    let prompt = w.prompt_tokens as f64;
    let output = w.output_tokens as f64;
    let chunk = 256.0_f64.min(prompt.max(1.0));
    let speed = options.target.failure_speedup;
    let mut index: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    let mut nodes: Vec<NodeTerm> = Vec::new();
    for (id, span) in plan.node_layers() {
        let gi = cluster.index_of(&id)?;
        let node = &cluster.nodes[gi];
        let free = cm.usable_memory(&node.gpu) - cm.weight_bytes(&span);
        let per_seq = cm.kv_bytes_per_sequence(&span);
        let kv_seqs = if per_seq > 0.0 {
            free / per_seq
        } else {
            f64::INFINITY
        };
        let chunk_s = cm.step_time(&node.gpu, &span, 0.0, chunk);
        let end_bytes = if span.end == cm.num_layers() {
            4.0 // a token id back to the first stage
        } else {
            cm.activation_bytes(span.end)
        };
        index.insert(id.clone(), nodes.len());
        nodes.push(NodeTerm {
            id: id.clone(),
            share: 0.0,
            span,
            gpu: gi,
            chunk_s,
            kv_seqs,
            fail_rate: node.availability.failures_per_hour() / 3600.0 * speed,
            availability: node.availability.steady_state(),
            repair_s: if speed > 0.0 {
                node.availability.mttr_hours * 3600.0 / speed
            } else {
                0.0
            },
            up_bytes: (prompt + output) * end_bytes,
            uplink_bps: node.uplink_bps,
        });
    }
    let mut stages: Vec<Vec<(usize, f64, f64)>> = Vec::with_capacity(plan.stages.len());
    let mut feedback_s = 0.0;
    let mut links: Vec<LinkTerm> = Vec::new();
    let mut stage_loss_rate = 0.0;
    for st in &plan.stages {
        let wsum: f64 = st.replicas.iter().map(|r| r.weight.max(0.0)).sum();
        let k = st.replicas.len().max(1) as f64;
        let mut reps = Vec::with_capacity(st.replicas.len());
        for r in &st.replicas {
            let &ni = index.get(&r.node)?;
            let share = if wsum > 0.0 {
                r.weight.max(0.0) / wsum
            } else {
                1.0 / k
            };
            let n = &mut nodes[ni];
            // A node spanning stages serves the most any of its stages sends it.
            n.share = n.share.max(share);
            let frac = (st.end - st.start) as f64 / n.span.len().max(1) as f64;
            reps.push((ni, share, frac));
        }
        // A stage is lost when its last live replica fails: node i's failure
        // while every other replica is down (one product over the stage,
        // with the zero terms of always-up nodes counted apart).
        let downs: Vec<f64> = reps
            .iter()
            .map(|&(k, _, _)| 1.0 - nodes[k].availability)
            .collect();
        let zeros = downs.iter().filter(|&&d| d <= 0.0).count();
        let nonzero: f64 = downs.iter().filter(|&&d| d > 0.0).product();
        for (&(ni, _, _), &d) in reps.iter().zip(&downs) {
            let others = match (zeros, d > 0.0) {
                (0, _) => nonzero / d,
                (1, false) => nonzero,
                _ => 0.0,
            };
            stage_loss_rate += nodes[ni].fail_rate * others;
        }
        stages.push(reps);
    }
    // Links between consecutive stages, by the plan's next hops (or the next
    // stage's replica weights where a replica has none).
    for (s, st) in plan
        .stages
        .iter()
        .enumerate()
        .take(plan.stages.len().saturating_sub(1))
    {
        let end = st.end as usize;
        let act = cm.activation_bytes(end);
        let next = &plan.stages[s + 1];
        let nsum: f64 = next.replicas.iter().map(|r| r.weight.max(0.0)).sum();
        for (r, &(ni, share, _)) in st.replicas.iter().zip(&stages[s]) {
            if share <= 0.0 {
                continue;
            }
            let gi = nodes[ni].gpu;
            let hops: Vec<(&str, f64)> = if r.next.is_empty() {
                next.replicas
                    .iter()
                    .map(|x| {
                        let w = if nsum > 0.0 {
                            x.weight.max(0.0) / nsum
                        } else {
                            1.0 / next.replicas.len().max(1) as f64
                        };
                        (x.node.as_str(), w)
                    })
                    .collect()
            } else {
                r.next.iter().map(|h| (h.node.as_str(), h.weight)).collect()
            };
            let hsum: f64 = hops.iter().map(|h| h.1.max(0.0)).sum::<f64>().max(1e-300);
            for (node, wt) in hops {
                let gj = cluster.index_of(node)?;
                if gj == gi {
                    continue;
                }
                let l = cluster.link(gi, gj);
                let p = share * wt.max(0.0) / hsum;
                if p <= 0.0 {
                    continue;
                }
                links.push(LinkTerm {
                    from: gi,
                    to: gj,
                    boundary: s,
                    p,
                    occupancy_s: (prompt + output) * act / l.bandwidth_bps,
                    decode_s: link_time(&l, act),
                    chunk_s: link_time(&l, chunk * act),
                });
            }
        }
    }
    // The sampled token back from the last stage to the first (the heaviest
    // replicas stand for all on large plans).
    if let (Some(first), Some(last)) = (stages.first(), stages.last()) {
        let top = |v: &[(usize, f64, f64)]| {
            let mut v = v.to_vec();
            v.sort_by(|a, b| b.1.total_cmp(&a.1));
            v.truncate(32);
            let sum: f64 = v.iter().map(|x| x.1).sum::<f64>().max(1e-300);
            v.into_iter().map(|x| (x.0, x.1 / sum)).collect::<Vec<_>>()
        };
        let (f, l) = (top(first), top(last));
        for &(a, pa) in &l {
            for &(b, pb) in &f {
                let (ga, gb) = (nodes[a].gpu, nodes[b].gpu);
                if ga != gb {
                    feedback_s += pa * pb * cluster.link(ga, gb).latency_s;
                }
            }
        }
    }
    let max_span_load_s = nodes
        .iter()
        .map(|n| {
            let bps = cluster.nodes[n.gpu]
                .downlink_bps
                .unwrap_or(f64::INFINITY)
                .min(WEIGHT_SOURCE_BPS);
            cm.weight_bytes(&n.span) / bps
        })
        .fold(0.0, f64::max);
    Some(Shape {
        nodes,
        stages,
        feedback_s,
        links,
        boundaries: plan.stages.len().saturating_sub(1),
        stage_loss_rate,
        max_span_load_s,
    })
}

/// The steady state at one arrival rate, or why there is none.
struct Steady {
    ttft_s: f64,
    itl_s: f64,
    rho_max: f64,
    /// Prefill time of the busiest node (its queue's service time).
    busiest_prefill_s: f64,
    busiest: usize,
    /// Resident sequences summed over the first stage (sequences in flight).
    in_flight: f64,
    /// Admission waits for KV room: per node, Erlang C's chance to wait and
    /// the rate at which the wait's tail decays, per second.
    kv_waits: Vec<(f64, f64)>,
}

/// Erlang C: the chance that an arrival waits in an M/M/c queue with `c`
/// servers and offered load `a` (Kleinrock, *Queueing Systems* I, §3.5),
/// by the stable recursion on Erlang B.
pub fn erlang_c(c: f64, a: f64) -> f64 {
    if a <= 0.0 {
        return 0.0;
    }
    if a >= c {
        return 1.0;
    }
    // Past 100,000 servers the recursion's cost is not worth it: a queue
    // that large waits only when nearly full.
    if c > 100_000.0 {
        return if a >= 0.999 * c { 1.0 } else { 0.0 };
    }
    let servers = c.floor().max(1.0) as usize;
    if a >= servers as f64 {
        return 1.0;
    }
    let mut b = 1.0;
    for k in 1..=servers {
        b = a * b / (k as f64 + a * b);
    }
    let c = servers as f64;
    (c * b / (c - a * (1.0 - b))).clamp(0.0, 1.0)
}

fn steady(
    sh: &Shape,
    cluster: &Cluster,
    cm: &CostModel,
    options: &PlanOptions,
    rate: f64,
    with_waits: bool,
) -> Result<Steady, usize> {
    let w = &options.workload;
    let output = w.output_tokens as f64;
    let prompt = w.prompt_tokens as f64;
    let batch_cap = options.cost.max_batch.max(1) as f64;
    let chunks = (prompt / 256.0).ceil().max(1.0);
    let n = sh.nodes.len();
    let mut t = vec![0.0; n];
    let mut stretch = vec![1.0; n];
    let mut up_stretch = vec![1.0; n];
    let mut cycle = vec![0.0; n];
    let mut rho = vec![0.0; n];
    let mut resident = vec![0.0; n];
    let mut prefill_service = vec![0.0; n];
    let mut wait = vec![0.0; n];
    let chunk = 256.0_f64.min(prompt.max(1.0));
    // Start from an idle system.
    for (k, nd) in sh.nodes.iter().enumerate() {
        t[k] = cm.step_time(&cluster.nodes[nd.gpu].gpu, &nd.span, 1.0, 0.0);
    }
    let path = |per_node: &dyn Fn(usize) -> f64| -> f64 {
        sh.stages
            .iter()
            .map(|reps| {
                reps.iter()
                    .map(|&(k, share, frac)| share * frac * per_node(k))
                    .sum::<f64>()
            })
            .sum()
    };
    // Links: utilisation by the requests that take them (constant in the
    // iteration), decode tokens and prompt chunks queued first in, first out.
    let mut link_decode = sh.feedback_s;
    let mut link_chunk = 0.0;
    let mut chunk_by_boundary = vec![0.0; sh.boundaries];
    for (x, l) in sh.links.iter().enumerate() {
        let u = rate * l.p * l.occupancy_s;
        if u >= 0.995 {
            return Err(2 * n + x);
        }
        let stretch = 1.0 / (1.0 - u);
        link_decode += l.p * (l.decode_s + u * l.chunk_s / 2.0) * stretch;
        // A prompt's first chunk queues behind the other requests' whole
        // prompts, not behind single chunks (M/M/1 wait with a request's
        // occupancy as the service): what makes TTFT at 1 Gbit/s links.
        link_chunk += l.p * (l.chunk_s + u * stretch * l.occupancy_s);
        chunk_by_boundary[l.boundary] += l.p * l.chunk_s * stretch;
    }
    let link_chunk_max = chunk_by_boundary.iter().copied().fold(0.0, f64::max);
    let mut itl = path(&|k| t[k]) + link_decode;
    let mut ttft = path(&|k| sh.nodes[k].chunk_s) + link_chunk;
    let mut converged = false;
    for round in 0..80 {
        let life = ttft + (output - 1.0).max(0.0) * itl;
        let mut worst = 0usize;
        for (k, nd) in sh.nodes.iter().enumerate() {
            let lam = rate * nd.share;
            let res = lam * life;
            if res > nd.kv_seqs {
                return Err(k);
            }
            resident[k] = res;
            let b = res.clamp(1.0, batch_cap);
            let gpu = &cluster.nodes[nd.gpu].gpu;
            t[k] = cm.step_time(gpu, &nd.span, b, 0.0);
            // A prompt's chunks ride in decode steps (decode first, then
            // chunks within the token budget): each costs the step's extra
            // time, and prompts queue for the node first come, first served.
            let with_chunk = cm.step_time(gpu, &nd.span, b, chunk);
            let extra = (with_chunk - t[k]).max(0.0);
            let u_pf = lam * chunks * extra;
            if u_pf >= 0.995 {
                return Err(k);
            }
            // Decode throughput of the node at its largest batch (KV room and
            // the batch cap), less the share prefill takes.
            let b_max = nd.kv_seqs.min(batch_cap).max(1.0);
            let full = cm.step_time(gpu, &nd.span, b_max, 0.0);
            if lam * output >= 0.995 * b_max / full * (1.0 - u_pf) {
                return Err(k);
            }
            rho[k] = lam * chunks * with_chunk;
            prefill_service[k] = chunks * with_chunk;
            stretch[k] = 1.0 / (1.0 - u_pf);
            // A token arriving during a step that carries a chunk waits for
            // the rest of it.
            wait[k] = u_pf * with_chunk / 2.0;
            cycle[k] = (res / batch_cap).max(1.0) * t[k] * stretch[k];
            if let Some(up) = nd.uplink_bps {
                let u = lam * nd.up_bytes / up;
                if u >= 0.995 {
                    return Err(n + k);
                }
                up_stretch[k] = 1.0 / (1.0 - u);
                rho[k] = rho[k].max(u);
            }
            if rho[k] > rho[worst] {
                worst = k;
            }
        }
        let pipeline = path(&|k| t[k] * stretch[k] + wait[k]) + link_decode;
        let itl_new = pipeline.max(cycle.iter().copied().fold(0.0, f64::max));
        let chunk_path = path(&|k| {
            let gpu = &cluster.nodes[sh.nodes[k].gpu].gpu;
            let b = resident[k].clamp(0.0, batch_cap);
            cm.step_time(gpu, &sh.nodes[k].span, b, 256.0_f64.min(prompt)) * up_stretch[k]
        });
        let slowest_hop = sh
            .stages
            .iter()
            .map(|reps| {
                reps.iter()
                    .map(|&(k, s, f)| s * f * sh.nodes[k].chunk_s * stretch[k])
                    .sum::<f64>()
            })
            .fold(link_chunk_max, f64::max);
        let ttft_new = chunk_path + link_chunk + (chunks - 1.0) * slowest_hop;
        let damp = if round < 10 { 1.0 } else { 0.5 };
        let (d_itl, d_ttft) = (itl_new - itl, ttft_new - ttft);
        itl += damp * d_itl;
        ttft += damp * d_ttft;
        if d_itl.abs() < 1e-6 * itl && d_ttft.abs() < 1e-6 * ttft && round > 3 {
            converged = true;
            break;
        }
        if !(itl.is_finite() && ttft.is_finite()) {
            return Err(worst);
        }
    }
    if !converged {
        // Sequences' lives grow faster than they end: no steady state.
        let k = (0..n)
            .max_by(|&a, &b| resident[a].total_cmp(&resident[b]))
            .unwrap_or(0);
        return Err(k);
    }
    let (busiest, rho_max) = rho
        .iter()
        .copied()
        .enumerate()
        .fold((0, 0.0), |a, (k, r)| if r > a.1 { (k, r) } else { a });
    let in_flight = sh
        .stages
        .first()
        .map_or(0.0, |reps| reps.iter().map(|&(k, _, _)| resident[k]).sum());
    let life = ttft + (output - 1.0).max(0.0) * itl;
    let kv_waits = sh
        .nodes
        .iter()
        .filter(|_| with_waits)
        .map(|nd| {
            let c = nd.kv_seqs.floor();
            let a = rate * nd.share * life;
            (erlang_c(c, a), ((c - a) / life.max(1e-9)).max(0.0))
        })
        .collect();
    Ok(Steady {
        kv_waits,
        ttft_s: ttft,
        itl_s: itl,
        rho_max,
        busiest_prefill_s: prefill_service.get(busiest).copied().unwrap_or(0.0),
        busiest,
        in_flight,
    })
}

/// Share of uniformly spread values `mean · (1 ± LENGTH_SPREAD)` of a
/// quantity proportional to length with a `fixed` part that stay within `bound`.
fn spread_share(fixed: f64, variable: f64, bound: f64) -> f64 {
    if variable <= 0.0 {
        return if fixed <= bound { 1.0 } else { 0.0 };
    }
    // value(x) = fixed + variable * x, x uniform in [1 - s, 1 + s].
    let x = (bound - fixed) / variable;
    ((x - (1.0 - LENGTH_SPREAD)) / (2.0 * LENGTH_SPREAD)).clamp(0.0, 1.0)
}

/// Predicts what `plan` serves at the rate, SLO and failure speed of
/// `options.target` (a rate of 0 predicts at `options.load_fraction` of the
/// plan's own sustainable rate).
pub fn predict(
    plan: &Plan,
    cluster: &Cluster,
    cm: &CostModel,
    options: &PlanOptions,
) -> ServicePrediction {
    let target = &options.target;
    if plan
        .validate_structure(cluster, cm.num_layers() as u32)
        .is_err()
    {
        return ServicePrediction::nothing(target.request_rate, "plan does not tile the model");
    }
    let Some(sh) = shape(plan, cluster, cm, options) else {
        return ServicePrediction::nothing(target.request_rate, "plan names unknown nodes");
    };
    if sh.nodes.is_empty() {
        return ServicePrediction::nothing(target.request_rate, "empty plan");
    }
    // Highest sustainable rate, by bisection on the steady state's existence.
    let n = sh.nodes.len();
    let name = |k: usize| {
        if k < n {
            sh.nodes[k].id.clone()
        } else if k < 2 * n {
            format!("{}^up", sh.nodes[k - n].id)
        } else {
            sh.links.get(k - 2 * n).map_or_else(String::new, |l| {
                format!(
                    "link {}->{}",
                    cluster.nodes[l.from].id, cluster.nodes[l.to].id
                )
            })
        }
    };
    // Bracket from the target rate (doubling or halving), then bisect to 0.1%.
    let start = if target.request_rate > 0.0 {
        target.request_rate
    } else {
        1.0
    };
    let mut limit = String::new();
    let (mut lo, mut hi);
    if steady(&sh, cluster, cm, options, start, false).is_ok() {
        (lo, hi) = (start, 2.0 * start);
        for _ in 0..60 {
            if steady(&sh, cluster, cm, options, hi, false).is_err() {
                break;
            }
            lo = hi;
            hi *= 2.0;
        }
    } else {
        (lo, hi) = (0.0, start);
        let mut probe = start / 2.0;
        for _ in 0..60 {
            if steady(&sh, cluster, cm, options, probe, false).is_ok() {
                lo = probe;
                break;
            }
            hi = probe;
            probe /= 2.0;
        }
    }
    for _ in 0..40 {
        let mid = 0.5 * (lo + hi);
        match steady(&sh, cluster, cm, options, mid, false) {
            Ok(_) => lo = mid,
            Err(k) => {
                hi = mid;
                limit = name(k);
            }
        }
        if hi - lo < 1e-3 * hi {
            break;
        }
    }
    let max_rate = lo;
    if let Err(k) = steady(&sh, cluster, cm, options, hi, false) {
        limit = name(k);
    }
    let rate = if target.request_rate > 0.0 {
        target.request_rate
    } else {
        options.load_fraction * max_rate
    };
    if max_rate <= 0.0 {
        return ServicePrediction::nothing(rate, &limit);
    }
    let served = rate.min(max_rate * 0.999);
    let Ok(st) = steady(&sh, cluster, cm, options, served, true) else {
        return ServicePrediction::nothing(rate, &limit);
    };
    let w = &options.workload;
    let output = w.output_tokens as f64;
    let prompt = w.prompt_tokens as f64;
    let window = target.window_s;
    // Time to first token: the first chunk's pass plus the rest of the prompt
    // (proportional to its length), plus the wait at the busiest node.
    let first = st.ttft_s.min(st.ttft_s * 256.0 / prompt.max(256.0));
    let ttft_share = {
        let rho = st.rho_max.min(0.999);
        let service = st.busiest_prefill_s.max(1e-9);
        let wait = |slack: f64| -> f64 {
            if slack <= 0.0 {
                return 1.0;
            }
            let prefill = rho * (-(1.0 - rho) * slack / service).exp();
            let kv = st
                .kv_waits
                .iter()
                .map(|&(c, decay)| c * (-decay * slack).exp())
                .fold(0.0, f64::max);
            prefill.max(kv).min(1.0)
        };
        // Average over prompt lengths of P(wait <= slo - own prefill).
        let steps = 16;
        (0..steps)
            .map(|s| {
                let x = 1.0 - LENGTH_SPREAD + 2.0 * LENGTH_SPREAD * (s as f64 + 0.5) / steps as f64;
                let own = first + (st.ttft_s - first) * x;
                1.0 - wait(target.ttft_slo_s - own)
            })
            .sum::<f64>()
            / steps as f64
    };
    // Mean inter-token latency: batches differ little between requests; short
    // outputs see more of the prefill stalls, so the spread is by output length.
    let itl_share = spread_share(st.itl_s * 0.9, st.itl_s * 0.1, target.itl_slo_s);
    // Failures: restarts of the sequences a failed node held, and re-plans.
    let mut restarts_per_s = 0.0;
    for nd in &sh.nodes {
        restarts_per_s += nd.fail_rate * served * nd.share * (st.ttft_s + output * st.itl_s);
    }
    let replay_s = st.ttft_s * (prompt + output / 2.0) / prompt.max(1.0);
    let restart_misses = {
        let slack = target.itl_slo_s * output - st.itl_s * output;
        if slack <= 0.0 {
            1.0
        } else {
            (replay_s / slack).clamp(0.0, 1.0)
        }
    };
    let outage_s = sh.max_span_load_s + replay_s;
    let outage_loss_per_s = sh.stage_loss_rate
        * (st.in_flight + served * outage_s * (1.0 - (target.ttft_slo_s / outage_s).min(1.0)));
    // Capacity while a replica is down: its stage's other replicas take its
    // share, so the plan sustains about `max_rate · (1 − share)`; above that
    // a backlog grows for the repair time and drains after it, and requests
    // that arrive while it is past the TTFT bound miss it (single replicas
    // are the re-plan term above).
    let mut degraded_loss = 0.0;
    if target.failure_speedup > 0.0 {
        for nd in &sh.nodes {
            if nd.share >= 0.999 || nd.repair_s <= 0.0 {
                continue;
            }
            let mu = max_rate * (1.0 - nd.share);
            if served <= mu {
                continue;
            }
            // The wait rises at (served − μ)/μ seconds per second during the
            // repair and falls at (max − served)/max after it; arrivals miss
            // while it is above the TTFT bound.
            let rise = (served - mu) / mu.max(1e-9);
            let fall = ((max_rate - served) / max_rate).max(1e-3);
            let peak = rise * nd.repair_s;
            let missed_s = (peak - target.ttft_slo_s).max(0.0) * (1.0 / rise + 1.0 / fall);
            degraded_loss += nd.fail_rate * missed_s;
        }
    }
    let failure_loss = ((restarts_per_s * restart_misses + outage_loss_per_s) / served.max(1e-12)
        + degraded_loss)
        .clamp(0.0, 1.0);
    let mut slo_share = ttft_share * itl_share * (1.0 - failure_loss);
    let tail = st.ttft_s + output * st.itl_s;
    let goodput = if rate <= served * 1.0001 {
        rate * output * slo_share * window / (window + tail)
    } else {
        // Overloaded: the backlog grows at rate − served; a request arriving at
        // t waits t · (rate − served) / served.
        let growth = (rate - served) / served;
        let base = st.ttft_s;
        let t_ok = ((target.ttft_slo_s - base).max(0.0) / growth).min(window);
        let good = rate * t_ok * output * itl_share * (1.0 - failure_loss);
        let end = window * rate / served + tail;
        slo_share = t_ok / window * itl_share * (1.0 - failure_loss);
        good / end
    };
    ServicePrediction {
        request_rate: rate,
        goodput_tok_s: goodput,
        slo_share,
        ttft_s: st.ttft_s,
        itl_s: st.itl_s,
        max_rate,
        utilisation: st.rho_max,
        bottleneck: if limit.is_empty() {
            name(st.busiest)
        } else {
            limit
        },
        failure_loss,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::presets;
    use crate::strategy::{self, Context};

    fn helix() -> Cluster {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/data/scenarios/helix-24.toml");
        Cluster::from_path(path).unwrap()
    }

    fn options(rate: f64) -> PlanOptions {
        let mut o = PlanOptions::default();
        o.target.request_rate = rate;
        o
    }

    #[test]
    fn goodput_rises_with_load_until_the_plan_saturates_then_falls() {
        let c = helix();
        let m = presets::load_model("LLaMA-30B").unwrap();
        let o = options(1.0);
        let ctx = Context::new(&c, &m, &o);
        let plan = strategy::by_name("swarm").unwrap().plan(&ctx).unwrap();
        let at = |rate: f64| predict(&plan, &c, &ctx.cost, &options(rate));
        let low = at(0.5);
        assert!(low.max_rate > 1.0, "{low:?}");
        assert!(low.slo_share > 0.9, "{low:?}");
        let max = low.max_rate;
        let near = at(0.7 * max);
        assert!(near.goodput_tok_s > low.goodput_tok_s, "{near:?} {low:?}");
        assert!(near.itl_s >= low.itl_s && near.ttft_s >= low.ttft_s);
        let over = at(4.0 * max);
        assert!(over.goodput_tok_s < near.goodput_tok_s, "{over:?} {near:?}");
        assert!(over.slo_share < 0.5, "{over:?}");
    }

    #[test]
    fn failures_cost_single_replica_plans_more_than_replicated_ones() {
        let c = helix();
        let m = presets::load_model("LLaMA-30B").unwrap();
        let mut none = options(3.0);
        none.target.failure_speedup = 0.0;
        let ctx = Context::new(&c, &m, &none);
        let chain = strategy::by_name("chain-dp").unwrap().plan(&ctx).unwrap();
        let swarm = strategy::by_name("swarm").unwrap().plan(&ctx).unwrap();
        let loss = |plan: &Plan, o: &PlanOptions| predict(plan, &c, &ctx.cost, o).failure_loss;
        // No failures expected: nothing lost.
        assert_eq!(loss(&chain, &none), 0.0);
        assert_eq!(loss(&swarm, &none), 0.0);
        // Failures 5,000 times faster than the file's MTBF (the study's
        // compression): a chain of single replicas loses far more than
        // replicated stages, whose failures only restart what they held.
        let mut stormy = none.clone();
        stormy.target.failure_speedup = 5000.0;
        assert!(loss(&chain, &stormy) > 0.0);
        assert!(
            loss(&chain, &stormy) > 2.0 * loss(&swarm, &stormy),
            "chain {} swarm {}",
            loss(&chain, &stormy),
            loss(&swarm, &stormy)
        );
    }

    #[test]
    fn erlang_c_matches_known_values() {
        // One server: the chance to wait is the utilisation.
        assert!((erlang_c(1.0, 0.5) - 0.5).abs() < 1e-12);
        // Two servers, load 1: C = 1/3.
        assert!((erlang_c(2.0, 1.0) - 1.0 / 3.0).abs() < 1e-12);
        assert_eq!(erlang_c(4.0, 4.0), 1.0);
        assert_eq!(erlang_c(4.0, 0.0), 0.0);
        assert!(erlang_c(64.0, 40.0) < erlang_c(64.0, 60.0));
    }

    #[test]
    fn a_plan_naming_unknown_nodes_serves_nothing() {
        let c = helix();
        let m = presets::load_model("LLaMA-30B").unwrap();
        let o = options(1.0);
        let ctx = Context::new(&c, &m, &o);
        let mut plan = strategy::by_name("swarm").unwrap().plan(&ctx).unwrap();
        plan.stages[0].replicas[0].node = "nowhere".into();
        let p = predict(&plan, &c, &ctx.cost, &o);
        assert_eq!(p.goodput_tok_s, 0.0);
    }
}
