//! Max-flow placement (Helix: Mei et al., "Helix: Serving Large Language Models
//! over Heterogeneous GPUs and Network via Max-Flow", ASPLOS 2025).
//!
//! A MILP maximises decode throughput `T` of a flow through layer boundaries:
//! nodes are grouped by (GPU kind, region); for every group `g` and contiguous
//! layer range `r` on a grid of `m` blocks, an integer `x[g,r]` counts the group's
//! nodes holding `r` and a flow `y[g,r] ≤ cap_g(r) · x[g,r]` passes through them,
//! where `cap_g(r)` is the decode capacity of one node (memory-limited batch,
//! roofline, home uplink). Flow is conserved per region at every boundary, with
//! inter-region transfers bounded by link bandwidth / activation bytes, and
//! `Σ_r x[g,r] ≤ |g|`. Different pipelines may cut the model differently, as in
//! Helix. The grid is the finest one whose MILP has at most
//! `milp_max_integer_vars` integers; the solver stops at `time_limit_s` and the
//! plan's notes say whether optimality was proven or rounding was used.
//!
//! [`lp_upper_bound`] solves an LP relaxation at single-layer granularity over
//! compute and memory: an upper bound on the throughput of any plan.

use std::collections::BTreeMap;
use std::ops::Range;

use good_lp::{Expression, Variable, constraint, variable, variables};

use super::{Context, Strategy, even_ranges};
use crate::error::PlanError;
use crate::plan::Plan;

/// Helix-style max-flow MILP.
pub struct MaxFlowMilp;

/// Nodes of one GPU kind in one region.
#[derive(Debug, Clone)]
pub struct Group {
    /// Node indices.
    pub nodes: Vec<usize>,
    /// Region index.
    pub region: usize,
}

/// Groups nodes by (GPU kind, region).
pub fn groups(ctx: &Context) -> (Vec<Group>, Vec<String>) {
    let regions = ctx.cluster.regions();
    let mut map: BTreeMap<(usize, String), Vec<usize>> = BTreeMap::new();
    for (i, n) in ctx.cluster.nodes.iter().enumerate() {
        let r = regions.iter().position(|x| *x == n.region).unwrap_or(0);
        map.entry((r, n.gpu.name.clone())).or_default().push(i);
    }
    let groups = map
        .into_iter()
        .map(|((region, _), nodes)| Group { nodes, region })
        .collect();
    (groups, regions)
}

/// Capacity of one node of `g` on layers `r` (0 when it does not fit), given each
/// node's best outgoing link bandwidth in bytes/s.
fn node_cap(ctx: &Context, g: &Group, r: &Range<usize>, egress_bps: &[f64]) -> f64 {
    // Take the weakest member so every member can deliver it.
    g.nodes
        .iter()
        .map(|&i| {
            let node = &ctx.cluster.nodes[i];
            let mut c = ctx.cost.decode_capacity(&node.gpu, r);
            if r.end < ctx.n() {
                let act = ctx.cost.activation_bytes(r.end);
                let up = node.uplink_bps.unwrap_or(f64::INFINITY).min(egress_bps[i]);
                if act > 0.0 {
                    c = c.min(up / act);
                }
            }
            if r.start > 0
                && let Some(down) = node.downlink_bps
            {
                c = c.min(down / ctx.cost.activation_bytes(r.start));
            }
            c
        })
        .fold(f64::INFINITY, f64::min)
}

/// Each node's best outgoing link bandwidth (infinite for a lone node).
fn egress(ctx: &Context) -> Vec<f64> {
    let n = ctx.cluster.len();
    (0..n)
        .map(|i| {
            (0..n)
                .filter(|&j| j != i)
                .map(|j| ctx.cluster.link(i, j).bandwidth_bps)
                .fold(f64::NEG_INFINITY, f64::max)
        })
        .map(|b| if b.is_finite() { b } else { f64::INFINITY })
        .collect()
}

struct Model {
    cuts: Vec<usize>,
    ranges: Vec<(usize, usize, usize, f64)>, // (group, block a, block b, cap)
}

