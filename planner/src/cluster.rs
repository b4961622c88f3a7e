//! Clusters: nodes with GPU kinds, sites, regions, providers and availability,
//! and the links between them. Read from TOML or JSON ([`ClusterSpec`]) and
//! resolved into a [`Cluster`] with one link per node pair.
//!
//! Example (TOML):
//! ```toml
//! name = "two-sites"
//! [link_defaults]
//! intra_site = { latency_ms = 0.05, bandwidth_gbps = 10.0 }
//! [[nodes]]
//! id = "a"
//! gpu = "RTX4090"
//! count = 2            # expands to a-0, a-1
//! site = "home-1"
//! region = "eu-west"
//! provider = "community"
//! availability = { mtbf_hours = 12.0, mttr_hours = 1.0 }
//! [[nodes]]
//! id = "b"
//! gpu = "A100-80GB"
//! site = "dc-1"
//! region = "us-east"
//! [[links]]
//! scope = "region"     # node | site | region
//! a = "eu-west"
//! b = "us-east"
//! rtt_ms = 75.0
//! bandwidth_gbps = 0.5
//! ```

use std::collections::{HashMap, HashSet};
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::availability::{Availability, AvailabilitySpec};
use crate::error::{PlanError, non_negative, positive};
use crate::gpu_catalog::{GpuCatalog, GpuKind};

/// Who runs a node: one provider's rack, or a community member's machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Provider {
    /// A machine in one provider's data centre or rack.
    #[default]
    Rack,
    /// A volunteer's or community member's machine behind a home link.
    Community,
}

/// Latency and bandwidth of a link as written in a file.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct LinkSpecFigures {
    /// One-way latency in milliseconds (give this or `rtt_ms`).
    #[serde(default)]
    pub latency_ms: Option<f64>,
    /// Round-trip time in milliseconds; one-way latency is half of it.
    #[serde(default)]
    pub rtt_ms: Option<f64>,
    /// Bandwidth in Gbit/s.
    pub bandwidth_gbps: f64,
}

/// Default links by the relation of the two nodes.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LinkDefaults {
    /// Between two nodes of the same site.
    #[serde(default)]
    pub intra_site: Option<LinkSpecFigures>,
    /// Between two sites of the same region.
    #[serde(default)]
    pub inter_site: Option<LinkSpecFigures>,
    /// Between two regions.
    #[serde(default)]
    pub inter_region: Option<LinkSpecFigures>,
}

/// What a `[[links]]` entry names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LinkScope {
    /// Two node ids.
    Node,
    /// Two sites.
    Site,
    /// Two regions.
    Region,
}

/// One explicit link entry (symmetric).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LinkEntry {
    /// What `a` and `b` name.
    pub scope: LinkScope,
    /// One end.
    pub a: String,
    /// The other end.
    pub b: String,
    /// The figures.
    #[serde(flatten)]
    pub figures: LinkSpecFigures,
}

/// A group of identical nodes as written in a file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeSpec {
    /// Id, or id prefix when `count` > 1 (nodes become `id-0`, `id-1`, ...).
    pub id: String,
    /// GPU kind, a catalogue name.
    pub gpu: String,
    /// How many such nodes (default 1).
    #[serde(default = "one")]
    pub count: u32,
    /// Site (rack, building or home).
    pub site: String,
    /// Region.
    pub region: String,
    /// Rack or community.
    #[serde(default)]
    pub provider: Provider,
    /// Failure model; absent means always up.
    #[serde(default)]
    pub availability: Option<AvailabilitySpec>,
    /// Home-link upload limit in Gbit/s, if any.
    #[serde(default)]
    pub uplink_gbps: Option<f64>,
    /// Home-link download limit in Gbit/s, if any.
    #[serde(default)]
    pub downlink_gbps: Option<f64>,
}

fn one() -> u32 {
    1
}

