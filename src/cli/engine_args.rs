//! Options shared by `tokenflow run` and `tokenflow bench`: the model, the
//! (emulated) cluster, the plan, and where the timely workers run.

use anyhow::{Context, bail};
use clap::Args;
use std::path::{Path, PathBuf};
use tokenflow_engine::Request;
use tokenflow_engine::dataflow::{
    Arrivals, Communication, EngineOptions, FailureSchedule, PlacementOptions, RouterChoice,
    RunSpec, SchedulerConfig,
};
use tokenflow_operators::LlamaModel;
use tokenflow_operators::profile::static_profile;
use tokenflow_operators::quant::Numerics;
use tokenflow_planner::stage_ranges::parse_stage_ranges;
use tokenflow_planner::units::{duration_from_millis, parse_duration};
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
    /// Router for new sequences: min-latency, round-robin, least-loaded, parallax.
    #[arg(long, default_value = "min-latency")]
    pub router: String,
    /// Timely worker threads (per process).
    #[arg(long, short = 'w', default_value_t = 1, value_parser = worker_count)]
    pub workers: usize,
    /// Hostfile of a timely cluster: one `host:port` per process.
    #[arg(long, requires = "process")]
    pub hostfile: Option<PathBuf>,
    /// This process's index in the hostfile.
    #[arg(long, requires = "hostfile")]
    pub process: Option<usize>,
    /// How long a process waits for the others of the hostfile to connect
    /// (e.g. `30s`) before it stops, naming the missing one; also how long a
    /// connected process may send nothing (stopped, hung) before the run
    /// ends naming it.
    #[arg(long, default_value = "60s")]
    pub connect_timeout: String,
    /// Do not emulate link delays and GPU speeds of the cluster file.
    #[arg(long)]
    pub no_emulation: bool,
    /// Most tokens in one stage call.
    #[arg(long, default_value_t = 512, value_parser = positive_usize)]
    pub token_budget: usize,
    /// Longest prefill chunk.
    #[arg(long, default_value_t = 256, value_parser = positive_usize)]
    pub max_prefill_chunk: usize,
    /// Most sequences in one batch of a node.
    #[arg(long, default_value_t = 64, value_parser = positive_usize)]
    pub max_batch_sequences: usize,
    /// Longest a node holds a call for its sequences still on their way back
    /// (so they share one call), as a fraction of its mean call time; 0: never.
    #[arg(long, default_value_t = 0.25, value_parser = closed_fraction)]
    pub batch_hold: f64,
    /// Most sequences running at once (default: only KV memory limits);
    /// the rest wait in order.
    #[arg(long, value_parser = positive_usize)]
    pub max_running: Option<usize>,
    /// Share of each GPU's memory for weights and KV, in (0, 1] (default 0.9: what
    /// the planner counts as usable after its 10% reserve).
    #[arg(long, value_parser = unit_fraction, allow_negative_numbers = true)]
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
        match k.trim() {
            "mtbf" => mtbf = Some(parse_duration("--churn mtbf", v)?),
            "mttr" => mttr = Some(parse_duration("--churn mttr", v)?),
            "horizon" => horizon = parse_duration("--churn horizon", v)?,
            "seed" => {
                seed = v
                    .trim()
                    .parse()
                    .with_context(|| format!("--churn seed `{v}`: not a whole number"))?
            }
            other => bail!("--churn: unknown key `{other}` (mtbf, mttr, seed, horizon)"),
        }
    }
    let (Some(mtbf), Some(mttr)) = (mtbf, mttr) else {
        bail!("--churn needs mtbf= and mttr=");
    };
    Ok(FailureSchedule::random_churn(
        nodes, mtbf, mttr, horizon, seed,
    )?)
}

/// A count that must be at least 1 (`--max-tokens`, `--workers`, `--token-budget`, ...).
pub fn positive_usize(text: &str) -> Result<usize, String> {
    match text.trim().parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(format!("`{text}` is not a whole number ({e})")),
    }
}

