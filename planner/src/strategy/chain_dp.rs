//! Chain partitioning by dynamic programming with replication on an ordered
//! device list (PipeDream's partitioner, Narayanan et al., SOSP 2019; Alpa's
//! inter-operator stage DP, Zheng et al., OSDI 2022).
//!
//! Devices are ordered (region, site, then faster GPUs first). The DP splits the
//! layers into contiguous stages and the ordered devices into contiguous groups
//! (devices may be skipped), one group per stage whose members all replicate it,
//! minimising the bottleneck stage time `1 / Σ capacity of its replicas`.
//! Above [`MAX_UNITS`] devices, consecutive devices are merged into units first.

use std::ops::Range;

use super::{Context, Strategy};
use crate::error::PlanError;
use crate::plan::Plan;

/// Most DP units; larger clusters are coarsened.
pub const MAX_UNITS: usize = 64;

/// Chain DP with replication (PipeDream / Alpa).
pub struct ChainDp;

/// A DP solution: bottleneck throughput and stages as (layers, unit range).
pub type ChainSolution = (f64, Vec<(Range<usize>, Range<usize>)>);

/// Solves the chain problem: `cap(u, layers)` is unit `u`'s throughput on `layers`
/// (0 when it does not fit). Returns the best bottleneck throughput and stages.
#[allow(clippy::needless_range_loop)] // index-heavy DP tables
pub fn solve_chain(
    n: usize,
    units: usize,
    cap: &dyn Fn(usize, Range<usize>) -> f64,
) -> Option<ChainSolution> {
    // caps[u][a][b]
    let mut caps = vec![vec![vec![0.0f64; n + 1]; n + 1]; units];
    for (u, cu) in caps.iter_mut().enumerate() {
        for a in 0..n {
            for b in (a + 1)..=n {
                cu[a][b] = cap(u, a..b);
            }
        }
    }
    const INF: f64 = f64::INFINITY;
    // best[l][d]: min bottleneck time for layers 0..l on units 0..d.
    let mut best = vec![vec![INF; units + 1]; n + 1];
    // choice: None = skip unit d-1; Some((l', d')) = stage l'..l on units d'..d.
    let mut choice: Vec<Vec<Option<(usize, usize)>>> = vec![vec![None; units + 1]; n + 1];
    for d in 0..=units {
        best[0][d] = 0.0;
    }
    for l in 1..=n {
        for d in 1..=units {
            let mut b = best[l][d - 1];
            let mut c = None;
            for lp in 0..l {
                let mut sum = 0.0;
                for dp in (0..d).rev() {
                    let cu = caps[dp][lp][l];
                    if cu <= 0.0 {
                        break;
                    }
                    sum += cu;
                    let prev = best[lp][dp];
                    if prev.is_infinite() {
                        continue;
                    }
                    let v = prev.max(1.0 / sum);
                    if v < b - 1e-15 {
                        b = v;
                        c = Some((lp, dp));
                    }
                }
            }
            best[l][d] = b;
            choice[l][d] = c;
        }
    }
    if best[n][units].is_infinite() {
        return None;
    }
    let mut stages = Vec::new();
    let (mut l, mut d) = (n, units);
    while l > 0 {
        match choice[l][d] {
            None => d -= 1,
            Some((lp, dp)) => {
                stages.push((lp..l, dp..d));
                l = lp;
                d = dp;
            }
        }
    }
    stages.reverse();
    Some((1.0 / best[n][units], stages))
}

