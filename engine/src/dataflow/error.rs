//! Errors of building and running the dataflow engine.

use thiserror::Error;
use tokenflow_operators::StageError;

/// Why a plan cannot run on this cluster and model; found before anything starts.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum PlacementError {
    /// No worker to run on.
    #[error("the engine needs at least one worker")]
    NoWorkers,
    /// The plan fails the planner's checks (coverage, nodes, contiguity,
    /// routing): the one validation every tool runs.
    #[error("invalid plan: {0}")]
    Plan(#[from] tokenflow_planner::ValidationError),
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

pub use tokenflow_core::{NoPathReason, RequestError, StepFailure};

/// Errors of setting up or running the engine.
#[derive(Debug, Error)]
pub enum EngineError {
    /// The plan cannot run.
    #[error(transparent)]
    Placement(#[from] PlacementError),
    /// Loading a stage failed.
    #[error("loading stages: {0}")]
    Stage(#[from] StageError),
    /// The model file could not be opened or parsed.
    #[error("model {}: {source}", path.display())]
    Model {
        /// The file.
        path: std::path::PathBuf,
        /// What is wrong with it.
        source: tokenflow_operators::llama::ModelError,
    },
    /// The model file could not be read (for the cluster's fingerprint).
    #[error("model {}: {source}", path.display())]
    ModelRead {
        /// The file.
        path: std::path::PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// Timely could not start or a worker failed.
    #[error("timely: {0}")]
    Timely(String),
    /// Another process of the cluster died, closed its connection or sent
    /// malformed data during the run (timely cannot lose a member: the run
    /// stops; what the token log holds survives for a resume).
    #[error(
        "process {process} at {address} {cause}; the cluster cannot go on without it (resume from the token log)"
    )]
    Peer {
        /// The peer's process index.
        process: usize,
        /// Its address.
        address: String,
        /// What happened on the link.
        cause: String,
    },
    /// The live run's client aborted it ([`super::live::LiveClient::abort`]):
    /// in a timely cluster the other processes see this one leave.
    #[error("the run was aborted by its client")]
    Aborted,
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

impl From<tokenflow_core::ConfigError> for EngineError {
    fn from(e: tokenflow_core::ConfigError) -> Self {
        EngineError::Option {
            field: e.field.into(),
            message: e.message,
        }
    }
}
