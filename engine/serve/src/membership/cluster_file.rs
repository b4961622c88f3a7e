//! The cluster of an epoch, written in the planner's TOML format from the
//! nodes' registrations and their history: one site per host, the GPU kind
//! each node named (its memory replaced by what it offers), and the MTBF and
//! MTTR its history shows.

use std::collections::BTreeMap;
use std::fmt::Write;

use tokenflow_planner::gpu_catalog::GpuCatalog;

use super::history::NodeEstimate;
use super::protocol::{LinkMeasurement, Registration};

/// Links the coordinator assumes until it measures them: a LAN between hosts.
const INTER_HOST_LATENCY_MS: f64 = 0.5;
const INTER_HOST_GBPS: f64 = 1.0;

/// Measured links by node pair (names in either order), as the agents timed them.
pub type MeasuredLinks = BTreeMap<(String, String), LinkMeasurement>;

/// The TOML cluster of `nodes` (in order), with availability from
/// `estimates` and, between nodes whose link was measured, its round trip and
/// bandwidth.
pub fn cluster_toml(
    nodes: &[Registration],
    estimates: &BTreeMap<String, Option<NodeEstimate>>,
    links: &MeasuredLinks,
    catalog: &GpuCatalog,
) -> String {
    let mut toml = String::from("name = \"coordinator\"\n[link_defaults]\n");
    let _ = writeln!(
        toml,
        "intra_site = {{ latency_ms = 0.0, bandwidth_gbps = 100.0 }}\n\
         inter_site = {{ latency_ms = {INTER_HOST_LATENCY_MS}, bandwidth_gbps = {INTER_HOST_GBPS} }}\n\
         inter_region = {{ latency_ms = {INTER_HOST_LATENCY_MS}, bandwidth_gbps = {INTER_HOST_GBPS} }}"
    );
    let mut kinds = Vec::new();
    for n in nodes {
        let Some(base) = catalog.get(&n.gpu) else {
            continue;
        };
        // A node's own kind when it offers other memory or measured its speed.
        let own = match (n.memory_mb, n.measured) {
            (None, None) => None,
            (_, Some(_)) => Some(format!("{}-measured", n.name)),
            (Some(mb), None) => Some(format!("{}-{mb}MB", n.gpu)),
        };
        let kind = if let Some(name) = own {
            let memory_gib = n.memory_mb.map_or(base.memory_gib, |mb| mb as f64 / 1024.0);
            let (tflops, bandwidth) = n
                .measured
                .map_or((base.fp16_tflops, base.mem_bandwidth_gbs), |m| {
                    (m.fp16_tflops, m.mem_bandwidth_gbs)
                });
            if !kinds.contains(&name) {
                let _ = writeln!(
                    toml,
                    "[[gpu]]\nname = \"{name}\"\nmemory_gib = {memory_gib}\nfp16_tflops = {tflops}\nmem_bandwidth_gbs = {bandwidth}"
                );
                kinds.push(name.clone());
            }
            name
        } else {
            n.gpu.clone()
        };
        let _ = writeln!(
            toml,
            "[[nodes]]\nid = \"{}\"\ngpu = \"{kind}\"\nsite = \"{}\"\nregion = \"here\"\nprovider = \"community\"",
            n.name,
            n.host().replace(['"', '\\'], "_"),
        );
        if let Some(Some(e)) = estimates.get(&n.name) {
            // A node that never came back is given a repair of one minute.
            let _ = writeln!(
                toml,
                "availability = {{ mtbf_hours = {}, mttr_hours = {} }}",
                e.mtbf_s.max(1.0) / 3600.0,
                e.mttr_s.max(60.0) / 3600.0
            );
        }
    }
    for ((a, b), m) in links {
        let known = |n: &String| nodes.iter().any(|r| &r.name == n);
        if a != b
            && known(a)
            && known(b)
            && m.rtt_ms.is_finite()
            && m.gbps.is_finite()
            && m.gbps > 0.0
        {
            let _ = writeln!(
                toml,
                "[[links]]\nscope = \"node\"\na = \"{a}\"\nb = \"{b}\"\nrtt_ms = {}\nbandwidth_gbps = {}",
                m.rtt_ms.max(0.0),
                m.gbps
            );
        }
    }
    toml
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokenflow_planner::Cluster;

    #[test]
    fn registrations_become_a_cluster_the_planner_reads() {
        let reg = |name: &str, host: &str, memory_mb| Registration {
            name: name.into(),
            agent: format!("{host}:7000"),
            gpu: "RTX4090".into(),
            memory_mb,
            model: "m".into(),
            incarnation: 1,
            measured: None,
        };
        let mut c = reg("c", "10.0.0.2", None);
        c.measured = Some(super::super::protocol::NodeSpeed {
            mem_bandwidth_gbs: 12.5,
            fp16_tflops: 0.25,
        });
        let nodes = vec![
            reg("a", "10.0.0.1", Some(2048)),
            reg("b", "10.0.0.1", Some(2048)),
            c,
        ];
        let mut est = BTreeMap::new();
        est.insert(
            "a".to_string(),
            Some(NodeEstimate {
                mtbf_s: 7200.0,
                mttr_s: 30.0,
                departures: 2,
                deaths: 1,
            }),
        );
        let mut links = MeasuredLinks::new();
        links.insert(
            ("a".into(), "c".into()),
            LinkMeasurement {
                peer: "c".into(),
                rtt_ms: 20.0,
                gbps: 0.5,
            },
        );
        let text = cluster_toml(&nodes, &est, &links, &GpuCatalog::builtin());
        let cluster = Cluster::from_toml_str(&text).unwrap();
        let l = cluster.link(0, 2);
        assert!((l.latency_s - 0.010).abs() < 1e-9, "{l:?}");
        assert!((l.bandwidth_bps - 0.5e9 / 8.0).abs() < 1.0, "{l:?}");
        assert_eq!(cluster.len(), 3);
        let a = cluster.node("a").unwrap();
        assert!((a.gpu.memory_gib - 2.0).abs() < 1e-9);
        assert!((a.availability.mtbf_hours - 2.0).abs() < 1e-9);
        assert!(
            cluster
                .node("c")
                .unwrap()
                .availability
                .mtbf_hours
                .is_infinite()
        );
        assert_eq!(
            cluster.node("a").unwrap().site,
            cluster.node("b").unwrap().site
        );
        assert_ne!(
            cluster.node("a").unwrap().site,
            cluster.node("c").unwrap().site
        );
    }
}