fn build_model(
    ctx: &Context,
    gs: &[Group],
    m: usize,
    extra_cuts: &[usize],
    egress_bps: &[f64],
) -> Model {
    let blocks = even_ranges(ctx.n(), m);
    let mut cuts: Vec<usize> = blocks.iter().map(|b| b.start).collect();
    cuts.push(ctx.n());
    cuts.extend(extra_cuts.iter().copied().filter(|&c| c <= ctx.n()));
    cuts.sort_unstable();
    cuts.dedup();
    let nb = cuts.len() - 1;
    let mut ranges = Vec::new();
    for (gi, g) in gs.iter().enumerate() {
        for a in 0..nb {
            for b in (a + 1)..=nb {
                let cap = node_cap(ctx, g, &(cuts[a]..cuts[b]), egress_bps);
                if cap <= 0.0 {
                    break; // longer ranges from a fit even less
                }
                ranges.push((gi, a, b, cap));
            }
        }
    }
    Model { cuts, ranges }
}

/// Inter-region transfer capacity (tokens/s) from region `a` to `b` at boundary `end`.
fn region_cap(ctx: &Context, gs: &[Group], a: usize, b: usize, end: usize) -> f64 {
    let Some(dst) = gs
        .iter()
        .find(|g| g.region == b)
        .and_then(|g| g.nodes.first())
    else {
        return 0.0;
    };
    gs.iter()
        .filter(|g| g.region == a)
        .flat_map(|g| g.nodes.iter())
        .map(|&i| ctx.cost.link_capacity(&ctx.cluster.link(i, *dst), end))
        .sum()
}

/// Solution: throughput, x per range, whether proven optimal.
struct Solved {
    t: f64,
    x: Vec<f64>,
    optimal: bool,
}

fn solve(
    ctx: &Context,
    gs: &[Group],
    model: &Model,
    integer: bool,
    nregions: usize,
    hint: Option<&[f64]>,
) -> Result<Solved, String> {
    let m = model.cuts.len() - 1;
    let mut vars = variables!();
    let t = vars.add(variable().min(0.0));
    let mut xs: Vec<Variable> = Vec::new();
    let mut ys: Vec<Variable> = Vec::new();
    let mut cons = Vec::new();
    // In the relaxation x = y / cap is eliminated: Σ_r y[g,r] / cap_g(r) ≤ |g|.
    for &(gi, _, _, _) in &model.ranges {
        let ub = gs[gi].nodes.len() as f64;
        if integer {
            xs.push(vars.add(variable().integer().min(0.0).max(ub)));
        }
        ys.push(vars.add(variable().min(0.0)));
    }
    if integer {
        for (k, &(_, _, _, cap)) in model.ranges.iter().enumerate() {
            cons.push(constraint!(ys[k] <= cap * xs[k]));
        }
    }
    for (gi, g) in gs.iter().enumerate() {
        let sum: Expression = model
            .ranges
            .iter()
            .enumerate()
            .filter(|(_, r)| r.0 == gi)
            .map(|(k, r)| {
                if integer {
                    Expression::from(xs[k])
                } else {
                    ys[k] * (1.0 / r.3)
                }
            })
            .sum();
        cons.push(constraint!(sum <= g.nodes.len() as f64));
    }
    // Inter-region transfers z[p][a][b].
    let mut z: BTreeMap<(usize, usize, usize), Variable> = BTreeMap::new();
    if nregions > 1 {
        for p in 1..m {
            for a in 0..nregions {
                for b in 0..nregions {
                    if a != b {
                        let cap = region_cap(ctx, gs, a, b, model.cuts[p]);
                        z.insert((p, a, b), vars.add(variable().min(0.0).max(cap.min(1e9))));
                    }
                }
            }
        }
    }
    let start: Expression = model
        .ranges
        .iter()
        .enumerate()
        .filter(|(_, r)| r.1 == 0)
        .map(|(k, _)| ys[k])
        .sum();
    cons.push(constraint!(start == t));
    let end: Expression = model
        .ranges
        .iter()
        .enumerate()
        .filter(|(_, r)| r.2 == m)
        .map(|(k, _)| ys[k])
        .sum();
    cons.push(constraint!(end == t));
    for p in 1..m {
        for reg in 0..nregions {
            let mut inflow = Expression::from(0.0);
            let mut outflow = Expression::from(0.0);
            for (k, r) in model.ranges.iter().enumerate() {
                if gs[r.0].region != reg {
                    continue;
                }
                if r.2 == p {
                    inflow += ys[k];
                }
                if r.1 == p {
                    outflow += ys[k];
                }
            }
            for ((pp, a, b), v) in &z {
                if *pp == p && *b == reg {
                    inflow += *v;
                }
                if *pp == p && *a == reg {
                    outflow += *v;
                }
            }
            cons.push(constraint!(inflow == outflow));
        }
    }
    // Prefer fewer transfers and fewer idle nodes, without trading throughput.
    let mut objective = Expression::from(t);
    for v in z.values() {
        objective -= 1e-6 * *v;
    }
    for x in &xs {
        objective -= 1e-4 * *x;
    }
    let limit = if integer {
        ctx.options.milp_time_limit_s
    } else {
        ctx.options.time_limit_s.max(5.0)
    };
    let mut wanted = vec![t];
    wanted.extend(xs.iter().copied());
    wanted.extend(ys.iter().copied());
    let initial = match hint {
        Some(h) if integer => warm_start(model, h, t, &xs, &ys),
        Some(_) => Vec::new(),
        None => Vec::new(),
    };
    let out = crate::lp::maximise(vars, objective, cons, &wanted, limit, initial)?;
    let x = if integer {
        out.values[1..1 + xs.len()].to_vec()
    } else {
        let y = &out.values[1..];
        model.ranges.iter().zip(y).map(|(r, y)| y / r.3).collect()
    };
    Ok(Solved {
        t: out.values[0],
        x,
        optimal: out.optimal,
    })
}

