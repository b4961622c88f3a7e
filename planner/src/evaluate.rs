//! Evaluating a plan: max-flow throughput bound, predicted TTFT and inter-token
//! latency at a load, availability, expected recovery cost per hour, network
//! bytes per token and memory use per node.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::cluster::Cluster;
use crate::cost::CostModel;
use crate::error::GIB;
use crate::flow::{FlowMethod, max_flow};
use crate::options::PlanOptions;
use crate::plan::Plan;
use crate::profile::ModelProfile;

/// Memory use of one node at the evaluated load.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeMemory {
    /// Node id.
    pub node: String,
    /// Layers it holds.
    pub layers: u32,
    /// Weights plus KV at the evaluated batch, GiB.
    pub used_gib: f64,
    /// Usable memory, GiB.
    pub capacity_gib: f64,
}

/// The figures of one plan.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Evaluation {
    /// Strategy of the plan.
    pub strategy: String,
    /// Nodes taking part.
    pub nodes_used: usize,
    /// Stages.
    pub stages: usize,
    /// Max-flow decode throughput bound, tokens/s.
    pub throughput_tok_s: f64,
    /// `dinic`, `lp` or `stage-bound`.
    pub flow_method: String,
    /// Load at which latencies are predicted, tokens/s.
    pub load_tok_s: f64,
    /// Predicted time to first token, seconds.
    pub ttft_s: f64,
    /// Predicted inter-token latency, seconds.
    pub itl_s: f64,
    /// Steady-state probability that every stage has a live replica.
    pub availability: f64,
    /// Expected GPU-seconds of re-prefill per hour caused by node failures.
    pub recovery_s_per_hour: f64,
    /// Bytes sent between nodes per generated token (prefill share included).
    pub network_bytes_per_token: f64,
    /// Highest memory use as a fraction of usable memory.
    pub max_memory_fraction: f64,
    /// Per-node memory.
    pub memory: Vec<NodeMemory>,
}

impl Evaluation {
    /// A readable two-column table of the figures and a per-node memory table.
    pub fn to_table(&self) -> String {
        let mut s = String::from("| figure | value |\n|---|---|\n");
        let rows = [
            ("strategy", self.strategy.clone()),
            ("nodes used", self.nodes_used.to_string()),
            ("stages", self.stages.to_string()),
            (
                "decode throughput bound",
                format!("{:.1} tok/s ({})", self.throughput_tok_s, self.flow_method),
            ),
            (
                "load for latencies",
                format!("{:.1} tok/s", self.load_tok_s),
            ),
            ("TTFT", format!("{:.3} s", self.ttft_s)),
            (
                "inter-token latency",
                format!("{:.1} ms", self.itl_s * 1000.0),
            ),
            ("availability", format!("{:.6}", self.availability)),
            (
                "recovery cost",
                format!(
                    "{:.1} GPU-s of re-prefill per hour",
                    self.recovery_s_per_hour
                ),
            ),
            (
                "network per token",
                format!("{:.1} KiB", self.network_bytes_per_token / 1024.0),
            ),
            (
                "max memory use",
                format!("{:.0}%", self.max_memory_fraction * 100.0),
            ),
        ];
        for (k, v) in rows {
            s.push_str(&format!("| {k} | {v} |\n"));
        }
        s.push_str("\n| node | layers | used GiB | usable GiB |\n|---|---|---|---|\n");
        for m in &self.memory {
            s.push_str(&format!(
                "| {} | {} | {:.2} | {:.2} |\n",
                m.node, m.layers, m.used_gib, m.capacity_gib
            ));
        }
        s
    }
}

