//! `tokenflow simulate`: compare placement strategies in the discrete-event
//! simulator (the planner's strategies, routers and cost model), with churn.

use anyhow::Context;
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use std::path::PathBuf;
use tokenflow_core::SchedulerConfig;
use tokenflow_planner::PlanOptions;
use tokenflow_sim::{
    ChurnSpec, ReplanPolicy, RouteCache, RouterChoice, Scenario, SimCluster, SimConfig, Simulator,
    Slo, WorkloadSpec, spec::duration, strategy_list,
};

/// Arguments of `tokenflow simulate`.
#[derive(Debug, Args)]
pub struct SimulateArgs {
    /// Cluster file (TOML or JSON), e.g. `planner/data/scenarios/helix-24.toml`.
    #[arg(long)]
    pub cluster: PathBuf,
    /// Model: a preset (`LLaMA-30B`, `Llama-2-70B`, `Llama-3-8B`), a profile JSON/TOML
    /// (measured stage times calibrate the cost model), or a GGUF file.
    #[arg(long)]
    pub model: String,
    /// `all` or a comma-separated list of strategies.
    #[arg(long, default_value = "all")]
    pub strategies: String,
    /// Requests: `poisson:rate=R[,prompt=LEN][,output=LEN][,requests=N]`,
    /// `gamma:rate=R,cv=C[,...]` (bursty) or `trace:FILE` (CSV arrival_s,prompt_tokens,output_tokens);
    /// LEN is `N`, `uniform:MIN:MAX` or `lognormal:MEDIAN:SIGMA[:MAX]`.
    #[arg(long, default_value = "poisson:rate=4")]
    pub load: String,
    /// Node churn: `none`, `exp[:scale=X]` (each node's MTBF/MTTR from the cluster file, X times
    /// faster), `exp:mtbf=DUR,mttr=DUR`, `weibull:shape=K,scale=DUR,down-scale=DUR[,down-shape=K2]`,
    /// or `trace:FILE` (CSV node,start_s,end_s,state, as the Failure Trace Archive's intervals).
    #[arg(long, default_value = "none")]
    pub churn: String,
    /// Arrival window (`300s`, `5m`, `1h`).
    #[arg(long, default_value = "300s")]
    pub duration: String,
    /// How long to keep serving after the last arrival before counting the rest as
    /// unfinished (default: the duration; `inf`: until all finish).
    #[arg(long)]
    pub drain: Option<String>,
    /// Seed of every random draw; the same inputs and seed give byte-identical outputs.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Router: min-latency, interleaved-wrr (round-robin), least-loaded.
    #[arg(long, default_value = "min-latency")]
    pub router: String,
    /// Re-planning besides stage loss: `stage-loss`, `on-change` or `threshold:FRACTION`.
    #[arg(long, default_value = "stage-loss")]
    pub replan: String,
    /// SLO for goodput: `ttft=DUR,itl=DUR` (mean inter-token latency of a request).
    #[arg(long, default_value = "ttft=10s,itl=1s")]
    pub slo: String,
    /// Detection delay: how long after a node dies its sequences restart (e.g.
    /// `500ms`; 0: at once).
    #[arg(long, default_value = "0")]
    pub detection: String,
    /// How a death is recovered from: `in-place` (the engine's failover inside
    /// one timely cluster) or `epoch:form=DUR` (the coordinator's epochs: every
    /// sequence restarts once the next cluster has formed, DUR after detection).
    #[arg(long, default_value = "in-place")]
    pub failover: String,
    /// Router calls: `auto`, `off` (one per request) or a pool size.
    #[arg(long, default_value = "auto")]
    pub route_cache: String,
    /// Most tokens in one batch of a node.
    #[arg(long, default_value_t = 512, value_parser = super::engine_args::positive_usize)]
    pub token_budget: usize,
    /// Longest prefill chunk.
    #[arg(long, default_value_t = 256, value_parser = super::engine_args::positive_usize)]
    pub max_prefill_chunk: usize,
    /// Most sequences in one batch of a node.
    #[arg(long, default_value_t = 64, value_parser = super::engine_args::positive_usize)]
    pub max_batch_sequences: usize,
    /// Longest a node holds a call for its sequences still on their way back,
    /// as a fraction of its mean call time; 0: never (the engine's rule).
    #[arg(long, default_value_t = 0.25, value_parser = super::engine_args::closed_fraction)]
    pub batch_hold: f64,
    /// Most sequences running at once (default: only KV memory limits).
    #[arg(long, value_parser = super::engine_args::positive_usize)]
    pub max_running: Option<usize>,
    /// Bandwidth of the weight source for nodes loading layers, Gbit/s (capped by their downlink).
    #[arg(long, default_value_t = 10.0, allow_negative_numbers = true)]
    pub weight_source_gbps: f64,
    /// Time limit of the max-flow MILP in seconds.
    #[arg(long, allow_negative_numbers = true)]
    pub milp_time_limit: Option<f64>,
    /// Folder for compare.{md,csv,json}, latency.svg, throughput.svg and `.hgrm` files.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// Runs `tokenflow simulate`.
pub fn run(args: SimulateArgs) -> anyhow::Result<()> {
    if let Some(dir) = &args.out {
        super::output_paths::check_output_dir("--out", dir)?;
    }
    let cluster = SimCluster::from_path(&args.cluster)
        .with_context(|| format!("cluster {}", args.cluster.display()))?;
    let model = super::plan::load_profile(&args.model)?;
    let strategies = strategy_list(&args.strategies)?;
    let duration_s = duration("--duration", &args.duration)?;
    let drain_s = match args.drain.as_deref() {
        None => Some(duration_s),
        Some("inf") | Some("none") => None,
        Some(d) => Some(duration("--drain", d)?),
    };
    let mut options = PlanOptions::default();
    if let Some(t) = args.milp_time_limit {
        tokenflow_planner::units::duration_from_secs("--milp-time-limit", t)?;
        options.milp_time_limit_s = t;
    }
    if !(args.weight_source_gbps.is_finite() && args.weight_source_gbps > 0.0) {
        anyhow::bail!(
            "--weight-source-gbps {}: must be a positive, finite bandwidth",
            args.weight_source_gbps
        );
    }
    let config = SimConfig {
        scheduler: SchedulerConfig {
            token_budget: args.token_budget,
            max_prefill_chunk: args.max_prefill_chunk,
            max_batch_sequences: args.max_batch_sequences,
            batch_hold: args.batch_hold,
            max_running: args.max_running,
            router: RouterChoice::parse(&args.router)?,
            ..SchedulerConfig::default()
        },
        route_cache: RouteCache::parse(&args.route_cache)?,
        replan: ReplanPolicy::parse(&args.replan)?,
        weight_source_gbps: args.weight_source_gbps,
        slo: Slo::parse(&args.slo)?,
        drain_s,
        detection_s: duration("--detection", &args.detection)?,
        failover: tokenflow_sim::Failover::parse(&args.failover)?,
        ..SimConfig::default()
    };
    let scenario = Scenario {
        workload: WorkloadSpec::parse(&args.load)?,
        churn: ChurnSpec::parse(&args.churn)?,
        duration_s,
        seed: args.seed,
        config,
        options,
    };
    let sim = Simulator::new(&cluster, &model, &scenario)?;
    eprintln!(
        "{} requests, {} failures drawn; simulating {} strategies",
        sim.requests().len(),
        sim.churn().iter().filter(|e| !e.up).count(),
        strategies.len()
    );
    // Each strategy is STEPS on the bar, filled by the share of its run done.
    const STEPS: u64 = 1000;
    let bar = ProgressBar::new(STEPS * strategies.len() as u64);
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {percent:>3}% {msg} [{elapsed}, eta {eta}]")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let names = strategies.clone();
    let started = std::time::Instant::now();
    let comparison = sim.compare(&strategies, &mut |name, p| {
        let k = names.iter().position(|n| n == name).unwrap_or(0) as u64;
        bar.set_position(k * STEPS + (p.fraction() * STEPS as f64) as u64);
        if p.planning {
            bar.set_message(format!("{name}: planning"));
        } else {
            bar.set_message(format!(
                "{name}: t = {:.0} s, {}/{} requests",
                p.time_s, p.done, p.total
            ));
        }
    });
    bar.finish_and_clear();
    let events: u64 = comparison.rows.iter().map(|r| r.stats.events).sum();
    let wall = started.elapsed().as_secs_f64();
    eprintln!(
        "planned and simulated in {wall:.1} s: {events} events, {:.2} M events/s",
        events as f64 / wall.max(1e-9) / 1e6
    );
    println!("{}", comparison.to_markdown());
    if let Some(dir) = &args.out {
        let written = comparison.write_dir(dir)?;
        eprintln!("wrote {} files to {}", written.len(), dir.display());
    }
    Ok(())
}
