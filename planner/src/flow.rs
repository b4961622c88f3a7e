//! The max-flow throughput of a plan: tokens per second from the first stage to
//! the last through node capacities (decode capacity of each node's span) and
//! link capacities (bandwidth / activation bytes). Plans where every node holds
//! one stage use Dinic's algorithm; plans with multi-stage spans use an LP where
//! a node's capacity is shared in layer-tokens across its stages.

use std::collections::{BTreeMap, HashMap, VecDeque};

use good_lp::{Expression, Variable, constraint, variable, variables};

use crate::cluster::Cluster;
use crate::cost::CostModel;
use crate::plan::{NextHop, Plan};

/// How the throughput was computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlowMethod {
    /// Exact max flow (Dinic).
    Dinic,
    /// Exact LP with shared node capacity.
    Lp,
    /// Approximation for very large multi-stage plans: min over stages of the
    /// summed capacity of the nodes holding it (Petals' swarm formula; links ignored).
    StageBound,
}

/// The max flow of a plan and how it splits.
#[derive(Debug, Clone)]
pub struct FlowResult {
    /// Decode tokens per second through the whole pipeline.
    pub throughput: f64,
    /// Method used.
    pub method: FlowMethod,
    /// Tokens per second through each replica of each stage (`[stage][replica]`).
    pub through: Vec<Vec<f64>>,
    /// Transitions `(stage, from replica, to replica in stage + 1, tokens/s)`
    /// that carry flow, in that order (the LP lists every transition).
    pub edges: Vec<(usize, usize, usize, f64)>,
}

/// Capacity of each node of the plan, tokens/s through its whole span, by node id.
pub fn node_capacities(plan: &Plan, cluster: &Cluster, cm: &CostModel) -> HashMap<String, f64> {
    plan.node_layers()
        .into_iter()
        .map(|(id, r)| {
            let cap = cluster
                .node(&id)
                .map(|n| cm.decode_capacity(&n.gpu, &r))
                .unwrap_or(0.0);
            (id, cap)
        })
        .collect()
}

/// Computes the plan's max flow.
pub fn max_flow(plan: &Plan, cluster: &Cluster, cm: &CostModel) -> FlowResult {
    let caps = node_capacities(plan, cluster, cm);
    let single = plan.node_stage_spans().iter().all(|(_, a, b)| a == b);
    if single {
        return dinic_flow(plan, cluster, cm, &caps);
    }
    let edges: usize = plan
        .stages
        .windows(2)
        .map(|w| w[0].replicas.len() * w[1].replicas.len())
        .sum();
    if edges <= 20_000
        && let Some(r) = lp_flow(plan, cluster, cm, &caps)
    {
        return r;
    }
    stage_bound(plan, &caps)
}

/// Sets replica weights and next hops from the max flow; returns the flow.
pub fn assign_routing(plan: &mut Plan, cluster: &Cluster, cm: &CostModel) -> FlowResult {
    let f = max_flow(plan, cluster, cm);
    for (s, st) in plan.stages.iter_mut().enumerate() {
        let total: f64 = f.through[s].iter().sum();
        let k = st.replicas.len() as f64;
        for (r, rep) in st.replicas.iter_mut().enumerate() {
            rep.weight = if total > 0.0 {
                f.through[s][r] / total
            } else {
                1.0 / k
            };
            rep.next.clear();
        }
    }
    let mut hops: HashMap<(usize, usize), Vec<(usize, f64)>> = HashMap::new();
    for &(s, a, b, v) in &f.edges {
        if v > 1e-9 {
            hops.entry((s, a)).or_default().push((b, v));
        }
    }
    for s in 0..plan.stages.len().saturating_sub(1) {
        for a in 0..plan.stages[s].replicas.len() {
            // A replica the flow does not use keeps an empty list: routers then
            // pick any usable replica of the next stage by its weight. Listing
            // them all here would cost replicas² hops (gigabytes at thousands of nodes).
            let list = hops.remove(&(s, a)).unwrap_or_default();
            let total: f64 = list.iter().map(|x| x.1).sum();
            let next: Vec<NextHop> = if total > 0.0 {
                list.iter()
                    .map(|&(b, v)| NextHop {
                        node: plan.stages[s + 1].replicas[b].node.clone(),
                        weight: v / total,
                    })
                    .collect()
            } else {
                Vec::new()
            };
            plan.stages[s].replicas[a].next = next;
        }
    }
    f
}

