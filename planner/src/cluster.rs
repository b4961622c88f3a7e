//! Clusters: nodes with GPU kinds, sites, regions, providers and availability,
//! and the links between them. Read from TOML or JSON ([`ClusterSpec`]) and
//! resolved into a [`Cluster`] that gives a link for every node pair.
//!
//! Links are not stored per pair: a resolved cluster keeps the rules (node,
//! site and region entries, defaults, home-link caps) and [`Cluster::link`]
//! applies them on each call, so memory grows with the nodes and the entries,
//! not with their square. Resolution checks that every pair has a link without
//! visiting every pair, and refuses a node count whose nodes cannot fit in
//! memory ([`PlanError::TooLarge`]) before expanding it.
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

use std::collections::HashMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::availability::{Availability, AvailabilitySpec};
use crate::error::{PlanError, available_memory, check_fits, non_negative, positive};
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

/// A resolved cluster: nodes and the link rules between them.
#[derive(Debug, Clone, PartialEq)]
pub struct Cluster {
    /// Scenario name.
    pub name: String,
    /// Nodes in file order.
    pub nodes: Vec<Node>,
    links: Links,
    index: HashMap<String, usize>,
}

type PairMap<V> = HashMap<u64, V, crate::fx_hash::FxBuild>;

/// The key of an unordered pair of indices.
fn pair(a: u32, b: u32) -> u64 {
    let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
    ((lo as u64) << 32) | hi as u64
}

fn unpair(k: u64) -> (u32, u32) {
    ((k >> 32) as u32, k as u32)
}

/// The link rules of a resolved cluster, applied per pair on demand: O(nodes +
/// entries) memory where a matrix would take O(nodes²) (10,000 nodes: 1.6 GB).
#[derive(Debug, Clone, PartialEq)]
struct Links {
    /// Per node: what its links depend on.
    ends: Vec<End>,
    /// `[[links]]` entries by node pair, site pair and region pair.
    by_node: PairMap<Link>,
    by_site: PairMap<Link>,
    by_region: PairMap<Link>,
    intra_site: Option<Link>,
    inter_site: Option<Link>,
    inter_region: Option<Link>,
    /// With at most [`REGION_TABLE`] regions: the link between two sites of
    /// regions `a` and `b` that no site entry names, at `a * regions + b`
    /// (a region entry, or the default); empty otherwise.
    between_regions: Vec<Option<Link>>,
    regions: usize,
    /// No node or site entries, and the region table: every link is a default
    /// or a region entry.
    plain: bool,
}

/// Most regions for which [`Links`] tabulates the links between regions.
const REGION_TABLE: usize = 256;

/// A node as its links see it.
#[derive(Debug, Clone, Copy, PartialEq)]
struct End {
    /// Its site, interned in first-seen order.
    site: u32,
    /// Its region, interned in first-seen order.
    region: u32,
    /// Home-link upload cap, bytes/s (infinite: none).
    up: f64,
    /// Home-link download cap, bytes/s (infinite: none).
    down: f64,
}

impl Links {
    fn new(
        ends: Vec<End>,
        by_node: PairMap<Link>,
        by_site: PairMap<Link>,
        by_region: PairMap<Link>,
        defaults: [Option<Link>; 3],
    ) -> Links {
        let [intra_site, inter_site, inter_region] = defaults;
        let regions = ends
            .iter()
            .map(|e| e.region as usize + 1)
            .max()
            .unwrap_or(0);
        let mut links = Links {
            ends,
            by_node,
            by_site,
            by_region,
            intra_site,
            inter_site,
            inter_region,
            between_regions: Vec::new(),
            regions,
            plain: false,
        };
        if regions <= REGION_TABLE {
            links.between_regions = (0..regions * regions)
                .map(|k| links.region_rule((k / regions) as u32, (k % regions) as u32))
                .collect();
            links.plain = links.by_node.is_empty() && links.by_site.is_empty();
        }
        links
    }

    /// The link between sites of regions `ri` and `rj` without a site entry.
    fn region_rule(&self, ri: u32, rj: u32) -> Option<Link> {
        match self.by_region.get(&pair(ri, rj)) {
            Some(&l) => Some(l),
            None if ri == rj => self.inter_site,
            None => self.inter_region,
        }
    }