/// Most worker threads per process: timely starts one thread per worker,
/// and past this a run spends its time starting threads, not computing.
pub const MAX_WORKERS: usize = 1024;

/// A worker count in 1..=[`MAX_WORKERS`] (`--workers`).
pub fn worker_count(text: &str) -> Result<usize, String> {
    let n = positive_usize(text)?;
    if n > MAX_WORKERS {
        return Err(format!(
            "{n} is more than {MAX_WORKERS} (timely runs one thread per worker; a node's compute uses its own threads)"
        ));
    }
    Ok(n)
}

/// A share in (0, 1] (`--memory-fraction`).
pub fn unit_fraction(text: &str) -> Result<f64, String> {
    match text.trim().parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 && v <= 1.0 => Ok(v),
        Ok(v) => Err(format!("{v} is not in (0, 1]")),
        Err(e) => Err(format!("`{text}` is not a number ({e})")),
    }
}

/// Parses a fraction in [0, 1] (0 allowed: the setting is off).
pub fn closed_fraction(text: &str) -> Result<f64, String> {
    match text.trim().parse::<f64>() {
        Ok(v) if (0.0..=1.0).contains(&v) => Ok(v),
        Ok(v) => Err(format!("{v} is not in [0, 1]")),
        Err(e) => Err(format!("`{text}` is not a number ({e})")),
    }
}

/// Reads a timely host file: one `host:port` per process, `#` comments and
/// blank lines ignored. Every other line must be an address, and `process`
/// must be one of them.
pub fn read_hostfile(path: &Path, process: usize) -> anyhow::Result<Vec<String>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("--hostfile {}: cannot read it", path.display()))?;
    let mut hosts = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let bad = |why: &str| {
            anyhow::anyhow!(
                "--hostfile {}, line {}: `{line}` {why}; expected host:port, e.g. 127.0.0.1:2101",
                path.display(),
                i + 1
            )
        };
        let (host, port) = line.rsplit_once(':').ok_or_else(|| bad("has no port"))?;
        if host.is_empty() || host.chars().any(char::is_whitespace) {
            return Err(bad("has no host name"));
        }
        match port.parse::<u16>() {
            Ok(0) | Err(_) => return Err(bad("has no valid port (1-65535)")),
            Ok(_) => {}
        }
        if hosts.iter().any(|h| h == line) {
            return Err(bad("appears twice"));
        }
        hosts.push(line.to_string());
    }
    if hosts.is_empty() {
        bail!("--hostfile {} lists no host", path.display());
    }
    if process >= hosts.len() {
        bail!(
            "--process {process}: {} lists {} processes (0..{})",
            path.display(),
            hosts.len(),
            hosts.len() - 1
        );
    }
    Ok(hosts)
}