fn link_cap(plan: &Plan, cluster: &Cluster, cm: &CostModel, s: usize, a: &str, b: &str) -> f64 {
    if a == b {
        return f64::INFINITY;
    }
    match (cluster.index_of(a), cluster.index_of(b)) {
        (Some(i), Some(j)) => cm.link_capacity(&cluster.link(i, j), plan.stages[s].end as usize),
        _ => 0.0,
    }
}

/// Petals' swarm formula: min over stages of the summed capacity of the nodes
/// holding the stage (exact, links aside, when each node serves its whole span).
fn stage_bound(plan: &Plan, caps: &HashMap<String, f64>) -> FlowResult {
    let mut through = Vec::new();
    let mut t = f64::INFINITY;
    for st in &plan.stages {
        let v: Vec<f64> = st
            .replicas
            .iter()
            .map(|r| caps.get(&r.node).copied().unwrap_or(0.0))
            .collect();
        t = t.min(v.iter().sum());
        through.push(v);
    }
    FlowResult {
        throughput: if t.is_finite() { t } else { 0.0 },
        method: FlowMethod::StageBound,
        through,
        edges: Vec::new(),
    }
}

fn lp_flow(
    plan: &Plan,
    cluster: &Cluster,
    cm: &CostModel,
    caps: &HashMap<String, f64>,
) -> Option<FlowResult> {
    let ns = plan.stages.len();
    let mut vars = variables!();
    let mut src: Vec<Variable> = Vec::new();
    let mut edges: Vec<(usize, usize, usize, Variable)> = Vec::new();
    let mut sink: Vec<Variable> = Vec::new();
    let mut cons = Vec::new();
    for _ in &plan.stages[0].replicas {
        src.push(vars.add(variable().min(0.0)));
    }
    for s in 0..ns.saturating_sub(1) {
        for (a, ra) in plan.stages[s].replicas.iter().enumerate() {
            for (b, rb) in plan.stages[s + 1].replicas.iter().enumerate() {
                let cap = link_cap(plan, cluster, cm, s, &ra.node, &rb.node);
                let v = if cap.is_finite() {
                    vars.add(variable().min(0.0).max(cap))
                } else {
                    vars.add(variable().min(0.0))
                };
                edges.push((s, a, b, v));
            }
        }
    }
    for _ in &plan.stages[ns - 1].replicas {
        sink.push(vars.add(variable().min(0.0)));
    }
    // inflow expressions per (stage, replica)
    let mut inflow: Vec<Vec<Expression>> = plan
        .stages
        .iter()
        .map(|st| vec![Expression::from(0.0); st.replicas.len()])
        .collect();
    let mut outflow = inflow.clone();
    for (k, v) in src.iter().enumerate() {
        inflow[0][k] += *v;
    }
    for &(s, a, b, v) in &edges {
        outflow[s][a] += v;
        inflow[s + 1][b] += v;
    }
    for (k, v) in sink.iter().enumerate() {
        outflow[ns - 1][k] += *v;
    }
    let mut usage: BTreeMap<&str, Expression> = BTreeMap::new();
    for (s, st) in plan.stages.iter().enumerate() {
        let len = (st.end - st.start) as f64;
        for (k, r) in st.replicas.iter().enumerate() {
            cons.push(constraint!(inflow[s][k].clone() == outflow[s][k].clone()));
            *usage
                .entry(r.node.as_str())
                .or_insert_with(|| Expression::from(0.0)) += inflow[s][k].clone() * len;
        }
    }
    // Home links: bytes sent to / received from other nodes share the node's uplink / downlink.
    let mut sent: BTreeMap<&str, Expression> = BTreeMap::new();
    let mut received: BTreeMap<&str, Expression> = BTreeMap::new();
    for &(s, a, b, v) in &edges {
        let (na, nb) = (
            &plan.stages[s].replicas[a].node,
            &plan.stages[s + 1].replicas[b].node,
        );
        if na == nb {
            continue;
        }
        let bytes = cm.activation_bytes(plan.stages[s].end as usize);
        *sent
            .entry(na.as_str())
            .or_insert_with(|| Expression::from(0.0)) += bytes * v;
        *received
            .entry(nb.as_str())
            .or_insert_with(|| Expression::from(0.0)) += bytes * v;
    }
    for (node, e) in sent {
        if let Some(up) = cluster.node(node).and_then(|n| n.uplink_bps) {
            cons.push(constraint!(e <= up));
        }
    }
    for (node, e) in received {
        if let Some(down) = cluster.node(node).and_then(|n| n.downlink_bps) {
            cons.push(constraint!(e <= down));
        }
    }
    let layers: HashMap<String, f64> = plan
        .node_layers()
        .into_iter()
        .map(|(n, r)| (n, r.len() as f64))
        .collect();
    for (node, u) in usage {
        let cap = caps.get(node).copied().unwrap_or(0.0) * layers.get(node).copied().unwrap_or(0.0);
        cons.push(constraint!(u <= cap));
    }
    let objective: Expression = src.iter().copied().sum();
    let mut wanted: Vec<Variable> = src.clone();
    wanted.extend(edges.iter().map(|e| e.3));
    let out = crate::lp::maximise(vars, objective, cons, &wanted, 10.0, Vec::new()).ok()?;
    let vals = out.values;
    let mut through: Vec<Vec<f64>> = plan
        .stages
        .iter()
        .map(|st| vec![0.0; st.replicas.len()])
        .collect();
    for k in 0..src.len() {
        through[0][k] = vals[k].max(0.0);
    }
    let mut res_edges = Vec::new();
    for (e, &(s, a, b, _)) in edges.iter().enumerate() {
        let v = vals[src.len() + e].max(0.0);
        through[s + 1][b] += v;
        res_edges.push((s, a, b, v));
    }
    Some(FlowResult {
        throughput: vals[..src.len()].iter().map(|v| v.max(0.0)).sum(),
        method: FlowMethod::Lp,
        through,
        edges: res_edges,
    })
}

