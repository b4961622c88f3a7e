//! Subcommands of the `tokenflow` binary.

pub mod generate;
pub mod load;
pub mod plan;
pub mod profile;