/// Evaluates `plan` on `cluster` for `model`.
pub fn evaluate(
    plan: &Plan,
    cluster: &Cluster,
    model: &ModelProfile,
    opts: &PlanOptions,
) -> Evaluation {
    let cm = CostModel::new(model, opts);
    let flow = max_flow(plan, cluster, &cm);
    let load = flow.throughput * opts.load_fraction.clamp(0.0, 0.999);
    let spans: HashMap<String, std::ops::Range<usize>> = plan.node_layers().into_iter().collect();
    // Tokens/s through each node (layer-weighted share of its span).
    let mut node_load: HashMap<&str, f64> = HashMap::new();
    let total_through: Vec<f64> = flow.through.iter().map(|v| v.iter().sum()).collect();
    for (s, st) in plan.stages.iter().enumerate() {
        let len = (st.end - st.start) as f64;
        for (k, r) in st.replicas.iter().enumerate() {
            let share = if total_through[s] > 0.0 {
                flow.through[s][k] / total_through[s]
            } else {
                0.0
            };
            let span_len = spans.get(&r.node).map(|x| x.len() as f64).unwrap_or(1.0);
            *node_load.entry(r.node.as_str()).or_default() += load * share * len / span_len;
        }
    }
    // Per-node operating batch, step time and waiting time.
    let mut node_step: HashMap<&str, (f64, f64, f64)> = HashMap::new(); // (batch, step, wait)
    let mut memory = Vec::new();
    let mut max_frac = 0.0f64;
    for (id, span) in &spans {
        let Some(node) = cluster.node(id) else {
            continue;
        };
        let cap = cm.decode_capacity(&node.gpu, span).max(1e-12);
        let lam = node_load.get(id.as_str()).copied().unwrap_or(0.0);
        let rho = (lam / cap).min(0.999);
        let bmax = cm.max_batch(&node.gpu, span).max(1) as f64;
        let b = (rho * bmax).max(1.0);
        let step = cm.step_time(&node.gpu, span, b, 0.0);
        let wait = step * rho / (2.0 * (1.0 - rho));
        node_step.insert(id.as_str(), (b, step, wait));
        let used = cm.memory_needed(span, b.ceil() as u32);
        let capm = cm.usable_memory(&node.gpu);
        max_frac = max_frac.max(used / capm);
        memory.push(NodeMemory {
            node: id.clone(),
            layers: span.len() as u32,
            used_gib: used / GIB,
            capacity_gib: capm / GIB,
        });
    }
    memory.sort_by(|a, b| a.node.cmp(&b.node));
    // Expected per-token latency over the routing weights.
    let (mut itl, mut ttft, mut net_bytes) = (0.0, 0.0, 0.0);
    let prompt = opts.workload.prompt_tokens as f64;
    for (si, st) in plan.stages.iter().enumerate() {
        let len = (st.end - st.start) as f64;
        let wsum: f64 = st.replicas.iter().map(|r| r.weight).sum::<f64>().max(1e-12);
        let boundary = st.end as usize;
        for r in &st.replicas {
            let w = r.weight / wsum;
            let Some(node) = cluster.node(&r.node) else {
                continue;
            };
            let span_len = spans.get(&r.node).map(|x| x.len() as f64).unwrap_or(1.0);
            let (_, step, wait) = node_step
                .get(r.node.as_str())
                .copied()
                .unwrap_or((1.0, 0.0, 0.0));
            itl += w * (step + wait) * len / span_len;
            let layers = st.layers();
            ttft += w * (cm.prefill_time(&node.gpu, &layers) + wait * len / span_len);
            let i = cluster.index_of(&r.node).unwrap_or(0);
            // No planned hops: the router takes the next stage's replicas by weight.
            let hops: Vec<(&str, f64)> = match plan.stages.get(si + 1) {
                Some(next) if r.next.is_empty() && w > 0.0 => {
                    let total: f64 = next.replicas.iter().map(|x| x.weight).sum::<f64>();
                    next.replicas
                        .iter()
                        .map(|x| (x.node.as_str(), x.weight / total.max(1e-12)))
                        .collect()
                }
                _ => r.next.iter().map(|h| (h.node.as_str(), h.weight)).collect(),
            };
            for (to, share) in hops {
                if to == r.node {
                    continue;
                }
                let j = cluster.index_of(to).unwrap_or(0);
                let link = cluster.link(i, j);
                itl += w * share * cm.link_time(&link, boundary, 1.0);
                ttft += w * share * cm.link_time(&link, boundary, prompt);
                net_bytes += w * share * cm.activation_bytes(boundary);
            }
        }
    }
    // Prefill share of network traffic per generated token.
    if opts.cost.include_prefill && opts.workload.output_tokens > 0 {
        net_bytes *= 1.0 + prompt / opts.workload.output_tokens as f64;
    }
    // Availability: every stage has a live replica.
    let mut availability = 1.0;
    for st in &plan.stages {
        let down: f64 = st
            .replicas
            .iter()
            .map(|r| {
                1.0 - cluster
                    .node(&r.node)
                    .map(|n| n.availability.steady_state())
                    .unwrap_or(0.0)
            })
            .product();
        availability *= 1.0 - down;
    }
    // Recovery: each failure re-prefills the known tokens of the sequences in flight
    // through the node. In flight, by Little's law: arrivals times time in the system.
    let output = opts.workload.output_tokens.max(1) as f64;
    let in_flight = load / output * (ttft + output * itl);
    let recovery = expected_recovery(plan, cluster, &cm, in_flight, prompt + output / 2.0, &|n| {
        n.availability.failures_per_hour()
    })
    .gpu_s_per_hour;
    Evaluation {
        strategy: plan.strategy.clone(),
        nodes_used: plan.nodes.len(),
        stages: plan.stages.len(),
        throughput_tok_s: flow.throughput,
        flow_method: match flow.method {
            FlowMethod::Dinic => "dinic",
            FlowMethod::Lp => "lp",
            FlowMethod::StageBound => "stage-bound",
        }
        .into(),
        load_tok_s: load,
        ttft_s: ttft,
        itl_s: itl,
        availability,
        recovery_s_per_hour: recovery,
        network_bytes_per_token: net_bytes,
        max_memory_fraction: max_frac,
        memory,
    }
}

