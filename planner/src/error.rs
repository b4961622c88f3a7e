//! Typed errors of the planner: bad input, infeasible placements and invalid plans.

use thiserror::Error;

/// Everything that can go wrong while reading inputs or planning.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum PlanError {
    /// A chart could not be drawn.
    #[error("cannot draw the chart: {0}")]
    Plot(String),
    /// A file could not be read.
    #[error("cannot read {path}: {message}")]
    Io {
        /// The file.
        path: String,
        /// The operating system's message.
        message: String,
    },
    /// A file could not be parsed.
    #[error("cannot parse {path}: {message}")]
    Parse {
        /// The file (or `<string>`).
        path: String,
        /// The parser's message, with line and column where known.
        message: String,
    },
    /// A file extension that is neither `.toml` nor `.json`.
    #[error("unsupported file type for {path}: expected .toml or .json")]
    UnsupportedFormat {
        /// The file.
        path: String,
    },
    /// A node names a GPU kind that the catalogue does not hold.
    #[error("{field}: unknown GPU kind `{kind}` (known: {known})")]
    UnknownGpu {
        /// Where it was named, e.g. `nodes[2].gpu`.
        field: String,
        /// The name given.
        kind: String,
        /// Comma-separated known names.
        known: String,
    },
    /// A figure that must be positive (or non-negative) is not.
    #[error("{field}: must be {requirement}, got {value}")]
    InvalidNumber {
        /// The field, e.g. `gpu[3].memory_gib`.
        field: String,
        /// "positive" or "non-negative" or a range.
        requirement: String,
        /// The value given.
        value: f64,
    },
    /// Something required is missing or empty.
    #[error("{field}: {message}")]
    InvalidField {
        /// The field.
        field: String,
        /// What is wrong with it.
        message: String,
    },
    /// No link (pair, site, region or default) covers a pair of nodes.
    #[error("no link between node {a} and node {b}: add a [[links]] entry or a default")]
    MissingLink {
        /// First node: `` `id` (site, region) ``.
        a: String,
        /// Second node, same form.
        b: String,
    },
    /// A link entry names a node, site or region that does not exist.
    #[error("{field}: unknown {scope} `{name}`")]
    UnknownLinkEnd {
        /// The field, e.g. `links[0].a`.
        field: String,
        /// node, site or region.
        scope: String,
        /// The name given.
        name: String,
    },
    /// Two nodes share an id.
    #[error("duplicate node id `{0}`")]
    DuplicateNode(String),
    /// A model preset name that is not known.
    #[error("unknown model preset `{name}` (known: {known})")]
    UnknownPreset {
        /// The name given.
        name: String,
        /// Comma-separated known names.
        known: String,
    },
    /// A strategy name that is not registered.
    #[error("unknown strategy `{name}` (known: {known})")]
    UnknownStrategy {
        /// The name given.
        name: String,
        /// Comma-separated known names.
        known: String,
    },
    /// The model does not fit in the cluster's memory at all.
    #[error(
        "model `{model}` does not fit: needs {needed_gib:.2} GiB of weights, the cluster offers {available_gib:.2} GiB usable; {missing_gib:.2} GiB missing"
    )]
    DoesNotFit {
        /// Model name.
        model: String,
        /// Weights plus minimal KV, GiB.
        needed_gib: f64,
        /// Usable memory over all nodes, GiB.
        available_gib: f64,
        /// Difference, GiB.
        missing_gib: f64,
    },
    /// A strategy found no feasible placement (explains why).
    #[error("strategy `{strategy}` found no feasible plan: {reason}")]
    Infeasible {
        /// Strategy name.
        strategy: String,
        /// Why.
        reason: String,
    },
    /// A solver failed.
    #[error("solver error in `{strategy}`: {message}")]
    Solver {
        /// Strategy name.
        strategy: String,
        /// Solver message.
        message: String,
    },
    /// A produced plan failed validation.
    #[error("invalid plan: {0}")]
    Invalid(#[from] ValidationError),
    /// Inputs whose size cannot fit in memory, refused before anything is allocated.
    #[error(
        "{field}: {what} would need about {} of memory, more than the {} available",
        bytes_text(*.needed_bytes),
        bytes_text(*.available_bytes)
    )]
    TooLarge {
        /// The field that sets the size, e.g. `nodes[0].count`.
        field: String,
        /// What would be built, e.g. `4000000000 nodes (344 bytes each)`.
        what: String,
        /// Estimated bytes.
        needed_bytes: u64,
        /// Bytes available.
        available_bytes: u64,
    },
}