/// A cluster as written in a TOML or JSON file.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ClusterSpec {
    /// Name of the scenario.
    #[serde(default)]
    pub name: String,
    /// Free-form description, with sources.
    #[serde(default)]
    pub description: String,
    /// Extra GPU kinds (added to or replacing the built-in catalogue).
    #[serde(default)]
    pub gpu: Vec<GpuKind>,
    /// Default links.
    #[serde(default)]
    pub link_defaults: LinkDefaults,
    /// Node groups.
    #[serde(default)]
    pub nodes: Vec<NodeSpec>,
    /// Explicit links, most specific wins (node, then site, then region).
    #[serde(default)]
    pub links: Vec<LinkEntry>,
}

/// A resolved link: one-way latency and bandwidth.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Link {
    /// One-way latency in seconds.
    pub latency_s: f64,
    /// Bandwidth in bytes per second.
    pub bandwidth_bps: f64,
}

impl Link {
    /// A link within one node: no latency, unlimited bandwidth.
    pub const LOCAL: Link = Link {
        latency_s: 0.0,
        bandwidth_bps: f64::INFINITY,
    };

    /// Time to send `bytes` over the link.
    pub fn time(&self, bytes: f64) -> f64 {
        if bytes <= 0.0 {
            return self.latency_s;
        }
        self.latency_s + bytes / self.bandwidth_bps
    }
}

/// One resolved node with one GPU.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Node {
    /// Unique id.
    pub id: String,
    /// Its GPU.
    pub gpu: GpuKind,
    /// Site.
    pub site: String,
    /// Region.
    pub region: String,
    /// Rack or community.
    pub provider: Provider,
    /// Failure model.
    pub availability: Availability,
    /// Home-link upload limit in bytes/s, shared by everything the node sends off-site.
    pub uplink_bps: Option<f64>,
    /// Home-link download limit in bytes/s, shared by everything it receives from off-site.
    pub downlink_bps: Option<f64>,
}

/// A resolved cluster: nodes and a full link matrix.
#[derive(Debug, Clone, PartialEq)]
pub struct Cluster {
    /// Scenario name.
    pub name: String,
    /// Nodes in file order.
    pub nodes: Vec<Node>,
    links: Vec<Link>,
    index: HashMap<String, usize>,
}

impl Cluster {
    /// Reads a cluster file, TOML or JSON by extension; trace paths are relative to it.
    pub fn from_path(path: impl AsRef<Path>) -> Result<Cluster, PlanError> {
        let path = path.as_ref();
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| PlanError::Io {
            path: shown.clone(),
            message: e.to_string(),
        })?;
        let spec = ClusterSpec::parse(&text, path)?;
        spec.resolve(path.parent(), &GpuCatalog::builtin())
    }

    /// Parses TOML text (traces relative to the current directory).
    pub fn from_toml_str(text: &str) -> Result<Cluster, PlanError> {
        let spec: ClusterSpec = toml::from_str(text).map_err(|e| PlanError::Parse {
            path: "<string>".into(),
            message: e.to_string(),
        })?;
        spec.resolve(None, &GpuCatalog::builtin())
    }

    /// Number of nodes.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether the cluster has no node.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Index of a node id.
    pub fn index_of(&self, id: &str) -> Option<usize> {
        self.index.get(id).copied()
    }

    /// The node with this id.
    pub fn node(&self, id: &str) -> Option<&Node> {
        self.index_of(id).map(|i| &self.nodes[i])
    }

    /// The link from node `i` to node `j` (indices); local when `i == j`.
    pub fn link(&self, i: usize, j: usize) -> Link {
        if i == j {
            return Link::LOCAL;
        }
        self.links[i * self.nodes.len() + j]
    }

    /// Distinct regions, in first-seen order.
    pub fn regions(&self) -> Vec<String> {
        let mut seen = Vec::new();
        for n in &self.nodes {
            if !seen.contains(&n.region) {
                seen.push(n.region.clone());
            }
        }
        seen
    }
}

