//! ODP-style placement (Cardellini, Grassi, Lo Presti, Nardelli, "Optimal
//! Operator Placement for Distributed Stream Processing Applications", DEBS 2016).
//!
//! Each stage of an even split is placed on exactly one node (no replication);
//! a binary ILP minimises a weighted sum of normalised response time (stage times
//! at batch 1 plus link latencies between consecutive stages, linearised with
//! pair variables) and maximises normalised availability (the sum of log node
//! availabilities). Nodes are grouped by (GPU kind, site); at most
//! [`MAX_GROUPS`] fastest groups are candidates, so it suits small instances and
//! serves as a reference. Stage counts from the smallest feasible one to three
//! more are tried and the best objective kept.

use good_lp::{Expression, Variable, constraint, variable, variables};

use super::{Context, Strategy, even_ranges};
use crate::error::PlanError;
use crate::plan::Plan;

/// Most candidate node groups in the ILP.
pub const MAX_GROUPS: usize = 12;

/// ODP ILP (Cardellini et al.).
pub struct OdpIlp;

/// One ODP instance on groups: `time[s][g]` (None: does not fit), `lat[g][h]`
/// link latency, `log_a[g]` log availability, `count[g]` nodes in the group.
#[derive(Debug, Clone)]
pub struct OdpInstance {
    /// Stage time per group.
    pub time: Vec<Vec<Option<f64>>>,
    /// Latency between groups (0 on the diagonal).
    pub lat: Vec<Vec<f64>>,
    /// Log availability per group (≤ 0).
    pub log_a: Vec<f64>,
    /// Nodes per group.
    pub count: Vec<usize>,
    /// Weight of response time, in [0, 1].
    pub w: f64,
}

impl OdpInstance {
    fn norms(&self) -> (f64, f64) {
        let s = self.time.len();
        let rmax: f64 = self
            .time
            .iter()
            .map(|row| row.iter().flatten().copied().fold(0.0, f64::max))
            .sum::<f64>()
            + (s.saturating_sub(1)) as f64 * self.lat.iter().flatten().copied().fold(0.0, f64::max);
        let amin: f64 = s as f64 * self.log_a.iter().copied().fold(0.0, f64::min);
        (rmax.max(1e-12), amin.abs())
    }

    /// Objective (larger is better) of an assignment of stages to groups.
    pub fn objective(&self, assign: &[usize]) -> Option<f64> {
        let (rmax, amin) = self.norms();
        let mut used = vec![0; self.count.len()];
        let (mut r, mut la) = (0.0, 0.0);
        for (s, &g) in assign.iter().enumerate() {
            r += self.time[s][g]?;
            used[g] += 1;
            if used[g] > self.count[g] {
                return None;
            }
            la += self.log_a[g];
            if s > 0 {
                r += self.lat[assign[s - 1]][g];
            }
        }
        let a_term = if amin > 0.0 { la / amin } else { 0.0 };
        Some(-self.w * r / rmax + (1.0 - self.w) * a_term)
    }

