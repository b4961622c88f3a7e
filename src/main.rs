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
    /// Run prompts through the dataflow engine on an emulated cluster or a timely cluster.
    Run(cli::run::RunArgs),
    /// Serve the model over an OpenAI-compatible HTTP API (chat, completions, streaming, /metrics).
    Serve(cli::serve::ServeArgs),
    /// Load-test the dataflow engine: latency percentiles, `.hgrm` files and a plot.
    Bench(cli::bench::BenchArgs),
    /// A supervised timely cluster of processes that survives process crashes.
    Cluster(cli::cluster::ClusterArgs),
    /// Measure a model's profile (sizes, FLOPs, stage times) as JSON for the planner.
    Profile(cli::profile::ProfileArgs),
    /// Compare placement strategies in the discrete-event simulator, with churn.
    Simulate(cli::simulate::SimulateArgs),
    /// A node agent: join a coordinator (`serve --coordinator`) and run the stages it gives.
    Node(cli::node::NodeArgs),
    /// One epoch's process of a node (started by `tokenflow node`).
    #[command(hide = true)]
    Worker(cli::node::WorkerArgs),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Generate(args) => cli::generate::run(args),
        Command::Profile(args) => cli::profile::run(args),
        Command::Plan(args) => cli::plan::run(args),
        Command::Run(args) => cli::run::run(args),
        Command::Serve(args) => cli::serve::run(args),
        Command::Bench(args) => cli::bench::run(args),
        Command::Simulate(args) => cli::simulate::run(args),
        Command::Cluster(args) => cli::cluster::run(args),
        Command::Node(args) => cli::node::run(args),
        Command::Worker(args) => cli::node::run_worker_process(args),
    }
}
