//! The plan the dataflow engine executes: participating nodes, stages with
//! contiguous layer ranges covering the model exactly once, replicas per stage,
//! and routing weights.
//!
//! A node may be listed in several *consecutive* stages: it then holds all their
//! layers, and a request may enter it at any of those stages and leave after any
//! later one (Petals' and Helix's spans). Plans where every node holds one stage
//! are the common case.

use std::collections::HashMap;
use std::ops::Range;

use serde::{Deserialize, Serialize};

use crate::cluster::Cluster;
use crate::cost::CostModel;
use crate::error::{GIB, ValidationError};
use crate::options::PlanOptions;
use crate::profile::ModelProfile;

/// Where a replica sends tokens after a stage, and what share of them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NextHop {
    /// Node id in the next stage (the same node means: continue locally).
    pub node: String,
    /// Share of this replica's tokens, in [0, 1]; shares of one replica sum to 1.
    pub weight: f64,
}

/// One node serving one stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Replica {
    /// Node id.
    pub node: String,
    /// Share of the stage's tokens this replica takes, in [0, 1].
    pub weight: f64,
    /// Routing after this stage (empty on the last stage, or when not planned:
    /// then any usable replica of the next stage, by the replicas' weights).
    #[serde(default)]
    pub next: Vec<NextHop>,
}

/// A contiguous range of layers and the nodes that serve it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Stage {
    /// First layer.
    pub start: u32,
    /// One past the last layer.
    pub end: u32,
    /// Whether this stage also runs the token embedding (first stage).
    pub embed: bool,
    /// Whether this stage also runs the final norm, LM head and sampler (last stage).
    pub head: bool,
    /// Nodes serving the stage.
    pub replicas: Vec<Replica>,
}

impl Stage {
    /// Layers as a range.
    pub fn layers(&self) -> Range<usize> {
        self.start as usize..self.end as usize
    }
}

/// A placement and routing plan.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    /// Strategy that produced it.
    pub strategy: String,
    /// Model name.
    pub model: String,
    /// Layers of the model.
    pub num_layers: u32,
    /// Ids of nodes taking part, in cluster order.
    pub nodes: Vec<String>,
    /// Stages in layer order.
    pub stages: Vec<Stage>,
    /// What the strategy wants a reader to know (fallbacks, time limits, bounds).
    #[serde(default)]
    pub notes: Vec<String>,
}

impl Plan {
    /// Builds a plan from node spans `(node index, layers)`; stages are the finest
    /// partition of the boundaries of all spans. Weights are uniform until
    /// [`crate::flow::assign_routing`] sets them from the max flow.
    pub fn from_spans(
        strategy: &str,
        cluster: &Cluster,
        num_layers: usize,
        model: &str,
        spans: &[(usize, Range<usize>)],
    ) -> Plan {
        let mut cuts: Vec<usize> = vec![0, num_layers];
        for (_, r) in spans {
            cuts.push(r.start);
            cuts.push(r.end);
        }
        cuts.sort_unstable();
        cuts.dedup();
        cuts.retain(|&c| c <= num_layers);
        let mut stages = Vec::new();
        for w in cuts.windows(2) {
            let (a, b) = (w[0], w[1]);
            let mut holders: Vec<usize> = spans
                .iter()
                .filter(|(_, r)| r.start <= a && b <= r.end)
                .map(|(i, _)| *i)
                .collect();
            holders.sort_unstable();
            holders.dedup();
            let k = holders.len().max(1) as f64;
            stages.push(Stage {
                start: a as u32,
                end: b as u32,
                embed: a == 0,
                head: b == num_layers,
                replicas: holders
                    .iter()
                    .map(|&i| Replica {
                        node: cluster.nodes[i].id.clone(),
                        weight: 1.0 / k,
                        next: Vec::new(),
                    })
                    .collect(),
            });
        }
        let mut used: Vec<usize> = spans.iter().map(|(i, _)| *i).collect();
        used.sort_unstable();
        used.dedup();
        Plan {
            strategy: strategy.to_string(),
            model: model.to_string(),
            num_layers: num_layers as u32,
            nodes: used.iter().map(|&i| cluster.nodes[i].id.clone()).collect(),
            stages,
            notes: Vec::new(),
        }
    }