    /// The link between distinct nodes `i` and `j` before home-link caps, by
    /// the file's rules: a node entry, then a site entry (the site with itself
    /// within a site), then a region entry (between sites), then the default
    /// for the pair's relation. `None`: no rule covers the pair.
    #[inline]
    fn base(&self, i: usize, j: usize) -> Option<Link> {
        if !self.by_node.is_empty()
            && let Some(&l) = self.by_node.get(&pair(i as u32, j as u32))
        {
            return Some(l);
        }
        let (a, b) = (&self.ends[i], &self.ends[j]);
        if !self.by_site.is_empty()
            && let Some(&l) = self.by_site.get(&pair(a.site, b.site))
        {
            return Some(l);
        }
        if a.site == b.site {
            return self.intra_site;
        }
        if self.between_regions.is_empty() {
            self.region_rule(a.region, b.region)
        } else {
            self.between_regions[a.region as usize * self.regions + b.region as usize]
        }
    }

    /// The link from node `i` to node `j`, with home links capping what leaves
    /// `i` and what reaches `j` when they are on different sites.
    #[inline]
    fn get(&self, i: usize, j: usize) -> Option<Link> {
        let (a, b) = (&self.ends[i], &self.ends[j]);
        if self.plain {
            // The common case, without hashing: a site, or a pair of regions.
            if a.site == b.site {
                return self.intra_site;
            }
            let mut link =
                self.between_regions[a.region as usize * self.regions + b.region as usize]?;
            link.bandwidth_bps = link.bandwidth_bps.min(a.up).min(b.down);
            return Some(link);
        }
        let mut link = self.base(i, j)?;
        if a.site != b.site {
            link.bandwidth_bps = link.bandwidth_bps.min(a.up).min(b.down);
        }
        Some(link)
    }

