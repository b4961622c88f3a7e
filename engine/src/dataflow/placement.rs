//! A plan checked against the cluster and the model, and turned into what the
//! workers need: which node runs on which worker, what each node loads, its
//! memory budget, its emulated speed, and the links between nodes.

use std::collections::BTreeMap;
use std::ops::Range;

use tokenflow_operators::LlamaConfig;
use tokenflow_planner::{Cluster, Plan};

use super::error::PlacementError;

/// Latency and bandwidth of the link from one node to another.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LinkModel {
    /// One-way latency in seconds.
    pub latency_s: f64,
    /// Bytes per second (infinite on a node's own loopback).
    pub bandwidth_bps: f64,
}

impl LinkModel {
    /// A link that costs nothing (a node to itself).
    pub const LOCAL: LinkModel = LinkModel {
        latency_s: 0.0,
        bandwidth_bps: f64::INFINITY,
    };

    /// Microseconds to move `bytes` over the link once it is free (serialisation only).
    pub fn transfer_us(&self, bytes: u64) -> u64 {
        if self.bandwidth_bps.is_finite() && self.bandwidth_bps > 0.0 {
            (bytes as f64 / self.bandwidth_bps * 1e6).round() as u64
        } else {
            0
        }
    }

    /// Latency in microseconds.
    pub fn latency_us(&self) -> u64 {
        (self.latency_s * 1e6).round() as u64
    }
}

/// How the emulation maps a plan onto workers.
#[derive(Debug, Clone, PartialEq, Default, serde::Serialize, serde::Deserialize)]
pub struct PlacementOptions {
    /// Worker of each node; nodes not named go round robin in plan order.
    pub node_workers: BTreeMap<String, usize>,
    /// Share of each GPU's memory the node may use for weights and KV
    /// (default: what the planner leaves after its reserve,
    /// [`default_memory_fraction`], so plan, simulator and engine agree).
    pub memory_fraction: Option<f64>,
    /// Stretch stage calls on slower GPUs (by memory bandwidth, decode's bound).
    pub emulate_speed: bool,
    /// Delay messages by the cluster's link latency and bandwidth.
    pub emulate_links: bool,
}

/// The share of a GPU's memory the planner counts as usable (all but
/// `PlanOptions::cost.memory_reserve`).
pub fn default_memory_fraction() -> f64 {
    1.0 - tokenflow_planner::PlanOptions::default()
        .cost
        .memory_reserve
}

impl PlacementOptions {
    /// Full emulation: speeds and links from the cluster file.
    pub fn emulated() -> Self {
        Self {
            emulate_speed: true,
            emulate_links: true,
            ..Self::default()
        }
    }
}

/// A node taking part in the plan, as the engine runs it.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeSlot {
    /// Node id in the cluster.
    pub id: String,
    /// Worker (global index) that runs it.
    pub worker: usize,
    /// Each stage call takes this many times its measured time (1 = as fast as this host).
    pub speed_factor: f64,
    /// Bytes the node may use for weights and KV.
    pub memory_bytes: u64,
    /// Bytes of f32 weights it loads.
    pub weight_bytes: u64,
    /// Plan stages it serves, with the KV bytes each may use.
    pub stages: Vec<(usize, u64)>,
}

impl NodeSlot {
    /// KV capacity of this node for `stage` (0 when it does not serve it).
    pub fn kv_capacity(&self, stage: usize) -> u64 {
        self.stages
            .iter()
            .find(|(s, _)| *s == stage)
            .map_or(0, |(_, kv)| *kv)
    }
}

/// A validated plan with everything the dataflow needs to execute it.
#[derive(Debug, Clone)]
pub struct Placement {
    /// The plan as given.
    pub plan: Plan,
    /// The cluster it runs on.
    pub cluster: Cluster,
    /// Participating nodes; the index is the node index carried in routes.
    pub nodes: Vec<NodeSlot>,
    /// Layers of each stage.
    pub stage_layers: Vec<Range<usize>>,
    /// Node indices serving each stage.
    pub stage_replicas: Vec<Vec<u32>>,
    /// KV bytes per token of each stage.
    pub kv_bytes_per_token: Vec<u64>,
    /// Workers the placement was made for.
    pub workers: usize,
    /// Whether stage calls are stretched by node speed.
    pub emulate_speed: bool,
    links: Vec<LinkModel>,
}

