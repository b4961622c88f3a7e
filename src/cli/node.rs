//! `tokenflow node`: a node agent that joins a coordinator and runs the stage
//! work of each epoch it is part of; and `tokenflow worker`, the per-epoch
//! process an agent starts.

use anyhow::{Context, bail};
use clap::Args;
use std::io::Write;
use std::path::PathBuf;
use tokenflow_engine::dataflow::mesh::model_fingerprint;
use tokenflow_operators::LlamaModel;
use tokenflow_operators::device::{default_device, device_name};
use tokenflow_operators::profile::{StageMeasurement, measure_blocks, static_profile};
use tokenflow_planner::profile::Phase;
use tokenflow_planner::units::parse_duration;
use tokenflow_serve::membership::agent::{AgentConfig, run_agent};
use tokenflow_serve::membership::protocol::{NodeSpeed, WorkerSpec};
use tokenflow_serve::membership::worker::run_worker;

use super::generate::{DEFAULT_MODEL, resolve_model};

/// Arguments of `tokenflow node`.
#[derive(Debug, Args)]
pub struct NodeArgs {
    /// The coordinator's URL, e.g. `http://10.0.0.1:8000`.
    #[arg(long)]
    pub join: String,
    /// The cluster's join token (default: `$TOKENFLOW_JOIN_TOKEN`).
    #[arg(long)]
    pub token: Option<String>,
    /// Where this agent listens for the coordinator (`HOST:PORT`; port 0
    /// picks one); its workers listen on the same host.
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen: String,
    /// The node's name (default: `node-PORT`).
    #[arg(long)]
    pub name: Option<String>,
    /// GPU kind, a catalogue name (the planner's speed and memory figures).
    #[arg(long, default_value = "RTX4090")]
    pub gpu: String,
    /// Memory this node offers for weights and KV, MiB (default: the GPU kind's).
    #[arg(long, allow_negative_numbers = true)]
    pub memory: Option<i64>,
    /// The GGUF model file (the same file as the coordinator's).
    #[arg(long, default_value = DEFAULT_MODEL)]
    pub model: PathBuf,
    /// Hold no model file: fetch from the coordinator only the tensors of the
    /// stages this node is given (into a sparse file in the temp folder,
    /// removed when the agent exits).
    #[arg(long, conflicts_with = "model")]
    pub fetch_model: bool,
    /// Measure this node's speed with a short profile (about 2 s) and
    /// register it, so the planner sees the node as it runs, not as its GPU
    /// kind's figures say.
    #[arg(long, conflicts_with = "fetch_model")]
    pub profile: bool,
    /// After SIGTERM, the longest wait for the coordinator to move this
    /// node's stages before it goes anyway.
    #[arg(long, default_value = "60s")]
    pub leave_timeout: String,
}