    /// A pair of nodes `(i, j)`, `i < j`, that no rule links, if there is one.
    ///
    /// Pairs are checked by class, not one by one. Nodes of one site are linked
    /// by a site entry or `intra_site`; nodes of different sites by a site
    /// entry, a region entry or the default of their relation; otherwise each
    /// pair needs a node entry. So a class (a site, or a pair of (site, region)
    /// cells of different sites) is covered when a rule covers it or its node
    /// entries count all its pairs, and only an uncovered class is searched for
    /// the pair to name. Every class visited is either covered by a rule or
    /// entries of its own, or ends the search, which bounds the work by
    /// O(nodes + entries) (plus, for sites spread over several regions, the
    /// pairs of their cells).
    fn missing_pair(&self) -> Option<(usize, usize)> {
        let n = self.ends.len();
        let site = |i: usize| self.ends[i].site;
        let sites = self
            .ends
            .iter()
            .map(|e| e.site as usize + 1)
            .max()
            .unwrap_or(0);
        let regions = self.regions;
        // Cells: nodes of one site and one region.
        let mut cell_of: PairMap<u32> = PairMap::default();
        let mut cell = Vec::with_capacity(n);
        let mut cell_nodes: Vec<Vec<u32>> = Vec::new();
        let mut cell_site = Vec::new();
        let mut region_cells: Vec<Vec<u32>> = vec![Vec::new(); regions];
        let mut site_nodes: Vec<Vec<u32>> = vec![Vec::new(); sites];
        for i in 0..n {
            let (s, r) = (self.ends[i].site, self.ends[i].region);
            let key = ((s as u64) << 32) | r as u64;
            let c = *cell_of.entry(key).or_insert_with(|| {
                cell_nodes.push(Vec::new());
                cell_site.push(s);
                region_cells[r as usize].push(cell_nodes.len() as u32 - 1);
                cell_nodes.len() as u32 - 1
            });
            cell.push(c);
            cell_nodes[c as usize].push(i as u32);
            site_nodes[s as usize].push(i as u32);
        }
        // Node entries per site (pairs within it) and per cell pair (between sites).
        let mut within_site = vec![0u64; sites];
        let mut between_cells: PairMap<u64> = PairMap::default();
        for &k in self.by_node.keys() {
            let (a, b) = unpair(k);
            let (a, b) = (a as usize, b as usize);
            if a == b {
                continue;
            }
            if site(a) == site(b) {
                within_site[site(a) as usize] += 1;
            } else {
                *between_cells.entry(pair(cell[a], cell[b])).or_default() += 1;
            }
        }
        // The first pair of `xs` x `ys` (or of `xs` with itself) without a node entry.
        let unlinked = |xs: &[u32], ys: Option<&[u32]>| -> Option<(usize, usize)> {
            for (k, &x) in xs.iter().enumerate() {
                let others = ys.unwrap_or(&xs[k + 1..]);
                for &y in others {
                    if !self.by_node.contains_key(&pair(x, y)) {
                        return Some((x.min(y) as usize, x.max(y) as usize));
                    }
                }
            }
            None
        };
        if self.intra_site.is_none() {
            for (s, nodes) in site_nodes.iter().enumerate() {
                let k = nodes.len() as u128;
                if k < 2 || self.by_site.contains_key(&pair(s as u32, s as u32)) {
                    continue;
                }
                if (within_site[s] as u128) < k * (k - 1) / 2 {
                    return unlinked(nodes, None);
                }
            }
        }
        // Pairs of different sites in regions `r1` and `r2` that no region entry
        // or default links: each pair of cells needs a site entry or node entries.
        let between = |r1: usize, r2: usize| -> Option<(usize, usize)> {
            for (x, &c1) in region_cells[r1].iter().enumerate() {
                let others = if r1 == r2 {
                    &region_cells[r2][x + 1..]
                } else {
                    &region_cells[r2][..]
                };
                for &c2 in others {
                    let (s1, s2) = (cell_site[c1 as usize], cell_site[c2 as usize]);
                    if s1 == s2 || self.by_site.contains_key(&pair(s1, s2)) {
                        continue;
                    }
                    let (n1, n2) = (&cell_nodes[c1 as usize], &cell_nodes[c2 as usize]);
                    let need = n1.len() as u128 * n2.len() as u128;
                    let have = between_cells.get(&pair(c1, c2)).copied().unwrap_or(0);
                    if (have as u128) < need {
                        return unlinked(n1, Some(n2));
                    }
                }
            }
            None
        };
        if self.inter_site.is_none() {
            for r in 0..regions {
                if !self.by_region.contains_key(&pair(r as u32, r as u32))
                    && let Some(p) = between(r, r)
                {
                    return Some(p);
                }
            }
        }
        if self.inter_region.is_none() {
            for r1 in 0..regions {
                for r2 in r1 + 1..regions {
                    if !self.by_region.contains_key(&pair(r1 as u32, r2 as u32))
                        && let Some(p) = between(r1, r2)
                    {
                        return Some(p);
                    }
                }
            }
        }
        None
    }

    /// The rules restricted to nodes `keep` (ascending old indices), renumbered.
    fn subset(&self, keep: &[usize]) -> Links {
        let mut new_index = vec![u32::MAX; self.ends.len()];
        for (k, &i) in keep.iter().enumerate() {
            new_index[i] = k as u32;
        }
        let by_node: PairMap<Link> = self
            .by_node
            .iter()
            .filter_map(|(&k, &l)| {
                let (a, b) = unpair(k);
                let (a, b) = (new_index[a as usize], new_index[b as usize]);
                (a != u32::MAX && b != u32::MAX).then(|| (pair(a, b), l))
            })
            .collect();
        Links {
            ends: keep.iter().map(|&i| self.ends[i]).collect(),
            by_node,
            by_site: self.by_site.clone(),
            by_region: self.by_region.clone(),
            intra_site: self.intra_site,
            inter_site: self.inter_site,
            inter_region: self.inter_region,
            between_regions: self.between_regions.clone(),
            regions: self.regions,
            plain: self.plain,
        }
    }
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
    /// Resolved from the cluster's rules on each call (a few array reads, and
    /// hash lookups where the file has node or site entries).
    #[inline]
    pub fn link(&self, i: usize, j: usize) -> Link {
        if i == j {
            return Link::LOCAL;
        }
        self.links
            .get(i, j)
            .expect("every pair of nodes has a link: checked when the cluster was resolved")
    }