fn dinic_flow(
    plan: &Plan,
    cluster: &Cluster,
    cm: &CostModel,
    caps: &HashMap<String, f64>,
) -> FlowResult {
    let mut g = Dinic::default();
    let (s, t) = (g.vertex(), g.vertex());
    let mut ids: Vec<Vec<(usize, usize)>> = Vec::new();
    // Per replica: (in, out, ingress, egress); home links cap ingress -> in and out -> egress.
    let mut gates: Vec<Vec<(usize, usize)>> = Vec::new();
    for st in &plan.stages {
        let mut row = Vec::new();
        let mut grow = Vec::new();
        for r in &st.replicas {
            let (i, o) = (g.vertex(), g.vertex());
            g.edge(i, o, caps.get(&r.node).copied().unwrap_or(0.0));
            let node = cluster.node(&r.node);
            let (ing, eg) = (g.vertex(), g.vertex());
            let down = node
                .and_then(|n| n.downlink_bps)
                .map(|b| b / cm.activation_bytes(st.start as usize))
                .unwrap_or(f64::INFINITY);
            let up = node
                .and_then(|n| n.uplink_bps)
                .map(|b| b / cm.activation_bytes(st.end as usize))
                .unwrap_or(f64::INFINITY);
            g.edge(ing, i, down);
            g.edge(o, eg, up);
            row.push((i, o));
            grow.push((ing, eg));
        }
        ids.push(row);
        gates.push(grow);
    }
    let inf = f64::INFINITY;
    for &(i, _) in &ids[0] {
        g.edge(s, i, inf);
    }
    let last = ids.len() - 1;
    for &(_, o) in &ids[last] {
        g.edge(o, t, inf);
    }
    // Every replica of a stage to every replica of the next: a block whose
    // capacities are computed when needed (links between nodes of the cluster).
    for si in 0..last {
        let node_of = |st: &crate::plan::Stage| -> Vec<Option<usize>> {
            st.replicas
                .iter()
                .map(|r| cluster.index_of(&r.node))
                .collect()
        };
        let (ra, rb) = (&plan.stages[si].replicas, &plan.stages[si + 1].replicas);
        let (from, to) = (node_of(&plan.stages[si]), node_of(&plan.stages[si + 1]));
        let end = plan.stages[si].end as usize;
        // As `link_cap`, with the node indices looked up once.
        let cap = move |a: usize, b: usize| -> f64 {
            match (from[a], to[b]) {
                (Some(i), Some(j)) if i == j => f64::INFINITY,
                (Some(i), Some(j)) => cm.link_capacity(&cluster.link(i, j), end),
                _ if ra[a].node == rb[b].node => f64::INFINITY,
                _ => 0.0,
            }
        };
        let sources = gates[si].iter().map(|x| x.1).collect();
        let sinks = gates[si + 1].iter().map(|x| x.0).collect();
        g.block(sources, sinks, Box::new(cap));
    }
    let total = g.run(s, t);
    let through = ids
        .iter()
        .map(|row| row.iter().map(|&(i, _)| g.inflow_through(i)).collect())
        .collect();
    let edges = g.block_flows();
    FlowResult {
        throughput: total,
        method: FlowMethod::Dinic,
        through,
        edges,
    }
}

