//! Memory-proportional contiguous split: one pipeline over the nodes, each node
//! taking a share of layers proportional to its memory (exo's
//! `RingMemoryWeightedPartitioningStrategy`; llama.cpp's RPC backend splits
//! layers by device memory the same way, `--tensor-split` default).
//! Nodes are taken in decreasing memory order as exo does; when the model has fewer
//! layers than nodes, only the largest nodes take part.

use super::{Context, Strategy};
use crate::error::PlanError;
use crate::plan::Plan;

/// Memory-proportional split (exo, llama.cpp RPC).
pub struct MemoryProportional;

impl Strategy for MemoryProportional {
    fn name(&self) -> &'static str {
        "memory-proportional"
    }
    fn citation(&self) -> &'static str {
        "exo RingMemoryWeightedPartitioningStrategy; llama.cpp RPC layer split by memory"
    }
    fn plan(&self, ctx: &Context) -> Result<Plan, PlanError> {
        ctx.check_total_memory()?;
        let n = ctx.n();
        let mut order: Vec<usize> = (0..ctx.cluster.len()).collect();
        order.sort_by(|&a, &b| {
            let ma = ctx.cluster.nodes[a].gpu.memory_gib;
            let mb = ctx.cluster.nodes[b].gpu.memory_gib;
            mb.total_cmp(&ma).then(a.cmp(&b))
        });
        order.truncate(n);
        let mem: Vec<f64> = order
            .iter()
            .map(|&i| ctx.cost.usable_memory(&ctx.cluster.nodes[i].gpu))
            .collect();
        let total: f64 = mem.iter().sum();
        // Largest-remainder apportionment of n layers.
        let quotas: Vec<f64> = mem.iter().map(|m| m / total * n as f64).collect();
        let mut counts: Vec<usize> = quotas.iter().map(|q| q.floor() as usize).collect();
        let mut rem: Vec<(f64, usize)> = quotas
            .iter()
            .enumerate()
            .map(|(k, q)| (q - q.floor(), k))
            .collect();
        rem.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        let missing = n - counts.iter().sum::<usize>();
        for &(_, k) in rem.iter().take(missing) {
            counts[k] += 1;
        }
        let mut stages = Vec::new();
        let mut start = 0;
        for (k, &c) in counts.iter().enumerate() {
            if c == 0 {
                continue;
            }
            stages.push((start..start + c, vec![order[k]]));
            start += c;
        }
        let plan = Plan::from_stages(self.name(), ctx.cluster, n, &ctx.model.name, &stages);
        ctx.finish(plan)
    }
}