impl ClusterSpec {
    /// Parses TOML or JSON chosen by the extension of `path`.
    pub fn parse(text: &str, path: &Path) -> Result<ClusterSpec, PlanError> {
        let shown = path.display().to_string();
        match path.extension().and_then(|e| e.to_str()) {
            Some("toml") => toml::from_str(text).map_err(|e| PlanError::Parse {
                path: shown,
                message: e.to_string(),
            }),
            Some("json") => serde_json::from_str(text).map_err(|e| PlanError::Parse {
                path: shown,
                message: e.to_string(),
            }),
            _ => Err(PlanError::UnsupportedFormat { path: shown }),
        }
    }

    /// Checks every figure and resolves GPU kinds, availability and links.
    pub fn resolve(&self, base: Option<&Path>, builtin: &GpuCatalog) -> Result<Cluster, PlanError> {
        let mut catalog = builtin.clone();
        for (i, g) in self.gpu.iter().enumerate() {
            g.check(&format!("gpu[{i}]"))?;
        }
        catalog.merge(&self.gpu);
        if self.nodes.is_empty() {
            return Err(PlanError::InvalidField {
                field: "nodes".into(),
                message: "the cluster has no node".into(),
            });
        }
        let mut nodes = Vec::new();
        let mut uplinks = Vec::new();
        let mut index = HashMap::new();
        for (gi, spec) in self.nodes.iter().enumerate() {
            let field = format!("nodes[{gi}]");
            if spec.id.trim().is_empty() {
                return Err(PlanError::InvalidField {
                    field: format!("{field}.id"),
                    message: "must not be empty".into(),
                });
            }
            if spec.count == 0 {
                return Err(PlanError::InvalidNumber {
                    field: format!("{field}.count"),
                    requirement: "positive".into(),
                    value: 0.0,
                });
            }
            let gpu = catalog
                .get(&spec.gpu)
                .ok_or_else(|| PlanError::UnknownGpu {
                    field: format!("{field}.gpu"),
                    kind: spec.gpu.clone(),
                    known: catalog.names(),
                })?
                .clone();
            let availability = match &spec.availability {
                None => Availability::always_up(),
                Some(a) => a.resolve(&format!("{field}.availability"), base)?,
            };
            let up = match spec.uplink_gbps {
                Some(v) => Some(positive(&format!("{field}.uplink_gbps"), v)? * 1e9 / 8.0),
                None => None,
            };
            let down = match spec.downlink_gbps {
                Some(v) => Some(positive(&format!("{field}.downlink_gbps"), v)? * 1e9 / 8.0),
                None => None,
            };
            for k in 0..spec.count {
                let id = if spec.count == 1 {
                    spec.id.clone()
                } else {
                    format!("{}-{k}", spec.id)
                };
                if index.insert(id.clone(), nodes.len()).is_some() {
                    return Err(PlanError::DuplicateNode(id));
                }
                nodes.push(Node {
                    id,
                    gpu: gpu.clone(),
                    site: spec.site.clone(),
                    region: spec.region.clone(),
                    provider: spec.provider,
                    availability,
                    uplink_bps: up,
                    downlink_bps: down,
                });
                uplinks.push((up, down));
            }
        }
        let links = self.resolve_links(&nodes, &index, &uplinks)?;
        Ok(Cluster {
            name: self.name.clone(),
            nodes,
            links,
            index,
        })
    }