/// Runs `tokenflow node` until it is drained (SIGTERM), interrupted, or refused.
pub fn run(args: NodeArgs) -> anyhow::Result<()> {
    let token = match args
        .token
        .clone()
        .or_else(|| std::env::var("TOKENFLOW_JOIN_TOKEN").ok())
    {
        Some(t) if !t.trim().is_empty() => t.trim().to_string(),
        _ => bail!("tokenflow node needs --token SECRET (or $TOKENFLOW_JOIN_TOKEN)"),
    };
    if !(args.join.starts_with("http://") || args.join.starts_with("https://")) {
        bail!(
            "--join {}: expected the coordinator's URL, e.g. http://10.0.0.1:8000",
            args.join
        );
    }
    let leave_timeout = parse_duration("--leave-timeout", &args.leave_timeout)?;
    let listener = std::net::TcpListener::bind(&args.listen)
        .with_context(|| format!("--listen {}: cannot bind", args.listen))?;
    let addr = listener.local_addr()?;
    if addr.ip().is_unspecified() {
        bail!(
            "--listen {}: give the address other hosts reach this node at, not an unspecified one",
            args.listen
        );
    }
    let name = args
        .name
        .clone()
        .unwrap_or_else(|| format!("node-{}", addr.port()));
    let work_dir = std::env::temp_dir().join("tokenflow-node");
    let (model_path, fingerprint) = if args.fetch_model {
        let path = work_dir.join(format!("{name}-{}-model.gguf", std::process::id()));
        (path, String::new())
    } else {
        let path = resolve_model(&args.model)?;
        let fingerprint =
            model_fingerprint(&path).with_context(|| format!("reading {}", path.display()))?;
        (path, fingerprint)
    };
    let measured = if args.profile {
        Some(measure_speed(&model_path)?)
    } else {
        None
    };
    let config = AgentConfig {
        join: args.join.clone(),
        token,
        name: name.clone(),
        gpu: args.gpu.clone(),
        memory_mb: args.memory,
        model_path,
        model_fingerprint: fingerprint,
        fetch_model: args.fetch_model,
        measured,
        worker_exe: std::env::current_exe()?,
        work_dir,
        leave_timeout,
    };
    run_agent(config, listener, |addr| {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "tokenflow node {name}: listening on {addr}");
        let _ = out.flush();
    })?;
    Ok(())
}

/// This machine's speed in the planner's GPU terms: weight bytes read per
/// second in a batch-1 decode step, and FLOP/s in a 64-token prefill, over
/// five blocks of the model.
fn measure_speed(model_path: &std::path::Path) -> anyhow::Result<NodeSpeed> {
    let model = LlamaModel::open(model_path)
        .with_context(|| format!("opening {}", model_path.display()))?;
    let layers = 5.min(model.config.n_layers);
    let measured = measure_blocks(
        &model,
        device_name(),
        &default_device(),
        &StageMeasurement {
            layers,
            prompt: 64,
            context: 64,
            batches: vec![1],
            repeats: 3,
        },
    )?;
    let profile = static_profile(model.name(), &model.config);
    let layer = &profile.layers[0];
    let find = |phase: Phase| {
        measured
            .iter()
            .find(|m| m.phase == phase)
            .map(|m| (m.seconds, m.tokens))
            .context("the profile measured no such step")
    };
    let (decode_s, _) = find(Phase::Decode)?;
    let (prefill_s, tokens) = find(Phase::Prefill)?;
    let speed = NodeSpeed {
        mem_bandwidth_gbs: layers as f64 * layer.param_bytes as f64 / decode_s.max(1e-9) / 1e9,
        fp16_tflops: tokens as f64 * layers as f64 * layer.flops_per_token
            / prefill_s.max(1e-9)
            / 1e12,
    };
    eprintln!(
        "measured: {:.1} GB/s of weights in decode, {:.3} TFLOPS in prefill",
        speed.mem_bandwidth_gbs, speed.fp16_tflops
    );
    Ok(speed)
}

/// Arguments of `tokenflow worker` (started by a node agent).
#[derive(Debug, Args)]
pub struct WorkerArgs {
    /// The epoch's spec (JSON), written by the agent.
    #[arg(long)]
    pub spec: PathBuf,
    /// The GGUF model file.
    #[arg(long)]
    pub model: PathBuf,
}

/// Runs one epoch's process.
pub fn run_worker_process(args: WorkerArgs) -> anyhow::Result<()> {
    let text = std::fs::read(&args.spec)
        .with_context(|| format!("--spec {}: cannot read it", args.spec.display()))?;
    let spec: WorkerSpec = serde_json::from_slice(&text)
        .with_context(|| format!("--spec {}: not a worker spec", args.spec.display()))?;
    let _ = std::fs::remove_file(&args.spec);
    // An epoch that ends because a peer died is the normal way out of a
    // failed epoch: one line, no backtrace, exit 1.
    if let Err(e) = run_worker(spec, &args.model, std::io::stdout()) {
        eprintln!("tokenflow worker: {e}");
        std::process::exit(1);
    }
    Ok(())
}
