//! Placement for goodput under churn: the plan whose predicted goodput
//! (tokens per second of requests within the SLO, at the demand and failure
//! rates of [`crate::options::ServiceTarget`]) is highest.
//!
//! The objective is [`crate::service_model::predict`], which counts what a
//! throughput bound does not: KV held on every stage of a path (Little's law
//! over each sequence's life, so deep pipelines fill every stage), prefill
//! compute and prompt activations on each hop and link, queueing for the
//! busiest node, restarts and re-plans from failures, and replication for
//! availability. It follows the goodput view of DistServe (Zhong et al.,
//! OSDI 2024: maximise the rate served within TTFT and TPOT bounds) on the
//! geo-distributed placement problem of Helix (Mei et al., ASPLOS 2025) and
//! Petals (Borzunov et al., NeurIPS 2023), with the availability term of
//! Cardellini et al. (SIGMETRICS PER 2017).
//!
//! Search: candidates are the plans of the other strategies (each with its
//! own objective: max-flow's bound, SWARM's balance, availability, ...), a
//! family of replicated layouts (for each stage count, nodes assigned fastest
//! first to the stage of least capacity; and the same over only the most
//! available nodes), then hill climbing on the model from the best few
//! (move a node, drop a node, shift a boundary). When a [`PlanCheck`] is given
//! (the simulator gives one: a short run on its own requests and failures),
//! the `options.check_candidates` best by the model and each other strategy's
//! plan predicted at a quarter of the best or more are checked, and the best
//! checked plan wins; the plan's notes give every figure. Without a demand
//! (`target.request_rate` 0) every candidate is judged at `load_fraction` of
//! the highest sustainable rate among them.

use std::ops::Range;
use std::time::Instant;

use super::{Context, Layout, Strategy, even_ranges};
use crate::error::PlanError;
use crate::options::PlanOptions;
use crate::plan::Plan;
use crate::service_model::{ServicePrediction, predict};

/// Strategies whose plans seed the search (cheap ones first).
const SEEDS: [&str; 8] = [
    "availability",
    "swarm",
    "chain-dp",
    "even",
    "petals",
    "parallax",
    "memory-proportional",
    "max-flow",
];

/// Above this many nodes the seeds with solvers or quadratic steps are skipped.
const LARGE_CLUSTER: usize = 256;

/// Model evaluations per hill climb on 64 nodes: a count, not a clock, so that
/// plans are the same on any machine; an evaluation costs about linearly in
/// the nodes, so larger clusters get proportionally fewer (at least
/// [`MIN_CLIMB_EVALUATIONS`]). The clock (5 × `time_limit_s`) only guards.
const CLIMB_EVALUATIONS: usize = 400;

/// Fewest evaluations a climb gets, however large the cluster.
const MIN_CLIMB_EVALUATIONS: usize = 16;

fn climb_budget(nodes: usize) -> usize {
    (CLIMB_EVALUATIONS * 64 / nodes.max(1)).clamp(MIN_CLIMB_EVALUATIONS, CLIMB_EVALUATIONS)
}

/// Goodput-maximising placement.
pub struct GoodputSearch;

/// A second opinion on a plan's goodput, tokens/s (the simulator's short run).
pub trait PlanCheck: Send + Sync {
    /// The checked goodput of `plan`, or `None` when it cannot be checked.
    fn goodput(&self, plan: &Plan) -> Option<f64>;
}

struct Candidate {
    origin: String,
    plan: Plan,
    predicted: ServicePrediction,
}

fn layout_of(ctx: &Context, plan: &Plan) -> Option<Layout> {
    // One stage per node only; plans with spans are kept as they are.
    let mut seen = std::collections::HashSet::new();
    let mut out: Layout = Vec::new();
    for st in &plan.stages {
        let mut nodes = Vec::new();
        for r in &st.replicas {
            let i = ctx.cluster.index_of(&r.node)?;
            if !seen.insert(i) {
                return None;
            }
            nodes.push(i);
        }
        out.push((st.layers(), nodes));
    }
    Some(out)
}

fn feasible(ctx: &Context, l: &Layout) -> bool {
    l.iter().all(|(r, nodes)| {
        !r.is_empty()
            && !nodes.is_empty()
            && nodes
                .iter()
                .all(|&i| ctx.cost.fits(&ctx.cluster.nodes[i].gpu, r))
    })
}

fn build(ctx: &Context, l: &Layout) -> Option<Plan> {
    if !feasible(ctx, l) {
        return None;
    }
    let mut plan = Plan::from_stages("goodput", ctx.cluster, ctx.n(), &ctx.model.name, l);
    crate::flow::assign_routing(&mut plan, ctx.cluster, &ctx.cost);
    Some(plan)
}

fn score(ctx: &Context, opts: &PlanOptions, plan: &Plan) -> ServicePrediction {
    predict(plan, ctx.cluster, &ctx.cost, opts)
}

