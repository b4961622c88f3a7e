//! `tokenflow plan`: place a model's stages on a cluster with one strategy, or compare them all.

use anyhow::Context;
use clap::Args;
use std::path::{Path, PathBuf};
use tokenflow_operators::LlamaModel;
use tokenflow_operators::profile::static_profile;
use tokenflow_planner::{
    Cluster, ModelProfile, PlanOptions, compare_all, evaluate, plan_with, presets,
};

/// Arguments of `tokenflow plan`.
#[derive(Debug, Args)]
pub struct PlanArgs {
    /// Cluster file (TOML or JSON), e.g. `planner/data/scenarios/helix-24.toml`.
    #[arg(long)]
    pub cluster: PathBuf,
    /// Model: a preset (`LLaMA-30B`, `Llama-2-70B`, `Llama-3-8B`), a profile JSON/TOML, or a GGUF file.
    #[arg(long)]
    pub model: String,
    /// Strategy: even, memory-proportional, petals, swarm, chain-dp, max-flow, odp, availability, local-search, parallax, goodput.
    #[arg(long, default_value = "max-flow")]
    pub strategy: String,
    /// Demand the `goodput` strategy plans for, requests per second (default:
    /// half of each candidate's sustainable rate).
    #[arg(long, allow_negative_numbers = true)]
    pub rate: Option<f64>,
    /// SLO the `goodput` strategy plans for: `ttft=DUR,itl=DUR` (default `ttft=5s,itl=400ms`).
    #[arg(long)]
    pub slo: Option<String>,
    /// How many times faster than the cluster file's MTBF/MTTR nodes fail (0: no failures), for `goodput`.
    #[arg(long, allow_negative_numbers = true)]
    pub failure_speedup: Option<f64>,
    /// Run every strategy on the same inputs and print one table.
    #[arg(long)]
    pub compare: bool,
    /// Time limit of the max-flow MILP in seconds.
    #[arg(long, allow_negative_numbers = true)]
    pub milp_time_limit: Option<f64>,
    /// Folder for plan.json / compare.{md,csv,json,svg}.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// A model profile from a preset name, a profile file, or a GGUF file.
pub fn load_profile(spec: &str) -> anyhow::Result<ModelProfile> {
    if spec.ends_with(".gguf") {
        let model = LlamaModel::open(spec).with_context(|| format!("opening {spec}"))?;
        let name = model.name().to_string();
        return Ok(static_profile(&name, &model.config));
    }
    Ok(presets::load_model(spec)?)
}

fn write(dir: &Path, name: &str, text: &str) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join(name);
    std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    eprintln!("wrote {}", path.display());
    Ok(())
}

/// Runs `tokenflow plan`.
pub fn run(args: PlanArgs) -> anyhow::Result<()> {
    if let Some(dir) = &args.out {
        super::output_paths::check_output_dir("--out", dir)?;
    }
    let cluster = Cluster::from_path(&args.cluster)
        .with_context(|| format!("cluster {}", args.cluster.display()))?;
    let model = load_profile(&args.model)?;
    let mut options = PlanOptions::default();
    if let Some(t) = args.milp_time_limit {
        tokenflow_planner::units::duration_from_secs("--milp-time-limit", t)?;
        options.milp_time_limit_s = t;
    }
    if let Some(r) = args.rate {
        options.target.request_rate = r;
    }
    if let Some(text) = &args.slo {
        // Only the bounds given change (the simulator's parser fills the
        // other from its own defaults).
        let slo = tokenflow_sim::Slo::parse(text).context("--slo")?;
        if text.contains("ttft") {
            options.target.ttft_slo_s = slo.ttft_s;
        }
        if text.contains("itl") {
            options.target.itl_slo_s = slo.itl_s;
        }
    }
    if let Some(f) = args.failure_speedup {
        options.target.failure_speedup = f;
    }
    options
        .validate()
        .context("--rate / --slo / --failure-speedup")?;
    if args.compare {
        let comparison = compare_all(&cluster, &model, &options);
        println!("{}", comparison.to_markdown());
        if let Some(dir) = &args.out {
            write(dir, "compare.md", &comparison.to_markdown())?;
            write(dir, "compare.csv", &comparison.to_csv())?;
            write(dir, "compare.json", &comparison.to_json())?;
            comparison.write_svg(dir.join("compare.svg"))?;
            eprintln!("wrote {}", dir.join("compare.svg").display());
        }
        return Ok(());
    }
    let plan = plan_with(&args.strategy, &cluster, &model, &options)?;
    let evaluation = evaluate(&plan, &cluster, &model, &options);
    println!("{}", plan.to_table());
    println!("{}", evaluation.to_table());
    if let Some(dir) = &args.out {
        write(dir, "plan.json", &serde_json::to_string_pretty(&plan)?)?;
        write(
            dir,
            "evaluation.json",
            &serde_json::to_string_pretty(&evaluation)?,
        )?;
    }
    Ok(())
}