/// A complete bipartite set of edges, every source to every sink, whose
/// capacities come from a function: memory for the edges that carry flow
/// only, where explicit edges between stages of 5,000 replicas each would
/// take 25 million.
struct Block<'c> {
    /// Vertex of each source.
    sources: Vec<usize>,
    /// Vertex of each sink.
    sinks: Vec<usize>,
    /// Capacity of the edge from source `a` to sink `b`.
    cap: Box<dyn Fn(usize, usize) -> f64 + 'c>,
    /// Residuals (forward, reverse) of the edges flow has used, by `a * sinks + b`.
    used: HashMap<usize, (f64, f64), crate::fx_hash::FxBuild>,
    /// Per source: how many of its edges are in `used`.
    used_from: Vec<u32>,
    /// Per sink: the sources of its edges in `used`, ascending.
    used_to: Vec<Vec<u32>>,
}

impl Block<'_> {
    fn forward(&self, a: usize, b: usize) -> f64 {
        if self.used_from[a] > 0
            && let Some(r) = self.used.get(&(a * self.sinks.len() + b))
        {
            return r.0;
        }
        (self.cap)(a, b)
    }
    fn reverse(&self, a: usize, b: usize) -> f64 {
        self.used
            .get(&(a * self.sinks.len() + b))
            .map_or(0.0, |r| r.1)
    }
    /// Moves `d` from the forward residual to the reverse one (negative: back).
    fn push(&mut self, a: usize, b: usize, d: f64, forward: bool) {
        let key = a * self.sinks.len() + b;
        let r = match self.used.get_mut(&key) {
            Some(r) => r,
            None => {
                let c = (self.cap)(a, b);
                self.used_from[a] += 1;
                let col = &mut self.used_to[b];
                let at = col.partition_point(|&x| (x as usize) < a);
                col.insert(at, a as u32);
                self.used.entry(key).or_insert((c, 0.0))
            }
        };
        if forward {
            r.0 -= d;
            r.1 += d;
        } else {
            r.1 -= d;
            r.0 += d;
        }
    }
}

/// Where a vertex sits in a block: the source side (its edges to every sink
/// follow its explicit edges) or the sink side (the reverses of every
/// source's edge to it follow its explicit edges).
#[derive(Clone, Copy)]
enum Side {
    Source { block: usize, a: usize },
    Sink { block: usize, b: usize },
}

/// One edge as Dinic's search sees it.
#[derive(Clone, Copy)]
enum Arc {
    Explicit(usize),
    Forward { block: usize, a: usize, b: usize },
    Reverse { block: usize, a: usize, b: usize },
}

/// Dinic's max-flow over f64 capacities, with explicit edges (a residual pair
/// each, `e ^ 1` the reverse of `e`) and [`Block`]s. A vertex's adjacency is
/// its explicit edges, then its block edges in index order, which is the
/// order the same edges would have if they were explicit and added last.
#[derive(Default)]
struct Dinic<'c> {
    adj: Vec<Vec<usize>>,
    side: Vec<Option<Side>>,
    to: Vec<usize>,
    cap: Vec<f64>,
    blocks: Vec<Block<'c>>,
    level: Vec<i64>,
    it: Vec<usize>,
}

const EPS: f64 = 1e-9;

