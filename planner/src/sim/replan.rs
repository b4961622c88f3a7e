//! Re-planning over the live nodes: a cluster of just those nodes, with the
//! same GPUs, home links and links between them, handed to the same strategy.

use std::path::Path;

use crate::availability::AvailabilitySpec;
use crate::cluster::{
    Cluster, ClusterSpec, LinkDefaults, LinkEntry, LinkScope, LinkSpecFigures, NodeSpec,
};
use crate::error::PlanError;
use crate::gpu_catalog::GpuCatalog;
use crate::options::PlanOptions;
use crate::plan::Plan;
use crate::profile::ModelProfile;

/// The cluster of nodes `live` (indices into `cluster`, ascending).
///
/// With the cluster's file spec (and the folder its traces are relative to),
/// the spec is filtered: node groups expanded and filtered, link entries
/// naming vanished nodes, sites or regions dropped. Without it, the resolved
/// links are written out pair by pair (O(live²) entries), exactly reproducing
/// the resolved matrix up to floating-point rounding.
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
            sub.resolve(base, &GpuCatalog::builtin())
        }
        None => {
            let mut gpus: Vec<crate::gpu_catalog::GpuKind> = Vec::new();
            let mut nodes = Vec::new();
            for &i in live {
                let n = &cluster.nodes[i as usize];
                if !gpus.iter().any(|g| g.name == n.gpu.name) {
                    gpus.push(n.gpu.clone());
                }
                let a = n.availability;
                nodes.push(NodeSpec {
                    id: n.id.clone(),
                    gpu: n.gpu.name.clone(),
                    count: 1,
                    site: n.site.clone(),
                    region: n.region.clone(),
                    provider: n.provider,
                    availability: a.mtbf_hours.is_finite().then_some(AvailabilitySpec::Model {
                        mtbf_hours: a.mtbf_hours,
                        mttr_hours: a.mttr_hours,
                    }),
                    uplink_gbps: n.uplink_bps.map(|b| b * 8.0 / 1e9),
                    downlink_gbps: n.downlink_bps.map(|b| b * 8.0 / 1e9),
                });
            }
            let mut links = Vec::new();
            for (x, &i) in live.iter().enumerate() {
                for &j in &live[x + 1..] {
                    let (ab, ba) = (
                        cluster.link(i as usize, j as usize),
                        cluster.link(j as usize, i as usize),
                    );
                    // Home caps are applied again on resolution; the larger direction is the uncapped figure.
                    let bw = ab.bandwidth_bps.max(ba.bandwidth_bps);
                    links.push(LinkEntry {
                        scope: LinkScope::Node,
                        a: cluster.nodes[i as usize].id.clone(),
                        b: cluster.nodes[j as usize].id.clone(),
                        figures: LinkSpecFigures {
                            latency_ms: Some(ab.latency_s.max(ba.latency_s) * 1000.0),
                            rtt_ms: None,
                            bandwidth_gbps: if bw.is_finite() { bw * 8.0 / 1e9 } else { 1e6 },
                        },
                    });
                }
            }
            let sub = ClusterSpec {
                name: cluster.name.clone(),
                description: String::new(),
                gpu: gpus,
                link_defaults: LinkDefaults::default(),
                nodes,
                links,
            };
            sub.resolve(None, &GpuCatalog::builtin())
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
    crate::plan_with(strategy, &sub, model, options).ok()
}
