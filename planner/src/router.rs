//! Paths for new requests, shared with the engine: minimum latency (Dijkstra
//! over node × stage, as Petals' client does), interleaved weighted round robin on
//! the plan's flow (Helix), and least loaded. Each masks replicas that are marked
//! down or have no KV room.

use std::collections::{HashMap, HashSet};

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::cluster::Cluster;
use crate::cost::CostModel;
use crate::plan::Plan;

/// Live state the routers read.
#[derive(Debug, Clone, Default)]
pub struct RouterState {
    /// Nodes marked down.
    pub down: HashSet<String>,
    /// Sequences of KV room left per node (absent: unlimited).
    pub kv_free_seqs: HashMap<String, u32>,
    /// Utilisation per node in [0, 1) (absent: idle).
    pub load: HashMap<String, f64>,
}

impl RouterState {
    /// Whether a node can take a new sequence.
    pub fn usable(&self, node: &str) -> bool {
        !self.down.contains(node) && self.kv_free_seqs.get(node).is_none_or(|&k| k > 0)
    }
    fn load(&self, node: &str) -> f64 {
        self.load.get(node).copied().unwrap_or(0.0).clamp(0.0, 0.95)
    }
}

/// One hop: a node runs stages `first..=last`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hop {
    /// Node id.
    pub node: String,
    /// First stage index.
    pub first: usize,
    /// Last stage index (inclusive).
    pub last: usize,
}

/// Why no path exists.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum RouteError {
    /// Every replica of a stage is down or full.
    #[error("stage {stage} has no usable replica (all down or without KV room)")]
    StageUnavailable {
        /// Stage index.
        stage: usize,
    },
}

/// Which of the routers picks paths: the one choice every executor (engine,
/// simulator) parses and builds, so `--router` means the same everywhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RouterChoice {
    /// [`MinLatency`]: lowest predicted per-token latency (Petals).
    #[default]
    MinLatency,
    /// [`InterleavedWrr`]: smooth weighted round robin on the plan's routing
    /// weights (Helix); uniform weights give round robin.
    InterleavedWrr,
    /// [`LeastLoaded`]: the replica with the fewest active sequences, stage by stage.
    LeastLoaded,
    /// [`ParallaxDp`]: Parallax's phase-2 dynamic program over node spans
    /// (round trip plus per-layer latency, full nodes excluded).
    Parallax,
}

/// A router name that is not one of [`RouterChoice`]'s.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[error(
    "unknown router `{name}` (min-latency, interleaved-wrr (round-robin, wrr), least-loaded, parallax)"
)]
pub struct UnknownRouter {
    /// The name given.
    pub name: String,
}

impl RouterChoice {
    /// Every choice, in the order of the help text.
    pub const ALL: [RouterChoice; 4] = [
        RouterChoice::MinLatency,
        RouterChoice::InterleavedWrr,
        RouterChoice::LeastLoaded,
        RouterChoice::Parallax,
    ];

    /// The router's own name (what [`RouterChoice::parse`] reads back).
    pub fn name(&self) -> &'static str {
        match self {
            RouterChoice::MinLatency => "min-latency",
            RouterChoice::InterleavedWrr => "interleaved-wrr",
            RouterChoice::LeastLoaded => "least-loaded",
            RouterChoice::Parallax => "parallax",
        }
    }

    /// Parses `min-latency`, `interleaved-wrr` (also `round-robin`, `wrr`),
    /// `least-loaded` or `parallax`.
    pub fn parse(name: &str) -> Result<RouterChoice, UnknownRouter> {
        match name.trim() {
            "min-latency" => Ok(RouterChoice::MinLatency),
            "interleaved-wrr" | "round-robin" | "wrr" => Ok(RouterChoice::InterleavedWrr),
            "least-loaded" => Ok(RouterChoice::LeastLoaded),
            "parallax" => Ok(RouterChoice::Parallax),
            other => Err(UnknownRouter { name: other.into() }),
        }
    }

    /// The router over `plan`.
    pub fn build(&self, plan: &Plan, cluster: &Cluster, cost: &CostModel) -> Box<dyn Router> {
        match self {
            RouterChoice::MinLatency => Box::new(MinLatency::new(plan, cluster, cost)),
            RouterChoice::InterleavedWrr => Box::new(InterleavedWrr::new(plan)),
            RouterChoice::LeastLoaded => Box::new(LeastLoaded::new(plan)),
            RouterChoice::Parallax => Box::new(ParallaxDp::new(plan, cluster, cost)),
        }
    }
}

