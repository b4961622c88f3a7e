//! The dataflow engine on timely: placed, replicated stage operators in an
//! autoregressive loop, across threads and processes.
//!
//! The loop is `sequencer → embed → stage 0 → … → stage S−1 → head → sampler
//! → (feedback) → sequencer`. Every worker builds the same graph; the
//! placement decides which worker serves which node's replicas, and steps are
//! exchanged to the worker of the next node on their route.

pub mod builder;
pub mod clock;
pub mod compute;
pub mod durable_log;
pub mod error;
pub mod faults;
pub mod kernel;
pub mod link;
pub mod live;
pub mod mesh;
pub mod message;
pub mod metrics;
pub mod peer_stream;
pub mod placement;
pub mod runner;
pub mod sampler_op;
pub mod sequencer;
pub mod stage_op;

pub use builder::{EngineOptions, EngineStreams, InferenceDataflow};
pub use error::{EngineError, NoPathReason, PlacementError, RequestError, StepFailure};
pub use faults::{FailureSchedule, FaultSpecError, Outage};
pub use live::{AbortHandle, EngineClosed, LiveClient, LiveIntake, MetricsBoard, live_channel};
pub use metrics::EngineMetrics;
pub use placement::{LinkModel, Placement, PlacementOptions};
pub use runner::{Arrivals, Communication, FinishedRequest, RunOutcome, RunSpec, run, run_live};
pub use sequencer::{ClientMsg, EngineEvent, RequestTiming, Submission};
pub use tokenflow_core::{RouterChoice, SchedulerConfig};