    fn resolve_links(
        &self,
        nodes: &[Node],
        index: &HashMap<String, usize>,
        uplinks: &[(Option<f64>, Option<f64>)],
    ) -> Result<Vec<Link>, PlanError> {
        let sites: HashSet<&str> = nodes.iter().map(|n| n.site.as_str()).collect();
        let regions: HashSet<&str> = nodes.iter().map(|n| n.region.as_str()).collect();
        let mut by_node = HashMap::new();
        let mut by_site = HashMap::new();
        let mut by_region = HashMap::new();
        for (li, l) in self.links.iter().enumerate() {
            let field = format!("links[{li}]");
            let link = figures(&field, &l.figures)?;
            type Known<'k> = Box<dyn Fn(&str) -> bool + 'k>;
            let (known, scope, map): (Known, &str, _) = match l.scope {
                LinkScope::Node => (
                    Box::new(|s: &str| index.contains_key(s)),
                    "node",
                    &mut by_node,
                ),
                LinkScope::Site => (Box::new(|s: &str| sites.contains(s)), "site", &mut by_site),
                LinkScope::Region => (
                    Box::new(|s: &str| regions.contains(s)),
                    "region",
                    &mut by_region,
                ),
            };
            for (end, name) in [("a", &l.a), ("b", &l.b)] {
                if !known(name) {
                    return Err(PlanError::UnknownLinkEnd {
                        field: format!("{field}.{end}"),
                        scope: scope.into(),
                        name: name.clone(),
                    });
                }
            }
            map.insert(key(&l.a, &l.b), link);
        }
        let d = &self.link_defaults;
        let intra_site = d
            .intra_site
            .as_ref()
            .map(|f| figures("link_defaults.intra_site", f))
            .transpose()?;
        let inter_site = d
            .inter_site
            .as_ref()
            .map(|f| figures("link_defaults.inter_site", f))
            .transpose()?;
        let inter_region = d
            .inter_region
            .as_ref()
            .map(|f| figures("link_defaults.inter_region", f))
            .transpose()?;
        let n = nodes.len();
        let mut out = vec![Link::LOCAL; n * n];
        for i in 0..n {
            for j in (i + 1)..n {
                let (a, b) = (&nodes[i], &nodes[j]);
                let found = by_node
                    .get(&key(&a.id, &b.id))
                    .or_else(|| {
                        if a.site == b.site {
                            by_site.get(&key(&a.site, &a.site))
                        } else {
                            by_site.get(&key(&a.site, &b.site))
                        }
                    })
                    .or_else(|| {
                        by_region
                            .get(&key(&a.region, &b.region))
                            .filter(|_| a.site != b.site)
                    })
                    .copied()
                    .or(if a.site == b.site {
                        intra_site
                    } else if a.region == b.region {
                        inter_site.or(by_region.get(&key(&a.region, &a.region)).copied())
                    } else {
                        inter_region
                    });
                let Some(mut link) = found else {
                    return Err(PlanError::MissingLink {
                        a: format!("`{}` ({}, {})", a.id, a.site, a.region),
                        b: format!("`{}` ({}, {})", b.id, b.site, b.region),
                    });
                };
                let mut back = link;
                // Home links cap what leaves the sender and what reaches the receiver.
                if a.site != b.site {
                    let cap = |bw: f64, up: Option<f64>, down: Option<f64>| {
                        bw.min(up.unwrap_or(f64::INFINITY))
                            .min(down.unwrap_or(f64::INFINITY))
                    };
                    link.bandwidth_bps = cap(link.bandwidth_bps, uplinks[i].0, uplinks[j].1);
                    back.bandwidth_bps = cap(back.bandwidth_bps, uplinks[j].0, uplinks[i].1);
                }
                out[i * n + j] = link;
                out[j * n + i] = back;
            }
        }
        Ok(out)
    }
}

fn key(a: &str, b: &str) -> (String, String) {
    if a <= b {
        (a.to_string(), b.to_string())
    } else {
        (b.to_string(), a.to_string())
    }
}