impl std::str::FromStr for RouterChoice {
    type Err = UnknownRouter;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        RouterChoice::parse(s)
    }
}

impl std::fmt::Display for RouterChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The load a node reports to the routers: its running sequences as a share of
/// the sequences one batch holds, below 0.95 (a full node still routes, at a
/// high predicted cost). The engine's sequencer and the simulator both use it.
pub fn router_load(active_sequences: usize, max_batch_sequences: usize) -> f64 {
    (active_sequences as f64 / max_batch_sequences.max(1) as f64).min(0.95)
}

/// Picks a path through the plan's stages for a new request.
pub trait Router {
    /// Name, e.g. `min-latency`.
    fn name(&self) -> &'static str;
    /// One node per stage, merged into hops.
    fn route(&mut self, state: &RouterState) -> Result<Vec<Hop>, RouteError>;
}

fn hops(per_stage: Vec<String>) -> Vec<Hop> {
    let mut out: Vec<Hop> = Vec::new();
    for (s, node) in per_stage.into_iter().enumerate() {
        match out.last_mut() {
            Some(h) if h.node == node => h.last = s,
            _ => out.push(Hop {
                node,
                first: s,
                last: s,
            }),
        }
    }
    out
}

/// Dijkstra (a DP over the layered node × stage graph) on per-token latency:
/// stage time at batch 1 scaled by 1 / (1 − load), plus link time.
pub struct MinLatency {
    plan: Plan,
    cluster: Cluster,
    cost: CostModel,
}

impl MinLatency {
    /// A router over `plan` (it keeps its own copies, so it can live in an operator).
    pub fn new(plan: &Plan, cluster: &Cluster, cost: &CostModel) -> Self {
        MinLatency {
            plan: plan.clone(),
            cluster: cluster.clone(),
            cost: cost.clone(),
        }
    }
}

impl Router for MinLatency {
    fn name(&self) -> &'static str {
        "min-latency"
    }
    fn route(&mut self, state: &RouterState) -> Result<Vec<Hop>, RouteError> {
        let mut prev: Vec<(f64, Option<usize>)> = Vec::new();
        let mut back: Vec<Vec<Option<usize>>> = Vec::new();
        for (s, st) in self.plan.stages.iter().enumerate() {
            let mut cur = Vec::new();
            let mut b = Vec::new();
            for r in &st.replicas {
                let Some(i) = self
                    .cluster
                    .index_of(&r.node)
                    .filter(|_| state.usable(&r.node))
                else {
                    cur.push((f64::INFINITY, None));
                    b.push(None);
                    continue;
                };
                let gpu = &self.cluster.nodes[i].gpu;
                let t =
                    self.cost.step_time(gpu, &st.layers(), 1.0, 0.0) / (1.0 - state.load(&r.node));
                if s == 0 {
                    cur.push((t, Some(i)));
                    b.push(None);
                    continue;
                }
                let mut best = (f64::INFINITY, None);
                for (k, &(d, from)) in prev.iter().enumerate() {
                    let Some(j) = from else { continue };
                    let link =
                        self.cost
                            .link_time(&self.cluster.link(j, i), st.start as usize, 1.0);
                    if d + link < best.0 {
                        best = (d + link, Some(k));
                    }
                }
                cur.push((best.0 + t, Some(i)));
                b.push(best.1);
            }
            if cur.iter().all(|c| c.0.is_infinite()) {
                return Err(RouteError::StageUnavailable { stage: s });
            }
            prev = cur;
            back.push(b);
        }
        let (mut k, _) = prev
            .iter()
            .enumerate()
            .min_by(|a, b| a.1.0.total_cmp(&b.1.0))
            .ok_or(RouteError::StageUnavailable { stage: 0 })?;
        let mut path = vec![String::new(); self.plan.stages.len()];
        for s in (0..self.plan.stages.len()).rev() {
            path[s] = self.plan.stages[s].replicas[k].node.clone();
            if s > 0 {
                k = back[s][k].ok_or(RouteError::StageUnavailable { stage: s })?;
            }
        }
        Ok(hops(path))
    }
}

/// Smooth weighted round robin (nginx's): each pick adds weights to current
/// scores, takes the largest, and subtracts the total from it.
#[derive(Debug, Default, Clone)]
struct Swrr {
    current: HashMap<String, f64>,
}

