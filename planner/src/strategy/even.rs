//! Even split, round robin over nodes.
//!
//! Layers are split into `S` near-equal contiguous stages (vLLM's default
//! pipeline-parallel layer split, `get_pp_indices`) and nodes are dealt to stages
//! round robin (Storm's default "even scheduler", Apache Storm docs). `S` is the
//! smallest count for which every node can hold the stage it is dealt; if none
//! works, nodes that cannot hold their stage are left out.

use super::{Context, Strategy, even_ranges};
use crate::error::PlanError;
use crate::plan::Plan;

/// Even split, round robin (vLLM, Storm).
pub struct EvenRoundRobin;

impl Strategy for EvenRoundRobin {
    fn name(&self) -> &'static str {
        "even"
    }
    fn citation(&self) -> &'static str {
        "vLLM pipeline-parallel even layer split; Apache Storm EvenScheduler"
    }
    fn plan(&self, ctx: &Context) -> Result<Plan, PlanError> {
        ctx.check_total_memory()?;
        let (n, nodes) = (ctx.n(), ctx.cluster.len());
        let mut best: Option<(usize, super::Layout, usize)> = None;
        for s in 1..=n.min(nodes) {
            let ranges = even_ranges(n, s);
            let mut stages: Vec<_> = ranges.iter().map(|r| (r.clone(), Vec::new())).collect();
            let mut dropped = 0;
            for i in 0..nodes {
                let k = i % s;
                if ctx.cost.fits(&ctx.cluster.nodes[i].gpu, &ranges[k]) {
                    stages[k].1.push(i);
                } else {
                    dropped += 1;
                }
            }
            if stages.iter().any(|(_, r)| r.is_empty()) {
                continue;
            }
            if best.as_ref().is_none_or(|b| dropped < b.2) {
                best = Some((s, stages, dropped));
            }
            if dropped == 0 {
                break;
            }
        }
        let Some((s, stages, dropped)) = best else {
            return Err(PlanError::Infeasible {
                strategy: self.name().into(),
                reason: "no stage count gives every stage a node that can hold it".into(),
            });
        };
        let mut plan = Plan::from_stages(self.name(), ctx.cluster, n, &ctx.model.name, &stages);
        plan.notes
            .push(format!("{s} even stages, nodes dealt round robin"));
        if dropped > 0 {
            plan.notes.push(format!(
                "{dropped} nodes left out: their round-robin stage does not fit"
            ));
        }
        ctx.finish(plan)
    }
}