/// Why a [`crate::plan::Plan`] cannot run on a cluster and model.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum ValidationError {
    /// The plan has no stage.
    #[error("plan has no stage")]
    NoStages,
    /// A layer no stage covers.
    #[error("layer {layer} is not covered by any stage")]
    LayerMissing {
        /// Layer index.
        layer: u32,
    },
    /// A layer covered by two stages.
    #[error("layer {layer} is covered twice (stages {first} and {second})")]
    LayerCoveredTwice {
        /// Layer index.
        layer: u32,
        /// First stage index.
        first: usize,
        /// Second stage index.
        second: usize,
    },
    /// Stages not in layer order, empty, or beyond the model.
    #[error("stage {stage}: bad layer range {start}..{end} for a model of {num_layers} layers")]
    BadRange {
        /// Stage index.
        stage: usize,
        /// Start layer.
        start: u32,
        /// End layer (exclusive).
        end: u32,
        /// Layers in the model.
        num_layers: u32,
    },
    /// A stage with no replica.
    #[error("stage {stage} has no replica")]
    NoReplica {
        /// Stage index.
        stage: usize,
    },
    /// A replica on a node the cluster does not have.
    #[error("stage {stage}: unknown node `{node}`")]
    UnknownNode {
        /// Stage index.
        stage: usize,
        /// Node id.
        node: String,
    },
    /// A node listed in non-consecutive stages or twice in a stage.
    #[error("node `{node}` must hold one contiguous run of stages, once each")]
    NodeNotContiguous {
        /// Node id.
        node: String,
    },
    /// A routing hop to a node that does not serve the next stage.
    #[error("stage {stage}: replica `{from}` routes to `{to}`, which does not serve stage {}", stage + 1)]
    UnknownNextHop {
        /// Stage index.
        stage: usize,
        /// Replica the hop leaves.
        from: String,
        /// Node it names.
        to: String,
    },
    /// Embedding or head flags on the wrong stage.
    #[error("the embedding must be on the first stage and the head on the last")]
    EmbedHeadMisplaced,
    /// A node's weights (and minimal KV) exceed its memory.
    #[error(
        "node `{node}` needs {needed_gib:.2} GiB but has {capacity_gib:.2} GiB usable: {missing_gib:.2} GiB missing"
    )]
    MemoryOverflow {
        /// Node id.
        node: String,
        /// Bytes needed, GiB.
        needed_gib: f64,
        /// Usable bytes, GiB.
        capacity_gib: f64,
        /// Shortfall, GiB.
        missing_gib: f64,
    },
    /// A node in the plan's `nodes` list that the cluster does not have.
    #[error("plan `nodes` names `{node}`, which the cluster does not have")]
    UnknownListedNode {
        /// Node id.
        node: String,
    },
    /// A node serving a stage that the plan's `nodes` list leaves out.
    #[error("stage {stage}: node `{node}` serves it but is missing from the plan's `nodes` list")]
    UnlistedNode {
        /// Stage index.
        stage: usize,
        /// Node id.
        node: String,
    },
    /// Every routing weight of a stage (or of a replica's next hops) is zero:
    /// nothing would ever be routed there.
    #[error("stage {stage}: {what} weights sum to {sum}; at least one must be positive")]
    NoPositiveWeight {
        /// Stage index.
        stage: usize,
        /// "replica" or "next-hop of `node`".
        what: String,
        /// Their sum.
        sum: f64,
    },
    /// Routing weights that are negative or not finite.
    #[error(
        "stage {stage}: routing weight of `{node}` is {weight}: weights must be finite and non-negative"
    )]
    BadWeight {
        /// Stage index.
        stage: usize,
        /// Node id.
        node: String,
        /// The weight.
        weight: f64,
    },
    /// A plan made for another model.
    #[error("plan is for {plan_layers} layers, the model has {model_layers}")]
    LayerCountMismatch {
        /// Layers in the plan.
        plan_layers: u32,
        /// Layers in the model.
        model_layers: u32,
    },
}

