//! Petals' greedy span selection and rebalancing (Borzunov et al., "Petals:
//! Collaborative Inference and Fine-tuning of Large Models", ACL 2023 demos;
//! `petals/server/block_selection.py`).
//!
//! Servers join one after another. Each loads as many consecutive blocks as fit
//! next to an attention cache (here: room for [`CACHE_SEQUENCES`] sequences) and
//! picks the span start whose window of per-block throughputs, sorted, is
//! lexicographically smallest: it covers the blocks with the lowest throughput so
//! far. Rebalancing: a server moves to the best start when the swarm throughput
//! (the minimum over blocks) would exceed its current value divided by
//! `balance_quality` = 0.75 (Petals' default).

use super::{Context, Strategy};
use crate::error::PlanError;
use crate::plan::Plan;

/// Sequences of attention cache a Petals server keeps room for.
pub const CACHE_SEQUENCES: u32 = 16;
/// Petals' default `balance_quality`.
pub const BALANCE_QUALITY: f64 = 0.75;

/// Petals' greedy block selection with rebalancing.
pub struct PetalsGreedy;

const EPS: f64 = 1e-3;

/// Above this many servers the rebalancing simulation (quadratic) is skipped.
pub const MAX_REBALANCE_SERVERS: usize = 200;

fn min_of(v: &[f64]) -> f64 {
    v.iter().copied().fold(f64::INFINITY, f64::min)
}

/// Moves server `si` to `start`, updating per-block throughputs.
fn relocate(
    through: &mut [f64],
    starts: &mut [usize],
    servers: &[(usize, usize, f64)],
    si: usize,
    start: usize,
) {
    let (k, cap) = (servers[si].1, servers[si].2);
    through[starts[si]..starts[si] + k]
        .iter_mut()
        .for_each(|t| *t -= cap);
    starts[si] = start;
    through[start..start + k].iter_mut().for_each(|t| *t += cap);
}

fn best_start(through: &[f64], k: usize) -> usize {
    let mut best: Option<(Vec<f64>, usize)> = None;
    for s in 0..=through.len() - k {
        let mut w = through[s..s + k].to_vec();
        w.sort_by(|a, b| a.total_cmp(b));
        let better = match &best {
            None => true,
            Some((bw, _)) => w
                .iter()
                .zip(bw)
                .find_map(|(a, b)| (a != b).then_some(a < b))
                .unwrap_or(false),
        };
        if better {
            best = Some((w, s));
        }
    }
    best.map(|b| b.1).unwrap_or(0)
}