/// What restarting from known tokens is expected to cost a plan.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RecoveryEstimate {
    /// Failures per hour of the plan's nodes, together.
    pub failures_per_hour: f64,
    /// Sequences restarted per failure: those in flight whose path crosses the node.
    pub restarts_per_failure: f64,
    /// Tokens a restarted sequence prefills again.
    pub known_tokens: f64,
    /// GPU-seconds of that prefill along a path (every stage re-prefills).
    pub gpu_s_per_restart: f64,
    /// GPU-seconds of re-prefill per hour.
    pub gpu_s_per_hour: f64,
}

/// Expected recovery cost of `plan` with `in_flight` sequences running and
/// `known_tokens` known to each when it restarts; `failures_per_hour` gives each
/// node's failure rate.
///
/// A sequence's path takes one replica per stage, in proportion to the replicas'
/// routing weights, so a node is on the path with probability one minus the
/// product, over its stages, of the chance that another replica was taken.
pub fn expected_recovery(
    plan: &Plan,
    cluster: &Cluster,
    cm: &CostModel,
    in_flight: f64,
    known_tokens: f64,
    failures_per_hour: &dyn Fn(&crate::cluster::Node) -> f64,
) -> RecoveryEstimate {
    let mut miss: HashMap<&str, f64> = HashMap::new();
    let mut gpu_s = 0.0;
    for st in &plan.stages {
        let wsum: f64 = st.replicas.iter().map(|r| r.weight.max(0.0)).sum();
        let k = st.replicas.len().max(1) as f64;
        for r in &st.replicas {
            let w = if wsum > 0.0 {
                r.weight.max(0.0) / wsum
            } else {
                1.0 / k
            };
            *miss.entry(r.node.as_str()).or_insert(1.0) *= 1.0 - w;
            if let Some(node) = cluster.node(&r.node) {
                gpu_s += w * cm.step_time(&node.gpu, &st.layers(), 0.0, known_tokens);
            }
        }
    }
    let (mut failures, mut restarts) = (0.0, 0.0);
    for (id, m) in &miss {
        if let Some(node) = cluster.node(id) {
            let f = failures_per_hour(node);
            failures += f;
            restarts += f * in_flight * (1.0 - m);
        }
    }
    RecoveryEstimate {
        failures_per_hour: failures,
        restarts_per_failure: if failures > 0.0 {
            restarts / failures
        } else {
            0.0
        },
        known_tokens,
        gpu_s_per_restart: gpu_s,
        gpu_s_per_hour: restarts * gpu_s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::presets;

    fn two_replica_cluster() -> Cluster {
        Cluster::from_toml_str(
            "name = \"t\"\n[link_defaults]\nintra_site = { latency_ms = 0.1, bandwidth_gbps = 10.0 }\n[[nodes]]\nid = \"g\"\ngpu = \"A100-80GB\"\ncount = 2\nsite = \"s\"\nregion = \"r\"\navailability = { mtbf_hours = 9.0, mttr_hours = 1.0 }\n",
        )
        .unwrap()
    }

    #[test]
    fn recovery_counts_sequences_through_the_failed_node_and_their_whole_path() {
        let c = two_replica_cluster();
        let m = presets::model("Llama-3-8B").unwrap();
        let opts = PlanOptions::default();
        let cm = CostModel::new(&m, &opts);
        let n = m.num_layers();
        let plan = Plan::from_stages("t", &c, n, &m.name, &[(0..n, vec![0, 1])]);
        let est = expected_recovery(&plan, &c, &cm, 10.0, 100.0, &|node| {
            node.availability.failures_per_hour()
        });
        // Two nodes, one failure per 10 h each.
        assert!((est.failures_per_hour - 0.2).abs() < 1e-12);
        // Half of the 10 sequences run through each node.
        assert!((est.restarts_per_failure - 5.0).abs() < 1e-9);
        let one = cm.step_time(&c.nodes[0].gpu, &(0..n), 0.0, 100.0);
        assert!((est.gpu_s_per_restart - one).abs() < 1e-12);
        assert!((est.gpu_s_per_hour - 0.2 * 5.0 * one).abs() < 1e-9);
    }
}