/// Bytes in one GiB, for messages.
pub const GIB: f64 = 1024.0 * 1024.0 * 1024.0;

/// Memory assumed available where the system does not say (not Linux).
pub const DEFAULT_AVAILABLE_MEMORY: u64 = 16 << 30;

/// Bytes of memory the inputs of a run may take: what the system reports
/// available now (`MemAvailable` in `/proc/meminfo`, which counts reclaimable
/// caches and not what this process already holds), or
/// [`DEFAULT_AVAILABLE_MEMORY`] where it reports nothing.
///
/// Sizes are checked against it before they are allocated: a cluster's node
/// count, a workload's request count, a churn model's event count. Only sizes
/// that cannot fit are refused, so the figure does not change results.
pub fn available_memory() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| mem_available_kib(&text))
        .map_or(DEFAULT_AVAILABLE_MEMORY, |kib| kib.saturating_mul(1024))
}

fn mem_available_kib(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemAvailable:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Refuses `needed_bytes` of `what` (set by `field`) when it exceeds `available_bytes`.
pub fn check_fits(
    field: &str,
    what: impl FnOnce() -> String,
    needed_bytes: u64,
    available_bytes: u64,
) -> Result<(), PlanError> {
    if needed_bytes <= available_bytes {
        return Ok(());
    }
    Err(PlanError::TooLarge {
        field: field.to_string(),
        what: what(),
        needed_bytes,
        available_bytes,
    })
}

/// `bytes` for a message: `512 B`, `3.2 MiB`, `1.4 TiB`.
pub fn bytes_text(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// Checks that `value` is finite and > 0, naming `field` otherwise.
pub fn positive(field: &str, value: f64) -> Result<f64, PlanError> {
    if value.is_finite() && value > 0.0 {
        Ok(value)
    } else {
        Err(PlanError::InvalidNumber {
            field: field.to_string(),
            requirement: "positive".into(),
            value,
        })
    }
}

/// Checks that `value` is finite and >= 0, naming `field` otherwise.
pub fn non_negative(field: &str, value: f64) -> Result<f64, PlanError> {
    if value.is_finite() && value >= 0.0 {
        Ok(value)
    } else {
        Err(PlanError::InvalidNumber {
            field: field.to_string(),
            requirement: "non-negative".into(),
            value,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_figures_read_and_print() {
        let text = "MemTotal:       24576000 kB\nMemFree:  100 kB\nMemAvailable:   20000000 kB\n";
        assert_eq!(mem_available_kib(text), Some(20_000_000));
        assert_eq!(mem_available_kib("MemTotal: 1 kB\n"), None);
        assert!(available_memory() > 0);
        assert_eq!(bytes_text(512), "512 B");
        assert_eq!(bytes_text(3 << 30), "3.0 GiB");
        assert_eq!(bytes_text(1_400_000_000_000), "1.3 TiB");
        assert!(check_fits("x", || unreachable!(), 10, 10).is_ok());
        let e = check_fits("nodes[0].count", || "5 nodes".into(), 11 << 30, 10 << 30).unwrap_err();
        assert_eq!(
            e.to_string(),
            "nodes[0].count: 5 nodes would need about 11.0 GiB of memory, more than the 10.0 GiB available"
        );
    }
}