/// For `stages` even stages over `nodes`, each node (fastest first) joins the
/// stage of least summed decode capacity that it can hold.
fn balanced(ctx: &Context, stages: usize, nodes: &[usize]) -> Option<Layout> {
    let ranges = even_ranges(ctx.n(), stages);
    if ranges.len() != stages {
        return None;
    }
    let cap = |i: usize, r: &Range<usize>| ctx.cost.decode_capacity(&ctx.cluster.nodes[i].gpu, r);
    let mut order: Vec<(f64, usize)> = nodes.iter().map(|&i| (cap(i, &ranges[0]), i)).collect();
    order.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    let mut layout: Layout = ranges.iter().map(|r| (r.clone(), Vec::new())).collect();
    let mut through = vec![0.0f64; stages];
    // Scarcest stages first: each stage gets one node before any gets two.
    for &(_, i) in &order {
        let gpu = &ctx.cluster.nodes[i].gpu;
        let target = (0..stages)
            .filter(|&s| ctx.cost.fits(gpu, &ranges[s]))
            .min_by(|&a, &b| {
                through[a]
                    .total_cmp(&through[b])
                    .then(layout[a].1.len().cmp(&layout[b].1.len()))
                    .then(a.cmp(&b))
            });
        if let Some(s) = target {
            through[s] += cap(i, &ranges[s]);
            layout[s].1.push(i);
        }
    }
    layout.iter().all(|(_, n)| !n.is_empty()).then_some(layout)
}

impl GoodputSearch {
    fn seeds(&self, ctx: &Context, opts: &PlanOptions, out: &mut Vec<Candidate>) {
        let large = ctx.cluster.len() > LARGE_CLUSTER;
        for name in SEEDS {
            if large && matches!(name, "max-flow" | "petals" | "memory-proportional") {
                continue;
            }
            let Ok(s) = super::by_name(name) else {
                continue;
            };
            if let Ok(plan) = s.plan(ctx) {
                let predicted = score(ctx, opts, &plan);
                out.push(Candidate {
                    origin: name.to_string(),
                    plan,
                    predicted,
                });
            }
        }
        // Replicated layouts for each stage count, over all nodes and over the
        // most available ones.
        let all: Vec<usize> = (0..ctx.cluster.len()).collect();
        let mut by_avail = all.clone();
        by_avail.sort_by(|&a, &b| {
            let (x, y) = (
                ctx.cluster.nodes[a].availability.steady_state(),
                ctx.cluster.nodes[b].availability.steady_state(),
            );
            y.total_cmp(&x).then(a.cmp(&b))
        });
        let max_stages = ctx.n().min(ctx.cluster.len()).min(24);
        for stages in 1..=max_stages {
            let mut pools: Vec<(String, Vec<usize>)> =
                vec![(format!("balanced-{stages}"), all.clone())];
            if ctx.options.target.failure_speedup > 0.0 {
                for keep in [0.5, 0.75] {
                    let k = ((ctx.cluster.len() as f64 * keep).ceil() as usize).max(stages);
                    let mut pool = by_avail[..k.min(by_avail.len())].to_vec();
                    pool.sort_unstable();
                    pools.push((
                        format!("balanced-{stages}-reliable-{:.0}%", keep * 100.0),
                        pool,
                    ));
                }
            }
            for (origin, pool) in pools {
                if let Some(l) = balanced(ctx, stages, &pool)
                    && let Some(plan) = build(ctx, &l)
                {
                    let predicted = score(ctx, opts, &plan);
                    out.push(Candidate {
                        origin,
                        plan,
                        predicted,
                    });
                }
            }
        }
    }

    /// Hill climbing on the model from `start`, until no move improves or the deadline.
    fn climb(
        &self,
        ctx: &Context,
        opts: &PlanOptions,
        start: &Candidate,
        deadline: Instant,
    ) -> Option<Candidate> {
        let cur = layout_of(ctx, &start.plan)?;
        let nodes = ctx.cluster.len();
        let mut evaluations = 0;
        let end = super::moves::climb(
            cur,
            start.predicted.goodput_tok_s,
            nodes,
            super::moves::ClimbMoves {
                removals: true,
                sorted: true,
            },
            1e-6,
            || {
                evaluations += 1;
                Instant::now() > deadline || evaluations > climb_budget(nodes)
            },
            |l| {
                let plan = build(ctx, l)?;
                let p = score(ctx, opts, &plan);
                Some((p.goodput_tok_s, (p, plan)))
            },
        );
        let moves = end.moves;
        let (predicted, plan) = end.best?;
        Some(Candidate {
            origin: format!("{} + {moves} moves", start.origin),
            plan,
            predicted,
        })
    }
}

