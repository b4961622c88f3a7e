//! The `tokenflow` command line.

mod cli;

use clap::{Parser, Subcommand};

/// LLM inference as a dataflow over heterogeneous, volatile GPUs.
#[derive(Debug, Parser)]
#[command(name = "tokenflow", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Generate text from a prompt, streaming tokens as they come.
    Generate(cli::generate::GenerateArgs),
    /// Place a model's stages on a cluster, or compare every placement strategy.
    Plan(cli::plan::PlanArgs),
    /// Measure a model's profile (sizes, FLOPs, stage times) as JSON for the planner.
    Profile(cli::profile::ProfileArgs),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Generate(args) => cli::generate::run(args),
        Command::Profile(args) => cli::profile::run(args),
        Command::Plan(args) => cli::plan::run(args),
    }
}