/// Upper bound on the decode throughput of *any* plan (any spans, entered and
/// left anywhere, any routing), from an LP relaxation at single-layer granularity
/// over compute and memory only (links can only lower throughput further).
///
/// Nodes are grouped by GPU kind. A node holding span `s` offers `cap(s)·|s|`
/// layer-tokens per second; serving `y` tokens/s on a sub-range `r ⊆ s` uses
/// `y·|r|` of it. With `M_g(r)` the best `cap(s)·|s|` over spans `s ⊇ r` that fit a
/// node of group `g`, the LP maximises the flow `T` from layer 0 to layer n through
/// ranges `r` with `Σ_r y[g,r]·|r| / M_g(r) ≤ |g|` for each group.
#[allow(clippy::needless_range_loop)] // (a, b) tables
pub fn lp_upper_bound(ctx: &Context) -> Result<f64, PlanError> {
    let n = ctx.n();
    let mut kinds: Vec<(usize, usize)> = Vec::new(); // (representative node, count)
    for (i, node) in ctx.cluster.nodes.iter().enumerate() {
        match kinds
            .iter_mut()
            .find(|k| ctx.cluster.nodes[k.0].gpu == node.gpu)
        {
            Some(k) => k.1 += 1,
            None => kinds.push((i, 1)),
        }
    }
    let mut vars = variables!();
    let t = vars.add(variable().min(0.0));
    let mut at_start: Vec<Expression> = vec![Expression::from(0.0); n + 1];
    let mut at_end: Vec<Expression> = vec![Expression::from(0.0); n + 1];
    let mut cons = Vec::new();
    for &(rep, count) in &kinds {
        let gpu = &ctx.cluster.nodes[rep].gpu;
        // best[a][b] = max layer-token rate of a fitting span containing a..b.
        let mut best = vec![vec![0.0f64; n + 1]; n + 1];
        for a in 0..n {
            for b in (a + 1)..=n {
                let c = ctx.cost.decode_capacity(gpu, &(a..b));
                if c <= 0.0 {
                    break;
                }
                best[a][b] = c * (b - a) as f64;
            }
        }
        for a in 0..n {
            for b in (a + 1..=n).rev() {
                let mut v = best[a][b];
                if a > 0 {
                    v = v.max(best[a - 1][b]);
                }
                if b < n {
                    v = v.max(best[a][b + 1]);
                }
                best[a][b] = v;
            }
        }
        let mut budget = Expression::from(0.0);
        for a in 0..n {
            for b in (a + 1)..=n {
                let m = best[a][b];
                if m <= 0.0 {
                    break;
                }
                let y = vars.add(variable().min(0.0));
                budget += y * ((b - a) as f64 / m);
                at_start[a] += y;
                at_end[b] += y;
            }
        }
        cons.push(constraint!(budget <= count as f64));
    }
    for p in 1..n {
        cons.push(constraint!(at_end[p].clone() == at_start[p].clone()));
    }
    cons.push(constraint!(at_start[0].clone() == t));
    cons.push(constraint!(at_end[n].clone() == t));
    let limit = ctx.options.time_limit_s.max(10.0);
    crate::lp::maximise(vars, Expression::from(t), cons, &[t], limit, Vec::new())
        .map(|o| o.values[0])
        .map_err(|message| PlanError::Solver {
            strategy: "lp-bound".into(),
            message,
        })
}