impl Swrr {
    fn pick(&mut self, options: &[(String, f64)]) -> Option<String> {
        let total: f64 = options.iter().map(|o| o.1).sum();
        if options.is_empty() {
            return None;
        }
        let mut best: Option<(&str, f64)> = None;
        for (n, w) in options {
            let c = self.current.entry(n.clone()).or_insert(0.0);
            *c += if total > 0.0 { *w } else { 1.0 };
            if best.is_none_or(|b| *c > b.1) {
                best = Some((n.as_str(), *c));
            }
        }
        let chosen = best?.0.to_string();
        if let Some(c) = self.current.get_mut(&chosen) {
            *c -= if total > 0.0 {
                total
            } else {
                options.len() as f64
            };
        }
        Some(chosen)
    }
}

/// Helix's interleaved weighted round robin over the plan's flow: stage-0
/// replica by weight, then each replica's next hops by weight.
pub struct InterleavedWrr {
    plan: Plan,
    entry: Swrr,
    per_hop: HashMap<(usize, String), Swrr>,
}

impl InterleavedWrr {
    /// A router over `plan` (weights from [`crate::flow::assign_routing`]).
    pub fn new(plan: &Plan) -> Self {
        InterleavedWrr {
            plan: plan.clone(),
            entry: Swrr::default(),
            per_hop: HashMap::new(),
        }
    }
}

impl Router for InterleavedWrr {
    fn name(&self) -> &'static str {
        "interleaved-wrr"
    }
    fn route(&mut self, state: &RouterState) -> Result<Vec<Hop>, RouteError> {
        let first: Vec<(String, f64)> = self.plan.stages[0]
            .replicas
            .iter()
            .filter(|r| state.usable(&r.node))
            .map(|r| (r.node.clone(), r.weight))
            .collect();
        let mut node = self
            .entry
            .pick(&first)
            .ok_or(RouteError::StageUnavailable { stage: 0 })?;
        let mut path = vec![node.clone()];
        for s in 1..self.plan.stages.len() {
            let prev = &self.plan.stages[s - 1];
            let rep = prev.replicas.iter().find(|r| r.node == node);
            let mut options: Vec<(String, f64)> = rep
                .map(|r| {
                    r.next
                        .iter()
                        .filter(|h| state.usable(&h.node))
                        .map(|h| (h.node.clone(), h.weight))
                        .collect()
                })
                .unwrap_or_default();
            if options.is_empty() {
                // Planned hops are all masked: any usable replica of the stage.
                options = self.plan.stages[s]
                    .replicas
                    .iter()
                    .filter(|r| state.usable(&r.node))
                    .map(|r| (r.node.clone(), r.weight))
                    .collect();
            }
            node = self
                .per_hop
                .entry((s, node.clone()))
                .or_default()
                .pick(&options)
                .ok_or(RouteError::StageUnavailable { stage: s })?;
            path.push(node.clone());
        }
        Ok(hops(path))
    }
}

/// Parallax's phase-2 router (GradientHQ/parallax `src/scheduling/request_routing.py`,
/// `DynamicProgrammingRouting.find_optimal_path`, at commit 162354a0): a
/// dynamic program over node spans, `dp[v] = min_u dp[u] + rtt(u, v) + lat(v)`,
/// where `lat(v)` is the node's per-layer decode latency (Parallax's roofline
/// estimate, here the cost model's step time at batch 1 over the span's
/// layers, divided by them, counted once per node as Parallax's code does)
/// plus its load compensator (0.05 ms × load), and a full node
/// (load ≥ 0.95, Parallax's `current_requests >= max_requests`) is excluded.
/// Where spans overlap (plans of other strategies), a hop may enter the next
/// node in the middle of its span; Parallax's own plans tile exactly.
pub struct ParallaxDp {
    plan: Plan,
    /// Per node of the plan: (cluster index, first stage, last stage, per-layer latency s),
    /// sorted by last stage.
    spans: Vec<(usize, usize, usize, f64)>,
    /// `by_last[s]`: the spans (indices into `spans`) whose last stage is `s`.
    by_last: Vec<Vec<usize>>,
    cluster: Cluster,
}

/// Parallax's `load_compensator`, seconds at full load.
const PARALLAX_LOAD_COMPENSATOR_S: f64 = 0.05e-3;

