//! Errors of building and running the dataflow engine.

use thiserror::Error;
use tokenflow_operators::StageError;

/// Why a plan cannot run on this cluster and model; found before anything starts.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum PlacementError {
    /// No worker to run on.
    #[error("the engine needs at least one worker")]
    NoWorkers,
    /// The plan was made for another model.
    #[error("the plan covers {plan} layers but the model has {model}")]
    LayerCount {
        /// Layers in the plan.
        plan: usize,
        /// Layers in the model.
        model: usize,
    },
    /// The plan has no stage.
    #[error("the plan has no stage")]
    NoStages,
    /// A stage's layer range is empty or past the model.
    #[error(
        "stage {stage} covers layers {start}..{end}, not a non-empty range inside 0..{n_layers}"
    )]
    BadRange {
        /// Stage index.
        stage: usize,
        /// First layer.
        start: usize,
        /// One past the last.
        end: usize,
        /// Layers of the model.
        n_layers: usize,
    },
    /// No stage covers a layer.
    #[error("layer {layer} is not covered by any stage")]
    LayerMissing {
        /// The layer.
        layer: usize,
    },
    /// Two stages cover a layer.
    #[error("layer {layer} is covered twice (again by stage {stage})")]
    LayerCoveredTwice {
        /// The layer.
        layer: usize,
        /// The stage that covers it again.
        stage: usize,
    },
    /// A stage no node serves.
    #[error("stage {stage} has no replica")]
    StageWithoutReplica {
        /// Stage index.
        stage: usize,
    },
    /// A replica on a node the cluster does not have.
    #[error("stage {stage} names node `{node}`, which is not in the cluster")]
    UnknownNode {
        /// Stage index.
        stage: usize,
        /// Node id.
        node: String,
    },
    /// A node listed twice for one stage.
    #[error("stage {stage} lists node `{node}` twice")]
    DuplicateReplica {
        /// Stage index.
        stage: usize,
        /// Node id.
        node: String,
    },
    /// Routing names a next hop that does not serve the next stage.
    #[error("stage {stage}: replica `{from}` routes to `{to}`, which does not serve stage {}", stage + 1)]
    UnknownNextHop {
        /// Stage index.
        stage: usize,
        /// Replica the hop leaves.
        from: String,
        /// Node it names.
        to: String,
    },
    /// A node's weights do not fit its memory.
    #[error("node `{node}` needs {needed} bytes for its weights but has {available} ({} MB missing)", (needed - available) as f64 / 1e6)]
    NodeMemory {
        /// Node id.
        node: String,
        /// Bytes of weights.
        needed: u64,
        /// Bytes of memory.
        available: u64,
    },
    /// A node pinned to a worker that does not exist.
    #[error("node `{node}` is pinned to worker {worker}, but there are {workers} workers")]
    BadWorker {
        /// Node id.
        node: String,
        /// The worker named.
        worker: usize,
        /// Workers in the run.
        workers: usize,
    },
}

pub use tokenflow_core::RequestError;

/// Errors of setting up or running the engine.
#[derive(Debug, Error)]
pub enum EngineError {
    /// The plan cannot run.
    #[error(transparent)]
    Placement(#[from] PlacementError),
    /// Loading a stage failed.
    #[error("loading stages: {0}")]
    Stage(#[from] StageError),
    /// The model file could not be opened.
    #[error("model: {0}")]
    Model(String),
    /// Timely could not start or a worker failed.
    #[error("timely: {0}")]
    Timely(String),
    /// The processes of a cluster could not be connected, or disagree.
    #[error(transparent)]
    Mesh(#[from] super::mesh::MeshError),
    /// The durable token log failed.
    #[error(transparent)]
    Log(#[from] super::durable_log::LogError),
    /// Invalid engine options.
    #[error("invalid option {field}: {message}")]
    Option {
        /// The option.
        field: String,
        /// What is wrong.
        message: String,
    },
}