impl Strategy for MaxFlowMilp {
    fn name(&self) -> &'static str {
        "max-flow"
    }
    fn citation(&self) -> &'static str {
        "Mei et al., Helix: Serving LLMs over Heterogeneous GPUs and Network via Max-Flow, ASPLOS 2025"
    }
    fn plan(&self, ctx: &Context) -> Result<Plan, PlanError> {
        ctx.check_total_memory()?;
        let (gs, regions) = groups(ctx);
        let n = ctx.n();
        let limit = ctx.options.milp_max_integer_vars.max(1);
        // Heuristic incumbent: the chain DP plan; its cuts join the grid and warm-start the MILP.
        let incumbent = super::chain_dp::ChainDp.plan(ctx).ok();
        let inc_cuts: Vec<usize> = incumbent
            .as_ref()
            .map(|p| p.stages.iter().map(|s| s.end as usize).collect())
            .unwrap_or_default();
        // Finest grid whose integer count is within the limit: first with the
        // incumbent's cuts, then without them.
        let egress_bps = egress(ctx);
        let mut chosen = None;
        for cuts in [&inc_cuts[..], &[][..]] {
            for m in (1..=n.min(24)).rev() {
                let model = build_model(ctx, &gs, m, cuts, &egress_bps);
                if !model.ranges.is_empty() && model.ranges.len() <= limit {
                    chosen = Some(model);
                    break;
                }
            }
            if chosen.is_some() {
                break;
            }
        }
        let Some(model) = chosen else {
            let Some(mut inc) = incumbent else {
                return Err(PlanError::Infeasible {
                    strategy: self.name().into(),
                    reason:
                        "no grid gives a MILP within the integer limit and chain-dp found no plan"
                            .into(),
                });
            };
            inc.notes.insert(
                0,
                format!("MILP skipped: no grid within {limit} integer variables; fell back to heuristics"),
            );
            return keep_best(ctx, self.name(), inc, None);
        };
        let hint = incumbent
            .as_ref()
            .and_then(|p| hint_from_plan(ctx, &gs, &model, p));
        let m = model.cuts.len() - 1;
        let mut notes = vec![format!(
            "{} groups, grid of {m} blocks, {} integer variables",
            gs.len(),
            model.ranges.len()
        )];
        let t0 = std::time::Instant::now();
        let solved = solve(ctx, &gs, &model, true, regions.len(), hint.as_deref());
        let x: Vec<usize> = match solved {
            Ok(s) if s.t > 0.0 => {
                notes.push(format!(
                    "MILP {} in {:.2} s, objective {:.1} tok/s",
                    if s.optimal {
                        "optimal"
                    } else {
                        "stopped at the time limit (best found)"
                    },
                    t0.elapsed().as_secs_f64(),
                    s.t
                ));
                s.x.iter().map(|v| v.round().max(0.0) as usize).collect()
            }
            other => {
                // Fallback: LP relaxation rounded down, then fill with leftover nodes.
                let why = match other {
                    Err(e) => e,
                    Ok(_) => "no positive solution".into(),
                };
                notes.push(format!("MILP failed ({why}); used LP rounding heuristic"));
                let lp =
                    solve(ctx, &gs, &model, false, regions.len(), None).map_err(|message| {
                        PlanError::Solver {
                            strategy: self.name().into(),
                            message,
                        }
                    })?;
                round_lp(&gs, &model, &lp.x)
            }
        };
        let mut spans = Vec::new();
        let mut next_free: Vec<usize> = vec![0; gs.len()];
        for (k, &(gi, a, b, _)) in model.ranges.iter().enumerate() {
            for _ in 0..x[k] {
                if next_free[gi] < gs[gi].nodes.len() {
                    spans.push((gs[gi].nodes[next_free[gi]], model.cuts[a]..model.cuts[b]));
                    next_free[gi] += 1;
                }
            }
        }
        if spans.is_empty() {
            return Err(PlanError::Infeasible {
                strategy: self.name().into(),
                reason: "no node group can hold any layer range".into(),
            });
        }
        let mut plan = Plan::from_spans(self.name(), ctx.cluster, n, &ctx.model.name, &spans);
        plan.notes = notes;
        let plan = ctx.finish(plan)?;
        keep_best(ctx, self.name(), plan, incumbent)
    }
}