impl Strategy for PetalsGreedy {
    fn name(&self) -> &'static str {
        "petals"
    }
    fn citation(&self) -> &'static str {
        "Borzunov et al., Petals, ACL 2023 (block_selection.py: choose_best_blocks, should_choose_other_blocks)"
    }
    fn plan(&self, ctx: &Context) -> Result<Plan, PlanError> {
        ctx.check_total_memory()?;
        let n = ctx.n();
        // Servers, their span length and their per-block throughput.
        let mut servers: Vec<(usize, usize, f64)> = Vec::new();
        for i in 0..ctx.cluster.len() {
            // Use a middle position so the embedding and head do not skew the size.
            let mid = n / 4;
            let mut k = ctx.max_layers_from(i, mid, CACHE_SEQUENCES).min(n);
            // The span must also fit where it holds the embedding or the head.
            k = k.min(ctx.max_layers_from(i, 0, CACHE_SEQUENCES));
            let gpu = &ctx.cluster.nodes[i].gpu;
            while k > 0 && ctx.cost.max_batch(gpu, &(n - k..n)) < CACHE_SEQUENCES {
                k -= 1;
            }
            if k == 0 {
                continue;
            }
            let start = mid.min(n - k);
            let cap = ctx
                .cost
                .decode_capacity(&ctx.cluster.nodes[i].gpu, &(start..start + k));
            servers.push((i, k, cap));
        }
        if servers.is_empty() {
            return Err(PlanError::Infeasible {
                strategy: self.name().into(),
                reason: "no node can hold even one block".into(),
            });
        }
        let mut through = vec![0.0; n];
        let mut starts = vec![0usize; servers.len()];
        for (si, &(_, k, cap)) in servers.iter().enumerate() {
            let s = best_start(&through, k);
            starts[si] = s;
            through[s..s + k].iter_mut().for_each(|t| *t += cap);
        }
        // Rebalancing (should_choose_other_blocks): a server moves when, after it
        // moves to its best start and every server then greedily re-settles, the
        // swarm throughput would grow so that initial / new < balance_quality.
        let mut moves = 0;
        let rounds = if servers.len() <= MAX_REBALANCE_SERVERS {
            20
        } else {
            0
        };
        for _round in 0..rounds {
            let mut moved = false;
            for si in 0..servers.len() {
                let initial = min_of(&through);
                let k = servers[si].1;
                let mut sim_through = through.clone();
                let mut sim_starts = starts.clone();
                let cap = servers[si].2;
                sim_through[sim_starts[si]..sim_starts[si] + k]
                    .iter_mut()
                    .for_each(|t| *t -= cap);
                let new_start = best_start(&sim_through, k);
                sim_through[sim_starts[si]..sim_starts[si] + k]
                    .iter_mut()
                    .for_each(|t| *t += cap);
                if new_start == sim_starts[si] {
                    continue;
                }
                relocate(&mut sim_through, &mut sim_starts, &servers, si, new_start);
                // Everyone re-settles (Petals shuffles; we go in order, bounded).
                for _ in 0..10 {
                    let mut any = false;
                    for sj in 0..servers.len() {
                        let (kj, cj) = (servers[sj].1, servers[sj].2);
                        let s0 = sim_starts[sj];
                        sim_through[s0..s0 + kj].iter_mut().for_each(|t| *t -= cj);
                        let s1 = best_start(&sim_through, kj);
                        sim_through[s0..s0 + kj].iter_mut().for_each(|t| *t += cj);
                        if s1 != s0 {
                            relocate(&mut sim_through, &mut sim_starts, &servers, sj, s1);
                            any = true;
                        }
                    }
                    if !any {
                        break;
                    }
                }
                let new = min_of(&sim_through);
                if new > initial && new > EPS && initial / new < BALANCE_QUALITY - EPS {
                    relocate(&mut through, &mut starts, &servers, si, new_start);
                    moved = true;
                    moves += 1;
                }
            }
            if !moved {
                break;
            }
        }
        if let Some(l) = through.iter().position(|&t| t <= 0.0) {
            return Err(PlanError::Infeasible {
                strategy: self.name().into(),
                reason: format!("block {l} is held by no server"),
            });
        }
        // Drop servers whose span is not needed? Petals keeps every server.
        let spans: Vec<(usize, std::ops::Range<usize>)> = servers
            .iter()
            .zip(&starts)
            .map(|(&(i, k, _), &s)| (i, s..s + k))
            .collect();
        let mut plan = Plan::from_spans(self.name(), ctx.cluster, n, &ctx.model.name, &spans);
        if rounds == 0 {
            plan.notes.push(format!(
                "rebalancing skipped: more than {MAX_REBALANCE_SERVERS} servers"
            ));
        }
        plan.notes.push(format!(
            "{} servers, {} rebalancing moves, swarm block throughput {:.1} tok/s",
            servers.len(),
            moves,
            min_of(&through)
        ));
        ctx.finish(plan)
    }
}

#[cfg(test)]
mod tests {
    use super::best_start;

    #[test]
    fn best_start_covers_the_weakest_blocks() {
        assert_eq!(best_start(&[5.0, 5.0, 0.0, 0.0, 5.0], 2), 2);
        // ties go to the lowest start
        assert_eq!(best_start(&[0.0; 6], 3), 0);
        // lexicographic on sorted windows: [1,2] beats [1,9] beats [2,2]
        assert_eq!(best_start(&[2.0, 2.0, 1.0, 9.0], 2), 1);
        assert_eq!(best_start(&[2.0, 2.0, 9.0, 3.0], 2), 0);
    }
}