    /// Builds a plan where stage `k` covers `ranges[k]` and is served by `replicas[k]`.
    pub fn from_stages(
        strategy: &str,
        cluster: &Cluster,
        num_layers: usize,
        model: &str,
        stages: &[(Range<usize>, Vec<usize>)],
    ) -> Plan {
        let spans: Vec<(usize, Range<usize>)> = stages
            .iter()
            .flat_map(|(r, nodes)| nodes.iter().map(move |&i| (i, r.clone())))
            .collect();
        let mut plan = Plan::from_spans(strategy, cluster, num_layers, model, &spans);
        // Keep the given stage boundaries even where no node spans them.
        if plan.stages.len() != stages.len() {
            plan.stages = stages
                .iter()
                .map(|(r, nodes)| Stage {
                    start: r.start as u32,
                    end: r.end as u32,
                    embed: r.start == 0,
                    head: r.end == num_layers,
                    replicas: nodes
                        .iter()
                        .map(|&i| Replica {
                            node: cluster.nodes[i].id.clone(),
                            weight: 1.0 / nodes.len().max(1) as f64,
                            next: Vec::new(),
                        })
                        .collect(),
                })
                .collect();
        }
        plan
    }

    /// Each participating node's span: (node id, first stage, last stage inclusive).
    pub fn node_stage_spans(&self) -> Vec<(String, usize, usize)> {
        let mut map: HashMap<&str, (usize, usize)> = HashMap::new();
        let mut order = Vec::new();
        for (s, st) in self.stages.iter().enumerate() {
            for r in &st.replicas {
                map.entry(r.node.as_str())
                    .and_modify(|e| e.1 = s)
                    .or_insert_with(|| {
                        order.push(r.node.as_str());
                        (s, s)
                    });
            }
        }
        order
            .into_iter()
            .map(|n| (n.to_string(), map[n].0, map[n].1))
            .collect()
    }

    /// Each participating node's layers, as (node id, layer range).
    pub fn node_layers(&self) -> Vec<(String, Range<usize>)> {
        self.node_stage_spans()
            .into_iter()
            .map(|(n, a, b)| {
                (
                    n,
                    self.stages[a].start as usize..self.stages[b].end as usize,
                )
            })
            .collect()
    }

    /// Checks the plan against the cluster and model with default options.
    pub fn validate(&self, cluster: &Cluster, model: &ModelProfile) -> Result<(), ValidationError> {
        self.validate_with(cluster, model, &PlanOptions::default())
    }

    /// Checks coverage, nodes, contiguity, weights and memory (weights plus one sequence of KV).
    pub fn validate_with(
        &self,
        cluster: &Cluster,
        model: &ModelProfile,
        opts: &PlanOptions,
    ) -> Result<(), ValidationError> {
        self.validate_structure(cluster, model.num_layers() as u32)?;
        // Contiguity: a node's stages form one run.
        for (node, a, b) in self.node_stage_spans() {
            let count = self.stages[a..=b]
                .iter()
                .filter(|st| st.replicas.iter().any(|r| r.node == node))
                .count();
            if count != b - a + 1 {
                return Err(ValidationError::NodeNotContiguous { node });
            }
        }
        let cm = CostModel::new(model, opts);
        for (node, layers) in self.node_layers() {
            let gpu = &cluster.nodes[cluster.index_of(&node).unwrap_or(0)].gpu;
            let needed = cm.memory_needed(&layers, 1);
            let cap = cm.usable_memory(gpu);
            if needed > cap {
                return Err(ValidationError::MemoryOverflow {
                    node,
                    needed_gib: needed / GIB,
                    capacity_gib: cap / GIB,
                    missing_gib: (needed - cap) / GIB,
                });
            }
        }
        Ok(())
    }

