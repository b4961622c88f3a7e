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
    /// Routing weights that are negative or not finite.
    #[error("stage {stage}: routing weight of `{node}` is {weight}")]
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