/// Warns about `--fail` outages that the run ended before: legal, but they
/// did nothing, and a benchmark "with failures" that had none misleads.
pub fn warn_unreached_failures(failures: &FailureSchedule, wall: std::time::Duration) {
    let late: Vec<String> = failures
        .outages
        .iter()
        .filter(|o| o.down_at >= wall)
        .map(|o| format!("{}@{:.3}s", o.node, o.down_at.as_secs_f64()))
        .collect();
    if !late.is_empty() {
        let shown = late.iter().take(5).cloned().collect::<Vec<_>>().join(", ");
        eprintln!(
            "warning: the run ended after {:.3} s, before {} of {} scheduled failures ({shown}{}): they did nothing",
            wall.as_secs_f64(),
            late.len(),
            failures.outages.len(),
            if late.len() > 5 { ", ..." } else { "" }
        );
    }
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
    /// The outages `--fail` asked for (churn's are drawn past the run on purpose).
    pub requested_failures: FailureSchedule,
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
            Some(s) => Some(parse_stage_ranges(s, n_layers).context("--stages")?),
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
            let plan: Plan =
                serde_json::from_str(&text).with_context(|| format!("plan {}", path.display()))?;
            plan.validate(&cluster, &static_profile(model.name(), &model.config))
                .with_context(|| format!("plan {}", path.display()))?;
            plan
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
            Some(spec) => FailureSchedule::parse(spec)?,
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
        let requested_failures = failures.clone();
        if let Some(spec) = &self.churn {
            failures.extend(parse_churn(spec, &plan.nodes)?);
        }
        let heartbeat = duration_from_millis("--heartbeat-ms", self.heartbeat_ms, true)?;
        let suspect_after = duration_from_millis("--suspect-ms", self.suspect_ms, true)?;
        if suspect_after < heartbeat {
            bail!(
                "--suspect-ms {} is shorter than --heartbeat-ms {}: a node would be declared down between two heartbeats",
                self.suspect_ms,
                self.heartbeat_ms
            );
        }
        if self.max_prefill_chunk > self.token_budget {
            bail!(
                "--max-prefill-chunk {} is larger than --token-budget {}",
                self.max_prefill_chunk,
                self.token_budget
            );
        }
        let options = EngineOptions {
            scheduler: SchedulerConfig {
                token_budget: self.token_budget,
                max_prefill_chunk: self.max_prefill_chunk,
                max_batch_sequences: self.max_batch_sequences,
                batch_hold: self.batch_hold,
                max_running: self.max_running,
                router: RouterChoice::parse(&self.router)?,
                heartbeat,
                suspect_after,
                ..SchedulerConfig::default()
            },
            placement: PlacementOptions {
                emulate_links: emulate,
                emulate_speed: emulate,
                memory_fraction: self.memory_fraction,
                ..PlacementOptions::default()
            },
            failures,
            numerics: self.numerics,
            connect_timeout: parse_duration("--connect-timeout", &self.connect_timeout)?,
            ..EngineOptions::default()
        };
        let communication = match (&self.hostfile, self.process) {
            (Some(path), Some(process)) => Communication::Cluster {
                workers: self.workers,
                process,
                hosts: read_hostfile(path, process)?,
            },
            _ => Communication::Threads(self.workers),
        };
        Ok(EngineSetup {
            model_path,
            model,
            cluster,
            plan,
            options,
            communication,
            requested_failures,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Option parsers give a value or an error for any text, never a panic.
        #[test]
        fn option_parsers_never_panic(text in "\\PC{0,40}") {
            let _ = positive_usize(&text);
            let _ = unit_fraction(&text);
            let _ = parse_churn(&text, &["a".into(), "b".into()]);
            let _ = text.parse::<super::super::bench::LengthDist>();
        }

        #[test]
        fn churn_shaped_text(k in "(mtbf|mttr|horizon|seed|x)", v in "[0-9.e+-]{0,8}(ms|s|m|h|)") {
            let _ = parse_churn(&format!("{k}={v},mttr=1s,mtbf=2s"), &["a".into()]);
        }

        /// Any host file is a list of addresses or an error naming a line.
        #[test]
        fn hostfiles_never_panic(text in "[\\PC\n]{0,80}", process in 0usize..4) {
            let path = std::env::temp_dir().join(format!(
                "tokenflow-hostfile-prop-{}-{:?}",
                std::process::id(),
                std::thread::current().id()
            ));
            std::fs::write(&path, &text).unwrap();
            if let Ok(hosts) = read_hostfile(&path, process) {
                prop_assert!(process < hosts.len());
                for h in &hosts {
                    prop_assert!(h.rsplit_once(':').is_some());
                }
            }
            let _ = std::fs::remove_file(&path);
        }
    }

    #[test]
    fn unit_fraction_bounds() {
        assert_eq!(unit_fraction("0.5"), Ok(0.5));
        assert_eq!(unit_fraction("1"), Ok(1.0));
        for bad in ["0", "-0.1", "1.01", "NaN", "inf", "x", ""] {
            assert!(unit_fraction(bad).is_err(), "{bad}");
        }
        assert_eq!(closed_fraction("0"), Ok(0.0));
        for bad in ["-0.1", "1.01", "NaN", "x"] {
            assert!(closed_fraction(bad).is_err(), "{bad}");
        }
        assert!(positive_usize("0").is_err());
        assert_eq!(positive_usize("3"), Ok(3));
    }
}