    /// Solves the ILP; returns (objective, group per stage).
    #[allow(clippy::needless_range_loop)] // variables indexed by (stage, group)
    pub fn solve(&self, time_limit_s: f64) -> Result<Option<(f64, Vec<usize>)>, String> {
        let (ns, ng) = (self.time.len(), self.count.len());
        let (rmax, amin) = self.norms();
        let mut vars = variables!();
        let mut x: Vec<Vec<Option<Variable>>> = vec![vec![None; ng]; ns];
        let mut cons = Vec::new();
        let mut obj = Expression::from(0.0);
        for s in 0..ns {
            for g in 0..ng {
                if let Some(t) = self.time[s][g] {
                    let v = vars.add(variable().binary());
                    x[s][g] = Some(v);
                    let a_term = if amin > 0.0 {
                        self.log_a[g] / amin
                    } else {
                        0.0
                    };
                    obj += (-self.w * t / rmax + (1.0 - self.w) * a_term) * v;
                }
            }
            let row: Expression = x[s].iter().flatten().copied().sum();
            if x[s].iter().all(Option::is_none) {
                return Ok(None);
            }
            cons.push(constraint!(row == 1));
        }
        for g in 0..ng {
            let col: Expression = (0..ns).filter_map(|s| x[s][g]).sum();
            cons.push(constraint!(col <= self.count[g] as f64));
        }
        for s in 1..ns {
            for g in 0..ng {
                for h in 0..ng {
                    let (Some(a), Some(b)) = (x[s - 1][g], x[s][h]) else {
                        continue;
                    };
                    if self.lat[g][h] <= 0.0 {
                        continue;
                    }
                    let y = vars.add(variable().min(0.0).max(1.0));
                    cons.push(constraint!(y >= a + b - 1));
                    obj -= self.w * self.lat[g][h] / rmax * y;
                }
            }
        }
        let flat: Vec<(usize, usize, Variable)> = (0..ns)
            .flat_map(|s| (0..ng).map(move |g| (s, g)))
            .filter_map(|(s, g)| x[s][g].map(|v| (s, g, v)))
            .collect();
        let wanted: Vec<Variable> = flat.iter().map(|f| f.2).collect();
        let out = match crate::lp::maximise(vars, obj, cons, &wanted, time_limit_s, Vec::new()) {
            Ok(o) => o,
            Err(e) if e.to_lowercase().contains("infeasible") => return Ok(None),
            Err(e) => return Err(e),
        };
        let mut assign = vec![usize::MAX; ns];
        for (k, &(s, g, _)) in flat.iter().enumerate() {
            if out.values[k] > 0.5 {
                assign[s] = g;
            }
        }
        if assign.contains(&usize::MAX) {
            return Ok(None);
        }
        Ok(self.objective(&assign).map(|o| (o, assign)))
    }
}

