//! Load-aware scaling of a plan by whole replicas (`--replan elastic`): as
//! demand rises, replicas are added to the stage that limits the plan; as it
//! falls, the replica whose loss costs least is released. Stage boundaries
//! never move, so only the nodes added (which load their layers) and the
//! nodes released (whose sequences restart elsewhere) are touched, in the
//! spirit of SpotServe's and Helix's incremental re-planning rather than a
//! fresh plan per change.
//!
//! The measure is the planner's service model
//! ([`tokenflow_planner::service_model`]): the plan must sustain
//! [`ELASTIC_HEADROOM`] times the measured arrival rate, and a replica is
//! released only if the plan still sustains [`ELASTIC_RELEASE`] times that
//! without it.

use tokenflow_planner::cluster::Cluster;
use tokenflow_planner::cost::CostModel;
use tokenflow_planner::options::PlanOptions;
use tokenflow_planner::plan::Plan;
use tokenflow_planner::service_model::predict;

use crate::spec::{ELASTIC_HEADROOM, ELASTIC_RELEASE};

/// Stages as (layer range, node indices).
type Layout = Vec<(std::ops::Range<usize>, Vec<usize>)>;

/// Most replicas added or released in one decision.
const MAX_STEPS: usize = 64;

/// Most replicas tried for release in one step (the slowest of each stage
/// first): each try is a routing and a model evaluation.
const RELEASE_TRIES: usize = 32;

fn layout_of(plan: &Plan, cluster: &Cluster) -> Option<Layout> {
    let mut seen = std::collections::HashSet::new();
    let mut out = Layout::new();
    for st in &plan.stages {
        let mut nodes = Vec::new();
        for r in &st.replicas {
            let i = cluster.index_of(&r.node)?;
            // A node spanning several stages cannot be scaled stage by stage.
            if !seen.insert(i) {
                return None;
            }
            nodes.push(i);
        }
        out.push((st.layers(), nodes));
    }
    Some(out)
}

fn build(layout: &Layout, cluster: &Cluster, cm: &CostModel, name: &str, model: &str) -> Plan {
    let n = layout.last().map_or(0, |l| l.0.end);
    let mut plan = Plan::from_stages(name, cluster, n, model, layout);
    tokenflow_planner::flow::assign_routing(&mut plan, cluster, cm);
    plan
}

/// The plan resized for `rate` requests/s, or `None` when it already fits
/// (or cannot be scaled: spans over several stages). `up(i)`: whether
/// cluster node `i` is up; only live, unused nodes that fit a stage are added.
pub fn rescale(
    plan: &Plan,
    cluster: &Cluster,
    cm: &CostModel,
    options: &PlanOptions,
    rate: f64,
    up: &dyn Fn(usize) -> bool,
) -> Option<Plan> {
    let mut layout = layout_of(plan, cluster)?;
    let mut opts = options.clone();
    let target = (rate * ELASTIC_HEADROOM).max(1e-6);
    opts.target.request_rate = target;
    let sustain = |l: &Layout| {
        let p = build(l, cluster, cm, &plan.strategy, &plan.model);
        let pred = predict(&p, cluster, cm, &opts);
        (pred.max_rate, pred.bottleneck)
    };
    let mut changed = false;
    let (mut max_rate, mut bottleneck) = sustain(&layout);
    // Grow: a replica for the stage of the bottleneck node, fastest unused first.
    for _ in 0..MAX_STEPS {
        if max_rate >= target {
            break;
        }
        let id = bottleneck.trim_end_matches("^up");
        let Some(s) = cluster
            .index_of(id)
            .and_then(|i| layout.iter().position(|(_, ns)| ns.contains(&i)))
        else {
            break;
        };
        let used: std::collections::HashSet<usize> = layout
            .iter()
            .flat_map(|(_, ns)| ns.iter().copied())
            .collect();
        let range = layout[s].0.clone();
        let pick = (0..cluster.len())
            .filter(|&i| up(i) && !used.contains(&i) && cm.fits(&cluster.nodes[i].gpu, &range))
            .max_by(|&a, &b| {
                let c = |i: usize| cm.decode_capacity(&cluster.nodes[i].gpu, &range);
                c(a).total_cmp(&c(b)).then(b.cmp(&a))
            });
        let Some(i) = pick else {
            break;
        };
        layout[s].1.push(i);
        layout[s].1.sort_unstable();
        changed = true;
        (max_rate, bottleneck) = sustain(&layout);
    }
    // Shrink: release the replica whose loss leaves the most, while enough is left.
    if !changed {
        for _ in 0..MAX_STEPS {
            let mut best: Option<(f64, usize, usize)> = None;
            let mut tries: Vec<(f64, usize, usize)> = Vec::new();
            for (s, (r, ns)) in layout.iter().enumerate() {
                if ns.len() < 2 {
                    continue;
                }
                for (k, &i) in ns.iter().enumerate() {
                    tries.push((cm.decode_capacity(&cluster.nodes[i].gpu, r), s, k));
                }
            }
            tries.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
            tries.truncate(RELEASE_TRIES);
            for &(_, s, k) in &tries {
                let mut l = layout.clone();
                l[s].1.remove(k);
                let (m, _) = sustain(&l);
                if best.is_none_or(|b| m > b.0) {
                    best = Some((m, s, k));
                }
            }
            match best {
                Some((m, s, k)) if m >= target * ELASTIC_RELEASE => {
                    layout[s].1.remove(k);
                    changed = true;
                }
                _ => break,
            }
        }
    }
    changed.then(|| build(&layout, cluster, cm, &plan.strategy, &plan.model))
}