    /// The cluster of nodes `keep` (indices, ascending, each once), in that
    /// order, with the same nodes and the same links between them.
    pub fn subset(&self, keep: &[usize]) -> Cluster {
        debug_assert!(keep.windows(2).all(|w| w[0] < w[1]));
        let nodes: Vec<Node> = keep.iter().map(|&i| self.nodes[i].clone()).collect();
        let index = nodes
            .iter()
            .enumerate()
            .map(|(k, n)| (n.id.clone(), k))
            .collect();
        Cluster {
            name: self.name.clone(),
            nodes,
            links: self.links.subset(keep),
            index,
        }
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
    /// Refuses node counts that cannot fit in the memory available now
    /// ([`crate::error::available_memory`]).
    pub fn resolve(&self, base: Option<&Path>, builtin: &GpuCatalog) -> Result<Cluster, PlanError> {
        self.resolve_within(base, builtin, available_memory())
    }

    /// [`ClusterSpec::resolve`] with `memory_bytes` for the nodes instead of the
    /// memory available now (`u64::MAX`: no limit).
    pub fn resolve_within(
        &self,
        base: Option<&Path>,
        builtin: &GpuCatalog,
        memory_bytes: u64,
    ) -> Result<Cluster, PlanError> {
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
        self.check_size(&catalog, memory_bytes)?;
        let total: usize = self.nodes.iter().map(|g| g.count as usize).sum();
        let mut nodes = Vec::with_capacity(total);
        let mut index = HashMap::with_capacity(total);
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
            }
        }
        let links = self.resolve_links(&nodes, &index)?;
        Ok(Cluster {
            name: self.name.clone(),
            nodes,
            links,
            index,
        })
    }

    /// Refuses node groups whose nodes, resolved, need more than `memory_bytes`
    /// (or more than `u32::MAX` nodes in all, the simulator's index), naming
    /// the `count` at which the running total no longer fits. Nothing is
    /// allocated for the nodes before this passes.
    fn check_size(&self, catalog: &GpuCatalog, memory_bytes: u64) -> Result<(), PlanError> {
        let (mut total, mut bytes) = (0u64, 0u64);
        for (gi, spec) in self.nodes.iter().enumerate() {
            let field = format!("nodes[{gi}].count");
            let each = node_bytes(spec, catalog.get(&spec.gpu));
            total += spec.count as u64;
            bytes = bytes.saturating_add(each.saturating_mul(spec.count as u64));
            if total > u32::MAX as u64 {
                return Err(PlanError::InvalidNumber {
                    field,
                    requirement: format!("at most {} nodes in all", u32::MAX),
                    value: total as f64,
                });
            }
            check_fits(
                &field,
                || format!("{total} nodes (about {each} bytes each)"),
                bytes,
                memory_bytes,
            )?;
        }
        Ok(())
    }

    fn resolve_links(
        &self,
        nodes: &[Node],
        index: &HashMap<String, usize>,
    ) -> Result<Links, PlanError> {
        fn intern<'n>(ids: &mut HashMap<&'n str, u32>, name: &'n str) -> u32 {
            let next = ids.len() as u32;
            *ids.entry(name).or_insert(next)
        }
        let (mut sites, mut regions) = (HashMap::new(), HashMap::new());
        let site: Vec<u32> = nodes.iter().map(|n| intern(&mut sites, &n.site)).collect();
        let region: Vec<u32> = nodes
            .iter()
            .map(|n| intern(&mut regions, &n.region))
            .collect();
        let mut by_node = PairMap::default();
        let mut by_site = PairMap::default();
        let mut by_region = PairMap::default();
        for (li, l) in self.links.iter().enumerate() {
            let field = format!("links[{li}]");
            let link = figures(&field, &l.figures)?;
            let (scope, map) = match l.scope {
                LinkScope::Node => ("node", &mut by_node),
                LinkScope::Site => ("site", &mut by_site),
                LinkScope::Region => ("region", &mut by_region),
            };
            let find = |name: &str| match l.scope {
                LinkScope::Node => index.get(name).map(|&i| i as u32),
                LinkScope::Site => sites.get(name).copied(),
                LinkScope::Region => regions.get(name).copied(),
            };
            let mut ends = [0u32; 2];
            for (k, (end, name)) in [("a", &l.a), ("b", &l.b)].into_iter().enumerate() {
                ends[k] = find(name).ok_or_else(|| PlanError::UnknownLinkEnd {
                    field: format!("{field}.{end}"),
                    scope: scope.into(),
                    name: name.clone(),
                })?;
            }
            map.insert(pair(ends[0], ends[1]), link);
        }
        let d = &self.link_defaults;
        let default = |f: &Option<LinkSpecFigures>, field: &str| {
            f.as_ref().map(|f| figures(field, f)).transpose()
        };
        let ends = nodes
            .iter()
            .zip(site.iter().zip(&region))
            .map(|(n, (&site, &region))| End {
                site,
                region,
                up: n.uplink_bps.unwrap_or(f64::INFINITY),
                down: n.downlink_bps.unwrap_or(f64::INFINITY),
            })
            .collect();
        let defaults = [
            default(&d.intra_site, "link_defaults.intra_site")?,
            default(&d.inter_site, "link_defaults.inter_site")?,
            default(&d.inter_region, "link_defaults.inter_region")?,
        ];
        let links = Links::new(ends, by_node, by_site, by_region, defaults);
        if let Some((i, j)) = links.missing_pair() {
            let (a, b) = (&nodes[i], &nodes[j]);
            return Err(PlanError::MissingLink {
                a: format!("`{}` ({}, {})", a.id, a.site, a.region),
                b: format!("`{}` ({}, {})", b.id, b.site, b.region),
            });
        }
        Ok(links)
    }
}

