//! Subcommands of the `tokenflow` binary.

pub mod generate;
pub mod load;
pub mod profile;
