//! Options shared by `tokenflow run` and `tokenflow bench`: the model, the
//! (emulated) cluster, the plan, and where the timely workers run.

use anyhow::{Context, bail};
use clap::Args;
use std::path::PathBuf;
use tokenflow_engine::Request;
use tokenflow_engine::dataflow::{
    Arrivals, Communication, EngineOptions, FailureSchedule, PlacementOptions, RouterKind, RunSpec,
};
use tokenflow_operators::LlamaModel;
use tokenflow_operators::llama::parse_splits;
use tokenflow_operators::profile::static_profile;
use tokenflow_operators::quant::Numerics;
use tokenflow_planner::{Cluster, Plan, PlanOptions, plan_with};

use super::generate::{DEFAULT_MODEL, resolve_model};

/// A cluster of `n` local nodes in one site: splitting without emulated distance.
fn local_cluster(n: usize) -> anyhow::Result<Cluster> {
    let mut toml = String::from(
        "name = \"local\"\n[link_defaults]\nintra_site = { latency_ms = 0.0, bandwidth_gbps = 1000.0 }\n",
    );
    for i in 0..n {
        toml.push_str(&format!(
            "[[nodes]]\nid = \"local-{i}\"\ngpu = \"RTX4090\"\nsite = \"here\"\nregion = \"here\"\n"
        ));
    }
    Ok(Cluster::from_toml_str(&toml)?)
}

/// Model, cluster, plan and workers.
#[derive(Debug, Args)]
pub struct EngineArgs {
    /// GGUF model file (the default is fetched if missing).
    #[arg(long, default_value = DEFAULT_MODEL)]
    pub model: PathBuf,
    /// Arithmetic of the linear layers: `exact` (f32 activations) or `q8` (8-bit
    /// activations and integer dot products, as llama.cpp).
    #[arg(long, default_value_t = Numerics::default())]
    pub numerics: Numerics,
    /// Cluster file to emulate (the planner's format), e.g. `examples/clusters/hetero-4.toml`.
    #[arg(long)]
    pub cluster: Option<PathBuf>,
    /// Plan JSON written by `tokenflow plan --out`.
    #[arg(long, conflicts_with_all = ["strategy", "stages"])]
    pub plan: Option<PathBuf>,
    /// Plan with this planner strategy (even, memory-proportional, petals, chain-dp, max-flow, ...).
    #[arg(long, conflicts_with = "stages")]
    pub strategy: Option<String>,
    /// Block ranges, one stage per cluster node in order, e.g. `0..10,10..20,20..30`.
    #[arg(long)]
    pub stages: Option<String>,
    /// Router for new sequences: min-latency, round-robin, least-loaded.
    #[arg(long, default_value = "min-latency")]
    pub router: String,
    /// Timely worker threads (per process).
    #[arg(long, short = 'w', default_value_t = 1)]
    pub workers: usize,
    /// Hostfile of a timely cluster: one `host:port` per process.
    #[arg(long, requires = "process")]
    pub hostfile: Option<PathBuf>,
    /// This process's index in the hostfile.
    #[arg(long, requires = "hostfile")]
    pub process: Option<usize>,
    /// Do not emulate link delays and GPU speeds of the cluster file.
    #[arg(long)]
    pub no_emulation: bool,
    /// Most tokens in one stage call.
    #[arg(long, default_value_t = 512)]
    pub token_budget: usize,
    /// Longest prefill chunk.
    #[arg(long, default_value_t = 256)]
    pub max_prefill_chunk: usize,
    /// Share of each GPU's memory for weights and KV.
    #[arg(long)]
    pub memory_fraction: Option<f64>,
    /// Nodes to kill: `node@TIME` or `node@DOWN-UP`, comma-separated (e.g. `paris-3090@2s-4s`).
    #[arg(long)]
    pub fail: Option<String>,
    /// Random churn of every node: `mtbf=2s,mttr=500ms[,seed=N][,horizon=60s]` (exponential up and down times).
    #[arg(long)]
    pub churn: Option<String>,
    /// Heartbeat period in ms.
    #[arg(long, default_value_t = 50)]
    pub heartbeat_ms: u64,
    /// Detection delay in ms: a node silent this long is declared down (and at
    /// least four times its recent heartbeat round trip).
    #[arg(long, default_value_t = 2000)]
    pub suspect_ms: u64,
}

/// Parses `mtbf=2s,mttr=500ms[,seed=N][,horizon=60s]` into a schedule for `nodes`.
fn parse_churn(spec: &str, nodes: &[String]) -> anyhow::Result<FailureSchedule> {
    let mut mtbf = None;
    let mut mttr = None;
    let mut seed = 0u64;
    let mut horizon = std::time::Duration::from_secs(600);
    for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (k, v) = part
            .split_once('=')
            .with_context(|| format!("--churn `{part}`: expected key=value"))?;
        let duration = |v: &str| -> anyhow::Result<std::time::Duration> {
            let probe = FailureSchedule::parse(&format!("x@{v}")).map_err(anyhow::Error::msg)?;
            Ok(probe.outages[0].down_at)
        };
        match k {
            "mtbf" => mtbf = Some(duration(v)?),
            "mttr" => mttr = Some(duration(v)?),
            "horizon" => horizon = duration(v)?,
            "seed" => seed = v.parse().with_context(|| format!("--churn seed `{v}`"))?,
            other => bail!("--churn: unknown key `{other}` (mtbf, mttr, seed, horizon)"),
        }
    }
    let (Some(mtbf), Some(mttr)) = (mtbf, mttr) else {
        bail!("--churn needs mtbf= and mttr=");
    };
    if mtbf.is_zero() || mttr.is_zero() {
        bail!("--churn: mtbf and mttr must be positive");
    }
    Ok(FailureSchedule::random_churn(
        nodes, mtbf, mttr, horizon, seed,
    ))
}