    /// Every check of [`Plan::validate_with`] but memory and contiguity, for a
    /// model of `n` layers: coverage, stages in order, known and listed nodes,
    /// a node at most once per stage, embedding and head flags, routing
    /// weights, and next hops that serve the next stage. The engine runs it
    /// before its own checks (workers, the weights as loaded); it also runs
    /// plans whose nodes hold stages that are not one run, which the planner's
    /// cost model (one layer span per node) does not describe.
    pub fn validate_structure(&self, cluster: &Cluster, n: u32) -> Result<(), ValidationError> {
        if self.num_layers != n {
            return Err(ValidationError::LayerCountMismatch {
                plan_layers: self.num_layers,
                model_layers: n,
            });
        }
        if self.stages.is_empty() {
            return Err(ValidationError::NoStages);
        }
        let mut owner: Vec<Option<usize>> = vec![None; n as usize];
        for (s, st) in self.stages.iter().enumerate() {
            if st.start >= st.end || st.end > n {
                return Err(ValidationError::BadRange {
                    stage: s,
                    start: st.start,
                    end: st.end,
                    num_layers: n,
                });
            }
            for l in st.start..st.end {
                if let Some(first) = owner[l as usize] {
                    return Err(ValidationError::LayerCoveredTwice {
                        layer: l,
                        first,
                        second: s,
                    });
                }
                owner[l as usize] = Some(s);
            }
        }
        if let Some(l) = owner.iter().position(Option::is_none) {
            return Err(ValidationError::LayerMissing { layer: l as u32 });
        }
        for w in self.stages.windows(2) {
            if w[0].end != w[1].start {
                return Err(ValidationError::BadRange {
                    stage: 0,
                    start: w[1].start,
                    end: w[1].end,
                    num_layers: n,
                });
            }
        }
        for node in &self.nodes {
            if cluster.index_of(node).is_none() {
                return Err(ValidationError::UnknownListedNode { node: node.clone() });
            }
        }
        let last = self.stages.len() - 1;
        for (s, st) in self.stages.iter().enumerate() {
            if st.embed != (s == 0) || st.head != (s == last) {
                return Err(ValidationError::EmbedHeadMisplaced);
            }
            if st.replicas.is_empty() {
                return Err(ValidationError::NoReplica { stage: s });
            }
            let mut seen = Vec::new();
            for r in &st.replicas {
                if cluster.index_of(&r.node).is_none() {
                    return Err(ValidationError::UnknownNode {
                        stage: s,
                        node: r.node.clone(),
                    });
                }
                if seen.contains(&r.node.as_str()) {
                    return Err(ValidationError::NodeNotContiguous {
                        node: r.node.clone(),
                    });
                }
                if !self.nodes.is_empty() && !self.nodes.contains(&r.node) {
                    return Err(ValidationError::UnlistedNode {
                        stage: s,
                        node: r.node.clone(),
                    });
                }
                seen.push(r.node.as_str());
                let bad = |w: f64| !(w.is_finite() && w >= 0.0);
                if let Some(w) = std::iter::once(r.weight)
                    .chain(r.next.iter().map(|h| h.weight))
                    .find(|&w| bad(w))
                {
                    return Err(ValidationError::BadWeight {
                        stage: s,
                        node: r.node.clone(),
                        weight: w,
                    });
                }
                if let Some(hop) = r.next.iter().find(|h| {
                    !self
                        .stages
                        .get(s + 1)
                        .is_some_and(|next| next.replicas.iter().any(|n| n.node == h.node))
                }) {
                    return Err(ValidationError::UnknownNextHop {
                        stage: s,
                        from: r.node.clone(),
                        to: hop.node.clone(),
                    });
                }
                let next_sum: f64 = r.next.iter().map(|h| h.weight).sum();
                if !r.next.is_empty() && next_sum <= 0.0 {
                    return Err(ValidationError::NoPositiveWeight {
                        stage: s,
                        what: format!("next-hop of `{}`", r.node),
                        sum: next_sum,
                    });
                }
            }
            let sum: f64 = st.replicas.iter().map(|r| r.weight).sum();
            if sum <= 0.0 {
                return Err(ValidationError::NoPositiveWeight {
                    stage: s,
                    what: "replica".into(),
                    sum,
                });
            }
        }
        Ok(())
    }

    /// A readable table of stages and replicas.
    pub fn to_table(&self) -> String {
        let mut s = format!(
            "plan `{}` for {} ({} layers) on {} nodes\n",
            self.strategy,
            self.model,
            self.num_layers,
            self.nodes.len()
        );
        s.push_str(
            "| stage | layers | embed | head | replicas (node:weight) |\n|---|---|---|---|---|\n",
        );
        for (i, st) in self.stages.iter().enumerate() {
            let reps: Vec<String> = st
                .replicas
                .iter()
                .map(|r| format!("{}:{:.2}", r.node, r.weight))
                .collect();
            s.push_str(&format!(
                "| {i} | {}..{} | {} | {} | {} |\n",
                st.start,
                st.end,
                if st.embed { "yes" } else { "" },
                if st.head { "yes" } else { "" },
                reps.join(" ")
            ));
        }
        for n in &self.notes {
            s.push_str(&format!("note: {n}\n"));
        }
        s
    }
}
