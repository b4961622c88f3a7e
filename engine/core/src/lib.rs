//! tokenflow's scheduling core: every decision about requests, as pure logic
//! that the timely engine, the simulator and the plain loop all drive.
//!
//! Nothing here runs a model, moves a message or reads a clock. An executor
//! hands the [`sequencer::Sequencer`] what happened (a submission, a step's
//! result, a heartbeat's answer, the time) and carries out the
//! [`sequencer::Command`]s it returns, as vLLM's scheduler splits
//! `schedule()` from `update_from_output()`. Stage queues form their calls with
//! the one [`batch`] policy; KV room is counted by one [`kv::KvLedger`]; the
//! [`stop`] rules and the [`detector`] of failed nodes exist once.

pub mod batch;
pub mod config;
pub mod detector;
pub mod kv;
pub mod request;
pub mod sampling;
pub mod sequencer;
pub mod stop;
pub mod topology;

pub use batch::{BatchLimits, CallHold, HoldClock, StepQueue};
pub use config::{ConfigError, SchedulerConfig};
pub use kv::KvLedger;
pub use request::{
    FinishReason, NoPathReason, Request, RequestError, RequestTiming, SeqId, StepFailure,
    Submission, TokenLog,
};
pub use sampling::{SamplingError, SamplingField, SamplingParams};
pub use sequencer::{Command, Feedback, SeqState, Sequencer, SequencerEvent, Step};
pub use tokenflow_planner::router::RouterChoice;
pub use topology::Topology;