impl Strategy for GoodputSearch {
    fn name(&self) -> &'static str {
        "goodput"
    }
    fn uses_check(&self) -> bool {
        true
    }
    fn citation(&self) -> &'static str {
        "goodput within SLO (DistServe, OSDI 2024) under churn, on Helix/Petals-style heterogeneous placement; own analytic model"
    }
    fn plan(&self, ctx: &Context) -> Result<Plan, PlanError> {
        ctx.check_total_memory()?;
        let t0 = Instant::now();
        let mut cands: Vec<Candidate> = Vec::new();
        let mut opts = ctx.options.clone();
        self.seeds(ctx, &opts, &mut cands);
        if cands.is_empty() {
            return Err(PlanError::Infeasible {
                strategy: self.name().into(),
                reason: "no candidate plan: no strategy and no replicated layout fits".into(),
            });
        }
        // No demand given: every candidate is judged at one rate, the
        // `load_fraction` of the highest sustainable rate among them (each at
        // half its own would rank by throughput alone).
        if opts.target.request_rate <= 0.0 {
            let top = cands
                .iter()
                .map(|c| c.predicted.max_rate)
                .fold(0.0, f64::max);
            opts.target.request_rate = (ctx.options.load_fraction * top).max(1e-9);
            for c in &mut cands {
                c.predicted = score(ctx, &opts, &c.plan);
            }
        }
        let by_model = |a: &Candidate, b: &Candidate| {
            b.predicted
                .goodput_tok_s
                .total_cmp(&a.predicted.goodput_tok_s)
                .then(b.predicted.max_rate.total_cmp(&a.predicted.max_rate))
        };
        let distinct = |mut v: Vec<Candidate>| {
            v.sort_by(by_model);
            let mut out: Vec<Candidate> = Vec::new();
            for c in v {
                if !out.iter().any(|d| d.plan.stages == c.plan.stages) {
                    out.push(c);
                }
            }
            out
        };
        // Several seeds often give the same layout: climb from distinct ones.
        let mut cands = distinct(cands);
        // The evaluation count bounds the climbs; the clock (five times the
        // time limit) only guards huge clusters, and the notes say when it struck.
        let deadline =
            t0 + std::time::Duration::from_secs_f64(5.0 * ctx.options.time_limit_s.max(0.05));
        let mut climbed = Vec::new();
        for start in cands.iter().take(3) {
            if let Some(c) = self.climb(ctx, &opts, start, deadline) {
                climbed.push(c);
            }
        }
        let timed_out = Instant::now() > deadline;
        cands.extend(climbed);
        let mut distinct = distinct(cands);
        let mut notes = Vec::new();
        let chosen = match ctx.check {
            Some(check) if ctx.options.check_candidates > 0 => {
                // The best by the model, and each other strategy's own plan
                // (their objectives see what the model may miss).
                let mut checked: Vec<usize> =
                    (0..distinct.len().min(ctx.options.check_candidates)).collect();
                let top = distinct.first().map_or(0.0, |c| c.predicted.goodput_tok_s);
                for (k, c) in distinct.iter().enumerate() {
                    if SEEDS.contains(&c.origin.as_str())
                        && c.predicted.goodput_tok_s >= 0.25 * top
                        && !checked.contains(&k)
                    {
                        checked.push(k);
                    }
                }
                let mut best: Option<(f64, usize)> = None;
                for k in checked {
                    let c = &distinct[k];
                    let got = check.goodput(&c.plan);
                    notes.push(format!(
                        "candidate `{}`: model {:.1} tok/s, check {}",
                        c.origin,
                        c.predicted.goodput_tok_s,
                        got.map_or("-".to_string(), |g| format!("{g:.1} tok/s"))
                    ));
                    if let Some(g) = got
                        && best.is_none_or(|(b, _)| g > b)
                    {
                        best = Some((g, k));
                    }
                }
                best.map_or(0, |(_, k)| k)
            }
            _ => 0,
        };
        let c = distinct.swap_remove(chosen);
        let mut plan = c.plan;
        plan.strategy = self.name().into();
        plan.notes.clear();
        let p = &c.predicted;
        plan.notes.push(format!(
            "from `{}`; predicted goodput {:.1} tok/s at {:.3} req/s ({:.0}% within the SLO, TTFT {:.2} s, ITL {:.3} s, sustainable {:.3} req/s, bottleneck {}, {:.1}% lost to failures); {} candidates",
            c.origin,
            p.goodput_tok_s,
            p.request_rate,
            p.slo_share * 100.0,
            p.ttft_s,
            p.itl_s,
            p.max_rate,
            p.bottleneck,
            p.failure_loss * 100.0,
            distinct.len() + 1,
        ));
        if timed_out {
            plan.notes.push(format!(
                "hill climbing stopped at {:.1} s (5 x time_limit_s): the plan may differ on a faster machine",
                5.0 * ctx.options.time_limit_s
            ));
        }
        plan.notes.extend(notes);
        // Each candidate's routing is its own (Parallax's fixed pipelines,
        // max-flow weights for the rest), so it is kept as it is.
        plan.validate_with(ctx.cluster, ctx.model, ctx.options)?;
        Ok(plan)
    }
}