/// Floors the LP's x and gives leftover nodes to the ranges with the largest remainders.
fn round_lp(gs: &[Group], model: &Model, x: &[f64]) -> Vec<usize> {
    let mut out: Vec<usize> = x.iter().map(|v| v.max(0.0).floor() as usize).collect();
    let mut used = vec![0usize; gs.len()];
    for (k, r) in model.ranges.iter().enumerate() {
        used[r.0] += out[k];
    }
    let mut rem: Vec<(f64, usize)> = x
        .iter()
        .enumerate()
        .map(|(k, v)| (v - v.floor(), k))
        .collect();
    rem.sort_by(|a, b| b.0.total_cmp(&a.0));
    for (frac, k) in rem {
        let g = model.ranges[k].0;
        if frac > 1e-6 && used[g] < gs[g].nodes.len() {
            out[k] += 1;
            used[g] += 1;
        }
    }
    out
}

/// Values of x (per model range) for a plan whose stages lie on the grid.
fn hint_from_plan(ctx: &Context, gs: &[Group], model: &Model, plan: &Plan) -> Option<Vec<f64>> {
    let mut x = vec![0.0; model.ranges.len()];
    for st in &plan.stages {
        let a = model.cuts.iter().position(|&c| c == st.start as usize)?;
        let b = model.cuts.iter().position(|&c| c == st.end as usize)?;
        for r in &st.replicas {
            let i = ctx.cluster.index_of(&r.node)?;
            let gi = gs.iter().position(|g| g.nodes.contains(&i))?;
            let k = model
                .ranges
                .iter()
                .position(|q| q.0 == gi && q.1 == a && q.2 == b)?;
            x[k] += 1.0;
        }
    }
    Some(x)
}

/// A feasible starting point (t, x, y) from per-range node counts of a single
/// partition: every stage carries the bottleneck flow, split by capacity.
fn warm_start(
    model: &Model,
    x: &[f64],
    t: Variable,
    xs: &[Variable],
    ys: &[Variable],
) -> Vec<(Variable, f64)> {
    let mut per_stage: BTreeMap<(usize, usize), f64> = BTreeMap::new();
    for (k, r) in model.ranges.iter().enumerate() {
        if x[k] > 0.0 {
            *per_stage.entry((r.1, r.2)).or_default() += x[k] * r.3;
        }
    }
    let tv = per_stage.values().copied().fold(f64::INFINITY, f64::min);
    if !tv.is_finite() {
        return Vec::new();
    }
    let mut out = vec![(t, tv)];
    for (k, r) in model.ranges.iter().enumerate() {
        let y = if x[k] > 0.0 {
            tv * x[k] * r.3 / per_stage[&(r.1, r.2)]
        } else {
            0.0
        };
        out.push((xs[k], x[k]));
        out.push((ys[k], y));
    }
    out
}

/// Returns the best of the MILP plan, the chain-dp incumbent and Petals' greedy
/// placement (Helix starts from heuristic placements too), by max-flow
/// throughput; the notes say which was kept.
fn keep_best(
    ctx: &Context,
    name: &str,
    plan: Plan,
    incumbent: Option<Plan>,
) -> Result<Plan, PlanError> {
    let flow = |p: &Plan| crate::flow::max_flow(p, ctx.cluster, &ctx.cost).throughput;
    let ours = flow(&plan);
    let mut best = (ours, plan.strategy.clone(), plan.clone());
    let petals = super::petals::PetalsGreedy.plan(ctx).ok();
    for cand in [incumbent, petals].into_iter().flatten() {
        let t = flow(&cand);
        if t > best.0 * (1.0 + 1e-6) {
            best = (t, cand.strategy.clone(), cand);
        }
    }
    let (t, from, mut out) = best;
    if out != plan {
        out.notes = plan.notes.clone();
        out.notes.push(format!(
            "kept the {from} heuristic plan: {t:.1} tok/s vs MILP plan {ours:.1} tok/s"
        ));
    }
    out.strategy = name.into();
    Ok(out)
}
