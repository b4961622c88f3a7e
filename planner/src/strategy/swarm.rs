//! SWARM parallelism's layout (Ryabinin et al., "SWARM Parallelism: Training Large
//! Models Can Be Surprisingly Communication-Efficient", ICML 2023), as Helix runs it
//! for its baseline (`simulator/initial_layout/heterogeneous_layout/swarm_layout.py`
//! in Thesys-lab/Helix-ASPLOS25).
//!
//! The model is cut into equal stages, as small a count as lets the weakest node
//! hold one stage next to its attention cache. Nodes, fastest first, each join the
//! stage whose summed throughput is lowest so far. Requests are wired from one
//! stage to the next in proportion to throughput (SWARM's stochastic wiring, which
//! Helix's simulator runs as interleaved weighted round robin); the plan's routing
//! weights are those proportions.
//!
//! This is the baseline behind the Helix paper's 339.6 vs 151.6 tokens/s on its
//! 24-node cluster with LLaMA-30B (Helix artifact `ae_readme.md`, section 6.3).

use super::petals::CACHE_SEQUENCES;
use super::{Context, Layout, Strategy, even_ranges};
use crate::error::PlanError;
use crate::plan::Plan;

/// SWARM's equal stages filled by throughput.
pub struct SwarmStages;

impl Strategy for SwarmStages {
    fn name(&self) -> &'static str {
        "swarm"
    }
    fn citation(&self) -> &'static str {
        "Ryabinin et al., SWARM Parallelism, ICML 2023 (layout as in Helix's swarm_layout.py baseline)"
    }
    fn plan(&self, ctx: &Context) -> Result<Plan, PlanError> {
        ctx.check_total_memory()?;
        let n = ctx.n();
        // Stage size: what the weakest node that can hold anything holds, wherever
        // its stage sits (the embedding and head stages are heavier).
        let holds = |i: usize| {
            ctx.max_layers_from(i, n / 4, CACHE_SEQUENCES)
                .min(ctx.max_layers_from(i, 0, CACHE_SEQUENCES))
        };
        let capable: Vec<usize> = (0..ctx.cluster.len()).filter(|&i| holds(i) > 0).collect();
        let Some(size) = capable.iter().map(|&i| holds(i)).min() else {
            return Err(PlanError::Infeasible {
                strategy: self.name().into(),
                reason: "no node can hold even one block".into(),
            });
        };
        let stages = n.div_ceil(size);
        let ranges = even_ranges(n, stages);
        // Fastest first, each into the stage with the lowest throughput so far that
        // it can hold.
        let mut order: Vec<(f64, usize)> = capable
            .iter()
            .map(|&i| {
                let gpu = &ctx.cluster.nodes[i].gpu;
                (ctx.cost.decode_capacity(gpu, &ranges[0]), i)
            })
            .collect();
        order.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        let mut layout: Layout = ranges.iter().map(|r| (r.clone(), Vec::new())).collect();
        let mut through = vec![0.0f64; stages];
        let mut left_out = 0;
        for &(_, i) in &order {
            let gpu = &ctx.cluster.nodes[i].gpu;
            let target = (0..stages)
                .filter(|&s| ctx.cost.fits(gpu, &ranges[s]))
                .min_by(|&a, &b| through[a].total_cmp(&through[b]).then(a.cmp(&b)));
            match target {
                Some(s) => {
                    through[s] += ctx.cost.decode_capacity(gpu, &ranges[s]);
                    layout[s].1.push(i);
                }
                None => left_out += 1,
            }
        }
        if let Some(s) = layout.iter().position(|(_, nodes)| nodes.is_empty()) {
            return Err(PlanError::Infeasible {
                strategy: self.name().into(),
                reason: format!(
                    "stage {s} (layers {:?}) is held by no node: {stages} stages of about {size} layers need at least {stages} nodes",
                    ranges[s]
                ),
            });
        }
        let mut plan = Plan::from_stages(self.name(), ctx.cluster, n, &ctx.model.name, &layout);
        plan.notes.push(format!(
            "{stages} equal stages of about {size} layers, bottleneck stage {:.1} tok/s",
            through.iter().copied().fold(f64::INFINITY, f64::min)
        ));
        if left_out > 0 {
            plan.notes
                .push(format!("{left_out} nodes left out: no stage fits them"));
        }
        ctx.finish(plan)
    }
}
