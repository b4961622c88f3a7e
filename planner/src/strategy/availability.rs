//! Availability-aware replication: choose replicas to maximise the pipeline's
//! availability Π_stages (1 − Π_replicas (1 − A_node)) under memory, then latency
//! (the replication objective of Cardellini et al., "Optimal operator replication
//! and placement for distributed stream processing systems", SIGMETRICS PER 2017,
//! with the availability model of their ODP, and of Volley-style greedy replica
//! selection). Stages are even splits; for each stage count, every stage first gets
//! its most available fitting node, then each remaining node joins the stage where it
//! raises log-availability most (ties: the stage where it is fastest).

use super::{Context, Strategy, even_ranges};
use crate::error::PlanError;
use crate::plan::Plan;

/// Greedy availability-maximising replication.
pub struct AvailabilityReplication;

/// log of the availability of one stage with replica availabilities `a`.
pub fn stage_log_availability(a: &[f64]) -> f64 {
    let down: f64 = a.iter().map(|x| 1.0 - x).product();
    (1.0 - down).max(1e-300).ln()
}

impl Strategy for AvailabilityReplication {
    fn name(&self) -> &'static str {
        "availability"
    }
    fn citation(&self) -> &'static str {
        "Cardellini et al., operator replication and placement, SIGMETRICS PER 2017; ODP availability model"
    }
    fn plan(&self, ctx: &Context) -> Result<Plan, PlanError> {
        ctx.check_total_memory()?;
        let (n, nodes) = (ctx.n(), ctx.cluster.len());
        let avail: Vec<f64> = ctx
            .cluster
            .nodes
            .iter()
            .map(|x| x.availability.steady_state())
            .collect();
        let mut best: Option<(f64, f64, super::Layout)> = None;
        let mut tried = 0;
        for s in 1..=n.min(nodes) {
            let ranges = even_ranges(n, s);
            let fits = |i: usize, k: usize| ctx.cost.fits(&ctx.cluster.nodes[i].gpu, &ranges[k]);
            let mut groups: Vec<Vec<usize>> = vec![Vec::new(); s];
            let mut used = vec![false; nodes];
            // Seed: each stage its most available fitting node (scarcest stage first).
            let mut order: Vec<usize> = (0..s).collect();
            order.sort_by_key(|&k| (0..nodes).filter(|&i| fits(i, k)).count());
            let mut ok = true;
            for &k in &order {
                let pick = (0..nodes)
                    .filter(|&i| !used[i] && fits(i, k))
                    .max_by(|&a, &b| avail[a].total_cmp(&avail[b]).then(b.cmp(&a)));
                match pick {
                    Some(i) => {
                        used[i] = true;
                        groups[k].push(i);
                    }
                    None => ok = false,
                }
            }
            if !ok {
                continue;
            }
            tried += 1;
            // Greedy: most available remaining nodes first, to the stage of largest gain.
            let mut rest: Vec<usize> = (0..nodes).filter(|&i| !used[i]).collect();
            rest.sort_by(|&a, &b| avail[b].total_cmp(&avail[a]).then(a.cmp(&b)));
            for i in rest {
                let mut best_k: Option<(f64, f64, usize)> = None;
                for k in 0..s {
                    if !fits(i, k) {
                        continue;
                    }
                    let cur: Vec<f64> = groups[k].iter().map(|&j| avail[j]).collect();
                    let mut with = cur.clone();
                    with.push(avail[i]);
                    let gain = stage_log_availability(&with) - stage_log_availability(&cur);
                    // Tie-break: the stage with least capacity so far (latency under load).
                    let cap: f64 = groups[k]
                        .iter()
                        .map(|&j| {
                            ctx.cost
                                .decode_capacity(&ctx.cluster.nodes[j].gpu, &ranges[k])
                        })
                        .sum();
                    let better = match best_k {
                        None => true,
                        Some((g, c, _)) => {
                            gain > g + 1e-12 || ((gain - g).abs() <= 1e-12 && cap < c)
                        }
                    };
                    if better {
                        best_k = Some((gain, cap, k));
                    }
                }
                if let Some((_, _, k)) = best_k {
                    groups[k].push(i);
                }
            }
            let log_a: f64 = groups
                .iter()
                .map(|g| stage_log_availability(&g.iter().map(|&j| avail[j]).collect::<Vec<_>>()))
                .sum();
            let bottleneck = groups
                .iter()
                .enumerate()
                .map(|(k, g)| {
                    g.iter()
                        .map(|&j| {
                            ctx.cost
                                .decode_capacity(&ctx.cluster.nodes[j].gpu, &ranges[k])
                        })
                        .sum::<f64>()
                })
                .fold(f64::INFINITY, f64::min);
            let better = match &best {
                None => true,
                Some((la, bt, _)) => {
                    log_a > la + 1e-12 || ((log_a - la).abs() <= 1e-12 && bottleneck > *bt)
                }
            };
            if better {
                best = Some((log_a, bottleneck, ranges.into_iter().zip(groups).collect()));
            }
            if tried >= 4 {
                break;
            }
        }
        let Some((log_a, _, stages)) = best else {
            return Err(PlanError::Infeasible {
                strategy: self.name().into(),
                reason: "no even split has a fitting node for every stage".into(),
            });
        };
        let mut plan = Plan::from_stages(self.name(), ctx.cluster, n, &ctx.model.name, &stages);
        plan.notes
            .push(format!("pipeline availability {:.6}", log_a.exp()));
        ctx.finish(plan)
    }
}