impl ParallaxDp {
    /// A router over `plan` (it keeps its own copies, so it can live in an operator).
    pub fn new(plan: &Plan, cluster: &Cluster, cost: &CostModel) -> Self {
        let mut spans = Vec::new();
        for (id, first, last) in plan.node_stage_spans() {
            let Some(i) = cluster.index_of(&id) else {
                continue;
            };
            let layers = plan.stages[first].start as usize..plan.stages[last].end as usize;
            let per_layer = cost.step_time(&cluster.nodes[i].gpu, &layers, 1.0, 0.0)
                / layers.len().max(1) as f64;
            spans.push((i, first, last, per_layer));
        }
        // By last stage: a node's predecessors end before it does.
        spans.sort_by_key(|s| (s.2, s.1, s.0));
        let mut by_last = vec![Vec::new(); plan.stages.len()];
        for (k, s) in spans.iter().enumerate() {
            if let Some(b) = by_last.get_mut(s.2) {
                b.push(k);
            }
        }
        ParallaxDp {
            plan: plan.clone(),
            spans,
            by_last,
            cluster: cluster.clone(),
        }
    }
}

impl Router for ParallaxDp {
    fn name(&self) -> &'static str {
        "parallax"
    }
    fn route(&mut self, state: &RouterState) -> Result<Vec<Hop>, RouteError> {
        let stages = self.plan.stages.len();
        let n = self.spans.len();
        // dp[v] = (cost, predecessor, entry stage)
        let mut dp: Vec<(f64, Option<usize>, usize)> = vec![(f64::INFINITY, None, 0); n];
        for v in 0..n {
            let (i, first, last, per_layer) = self.spans[v];
            let id = &self.cluster.nodes[i].id;
            let load = state.load(id);
            if !state.usable(id) || load >= 0.95 {
                continue;
            }
            let lat = per_layer + PARALLAX_LOAD_COMPENSATOR_S * load;
            if first == 0 {
                dp[v] = (lat, None, 0);
            }
            // Predecessors end just before a stage of v's span.
            let preds = (first.max(1) - 1..last).flat_map(|e| self.by_last[e].iter().copied());
            for u in preds {
                let (j, _, last_u, _) = self.spans[u];
                let entry = last_u + 1;
                if dp[u].0.is_infinite() || entry < first || j == i {
                    continue;
                }
                let rtt = 2.0 * self.cluster.link(j, i).latency_s;
                let c = dp[u].0 + rtt + lat;
                if c < dp[v].0 {
                    dp[v] = (c, Some(u), entry);
                }
            }
        }
        let end = (0..n)
            .filter(|&v| self.spans[v].2 + 1 == stages && dp[v].0.is_finite())
            .min_by(|&a, &b| dp[a].0.total_cmp(&dp[b].0))
            .ok_or_else(|| {
                // The first stage no usable node can start.
                let stage = (0..stages)
                    .find(|&s| {
                        !self.plan.stages[s]
                            .replicas
                            .iter()
                            .any(|r| state.usable(&r.node) && state.load(&r.node) < 0.95)
                    })
                    .unwrap_or(0);
                RouteError::StageUnavailable { stage }
            })?;
        let mut path = vec![String::new(); stages];
        let mut v = Some(end);
        while let Some(k) = v {
            let (i, _, last, _) = self.spans[k];
            for p in path.iter_mut().take(last + 1).skip(dp[k].2) {
                *p = self.cluster.nodes[i].id.clone();
            }
            v = dp[k].1;
        }
        Ok(hops(path))
    }
}

/// Least loaded: at each stage, the usable replica with the lowest load, staying
/// on the same node when it holds the next stage and is no more loaded.
pub struct LeastLoaded {
    plan: Plan,
}

impl LeastLoaded {
    /// A router over `plan`.
    pub fn new(plan: &Plan) -> Self {
        LeastLoaded { plan: plan.clone() }
    }
}

impl Router for LeastLoaded {
    fn name(&self) -> &'static str {
        "least-loaded"
    }
    fn route(&mut self, state: &RouterState) -> Result<Vec<Hop>, RouteError> {
        let mut path: Vec<String> = Vec::new();
        for (s, st) in self.plan.stages.iter().enumerate() {
            let best = st
                .replicas
                .iter()
                .filter(|r| state.usable(&r.node))
                .min_by(|a, b| {
                    let stay = |n: &str| {
                        if path.last().is_some_and(|p| p == n) {
                            0
                        } else {
                            1
                        }
                    };
                    state
                        .load(&a.node)
                        .total_cmp(&state.load(&b.node))
                        .then(stay(&a.node).cmp(&stay(&b.node)))
                })
                .ok_or(RouteError::StageUnavailable { stage: s })?;
            path.push(best.node.clone());
        }
        Ok(hops(path))
    }
}
