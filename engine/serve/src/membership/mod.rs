//! Nodes that join and leave: a coordinator (`tokenflow serve --coordinator`)
//! and node agents (`tokenflow node`) on any hosts.
//!
//! Timely clusters have a fixed membership and are fail-stop, so membership
//! changes by epochs: each is one timely cluster of the coordinator (process
//! 0, the sequencer) and one worker process per node of the epoch's plan.
//! Agents live long; workers live one epoch (a worker holds only its epoch's
//! stages; its model file stays mapped in the page cache for the next). The
//! coordinator keeps the sessions ([`relay`]), the durable token log, the
//! node registry and its history ([`history`]), and plans each epoch with a
//! planner strategy ([`coordinator`]).

pub mod agent;
pub mod cluster_file;
pub mod control;
pub mod coordinator;
pub mod history;
pub mod model_fetch;
pub mod protocol;
pub mod relay;
pub mod service;
pub mod worker;

pub use coordinator::{Coordinator, CoordinatorConfig, EpochRecord, ReplanRule};
pub use service::{CoordinatorSpec, serve_coordinator};
