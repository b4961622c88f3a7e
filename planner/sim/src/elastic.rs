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
//! without it. A stage grows back first by the nodes that served it in the
//! plan the run started from, so grown back the plan is the strategy's own
//! (less what the model says adds nothing).

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
/// `base`: the plan the run started from; a stage grows first by the nodes
/// that served it there (so at full size the plan is the strategy's own,
/// not one rebuilt replica by replica), then by the fastest other node.
pub fn rescale(
    plan: &Plan,
    base: &Plan,
    cluster: &Cluster,
    cm: &CostModel,
    options: &PlanOptions,
    rate: f64,
    up: &dyn Fn(usize) -> bool,
) -> Option<Plan> {
    let mut layout = layout_of(plan, cluster)?;
    let base_stage: std::collections::HashMap<usize, std::ops::Range<usize>> =
        layout_of(base, cluster)
            .unwrap_or_default()
            .into_iter()
            .flat_map(|(r, ns)| ns.into_iter().map(move |i| (i, r.clone())))
            .collect();
    let mut opts = options.clone();
    let target = (rate * ELASTIC_HEADROOM).max(1e-6);
    opts.target.request_rate = target;
    let sustain = |l: &Layout| {
        let p = build(l, cluster, cm, &plan.strategy, &plan.model);
        let pred = predict(&p, cluster, cm, &opts);
        (pred.max_rate, pred.bottleneck)
    };
    let mut changed = false;
    let (mut max_rate, _) = sustain(&layout);
    // Grow: one replica at a time, on the stage where the model gains most
    // from it (each stage's candidate: a node that served it in the base
    // plan, else the fastest unused one that fits). When several stages are
    // bottlenecks together no single replica raises the model's rate; then
    // the stage with the least decode capacity gets one, up to one flat
    // step per stage, and growth that never pays is undone.
    let mut kept = (layout.clone(), max_rate);
    let mut flat = 0;
    for _ in 0..MAX_STEPS {
        if max_rate >= target {
            break;
        }
        let used: std::collections::HashSet<usize> = layout
            .iter()
            .flat_map(|(_, ns)| ns.iter().copied())
            .collect();
        // (model rate with it, stage capacity without it, stage, node)
        let mut tries: Vec<(f64, f64, usize, usize)> = Vec::new();
        for (s, (range, ns)) in layout.iter().enumerate() {
            // Nodes of this stage in the base plan first, then nodes the
            // base plan did not use (or used on a stage no longer there); a
            // node another stage of the base plan holds stays for that stage.
            let home = |i: usize| match base_stage.get(&i) {
                Some(r) if r == range => 2,
                Some(r) if layout.iter().any(|(lr, _)| lr == r) => 0,
                _ => 1,
            };
            let cap = |i: usize| cm.decode_capacity(&cluster.nodes[i].gpu, range);
            let pick = (0..cluster.len())
                .filter(|&i| {
                    up(i)
                        && !used.contains(&i)
                        && home(i) > 0
                        && cm.fits(&cluster.nodes[i].gpu, range)
                })
                .max_by(|&a, &b| {
                    home(a)
                        .cmp(&home(b))
                        .then(cap(a).total_cmp(&cap(b)))
                        .then(b.cmp(&a))
                });
            let Some(i) = pick else {
                continue;
            };
            let mut l = layout.clone();
            l[s].1.push(i);
            let (m, _) = sustain(&l);
            tries.push((m, ns.iter().map(|&n| cap(n)).sum(), s, i));
        }
        let gain = tries
            .iter()
            .copied()
            .filter(|t| t.0 > max_rate)
            .max_by(|a, b| a.0.total_cmp(&b.0).then(b.2.cmp(&a.2)));
        let pick = match gain {
            Some(t) => {
                flat = 0;
                t
            }
            None if flat < layout.len() => {
                flat += 1;
                match tries
                    .iter()
                    .copied()
                    .min_by(|a, b| a.1.total_cmp(&b.1).then(a.2.cmp(&b.2)))
                {
                    Some(t) => t,
                    None => break,
                }
            }
            None => break,
        };
        let (m, _, s, i) = pick;
        layout[s].1.push(i);
        layout[s].1.sort_unstable();
        max_rate = max_rate.max(m);
        if m > kept.1 {
            kept = (layout.clone(), m);
        }
    }
    if kept.1 > sustain(&layout_of(plan, cluster)?).0 {
        layout = kept.0;
        changed = true;
    } else {
        layout = layout_of(plan, cluster)?;
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
