//! The tokenflow runtime: requests, token logs and the loops that drive stage
//! operators over many sequences with continuous batching.

pub mod dataflow;
pub mod direct;
pub mod request;

/// The timely version the engine builds on, for programs that add their own operators.
pub use timely;

pub use direct::{DirectGenerator, TokenEvent};
pub use request::{FinishReason, Request, TokenLog};
pub use tokenflow_core::SchedulerConfig;