impl Strategy for ChainDp {
    fn name(&self) -> &'static str {
        "chain-dp"
    }
    fn citation(&self) -> &'static str {
        "Narayanan et al., PipeDream, SOSP 2019 (partitioner DP); Zheng et al., Alpa, OSDI 2022"
    }
    fn plan(&self, ctx: &Context) -> Result<Plan, PlanError> {
        ctx.check_total_memory()?;
        let n = ctx.n();
        let order = device_order(ctx);
        let size = order.len().div_ceil(MAX_UNITS).max(1);
        let units: Vec<Vec<usize>> = order.chunks(size).map(|c| c.to_vec()).collect();
        let cap = |u: usize, r: Range<usize>| -> f64 {
            let mut sum = 0.0;
            for &i in &units[u] {
                let c = ctx.cost.decode_capacity(&ctx.cluster.nodes[i].gpu, &r);
                if c <= 0.0 {
                    return 0.0;
                }
                sum += c;
            }
            sum
        };
        let Some((tp, stages)) = solve_chain(n, units.len(), &cap) else {
            return Err(PlanError::Infeasible {
                strategy: self.name().into(),
                reason: "no split of the ordered devices holds every layer".into(),
            });
        };
        let stages: Vec<(Range<usize>, Vec<usize>)> = stages
            .into_iter()
            .map(|(l, u)| (l, units[u].iter().flatten().copied().collect()))
            .collect();
        let mut plan = Plan::from_stages(self.name(), ctx.cluster, n, &ctx.model.name, &stages);
        plan.notes.push(format!(
            "DP bottleneck throughput {tp:.1} tok/s (links not counted)"
        ));
        if size > 1 {
            plan.notes.push(format!(
                "{} devices coarsened into {} units of {size} consecutive devices",
                order.len(),
                units.len()
            ));
        }
        ctx.finish(plan)
    }
}

/// Devices ordered by region (first-seen), site, then faster GPU first.
pub fn device_order(ctx: &Context) -> Vec<usize> {
    let regions = ctx.cluster.regions();
    let mut order: Vec<usize> = (0..ctx.cluster.len()).collect();
    order.sort_by(|&a, &b| {
        let (na, nb) = (&ctx.cluster.nodes[a], &ctx.cluster.nodes[b]);
        let ra = regions.iter().position(|r| *r == na.region);
        let rb = regions.iter().position(|r| *r == nb.region);
        ra.cmp(&rb)
            .then(na.site.cmp(&nb.site))
            .then(
                nb.gpu
                    .mem_bandwidth_gbs
                    .total_cmp(&na.gpu.mem_bandwidth_gbs),
            )
            .then(a.cmp(&b))
    });
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every way to cut layers into stages and ordered units into groups (with skips).
    fn exhaustive(n: usize, units: usize, cap: &dyn Fn(usize, Range<usize>) -> f64) -> f64 {
        fn rec(
            l: usize,
            d: usize,
            n: usize,
            units: usize,
            cap: &dyn Fn(usize, Range<usize>) -> f64,
        ) -> f64 {
            if l == n {
                return f64::INFINITY;
            }
            let mut best = 0.0f64;
            for l2 in (l + 1)..=n {
                for d0 in d..units {
                    for d1 in (d0 + 1)..=units {
                        let mut sum = 0.0;
                        let mut ok = true;
                        for u in d0..d1 {
                            let c = cap(u, l..l2);
                            if c <= 0.0 {
                                ok = false;
                            }
                            sum += c;
                        }
                        if !ok {
                            continue;
                        }
                        let rest = rec(l2, d1, n, units, cap);
                        best = best.max(sum.min(rest));
                    }
                }
            }
            best
        }
        rec(0, 0, n, units, cap)
    }

    #[test]
    fn dp_matches_exhaustive_on_small_instances() {
        // Deterministic pseudo-random heterogeneous instances.
        let mut seed = 12345u64;
        let mut rnd = || {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (seed >> 33) as f64 / (1u64 << 31) as f64
        };
        for _case in 0..30 {
            let n = 2 + (rnd() * 4.0) as usize; // 2..5 layers
            let units = 1 + (rnd() * 4.0) as usize; // 1..4 units
            let speed: Vec<f64> = (0..units).map(|_| 1.0 + rnd() * 9.0).collect();
            let memory: Vec<usize> = (0..units)
                .map(|_| 1 + (rnd() * n as f64) as usize)
                .collect();
            let cap = |u: usize, r: Range<usize>| {
                if r.len() > memory[u] {
                    0.0
                } else {
                    speed[u] / r.len() as f64 * (1.0 + 0.1 * r.start as f64)
                }
            };
            let ex = exhaustive(n, units, &cap);
            match solve_chain(n, units, &cap) {
                Some((v, stages)) => {
                    assert!(
                        (v - ex).abs() < 1e-9 * ex.max(1.0),
                        "dp {v} vs exhaustive {ex}"
                    );
                    assert_eq!(stages.first().unwrap().0.start, 0);
                    assert_eq!(stages.last().unwrap().0.end, n);
                }
                None => assert_eq!(ex, 0.0, "dp found nothing, exhaustive {ex}"),
            }
        }
    }
}
