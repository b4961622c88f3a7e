//! Pure planning logic shared by the tokenflow engine and simulator:
//! model profiles, cluster and cost models, placement strategies and routers.
//!
//! This crate depends on neither burn nor timely, so a strategy or a router
//! exists once and is used by both the real engine and the simulator.

pub mod profile;
