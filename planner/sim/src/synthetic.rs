//! Synthetic community clusters of any size, for scale runs: the recipe of
//! `data/scenarios/gen_community.py` (7 regions with WonderNetwork round-trip
//! times, RTX 3060..4090 desktops behind home links, MTBF 8-48 h) drawn
//! node by node from a seeded generator instead of written to a file.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use tokenflow_planner::availability::AvailabilitySpec;
use tokenflow_planner::cluster::{
    Cluster, ClusterSpec, LinkDefaults, LinkEntry, LinkScope, LinkSpecFigures, NodeSpec, Provider,
};
use tokenflow_planner::error::PlanError;
use tokenflow_planner::gpu_catalog::GpuCatalog;

/// Regions of the community scenario.
pub const REGIONS: [&str; 7] = [
    "us-east",
    "us-west",
    "eu-west",
    "eu-central",
    "asia-east",
    "asia-southeast",
    "sa-east",
];

/// Inter-region round-trip times in ms (WonderNetwork city-pair medians, as in
/// `gen_community.py`).
const RTT_MS: [(&str, &str, f64); 21] = [
    ("us-east", "us-west", 65.0),
    ("us-east", "eu-west", 72.0),
    ("us-east", "eu-central", 85.0),
    ("us-east", "asia-east", 165.0),
    ("us-east", "asia-southeast", 230.0),
    ("us-east", "sa-east", 120.0),
    ("us-west", "eu-west", 135.0),
    ("us-west", "eu-central", 145.0),
    ("us-west", "asia-east", 105.0),
    ("us-west", "asia-southeast", 170.0),
    ("us-west", "sa-east", 170.0),
    ("eu-west", "eu-central", 15.0),
    ("eu-west", "asia-east", 225.0),
    ("eu-west", "asia-southeast", 170.0),
    ("eu-west", "sa-east", 190.0),
    ("eu-central", "asia-east", 235.0),
    ("eu-central", "asia-southeast", 160.0),
    ("eu-central", "sa-east", 200.0),
    ("asia-east", "asia-southeast", 70.0),
    ("asia-east", "sa-east", 260.0),
    ("asia-southeast", "sa-east", 330.0),
];

/// A GPU kind of the mix: its share of nodes, home link (up, down Mbit/s) and
/// availability (MTBF h, MTTR h), as in `gen_community.py`.
struct Kind {
    name: &'static str,
    share: f64,
    link_mbps: (f64, f64),
    mtbf_mttr_h: (f64, f64),
}

const fn kind(
    name: &'static str,
    share: f64,
    link_mbps: (f64, f64),
    mtbf_mttr_h: (f64, f64),
) -> Kind {
    Kind {
        name,
        share,
        link_mbps,
        mtbf_mttr_h,
    }
}

const GPUS: [Kind; 6] = [
    kind("RTX3060", 0.20, (20.0, 200.0), (8.0, 2.0)),
    kind("RTX3080", 0.12, (40.0, 500.0), (12.0, 2.0)),
    kind("RTX3090", 0.20, (50.0, 500.0), (24.0, 2.0)),
    kind("RTX4070", 0.15, (40.0, 300.0), (12.0, 1.0)),
    kind("RTX4080", 0.11, (100.0, 1000.0), (24.0, 1.0)),
    kind("RTX4090", 0.22, (100.0, 1000.0), (48.0, 1.0)),
];

/// The [`ClusterSpec`] of a synthetic community cluster of `nodes` machines,
/// one per home, drawn with `seed` (same inputs, same spec).
pub fn community_spec(nodes: usize, seed: u64) -> ClusterSpec {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut counts = vec![0usize; REGIONS.len() * GPUS.len()];
    let mut specs = Vec::with_capacity(nodes);
    for _ in 0..nodes {
        let region = rng.random_range(0..REGIONS.len());
        let u: f64 = rng.random();
        let mut acc = 0.0;
        let mut g = GPUS.len() - 1;
        for (k, kind) in GPUS.iter().enumerate() {
            acc += kind.share;
            if u < acc {
                g = k;
                break;
            }
        }
        let Kind {
            name,
            link_mbps: (up, down),
            mtbf_mttr_h: (mtbf, mttr),
            ..
        } = GPUS[g];
        let k = &mut counts[region * GPUS.len() + g];
        let id = format!("{}-{}-{k}", REGIONS[region], name.to_lowercase());
        *k += 1;
        specs.push(NodeSpec {
            site: format!("home-{id}"),
            id,
            gpu: name.to_string(),
            count: 1,
            region: REGIONS[region].to_string(),
            provider: Provider::Community,
            availability: Some(AvailabilitySpec::Model {
                mtbf_hours: mtbf,
                mttr_hours: mttr,
            }),
            uplink_gbps: Some(up / 1000.0),
            downlink_gbps: Some(down / 1000.0),
        });
    }
    let mut links: Vec<LinkEntry> = REGIONS
        .iter()
        .map(|r| LinkEntry {
            scope: LinkScope::Region,
            a: r.to_string(),
            b: r.to_string(),
            figures: LinkSpecFigures {
                latency_ms: None,
                rtt_ms: Some(20.0),
                bandwidth_gbps: 1.0,
            },
        })
        .collect();
    links.extend(RTT_MS.iter().map(|&(a, b, rtt)| LinkEntry {
        scope: LinkScope::Region,
        a: a.to_string(),
        b: b.to_string(),
        figures: LinkSpecFigures {
            latency_ms: None,
            rtt_ms: Some(rtt),
            bandwidth_gbps: 1.0,
        },
    }));
    // Regions that drew no node cannot be named by a link entry.
    links
        .retain(|l| specs.iter().any(|n| n.region == l.a) && specs.iter().any(|n| n.region == l.b));
    ClusterSpec {
        name: format!("community-synthetic-{nodes}"),
        description: format!(
            "{nodes} desktop GPUs in 7 regions behind home links (synthetic, seed {seed})"
        ),
        gpu: Vec::new(),
        link_defaults: LinkDefaults::default(),
        nodes: specs,
        links,
    }
}

/// A resolved synthetic community cluster of `nodes` machines (see
/// [`community_spec`]); its links come from 28 region entries and the home
/// links, so it takes memory linear in `nodes`.
pub fn community_cluster(nodes: usize, seed: u64) -> Result<Cluster, PlanError> {
    community_spec(nodes, seed).resolve(None, &GpuCatalog::builtin())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ten_thousand_nodes_resolve_their_links() {
        // Every node on its own site and a few region entries: the cluster
        // resolves any pair from its link rules (no n × n matrix is built).
        let c = community_cluster(10_000, 1).unwrap();
        assert_eq!(c.len(), 10_000);
        let l = c.link(0, 9_999);
        assert!(l.latency_s > 0.0 && l.bandwidth_bps > 0.0);
    }
}
