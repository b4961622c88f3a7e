//! Subcommands of the `tokenflow` binary.

pub mod bench;
pub mod cluster;
pub mod coordinator;
pub mod engine_args;
pub mod fidelity;
pub mod generate;
pub mod load;
pub mod node;
pub mod output_paths;
pub mod plan;
pub mod profile;
pub mod recovery;
pub mod remote;
pub mod report;
pub mod run;
pub mod serve;
pub mod simulate;