fn figures(field: &str, f: &LinkSpecFigures) -> Result<Link, PlanError> {
    let latency_ms = match (f.latency_ms, f.rtt_ms) {
        (Some(l), None) => non_negative(&format!("{field}.latency_ms"), l)?,
        (None, Some(r)) => non_negative(&format!("{field}.rtt_ms"), r)? / 2.0,
        (Some(_), Some(_)) => {
            return Err(PlanError::InvalidField {
                field: field.to_string(),
                message: "give latency_ms or rtt_ms, not both".into(),
            });
        }
        (None, None) => {
            return Err(PlanError::InvalidField {
                field: field.to_string(),
                message: "latency_ms or rtt_ms is required".into(),
            });
        }
    };
    let bw = positive(&format!("{field}.bandwidth_gbps"), f.bandwidth_gbps)?;
    Ok(Link {
        latency_s: latency_ms / 1000.0,
        bandwidth_bps: bw * 1e9 / 8.0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const TWO_REGIONS: &str = r#"
name = "t"
[link_defaults]
intra_site = { latency_ms = 0.1, bandwidth_gbps = 10.0 }
[[nodes]]
id = "a"
gpu = "RTX4090"
count = 2
site = "s1"
region = "r1"
uplink_gbps = 0.1
[[nodes]]
id = "b"
gpu = "a100-80gb"
site = "s2"
region = "r2"
[[links]]
scope = "region"
a = "r2"
b = "r1"
rtt_ms = 80.0
bandwidth_gbps = 1.0
"#;

    #[test]
    fn resolves_counts_links_and_home_uplinks() {
        let c = Cluster::from_toml_str(TWO_REGIONS).unwrap();
        assert_eq!(c.len(), 3);
        assert_eq!(c.nodes[0].id, "a-0");
        let (a0, a1, b) = (0, 1, c.index_of("b").unwrap());
        assert!((c.link(a0, a1).latency_s - 0.0001).abs() < 1e-12);
        assert!((c.link(a0, b).latency_s - 0.040).abs() < 1e-12);
        // uplink of a caps a->b, not b->a
        assert!((c.link(a0, b).bandwidth_bps - 0.1e9 / 8.0).abs() < 1.0);
        assert!((c.link(b, a0).bandwidth_bps - 1e9 / 8.0).abs() < 1.0);
    }

    #[test]
    fn unknown_gpu_names_field() {
        let text = TWO_REGIONS.replace("RTX4090", "RTX9999");
        let err = Cluster::from_toml_str(&text).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("nodes[0].gpu") && msg.contains("RTX9999"),
            "{msg}"
        );
    }

    #[test]
    fn missing_link_names_both_nodes() {
        let text = TWO_REGIONS.replace(
            "scope = \"region\"\na = \"r2\"",
            "scope = \"region\"\na = \"r1\"",
        );
        let err = Cluster::from_toml_str(&text).unwrap_err();
        assert!(matches!(err, PlanError::MissingLink { .. }), "{err}");
        assert!(
            err.to_string().contains("a-0") && err.to_string().contains("`b`"),
            "{err}"
        );
    }

    #[test]
    fn negative_bandwidth_and_zero_count_rejected() {
        let text = TWO_REGIONS.replace("bandwidth_gbps = 1.0", "bandwidth_gbps = -1.0");
        let err = Cluster::from_toml_str(&text).unwrap_err();
        assert!(err.to_string().contains("links[0].bandwidth_gbps"), "{err}");
        let text = TWO_REGIONS.replace("count = 2", "count = 0");
        let err = Cluster::from_toml_str(&text).unwrap_err();
        assert!(err.to_string().contains("nodes[0].count"), "{err}");
    }

    #[test]
    fn json_and_toml_agree() {
        let spec: ClusterSpec = toml::from_str(TWO_REGIONS).unwrap();
        let json = serde_json::to_string(&spec).unwrap();
        let back = ClusterSpec::parse(&json, Path::new("x.json")).unwrap();
        assert_eq!(back, spec);
        assert!(matches!(
            ClusterSpec::parse(&json, Path::new("x.yaml")),
            Err(PlanError::UnsupportedFormat { .. })
        ));
    }
}
