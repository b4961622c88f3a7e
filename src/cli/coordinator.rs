//! `tokenflow serve --coordinator`: the OpenAI-compatible endpoint over nodes
//! that join and leave (`tokenflow node`), with the control endpoint, the
//! node registry and history, and membership epochs.

use anyhow::{Context, bail};
use clap::Args;
use std::io::Write;
use std::path::PathBuf;
use tokenflow_engine::dataflow::mesh::model_fingerprint;
use tokenflow_operators::profile::static_profile;
use tokenflow_planner::units::parse_duration;
use tokenflow_serve::ModelInfo;
use tokenflow_serve::membership::{
    CoordinatorConfig, CoordinatorSpec, ReplanRule, serve_coordinator,
};

use super::output_paths::check_output_file;
use super::serve::ServeArgs;

/// The coordinator's own options (with `--coordinator`).
#[derive(Debug, Args)]
pub struct CoordinatorArgs {
    /// Be the coordinator of nodes that join with `tokenflow node`: the model
    /// runs on them, planned here, instead of on this process's workers.
    #[arg(long)]
    pub coordinator: bool,
    /// The secret nodes must present to join (default: `$TOKENFLOW_JOIN_TOKEN`).
    #[arg(long, requires = "coordinator")]
    pub join_token: Option<String>,
    /// Nodes to wait for before the first epoch.
    #[arg(long, default_value_t = 1, requires = "coordinator", value_parser = super::engine_args::positive_usize)]
    pub min_nodes: usize,
    /// When the placement is planned anew: `stage-loss` (keep what nodes
    /// hold; the simulator study's best) or `on-change`.
    #[arg(long, default_value = "stage-loss", requires = "coordinator")]
    pub replan: String,
    /// How often each node is asked for its status (e.g. `100ms`).
    #[arg(long, default_value = "100ms", requires = "coordinator")]
    pub node_heartbeat: String,
    /// A node silent this long is declared dead: the detection delay (e.g. `500ms`).
    #[arg(long, default_value = "500ms", requires = "coordinator")]
    pub node_suspect: String,
    /// A join re-plans only if the planner's throughput rises by this share.
    #[arg(
        long,
        default_value_t = 0.05,
        requires = "coordinator",
        allow_negative_numbers = true
    )]
    pub join_gain: f64,
    /// The node history (joins, leaves, deaths; JSON lines), kept across restarts.
    #[arg(
        long,
        default_value = "out/coordinator/nodes.jsonl",
        requires = "coordinator"
    )]
    pub history: PathBuf,
    /// The host nodes reach this coordinator's timely process at (default:
    /// the `--listen` host, or 127.0.0.1 for an unspecified address).
    #[arg(long, requires = "coordinator")]
    pub advertise_host: Option<String>,
}

/// Runs the coordinator until SIGTERM or Ctrl-C.
pub fn run(args: ServeArgs) -> anyhow::Result<()> {
    let c = &args.coordinator;
    let e = &args.engine;
    for (given, name) in [
        (e.cluster.is_some(), "--cluster"),
        (e.plan.is_some(), "--plan"),
        (e.stages.is_some(), "--stages"),
        (e.hostfile.is_some(), "--hostfile"),
        (e.fail.is_some(), "--fail"),
        (e.churn.is_some(), "--churn"),
    ] {
        if given {
            bail!(
                "{name} does not apply to --coordinator: the cluster is the nodes that join, and failures are real"
            );
        }
    }
    let join_token = match c
        .join_token
        .clone()
        .or_else(|| std::env::var("TOKENFLOW_JOIN_TOKEN").ok())
    {
        Some(t) if !t.trim().is_empty() => t.trim().to_string(),
        _ => bail!("--coordinator needs --join-token SECRET (or $TOKENFLOW_JOIN_TOKEN)"),
    };
    if args.api_key.as_deref() == Some(join_token.as_str()) {
        bail!("--api-key and --join-token must differ: clients and nodes are told apart by them");
    }
    let replan: ReplanRule = c.replan.parse().map_err(anyhow::Error::msg)?;
    let heartbeat = parse_duration("--node-heartbeat", &c.node_heartbeat)?;
    let suspect_after = parse_duration("--node-suspect", &c.node_suspect)?;
    if heartbeat.is_zero() || suspect_after < heartbeat {
        bail!(
            "--node-suspect {} must be at least --node-heartbeat {} (and the heartbeat above 0)",
            c.node_suspect,
            c.node_heartbeat
        );
    }
    if !(c.join_gain.is_finite() && c.join_gain >= 0.0) {
        bail!("--join-gain {}: must be a share of 0 or more", c.join_gain);
    }
    let drain_timeout = parse_duration("--drain-timeout", &args.drain_timeout)?;
    if let Some(path) = &args.token_log {
        check_output_file("--token-log", path)?;
    }
    let listener = std::net::TcpListener::bind(&args.listen)
        .with_context(|| format!("--listen {}: cannot bind", args.listen))?;
    let bound = listener.local_addr()?;
    let advertise_host = c.advertise_host.clone().unwrap_or_else(|| {
        if bound.ip().is_unspecified() {
            "127.0.0.1".into()
        } else {
            bound.ip().to_string()
        }
    });
    let setup = e.resolve()?;
    let strategy = e.strategy.clone().unwrap_or_else(|| "availability".into());
    tokenflow_planner::strategy::by_name(&strategy)?;
    let model_name = super::serve::served_model_name(&args, &setup.model_path);
    let fingerprint = model_fingerprint(&setup.model_path)
        .with_context(|| format!("reading {}", setup.model_path.display()))?;
    let mut first_id = 0;
    let token_log = match &args.token_log {
        Some(path) => {
            let logged;
            (logged, first_id) = super::serve::read_token_log(path)?;
            let unfinished: Vec<_> = logged
                .requests
                .iter()
                .filter(|r| !logged.ended.contains_key(&r.id))
                .map(|r| {
                    (
                        r.clone(),
                        logged.tokens.get(&r.id).cloned().unwrap_or_default(),
                    )
                })
                .collect();
            Some((path.clone(), unfinished))
        }
        None => None,
    };
    let spec = CoordinatorSpec {
        model_fingerprint: fingerprint,
        profile: static_profile(setup.model.name(), &setup.model.config),
        model: ModelInfo::new(
            setup.model.tokenizer.clone(),
            setup.model.config.context_length,
        ),
        config: super::serve::serve_config(
            &args,
            model_name.clone(),
            drain_timeout,
            Some(join_token.clone()),
        ),
        coordinator: CoordinatorConfig {
            join_token,
            strategy,
            replan,
            heartbeat,
            suspect_after,
            min_nodes: c.min_nodes,
            advertise_host,
            options: setup.options.clone(),
            join_gain: c.join_gain,
            drain_timeout,
            history: c.history.clone(),
        },
        model_path: setup.model_path.clone(),
        token_log,
        first_id,
    };
    serve_coordinator(spec, listener, |addr| {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(
            out,
            "tokenflow serve: coordinator listening on http://{addr} (model `{model_name}`); nodes join with: tokenflow node --join http://{addr} --token $TOKEN --listen HOST:PORT"
        );
        let _ = out.flush();
    })?;
    eprintln!("tokenflow serve: coordinator stopped");
    Ok(())
}