/// Estimated bytes of one resolved node of group `spec` while its cluster is
/// resolved: the [`Node`] and its strings (its own copy of the GPU kind), its
/// id again as the key of the index (hash tables with room to grow: twice
/// their entries), its link-rule fields and the cells of the link check.
fn node_bytes(spec: &NodeSpec, gpu: Option<&GpuKind>) -> u64 {
    use std::mem::size_of;
    let digits = spec.count.max(1).ilog10() as usize + 2; // `-` and the number
    let id = spec.id.len() + digits;
    let gpu_heap = gpu.map_or(spec.gpu.len(), |g| {
        g.name.len() + g.class.len() + g.source.len()
    });
    let node = size_of::<Node>() + id + spec.site.len() + spec.region.len() + gpu_heap;
    let index = 2 * (size_of::<(String, usize)>() + 1) + id;
    // Links: its end; the check: cell, site and cell lists, cell table.
    let links = size_of::<End>();
    let check = 3 * size_of::<u32>() + 2 * (size_of::<Vec<u32>>() + 2 * size_of::<(u64, u32)>());
    (node + index + links + check) as u64
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
    #[test]
    fn huge_count_is_refused_before_anything_is_allocated() {
        // 4e9 nodes: about 1.5 TB resolved. The refusal must come from the size
        // check, at once, not from the allocator.
        let started = std::time::Instant::now();
        let text = TWO_REGIONS.replace("count = 2", "count = 4000000000");
        let err = Cluster::from_toml_str(&text).unwrap_err();
        assert!(started.elapsed().as_secs_f64() < 1.0);
        let PlanError::TooLarge {
            ref field,
            needed_bytes,
            available_bytes,
            ..
        } = err
        else {
            panic!("{err}");
        };
        assert_eq!(field, "nodes[0].count");
        assert!(needed_bytes > 4_000_000_000 * 200, "{needed_bytes}");
        assert!(needed_bytes > available_bytes);
        let msg = err.to_string();
        assert!(
            msg.contains("nodes[0].count")
                && msg.contains("4000000000 nodes")
                && msg.contains("TiB"),
            "{msg}"
        );
    }

    #[test]
    fn node_budget_names_the_group_that_overflows_it() {
        let spec: ClusterSpec = toml::from_str(TWO_REGIONS).unwrap();
        let catalog = GpuCatalog::builtin();
        let mut big = spec.clone();
        big.nodes[1].count = 100_000;
        // 100,002 nodes do not fit in 1 MiB; the second group is where they stop fitting.
        let err = big.resolve_within(None, &catalog, 1 << 20).unwrap_err();
        assert!(
            matches!(&err, PlanError::TooLarge { field, .. } if field == "nodes[1].count"),
            "{err}"
        );
        // The same spec fits in 1 GiB, and the small one in 1 MiB.
        assert_eq!(
            big.resolve_within(None, &catalog, 1 << 30).unwrap().len(),
            100_002
        );
        assert_eq!(
            spec.resolve_within(None, &catalog, 1 << 20).unwrap().len(),
            3
        );
        let mut many = spec.clone();
        many.nodes[0].count = u32::MAX;
        many.nodes[1].count = 2;
        let err = many.resolve_within(None, &catalog, u64::MAX).unwrap_err();
        assert!(
            err.to_string().contains("at most 4294967295 nodes"),
            "{err}"
        );
    }

    #[test]
    fn subset_keeps_nodes_and_links() {
        let c = Cluster::from_toml_str(TWO_REGIONS).unwrap();
        let sub = c.subset(&[1, 2]);
        assert_eq!(sub.len(), 2);
        assert_eq!(sub.nodes[0].id, "a-1");
        assert_eq!(sub.index_of("b"), Some(1));
        assert_eq!(sub.link(0, 1), c.link(1, 2));
        assert_eq!(sub.link(1, 0), c.link(2, 1));
    }

    /// The resolution before rules were kept: every pair looked up by strings
    /// and stored in an n x n matrix (`None`: no link). The reference for the
    /// property test below.
    fn dense_reference(spec: &ClusterSpec, c: &Cluster) -> Vec<Option<Link>> {
        let key = |a: &str, b: &str| {
            if a <= b {
                (a.to_string(), b.to_string())
            } else {
                (b.to_string(), a.to_string())
            }
        };
        let (mut by_node, mut by_site, mut by_region) =
            (HashMap::new(), HashMap::new(), HashMap::new());
        for (li, l) in spec.links.iter().enumerate() {
            let link = figures(&format!("links[{li}]"), &l.figures).unwrap();
            let map = match l.scope {
                LinkScope::Node => &mut by_node,
                LinkScope::Site => &mut by_site,
                LinkScope::Region => &mut by_region,
            };
            map.insert(key(&l.a, &l.b), link);
        }
        let d = &spec.link_defaults;
        let f = |x: &Option<LinkSpecFigures>| x.as_ref().map(|x| figures("d", x).unwrap());
        let (intra_site, inter_site, inter_region) =
            (f(&d.intra_site), f(&d.inter_site), f(&d.inter_region));
        let n = c.len();
        let mut out = vec![Some(Link::LOCAL); n * n];
        for i in 0..n {
            for j in (i + 1)..n {
                let (a, b) = (&c.nodes[i], &c.nodes[j]);
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
                let (mut link, mut back) = match found {
                    Some(l) => (l, l),
                    None => {
                        out[i * n + j] = None;
                        out[j * n + i] = None;
                        continue;
                    }
                };
                if a.site != b.site {
                    let cap = |bw: f64, up: Option<f64>, down: Option<f64>| {
                        bw.min(up.unwrap_or(f64::INFINITY))
                            .min(down.unwrap_or(f64::INFINITY))
                    };
                    link.bandwidth_bps = cap(link.bandwidth_bps, a.uplink_bps, b.downlink_bps);
                    back.bandwidth_bps = cap(back.bandwidth_bps, b.uplink_bps, a.downlink_bps);
                }
                out[i * n + j] = Some(link);
                out[j * n + i] = Some(back);
            }
        }
        out
    }

    /// A cluster of up to 12 single nodes on 3 sites and 3 regions (sites may
    /// span regions), with random defaults, home links and link entries, many
    /// of them node entries so that whole classes are covered by them.
    fn random_spec() -> impl proptest::strategy::Strategy<Value = ClusterSpec> {
        use proptest::prelude::*;
        let node = (
            0..3usize,
            0..3usize,
            prop::option::of(1u32..4),
            prop::option::of(1u32..4),
        );
        let fig = |k: u32| LinkSpecFigures {
            latency_ms: Some(k as f64),
            rtt_ms: None,
            bandwidth_gbps: k as f64,
        };
        let entry = (0..3usize, 0..12usize, 0..12usize, 1u32..9);
        (
            prop::collection::vec(node, 1..12),
            prop::collection::vec(entry, 0..40),
            prop::option::of(1u32..9),
            prop::option::of(1u32..9),
            prop::option::of(1u32..9),
            any::<bool>(),
        )
            .prop_map(move |(nodes, entries, d1, d2, d3, all_pairs_of_site0)| {
                let nodes: Vec<NodeSpec> = nodes
                    .iter()
                    .enumerate()
                    .map(|(k, &(s, r, up, down))| NodeSpec {
                        id: format!("n{k}"),
                        gpu: "RTX4090".into(),
                        count: 1,
                        site: format!("s{s}"),
                        region: format!("r{r}"),
                        provider: Provider::Community,
                        availability: None,
                        uplink_gbps: up.map(|u| u as f64 * 0.5),
                        downlink_gbps: down.map(|d| d as f64 * 0.7),
                    })
                    .collect();
                let pick = |v: Vec<&String>, k: usize| v[k % v.len()].clone();
                let mut links: Vec<LinkEntry> = entries
                    .iter()
                    .map(|&(scope, a, b, k)| {
                        let (scope, names): (LinkScope, Vec<&String>) = match scope {
                            0 => (LinkScope::Node, nodes.iter().map(|n| &n.id).collect()),
                            1 => (LinkScope::Site, nodes.iter().map(|n| &n.site).collect()),
                            _ => (LinkScope::Region, nodes.iter().map(|n| &n.region).collect()),
                        };
                        LinkEntry {
                            scope,
                            a: pick(names.clone(), a),
                            b: pick(names, b),
                            figures: fig(k),
                        }
                    })
                    .collect();
                if all_pairs_of_site0 {
                    let ids: Vec<&NodeSpec> = nodes.iter().filter(|n| n.site == "s0").collect();
                    for (x, a) in ids.iter().enumerate() {
                        for b in &ids[x + 1..] {
                            links.push(LinkEntry {
                                scope: LinkScope::Node,
                                a: a.id.clone(),
                                b: b.id.clone(),
                                figures: fig(9),
                            });
                        }
                    }
                }
                ClusterSpec {
                    name: "random".into(),
                    link_defaults: LinkDefaults {
                        intra_site: d1.map(fig),
                        inter_site: d2.map(fig),
                        inter_region: d3.map(fig),
                    },
                    nodes,
                    links,
                    ..ClusterSpec::default()
                }
            })
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2000))]

        #[test]
        fn rules_give_the_dense_matrix_and_find_every_missing_link(spec in random_spec()) {
            // Resolve without the link check to compare against the reference.
            let nodes_only = ClusterSpec {
                links: Vec::new(),
                link_defaults: LinkDefaults {
                    intra_site: Some(LinkSpecFigures { latency_ms: Some(0.0), rtt_ms: None, bandwidth_gbps: 1.0 }),
                    inter_site: Some(LinkSpecFigures { latency_ms: Some(0.0), rtt_ms: None, bandwidth_gbps: 1.0 }),
                    inter_region: Some(LinkSpecFigures { latency_ms: Some(0.0), rtt_ms: None, bandwidth_gbps: 1.0 }),
                },
                ..spec.clone()
            };
            let plain = nodes_only.resolve(None, &GpuCatalog::builtin()).unwrap();
            let dense = dense_reference(&spec, &plain);
            let n = plain.len();
            let missing: Vec<(usize, usize)> = (0..n)
                .flat_map(|i| ((i + 1)..n).map(move |j| (i, j)))
                .filter(|&(i, j)| dense[i * n + j].is_none())
                .collect();
            match spec.resolve(None, &GpuCatalog::builtin()) {
                Ok(c) => {
                    proptest::prop_assert!(missing.is_empty(), "missed {:?}", missing);
                    for i in 0..n {
                        for j in 0..n {
                            proptest::prop_assert_eq!(Some(c.link(i, j)), dense[i * n + j]);
                        }
                    }
                }
                Err(PlanError::MissingLink { a, b }) => {
                    let id = |t: &str| t.split('`').nth(1).unwrap().to_string();
                    let (i, j) = (plain.index_of(&id(&a)).unwrap(), plain.index_of(&id(&b)).unwrap());
                    proptest::prop_assert!(i < j && missing.contains(&(i, j)), "{a} {b} not missing");
                }
                Err(e) => proptest::prop_assert!(false, "{e}"),
            }
        }
    }
}