impl<'c> Dinic<'c> {
    fn vertex(&mut self) -> usize {
        self.adj.push(Vec::new());
        self.side.push(None);
        self.adj.len() - 1
    }
    fn edge(&mut self, a: usize, b: usize, c: f64) -> usize {
        let id = self.to.len();
        self.to.push(b);
        self.cap.push(c);
        self.adj[a].push(id);
        self.to.push(a);
        self.cap.push(0.0);
        self.adj[b].push(id + 1);
        id
    }
    /// Adds an edge from every one of `sources` to every one of `sinks` with
    /// capacity `cap(a, b)`; each vertex is in one block at most and gets no
    /// explicit edge after it.
    fn block(
        &mut self,
        sources: Vec<usize>,
        sinks: Vec<usize>,
        cap: Box<dyn Fn(usize, usize) -> f64 + 'c>,
    ) {
        let block = self.blocks.len();
        for (a, &v) in sources.iter().enumerate() {
            self.side[v] = Some(Side::Source { block, a });
        }
        for (b, &v) in sinks.iter().enumerate() {
            self.side[v] = Some(Side::Sink { block, b });
        }
        self.blocks.push(Block {
            used: HashMap::default(),
            used_from: vec![0; sources.len()],
            used_to: vec![Vec::new(); sinks.len()],
            sources,
            sinks,
            cap,
        });
    }
    /// Edges of `v` in adjacency order: explicit ones, then its block's.
    fn degree(&self, v: usize) -> usize {
        self.adj[v].len()
            + match self.side[v] {
                None => 0,
                Some(Side::Source { block, .. }) => self.blocks[block].sinks.len(),
                Some(Side::Sink { block, .. }) => self.blocks[block].sources.len(),
            }
    }
    fn arc(&self, v: usize, k: usize) -> Arc {
        let n = self.adj[v].len();
        if k < n {
            return Arc::Explicit(self.adj[v][k]);
        }
        match self.side[v] {
            Some(Side::Source { block, a }) => Arc::Forward { block, a, b: k - n },
            Some(Side::Sink { block, b }) => Arc::Reverse { block, a: k - n, b },
            None => unreachable!("k < degree"),
        }
    }
    fn head(&self, e: Arc) -> usize {
        match e {
            Arc::Explicit(e) => self.to[e],
            Arc::Forward { block, b, .. } => self.blocks[block].sinks[b],
            Arc::Reverse { block, a, .. } => self.blocks[block].sources[a],
        }
    }
    fn residual(&self, e: Arc) -> f64 {
        match e {
            Arc::Explicit(e) => self.cap[e],
            Arc::Forward { block, a, b } => self.blocks[block].forward(a, b),
            Arc::Reverse { block, a, b } => self.blocks[block].reverse(a, b),
        }
    }
    fn augment(&mut self, e: Arc, d: f64) {
        match e {
            Arc::Explicit(e) => {
                self.cap[e] -= d;
                self.cap[e ^ 1] += d;
            }
            Arc::Forward { block, a, b } => self.blocks[block].push(a, b, d, true),
            Arc::Reverse { block, a, b } => self.blocks[block].push(a, b, d, false),
        }
    }
    /// The first position at or after `k` in `v`'s adjacency that can have
    /// residual capacity: block reverses of unused edges have none.
    fn skip_empty(&self, v: usize, k: usize) -> usize {
        let n = self.adj[v].len();
        match self.side[v] {
            Some(Side::Sink { block, b }) if k >= n => {
                let col = &self.blocks[block].used_to[b];
                let at = col.partition_point(|&x| (x as usize) < k - n);
                col.get(at).map_or(self.degree(v), |&a| n + a as usize)
            }
            _ => k,
        }
    }
    /// Tokens/s on every used block edge: `(block, source, sink, flow)`, in
    /// block, source and sink order.
    fn block_flows(&self) -> Vec<(usize, usize, usize, f64)> {
        let mut out = Vec::new();
        for (k, bl) in self.blocks.iter().enumerate() {
            let mut used: Vec<(usize, f64)> = bl.used.iter().map(|(&key, r)| (key, r.1)).collect();
            used.sort_unstable_by_key(|x| x.0);
            let m = bl.sinks.len();
            out.extend(used.into_iter().map(|(key, f)| (k, key / m, key % m, f)));
        }
        out
    }
    fn inflow_through(&self, v: usize) -> f64 {
        // v is an "in" vertex whose first edge is in -> out.
        self.adj[v].first().map(|&e| self.cap[e + 1]).unwrap_or(0.0)
    }
    fn bfs(&mut self, s: usize, t: usize) -> bool {
        self.level = vec![-1; self.adj.len()];
        self.level[s] = 0;
        let mut q = VecDeque::from([s]);
        while let Some(v) = q.pop_front() {
            // Levels are distances, whatever the order the edges are looked at.
            let mut visit = |dinic: &mut Self, e: Arc| {
                let w = dinic.head(e);
                if dinic.level[w] < 0 && dinic.residual(e) > EPS {
                    dinic.level[w] = dinic.level[v] + 1;
                    q.push_back(w);
                }
            };
            for k in 0..self.adj[v].len() {
                visit(self, Arc::Explicit(self.adj[v][k]));
            }
            match self.side[v] {
                None => {}
                Some(Side::Source { block, a }) => {
                    for b in 0..self.blocks[block].sinks.len() {
                        visit(self, Arc::Forward { block, a, b });
                    }
                }
                Some(Side::Sink { block, b }) => {
                    for k in 0..self.blocks[block].used_to[b].len() {
                        let a = self.blocks[block].used_to[b][k] as usize;
                        visit(self, Arc::Reverse { block, a, b });
                    }
                }
            }
        }
        self.level[t] >= 0
    }
    fn dfs(&mut self, v: usize, t: usize, f: f64) -> f64 {
        if v == t {
            return f;
        }
        let degree = self.degree(v);
        loop {
            self.it[v] = self.skip_empty(v, self.it[v]);
            if self.it[v] >= degree {
                break;
            }
            let e = self.arc(v, self.it[v]);
            let w = self.head(e);
            if self.level[w] == self.level[v] + 1 {
                let c = self.residual(e);
                if c > EPS {
                    let d = self.dfs(w, t, f.min(c));
                    if d > EPS {
                        self.augment(e, d);
                        return d;
                    }
                }
            }
            self.it[v] += 1;
        }
        0.0
    }
    fn run(&mut self, s: usize, t: usize) -> f64 {
        let mut total = 0.0;
        let mut rounds = 0;
        while self.bfs(s, t) && rounds < 10_000 {
            rounds += 1;
            self.it = vec![0; self.adj.len()];
            loop {
                let f = self.dfs(s, t, f64::INFINITY);
                if f <= EPS || !f.is_finite() {
                    break;
                }
                total += f;
            }
        }
        total
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::options::PlanOptions;
    use crate::presets;

    fn setup(bw_gbps: f64) -> (Cluster, CostModel, Plan) {
        let text = format!(
            r#"
[link_defaults]
intra_site = {{ latency_ms = 0.1, bandwidth_gbps = {bw_gbps} }}
[[nodes]]
id = "a"
gpu = "RTX4090"
count = 2
site = "s"
region = "r"
[[nodes]]
id = "b"
gpu = "A100-80GB"
site = "s"
region = "r"
"#
        );
        let c = Cluster::from_toml_str(&text).unwrap();
        let m = presets::model("Llama-3-8B").unwrap();
        let cm = CostModel::new(&m, &PlanOptions::default());
        let plan = Plan::from_stages(
            "t",
            &c,
            32,
            &m.name,
            &[(0..16, vec![0, 1]), (16..32, vec![2])],
        );
        (c, cm, plan)
    }

    #[test]
    fn dinic_is_min_of_stage_capacities_when_links_are_fast() {
        let (c, cm, plan) = setup(100.0);
        let caps = node_capacities(&plan, &c, &cm);
        let f = max_flow(&plan, &c, &cm);
        assert_eq!(f.method, FlowMethod::Dinic);
        let expect = (caps["a-0"] + caps["a-1"]).min(caps["b"]);
        assert!(
            (f.throughput - expect).abs() < 1e-6 * expect,
            "{} vs {expect}",
            f.throughput
        );
    }

    #[test]
    fn slow_links_bind_and_lp_agrees_with_dinic() {
        // 0.01 Gbit/s: 1.25e6 B/s / 8192 B per token = 152.6 tok/s per link, and each
        // generated token carries (512 + 128) / 128 tokens of activations.
        let (c, cm, plan) = setup(0.01);
        let f = max_flow(&plan, &c, &cm);
        let w = PlanOptions::default().workload;
        let share = 1.0 + w.prompt_tokens as f64 / w.output_tokens as f64;
        let per_link = 0.01e9 / 8.0 / cm.activation_bytes(16) / share;
        assert!(
            (f.throughput - 2.0 * per_link).abs() < 1e-6 * per_link,
            "{}",
            f.throughput
        );
        let caps = node_capacities(&plan, &c, &cm);
        let lp = lp_flow(&plan, &c, &cm, &caps).unwrap();
        assert!(
            (lp.throughput - f.throughput).abs() < 1e-4 * f.throughput,
            "{} vs {}",
            lp.throughput,
            f.throughput
        );
    }
}
