//! What the sequencer knows of the deployment: the plan, the nodes that serve
//! it (by placement index, the index carried in routes), their KV room and
//! how fast they can fetch weights.

use std::collections::HashMap;

use tokenflow_planner::Plan;
use tokenflow_planner::cluster::Cluster;
use tokenflow_planner::cost::CostModel;

/// The deployment as the sequencer schedules on it.
#[derive(Debug, Clone)]
pub struct Topology {
    /// The plan as given.
    pub plan: Plan,
    /// The cluster it runs on (for the planner's repair).
    pub cluster: Cluster,
    /// The planner's cost model (routing, repair).
    pub cost: CostModel,
    /// Node ids, by placement index.
    pub node_ids: Vec<String>,
    /// Placement indices of the nodes serving each plan stage.
    pub stage_replicas: Vec<Vec<u32>>,
    /// KV bytes each node may use for each stage (`[node][stage]`, 0 when it
    /// does not serve the stage).
    pub kv_capacity: Vec<Vec<u64>>,
    /// KV bytes one token takes on each stage.
    pub kv_bytes_per_token: Vec<u64>,
    /// Bytes of weights of each plan stage (what a repair downloads).
    pub stage_weight_bytes: Vec<u64>,
    /// Bytes per second at which each node downloads weights.
    pub load_bps: Vec<f64>,
    /// Tokens of the model's context.
    pub context_length: usize,
    /// Tokens in the vocabulary.
    pub vocab_size: usize,
    index: HashMap<String, u32>,
}

impl Topology {
    /// A topology; `node_ids[i]` is placement node `i`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        plan: Plan,
        cluster: Cluster,
        cost: CostModel,
        node_ids: Vec<String>,
        stage_replicas: Vec<Vec<u32>>,
        kv_capacity: Vec<Vec<u64>>,
        kv_bytes_per_token: Vec<u64>,
        stage_weight_bytes: Vec<u64>,
        load_bps: Vec<f64>,
        context_length: usize,
        vocab_size: usize,
    ) -> Self {
        let index = node_ids
            .iter()
            .enumerate()
            .map(|(i, id)| (id.clone(), i as u32))
            .collect();
        Self {
            plan,
            cluster,
            cost,
            node_ids,
            stage_replicas,
            kv_capacity,
            kv_bytes_per_token,
            stage_weight_bytes,
            load_bps,
            context_length,
            vocab_size,
            index,
        }
    }

    /// Plan stages.
    pub fn num_stages(&self) -> usize {
        self.stage_replicas.len()
    }

    /// Placement nodes.
    pub fn num_nodes(&self) -> usize {
        self.node_ids.len()
    }

    /// Placement index of node `id`.
    pub fn node_index(&self, id: &str) -> Option<u32> {
        self.index.get(id).copied()
    }

    /// KV bytes a sequence of `tokens` tokens takes on `stage`.
    pub fn kv_bytes(&self, stage: usize, tokens: usize) -> u64 {
        self.kv_bytes_per_token[stage] * tokens as u64
    }

    /// KV capacity of `node` for `stage`.
    pub fn kv_capacity(&self, node: u32, stage: usize) -> u64 {
        self.kv_capacity
            .get(node as usize)
            .and_then(|c| c.get(stage))
            .copied()
            .unwrap_or(0)
    }

    /// Plan stages `node` serves in the plan as given.
    pub fn node_stages(&self, node: u32) -> Vec<usize> {
        (0..self.num_stages())
            .filter(|&s| self.stage_replicas[s].contains(&node))
            .collect()
    }
}
