//! Typed errors of the simulator: bad specs, bad trace files, planning failures
//! and output failures.

use thiserror::Error;

use tokenflow_planner::error::PlanError;
use tokenflow_planner::latency::LatencyError;

/// Everything that can go wrong while setting up, running or writing a simulation.
#[derive(Debug, Error)]
pub enum SimError {
    /// A spec string (`--load`, `--churn`, `--slo`, `--replan`, a length
    /// distribution) that does not parse.
    #[error("bad {what} spec `{spec}`: {message}")]
    Spec {
        /// What the spec describes, e.g. `load` or `churn`.
        what: String,
        /// The text given.
        spec: String,
        /// What is wrong, and the expected syntax.
        message: String,
    },
    /// A figure outside its allowed range.
    #[error("{field}: must be {requirement}, got {value}")]
    InvalidNumber {
        /// The field, e.g. `load.rate`.
        field: String,
        /// What it must be, e.g. `positive`.
        requirement: String,
        /// The value given.
        value: f64,
    },
    /// A line of a trace file (arrivals or churn) that is malformed.
    #[error("{path} line {line}: {message}")]
    Trace {
        /// The file.
        path: String,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// A file that cannot be read or written.
    #[error("{path}: {message}")]
    Io {
        /// The file or folder.
        path: String,
        /// The operating system's message.
        message: String,
    },
    /// A scheduling setting out of its range.
    #[error(transparent)]
    Scheduler(#[from] tokenflow_core::ConfigError),
    /// A router name that is not known.
    #[error(transparent)]
    UnknownRouter(#[from] tokenflow_planner::router::UnknownRouter),
    /// A node id (in a churn trace) that the cluster does not have.
    #[error("{field}: unknown node `{node}`")]
    UnknownNode {
        /// Where it was named.
        field: String,
        /// The id given.
        node: String,
    },
    /// A workload that produced no request.
    #[error("the workload produced no request (duration {duration_s} s)")]
    NoRequests {
        /// Arrival window in seconds.
        duration_s: f64,
    },
    /// A workload or churn model whose requests or events cannot fit in
    /// memory, refused before they are drawn.
    #[error(
        "{field}: {what} would need about {} of memory, more than the {} available",
        tokenflow_planner::error::bytes_text(*.needed_bytes),
        tokenflow_planner::error::bytes_text(*.available_bytes)
    )]
    TooLarge {
        /// What sets the size, e.g. `load.rate x duration` or `churn`.
        field: String,
        /// What would be built, e.g. `3e14 requests (96 bytes each)`.
        what: String,
        /// Estimated bytes.
        needed_bytes: u64,
        /// Bytes available.
        available_bytes: u64,
    },
    /// Planning failed (unknown strategy, model that does not fit, invalid plan, ...).
    #[error(transparent)]
    Plan(#[from] PlanError),
    /// Writing latency histograms or plots failed.
    #[error(transparent)]
    Latency(#[from] LatencyError),
    /// Serialising results failed.
    #[error("cannot serialise results: {0}")]
    Json(#[from] serde_json::Error),
}

/// Checks that `value` is finite and > 0.
pub(crate) fn positive(field: &str, value: f64) -> Result<f64, SimError> {
    if value.is_finite() && value > 0.0 {
        Ok(value)
    } else {
        Err(SimError::InvalidNumber {
            field: field.to_string(),
            requirement: "positive and finite".into(),
            value,
        })
    }
}

/// Checks that `value` is finite and >= 0.
pub(crate) fn non_negative(field: &str, value: f64) -> Result<f64, SimError> {
    if value.is_finite() && value >= 0.0 {
        Ok(value)
    } else {
        Err(SimError::InvalidNumber {
            field: field.to_string(),
            requirement: "non-negative and finite".into(),
            value,
        })
    }
}

/// A cap on how many items of `item_bytes` each fit in `memory_bytes`.
pub(crate) fn fitting(memory_bytes: u64, item_bytes: u64) -> u64 {
    memory_bytes / item_bytes.max(1)
}

/// The refusal of `count` items of `item_bytes` each (`count` may be an
/// estimate, hence a float) against `memory_bytes`.
pub(crate) fn too_large(
    field: &str,
    noun: &str,
    count: f64,
    item_bytes: u64,
    memory_bytes: u64,
) -> SimError {
    let needed = count * item_bytes as f64;
    SimError::TooLarge {
        field: field.to_string(),
        what: if count < 1e9 {
            format!("about {count:.0} {noun} ({item_bytes} bytes each)")
        } else {
            format!("about {count:.2e} {noun} ({item_bytes} bytes each)")
        },
        needed_bytes: if needed.is_finite() && needed < u64::MAX as f64 {
            needed as u64
        } else {
            u64::MAX
        },
        available_bytes: memory_bytes,
    }
}
