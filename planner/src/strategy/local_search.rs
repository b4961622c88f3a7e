//! Local search refinement of any stage plan (hill climbing with first
//! improvement, in the spirit of tabu/local-search operator placement, e.g.
//! Stanoi et al. and the heuristics surveyed by Cardellini et al., "Run-time
//! Adaptation of Data Stream Processing Systems", ACM CSUR 2022).
//!
//! Starts from `options.local_search_base` (default `chain-dp`) and tries, until no
//! move improves or `time_limit_s` runs out: moving a node to another stage, adding
//! an unused node to a stage, and shifting a stage boundary by one layer. The
//! objective is `options.objective` (throughput by max flow, latency, or
//! availability then throughput). Bases whose nodes span several stages are
//! refined on their stage boundaries only as given (nodes are kept in their first stage).

use std::ops::Range;
use std::time::Instant;

use super::{Context, Strategy};
use crate::error::PlanError;
use crate::evaluate::evaluate;
use crate::options::Objective;
use crate::plan::Plan;

/// Hill-climbing refinement.
pub struct LocalSearch;

type Layout = Vec<(Range<usize>, Vec<usize>)>;

fn layout_of(ctx: &Context, plan: &Plan) -> Layout {
    let mut seen = std::collections::HashSet::new();
    let mut out: Layout = Vec::new();
    // Merge multi-stage spans into the stage where each node starts, and keep plain stages.
    for st in &plan.stages {
        let nodes: Vec<usize> = st
            .replicas
            .iter()
            .filter_map(|r| ctx.cluster.index_of(&r.node))
            .filter(|i| seen.insert(*i))
            .collect();
        out.push((st.layers(), nodes));
    }
    out
}

fn feasible(ctx: &Context, l: &Layout) -> bool {
    l.iter().all(|(r, nodes)| {
        !nodes.is_empty()
            && nodes
                .iter()
                .all(|&i| ctx.cost.fits(&ctx.cluster.nodes[i].gpu, r))
    })
}

fn score(ctx: &Context, l: &Layout) -> Option<(f64, Plan)> {
    if !feasible(ctx, l) {
        return None;
    }
    let mut plan = Plan::from_stages("local-search", ctx.cluster, ctx.n(), &ctx.model.name, l);
    crate::flow::assign_routing(&mut plan, ctx.cluster, &ctx.cost);
    let s = match ctx.options.objective {
        Objective::Throughput => crate::flow::max_flow(&plan, ctx.cluster, &ctx.cost).throughput,
        Objective::Latency => -evaluate(&plan, ctx.cluster, ctx.model, ctx.options).itl_s,
        Objective::Availability => {
            let e = evaluate(&plan, ctx.cluster, ctx.model, ctx.options);
            e.availability * 1e6 + e.throughput_tok_s * 1e-3
        }
    };
    Some((s, plan))
}

impl Strategy for LocalSearch {
    fn name(&self) -> &'static str {
        "local-search"
    }
    fn citation(&self) -> &'static str {
        "hill climbing / tabu refinement of operator placement (Cardellini et al., ACM CSUR 2022 survey)"
    }
    fn plan(&self, ctx: &Context) -> Result<Plan, PlanError> {
        let base_name = ctx.options.local_search_base.as_str();
        if base_name == self.name() {
            return Err(PlanError::InvalidField {
                field: "options.local_search_base".into(),
                message: "local search cannot refine itself".into(),
            });
        }
        let base = super::by_name(base_name)?.plan(ctx)?;
        let mut cur = layout_of(ctx, &base);
        // Empty stages (all their nodes already placed earlier) are merged into the previous one.
        let mut merged: Layout = Vec::new();
        for (r, nodes) in cur.drain(..) {
            match merged.last_mut() {
                Some(last) if nodes.is_empty() => last.0.end = r.end,
                _ => merged.push((r, nodes)),
            }
        }
        cur = merged;
        let Some((best, _)) = score(ctx, &cur) else {
            return Err(PlanError::Infeasible {
                strategy: self.name().into(),
                reason: format!(
                    "base plan of `{base_name}` cannot be expressed as one stage per node"
                ),
            });
        };
        let start_score = best;
        let t0 = Instant::now();
        let deadline = ctx.options.time_limit_s.max(0.01);
        let end = super::moves::climb(
            cur,
            best,
            ctx.cluster.len(),
            super::moves::ClimbMoves {
                removals: false,
                sorted: false,
            },
            1e-9,
            || t0.elapsed().as_secs_f64() > deadline,
            |l| score(ctx, l).map(|(s, _)| (s, ())),
        );
        let (cur, best, moves, timed_out) = (end.layout, end.score, end.moves, end.stopped);
        let Some((_, mut plan)) = score(ctx, &cur) else {
            return Err(PlanError::Infeasible {
                strategy: self.name().into(),
                reason: "search left the feasible region".into(),
            });
        };
        plan.strategy = self.name().into();
        plan.notes.push(format!(
            "refined `{base_name}` on {:?}: {moves} moves, objective {start_score:.4} -> {best:.4}{}",
            ctx.options.objective,
            if timed_out { " (time limit reached)" } else { "" }
        ));
        ctx.finish(plan)
    }
}