impl Placement {
    /// Checks `plan` against `cluster` and the model, before anything is loaded.
    ///
    /// Refused: a layer missing or covered twice, a stage without replicas, a
    /// node the cluster does not have, a routing hop to a node that does not
    /// serve the next stage, a node whose memory cannot hold its weights, a
    /// worker index past `workers`.
    pub fn new(
        plan: &Plan,
        cluster: &Cluster,
        model: &LlamaConfig,
        workers: usize,
        options: &PlacementOptions,
    ) -> Result<Self, PlacementError> {
        let n_layers = model.n_layers;
        if workers == 0 {
            return Err(PlacementError::NoWorkers);
        }
        // The planner's checks first; what follows is the engine's own.
        plan.validate_structure(cluster, n_layers as u32)?;

        // Nodes in order of first appearance.
        let mut ids: Vec<String> = Vec::new();
        let mut stage_replicas = Vec::new();
        for st in &plan.stages {
            let mut reps = Vec::new();
            for r in &st.replicas {
                let idx = match ids.iter().position(|n| n == &r.node) {
                    Some(i) => i,
                    None => {
                        ids.push(r.node.clone());
                        ids.len() - 1
                    }
                };
                reps.push(idx as u32);
            }
            stage_replicas.push(reps);
        }
        for (node, &w) in &options.node_workers {
            if w >= workers {
                return Err(PlacementError::BadWorker {
                    node: node.clone(),
                    worker: w,
                    workers,
                });
            }
        }

        let stage_layers: Vec<Range<usize>> = plan.stages.iter().map(|s| s.layers()).collect();
        let kv_bytes_per_token: Vec<u64> = stage_layers
            .iter()
            .map(|r| model.kv_bytes_per_token_per_layer() * r.len() as u64)
            .collect();
        let fraction = options
            .memory_fraction
            .unwrap_or_else(default_memory_fraction)
            .clamp(0.0, 1.0);
        let fastest = ids
            .iter()
            .filter_map(|id| cluster.node(id))
            .map(|n| n.gpu.mem_bandwidth_gbs)
            .fold(0.0f64, f64::max);
        let last = plan.stages.len() - 1;
        let mut nodes = Vec::new();
        for (i, id) in ids.iter().enumerate() {
            let Some(node) = cluster.node(id) else {
                unreachable!("validate_structure checked every node against the cluster")
            };
            let stages: Vec<usize> = (0..plan.stages.len())
                .filter(|&s| stage_replicas[s].contains(&(i as u32)))
                .collect();
            let mut weights = 0u64;
            for &s in &stages {
                weights += stage_weight_bytes(model, &stage_layers[s], s == 0, s == last);
            }
            // A tied table read by the first and the last stage is mapped once.
            if model.weights.tied && last > 0 && stages.contains(&0) && stages.contains(&last) {
                weights -= model.weights.embed;
            }
            let memory = (node.gpu.memory_bytes() * fraction) as u64;
            if weights > memory {
                return Err(PlacementError::NodeMemory {
                    node: id.clone(),
                    needed: weights,
                    available: memory,
                });
            }
            // KV room is shared among the node's stages by their layer counts.
            let spare = memory - weights;
            let layers: usize = stages.iter().map(|&s| stage_layers[s].len()).sum();
            let stages = stages
                .iter()
                .map(|&s| {
                    let share = spare as u128 * stage_layers[s].len() as u128 / layers as u128;
                    (s, share as u64)
                })
                .collect();
            let speed_factor = if options.emulate_speed && node.gpu.mem_bandwidth_gbs > 0.0 {
                (fastest / node.gpu.mem_bandwidth_gbs).max(1.0)
            } else {
                1.0
            };
            nodes.push(NodeSlot {
                id: id.clone(),
                worker: options.node_workers.get(id).copied().unwrap_or(i % workers),
                speed_factor,
                memory_bytes: memory,
                weight_bytes: weights,
                stages,
            });
        }
        let n = nodes.len();
        let mut links = vec![LinkModel::LOCAL; n * n];
        if options.emulate_links {
            for a in 0..n {
                for b in 0..n {
                    if a == b {
                        continue;
                    }
                    let (Some(ia), Some(ib)) =
                        (cluster.index_of(&ids[a]), cluster.index_of(&ids[b]))
                    else {
                        continue;
                    };
                    let l = cluster.link(ia, ib);
                    links[a * n + b] = LinkModel {
                        latency_s: l.latency_s,
                        bandwidth_bps: l.bandwidth_bps,
                    };
                }
            }
        }
        Ok(Self {
            plan: plan.clone(),
            cluster: cluster.clone(),
            nodes,
            stage_layers,
            stage_replicas,
            kv_bytes_per_token,
            workers,
            emulate_speed: options.emulate_speed,
            links,
        })
    }

    /// Number of plan stages.
    pub fn num_stages(&self) -> usize {
        self.stage_layers.len()
    }

    /// The link from node `from` to node `to` (`CLIENT` on either side: free).
    pub fn link(&self, from: u32, to: u32) -> LinkModel {
        let n = self.nodes.len();
        let (a, b) = (from as usize, to as usize);
        if a >= n || b >= n {
            return LinkModel::LOCAL;
        }
        self.links[a * n + b]
    }

    /// Worker that runs node `node`.
    pub fn worker_of(&self, node: u32) -> usize {
        self.nodes.get(node as usize).map_or(0, |n| n.worker)
    }

    /// Index of the node with id `id`.
    pub fn node_index(&self, id: &str) -> Option<u32> {
        self.nodes.iter().position(|n| n.id == id).map(|i| i as u32)
    }

    /// KV bytes a sequence of `tokens` tokens takes on `stage`.
    pub fn kv_bytes(&self, stage: usize, tokens: usize) -> u64 {
        self.kv_bytes_per_token[stage] * tokens as u64
    }

    /// A table of nodes: worker, speed, memory, stages.
    pub fn describe(&self) -> String {
        let mut out = String::from(
            "| node | worker | speed factor | weights MB | memory MB | stages |\n|---|---|---|---|---|---|\n",
        );
        for n in &self.nodes {
            let stages: Vec<String> = n
                .stages
                .iter()
                .map(|(s, _)| {
                    let r = &self.stage_layers[*s];
                    format!("{s} ({}..{})", r.start, r.end)
                })
                .collect();
            out.push_str(&format!(
                "| {} | {} | {:.2} | {:.1} | {:.0} | {} |\n",
                n.id,
                n.worker,
                n.speed_factor,
                n.weight_bytes as f64 / 1e6,
                n.memory_bytes as f64 / 1e6,
                stages.join(", ")
            ));
        }
        out
    }
}

/// Bytes of weights of one stage as held on the CPU backend (the file's bytes of
/// its tensors): its blocks, plus the embedding table on the first stage and the
/// final norm and LM head on the last (a tied head counts the table it reads).
pub fn stage_weight_bytes(
    model: &LlamaConfig,
    layers: &Range<usize>,
    embed: bool,
    head: bool,
) -> u64 {
    model.weights.stage(layers, embed, head)
}