/// What the shared options resolve to.
pub struct EngineSetup {
    /// The model file.
    pub model_path: PathBuf,
    /// The opened model (tokenizer, config).
    pub model: LlamaModel,
    /// The cluster.
    pub cluster: Cluster,
    /// The plan.
    pub plan: Plan,
    /// Engine options.
    pub options: EngineOptions,
    /// Where the workers run.
    pub communication: Communication,
}

impl EngineSetup {
    /// A run of `requests` arriving as `arrivals` on this setup.
    pub fn run_spec(&self, requests: Vec<Request>, arrivals: Arrivals) -> RunSpec {
        RunSpec {
            model_path: self.model_path.clone(),
            plan: self.plan.clone(),
            cluster: self.cluster.clone(),
            options: self.options.clone(),
            communication: self.communication.clone(),
            requests,
            arrivals,
        }
    }
}

impl EngineArgs {
    /// Opens the model, reads or makes the cluster and plan.
    pub fn resolve(&self) -> anyhow::Result<EngineSetup> {
        let model_path = resolve_model(&self.model)?;
        let model = LlamaModel::open(&model_path)
            .with_context(|| format!("opening {}", model_path.display()))?;
        let n_layers = model.config.n_layers;
        let splits = match &self.stages {
            Some(s) => Some(parse_splits(s).map_err(anyhow::Error::msg)?),
            None => None,
        };
        let cluster = match &self.cluster {
            Some(path) => {
                Cluster::from_path(path).with_context(|| format!("cluster {}", path.display()))?
            }
            None => local_cluster(splits.as_ref().map_or(1, |s| s.len()))?,
        };
        let plan = if let Some(path) = &self.plan {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            serde_json::from_str(&text).with_context(|| format!("plan {}", path.display()))?
        } else if let Some(splits) = splits {
            if splits.len() > cluster.len() {
                bail!(
                    "{} stages but the cluster has {} nodes",
                    splits.len(),
                    cluster.len()
                );
            }
            let stages: Vec<_> = splits
                .into_iter()
                .enumerate()
                .map(|(i, r)| (r, vec![i]))
                .collect();
            Plan::from_stages("stages", &cluster, n_layers, model.name(), &stages)
        } else if let Some(strategy) = &self.strategy {
            let profile = static_profile(model.name(), &model.config);
            plan_with(strategy, &cluster, &profile, &PlanOptions::default())?
        } else {
            let stages = vec![(0..n_layers, vec![0])];
            Plan::from_stages("single", &cluster, n_layers, model.name(), &stages)
        };
        let emulate = self.cluster.is_some() && !self.no_emulation;
        let mut failures = match &self.fail {
            Some(spec) => FailureSchedule::parse(spec).map_err(anyhow::Error::msg)?,
            None => FailureSchedule::default(),
        };
        for o in &failures.outages {
            if !plan
                .stages
                .iter()
                .any(|s| s.replicas.iter().any(|r| r.node == o.node))
            {
                bail!(
                    "--fail names `{}`, which serves no stage of the plan",
                    o.node
                );
            }
        }
        if let Some(spec) = &self.churn {
            failures.extend(parse_churn(spec, &plan.nodes)?);
        }
        let options = EngineOptions {
            token_budget: self.token_budget,
            max_prefill_chunk: self.max_prefill_chunk,
            router: self
                .router
                .parse::<RouterKind>()
                .map_err(anyhow::Error::msg)?,
            placement: PlacementOptions {
                emulate_links: emulate,
                emulate_speed: emulate,
                memory_fraction: self.memory_fraction,
                ..PlacementOptions::default()
            },
            failures,
            heartbeat: std::time::Duration::from_millis(self.heartbeat_ms),
            suspect_after: std::time::Duration::from_millis(self.suspect_ms),
            numerics: self.numerics,
            ..EngineOptions::default()
        };
        let communication = match (&self.hostfile, self.process) {
            (Some(path), Some(process)) => {
                let hosts: Vec<String> = std::fs::read_to_string(path)
                    .with_context(|| format!("reading {}", path.display()))?
                    .lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty() && !l.starts_with('#'))
                    .map(String::from)
                    .collect();
                if hosts.is_empty() {
                    bail!("{} lists no host", path.display());
                }
                Communication::Cluster {
                    workers: self.workers,
                    process,
                    hosts,
                }
            }
            _ => Communication::Threads(self.workers),
        };
        Ok(EngineSetup {
            model_path,
            model,
            cluster,
            plan,
            options,
            communication,
        })
    }
}
