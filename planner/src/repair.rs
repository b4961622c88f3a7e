//! Repairing a plan whose stage lost every live replica: which surviving node
//! loads the stage. Stage boundaries stay, so every other replica keeps its
//! weights and its sequences; only the repaired stage's weights are downloaded.
//!
//! The survivor chosen is the one that gives the repaired plan the highest
//! max-flow throughput over the live nodes (a node already serving a
//! neighbouring stage costs no extra hop, a fast node lifts the bottleneck);
//! among equals, the one with the most free memory.

use crate::cluster::Cluster;
use crate::cost::CostModel;
use crate::flow::max_flow;
use crate::plan::{Plan, Replica};

/// A live node that could load the lost stage.
#[derive(Debug, Clone, PartialEq)]
pub struct RepairCandidate {
    /// Node id.
    pub node: String,
    /// Memory it has free for the stage, bytes.
    pub free_bytes: f64,
}

/// Why no survivor can take the stage.
#[derive(Debug, Clone, PartialEq)]
pub struct NoRoomForStage {
    /// Bytes the stage needs (weights and its KV).
    pub needed_bytes: f64,
    /// The candidate with the most free memory, if any, and its free bytes.
    pub best: Option<RepairCandidate>,
}

impl NoRoomForStage {
    /// Bytes missing on the best candidate.
    pub fn missing_bytes(&self) -> f64 {
        self.needed_bytes - self.best.as_ref().map_or(0.0, |b| b.free_bytes)
    }
}

/// `plan` with only the replicas on nodes for which `alive` holds, and routing
/// weights between stages dropped (every live replica may follow every other).
pub fn live_plan(plan: &Plan, alive: &dyn Fn(&str) -> bool) -> Plan {
    let mut live = plan.clone();
    for st in &mut live.stages {
        st.replicas.retain(|r| alive(&r.node));
        let k = st.replicas.len().max(1) as f64;
        for r in &mut st.replicas {
            r.weight = 1.0 / k;
            r.next.clear();
        }
    }
    live
}

/// The candidate that should load plan stage `stage` of `live` (a plan of live
/// replicas, see [`live_plan`]) when the stage needs `needed_bytes`.
pub fn place_lost_stage(
    live: &Plan,
    cluster: &Cluster,
    cm: &CostModel,
    stage: usize,
    candidates: &[RepairCandidate],
    needed_bytes: f64,
) -> Result<RepairCandidate, NoRoomForStage> {
    let fitting: Vec<&RepairCandidate> = candidates
        .iter()
        .filter(|c| c.free_bytes >= needed_bytes && cluster.node(&c.node).is_some())
        .collect();
    if fitting.is_empty() || stage >= live.stages.len() {
        return Err(NoRoomForStage {
            needed_bytes,
            best: candidates
                .iter()
                .max_by(|a, b| a.free_bytes.total_cmp(&b.free_bytes))
                .cloned(),
        });
    }
    let throughput = |c: &RepairCandidate| {
        let mut trial = live.clone();
        trial.stages[stage].replicas.push(Replica {
            node: c.node.clone(),
            weight: 1.0,
            next: Vec::new(),
        });
        // A stage still empty elsewhere leaves nothing to compare: memory decides.
        if trial.stages.iter().any(|s| s.replicas.is_empty()) {
            0.0
        } else {
            max_flow(&trial, cluster, cm).throughput
        }
    };
    let best = fitting
        .into_iter()
        .map(|c| (throughput(c), c))
        .max_by(|(ta, a), (tb, b)| {
            ta.total_cmp(tb)
                .then(a.free_bytes.total_cmp(&b.free_bytes))
                .then(b.node.cmp(&a.node))
        })
        .map(|(_, c)| c.clone())
        .expect("fitting is not empty");
    Ok(best)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::options::PlanOptions;
    use crate::presets;

    fn cluster() -> Cluster {
        Cluster::from_toml_str(
            "name = \"t\"\n[link_defaults]\nintra_site = { latency_ms = 0.1, bandwidth_gbps = 10.0 }\n\
             [[nodes]]\nid = \"slow\"\ngpu = \"RTX3060\"\nsite = \"s\"\nregion = \"r\"\n\
             [[nodes]]\nid = \"fast\"\ngpu = \"RTX4090\"\nsite = \"s\"\nregion = \"r\"\n\
             [[nodes]]\nid = \"a\"\ngpu = \"RTX4090\"\nsite = \"s\"\nregion = \"r\"\n\
             [[nodes]]\nid = \"b\"\ngpu = \"RTX4090\"\nsite = \"s\"\nregion = \"r\"\n",
        )
        .unwrap()
    }

    #[test]
    fn the_faster_survivor_takes_the_lost_stage_and_memory_is_checked() {
        let c = cluster();
        let m = presets::model("Llama-3-8B").unwrap();
        let cm = CostModel::new(&m, &PlanOptions::default());
        let n = m.num_layers();
        let h = n / 2;
        // Stage 1 lived on `b` alone, which died.
        let plan = Plan::from_stages("t", &c, n, &m.name, &[(0..h, vec![2]), (h..n, vec![3])]);
        let live = live_plan(&plan, &|id| id != "b");
        assert!(live.stages[1].replicas.is_empty());
        let cand = |node: &str, free: f64| RepairCandidate {
            node: node.into(),
            free_bytes: free,
        };
        // The 3060 has more free memory, but the 4090 is faster.
        let pick = place_lost_stage(
            &live,
            &c,
            &cm,
            1,
            &[cand("slow", 11e9), cand("fast", 10e9)],
            8e9,
        )
        .unwrap();
        assert_eq!(pick.node, "fast");
        // Nobody has room: the error names the best candidate and what is missing.
        let err = place_lost_stage(
            &live,
            &c,
            &cm,
            1,
            &[cand("slow", 3e9), cand("fast", 2e9)],
            8e9,
        )
        .unwrap_err();
        assert_eq!(err.best.as_ref().unwrap().node, "slow");
        assert!((err.missing_bytes() - 5e9).abs() < 1.0);
    }
}