impl Strategy for OdpIlp {
    fn name(&self) -> &'static str {
        "odp"
    }
    fn citation(&self) -> &'static str {
        "Cardellini et al., Optimal Operator Placement for Distributed Stream Processing Applications, DEBS 2016"
    }
    fn plan(&self, ctx: &Context) -> Result<Plan, PlanError> {
        ctx.check_total_memory()?;
        let n = ctx.n();
        // Groups by (gpu, site).
        let mut groups: Vec<Vec<usize>> = Vec::new();
        for (i, node) in ctx.cluster.nodes.iter().enumerate() {
            match groups.iter_mut().find(|g| {
                let f = &ctx.cluster.nodes[g[0]];
                f.gpu.name == node.gpu.name && f.site == node.site
            }) {
                Some(g) => g.push(i),
                None => groups.push(vec![i]),
            }
        }
        let mut notes = Vec::new();
        if groups.len() > MAX_GROUPS {
            // Keep the groups with the most memory bandwidth per node (fastest decode).
            groups.sort_by(|a, b| {
                let ga = &ctx.cluster.nodes[a[0]].gpu;
                let gb = &ctx.cluster.nodes[b[0]].gpu;
                gb.mem_bandwidth_gbs
                    .total_cmp(&ga.mem_bandwidth_gbs)
                    .then(gb.memory_gib.total_cmp(&ga.memory_gib))
            });
            notes.push(format!(
                "{} node groups; ILP restricted to the {MAX_GROUPS} fastest",
                groups.len()
            ));
            groups.truncate(MAX_GROUPS);
        }
        let total_nodes: usize = groups.iter().map(Vec::len).sum();
        let mut best: Option<(f64, Vec<std::ops::Range<usize>>, Vec<usize>)> = None;
        let mut tried = 0;
        let started = std::time::Instant::now();
        let budget = ctx.options.time_limit_s.max(0.05);
        for s in 1..=n.min(total_nodes) {
            let left = budget - started.elapsed().as_secs_f64();
            if left <= 0.0 {
                notes.push(format!("time limit reached after {tried} stage counts"));
                break;
            }
            let ranges = even_ranges(n, s);
            let inst = OdpInstance {
                time: ranges
                    .iter()
                    .map(|r| {
                        groups
                            .iter()
                            .map(|g| {
                                let gpu = &ctx.cluster.nodes[g[0]].gpu;
                                ctx.cost
                                    .fits(gpu, r)
                                    .then(|| ctx.cost.step_time(gpu, r, 1.0, 0.0))
                            })
                            .collect()
                    })
                    .collect(),
                lat: groups
                    .iter()
                    .map(|a| {
                        groups
                            .iter()
                            .map(|b| {
                                let (i, j) = (a[0], *b.last().unwrap_or(&b[0]));
                                if a[0] == b[0] {
                                    0.0
                                } else {
                                    ctx.cluster.link(i, j).latency_s
                                }
                            })
                            .collect()
                    })
                    .collect(),
                log_a: groups
                    .iter()
                    .map(|g| {
                        ctx.cluster.nodes[g[0]]
                            .availability
                            .steady_state()
                            .max(1e-300)
                            .ln()
                    })
                    .collect(),
                count: groups.iter().map(Vec::len).collect(),
                w: ctx.options.odp_latency_weight.clamp(0.0, 1.0),
            };
            let sol = match inst.solve(left / 2.0) {
                Ok(sol) => sol,
                Err(message) if message.to_lowercase().contains("time limit") => {
                    notes.push(format!("ILP for {s} stages hit the time limit"));
                    break;
                }
                Err(message) => {
                    return Err(PlanError::Solver {
                        strategy: self.name().into(),
                        message,
                    });
                }
            };
            let Some((obj, assign)) = sol else { continue };
            tried += 1;
            if best.as_ref().is_none_or(|b| obj > b.0) {
                best = Some((obj, ranges, assign));
            }
            if tried >= 4 {
                break;
            }
        }
        let Some((obj, ranges, assign)) = best else {
            return Err(PlanError::Infeasible {
                strategy: self.name().into(),
                reason: "no even split has a node group for every stage".into(),
            });
        };
        let mut used = vec![0usize; groups.len()];
        let stages: Vec<(std::ops::Range<usize>, Vec<usize>)> = ranges
            .into_iter()
            .zip(&assign)
            .map(|(r, &g)| {
                let node = groups[g][used[g]];
                used[g] += 1;
                (r, vec![node])
            })
            .collect();
        let mut plan = Plan::from_stages(self.name(), ctx.cluster, n, &ctx.model.name, &stages);
        notes.insert(
            0,
            format!("ODP objective {obj:.4} over {} stages", stages.len()),
        );
        plan.notes = notes;
        ctx.finish(plan)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn brute(inst: &OdpInstance) -> Option<f64> {
        let (ns, ng) = (inst.time.len(), inst.count.len());
        let mut best: Option<f64> = None;
        let mut assign = vec![0; ns];
        loop {
            if let Some(o) = inst.objective(&assign) {
                best = Some(best.map_or(o, |b: f64| b.max(o)));
            }
            let mut k = 0;
            loop {
                if k == ns {
                    return best;
                }
                assign[k] += 1;
                if assign[k] < ng {
                    break;
                }
                assign[k] = 0;
                k += 1;
            }
        }
    }

    #[test]
    fn ilp_matches_exhaustive_on_small_instances() {
        let mut seed = 99u64;
        let mut rnd = || {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (seed >> 33) as f64 / (1u64 << 31) as f64
        };
        for case in 0..25 {
            let ns = 1 + (rnd() * 3.0) as usize;
            let ng = 1 + (rnd() * 4.0) as usize;
            let inst = OdpInstance {
                time: (0..ns)
                    .map(|_| {
                        (0..ng)
                            .map(|_| (rnd() > 0.2).then(|| 0.01 + rnd()))
                            .collect()
                    })
                    .collect(),
                lat: (0..ng)
                    .map(|g| {
                        (0..ng)
                            .map(|h| if g == h { 0.0 } else { rnd() * 0.5 })
                            .collect()
                    })
                    .collect(),
                log_a: (0..ng).map(|_| (0.9 + 0.1 * rnd()).ln()).collect(),
                count: (0..ng).map(|_| 1 + (rnd() * 2.0) as usize).collect(),
                w: if case % 3 == 0 {
                    1.0
                } else {
                    0.3 + 0.4 * rnd()
                },
            };
            let ex = brute(&inst);
            let ilp = inst.solve(10.0).unwrap();
            match (ex, ilp) {
                (None, None) => {}
                (Some(e), Some((o, a))) => {
                    assert!(
                        (e - o).abs() < 1e-6,
                        "case {case}: exhaustive {e} vs ilp {o} ({a:?})"
                    );
                }
                (e, i) => panic!("case {case}: exhaustive {e:?} vs ilp {i:?}"),
            }
        }
    }
}
