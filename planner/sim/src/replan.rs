//! Re-planning over the live nodes: a cluster of just those nodes, with the
//! same GPUs, home links and links between them, handed to the same strategy.

use std::path::Path;

use tokenflow_planner::cluster::{Cluster, ClusterSpec, LinkScope, NodeSpec};
use tokenflow_planner::error::PlanError;
use tokenflow_planner::gpu_catalog::GpuCatalog;
use tokenflow_planner::options::PlanOptions;
use tokenflow_planner::plan::Plan;
use tokenflow_planner::profile::ModelProfile;

/// The cluster of nodes `live` (indices into `cluster`, ascending).
///
/// With the cluster's file spec (and the folder its traces are relative to),
/// the spec is filtered: node groups expanded and filtered, link entries
/// naming vanished nodes, sites or regions dropped. Without it, the resolved
/// cluster is restricted to those nodes ([`Cluster::subset`]): the same nodes
/// and links, in O(live + link entries).
pub fn subset_cluster(
    cluster: &Cluster,
    spec: Option<(&ClusterSpec, Option<&Path>)>,
    live: &[u32],
) -> Result<Cluster, PlanError> {
    let keep: Vec<bool> = {
        let mut k = vec![false; cluster.len()];
        for &i in live {
            if let Some(x) = k.get_mut(i as usize) {
                *x = true;
            }
        }
        k
    };
    match spec {
        Some((spec, base)) => {
            let mut nodes = Vec::new();
            for g in &spec.nodes {
                for k in 0..g.count {
                    let id = if g.count == 1 {
                        g.id.clone()
                    } else {
                        format!("{}-{k}", g.id)
                    };
                    if cluster.index_of(&id).is_some_and(|i| keep[i]) {
                        nodes.push(NodeSpec {
                            id,
                            count: 1,
                            ..g.clone()
                        });
                    }
                }
            }
            let has = |scope: LinkScope, name: &str| match scope {
                LinkScope::Node => nodes.iter().any(|n| n.id == name),
                LinkScope::Site => nodes.iter().any(|n| n.site == name),
                LinkScope::Region => nodes.iter().any(|n| n.region == name),
            };
            let links = spec
                .links
                .iter()
                .filter(|l| has(l.scope, &l.a) && has(l.scope, &l.b))
                .cloned()
                .collect();
            let sub = ClusterSpec {
                nodes,
                links,
                ..spec.clone()
            };
            // No memory check: the subset is no larger than the cluster already resolved.
            sub.resolve_within(base, &GpuCatalog::builtin(), u64::MAX)
        }
        None => {
            let keep: Vec<usize> = (0..cluster.len()).filter(|&i| keep[i]).collect();
            Ok(cluster.subset(&keep))
        }
    }
}

/// Plans with `strategy` over nodes `live`; `None` when no plan exists (the
/// live nodes cannot hold the model, or the strategy finds none).
pub fn plan_subset(
    cluster: &Cluster,
    spec: Option<(&ClusterSpec, Option<&Path>)>,
    live: &[u32],
    strategy: &str,
    model: &ModelProfile,
    options: &PlanOptions,
) -> Option<Plan> {
    let sub = subset_cluster(cluster, spec, live).ok()?;
    tokenflow_planner::plan_with(strategy, &sub, model, options).ok()
}
