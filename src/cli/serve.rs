//! `tokenflow serve`: the engine as an OpenAI-compatible HTTP service.

use anyhow::Context;
use clap::Args;
use std::io::Write;
use std::path::PathBuf;
use tokenflow_engine::dataflow::Arrivals;
use tokenflow_engine::dataflow::durable_log::LoggedRun;
use tokenflow_planner::units::parse_duration;
use tokenflow_serve::{ModelInfo, ServeConfig, ServeSpec, serve};

use super::engine_args::{EngineArgs, positive_usize};
use super::output_paths::check_output_file;
use super::report::print_summary;

/// Arguments of `tokenflow serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    /// Model, cluster, plan, workers.
    pub engine: EngineArgs,
    /// Address to listen on (`127.0.0.1:0` picks a free port and prints it).
    #[arg(long, default_value = "127.0.0.1:8000")]
    pub listen: String,
    /// The model name clients give as `model` (default: the model file's name
    /// without `.gguf`).
    #[arg(long)]
    pub model_name: Option<String>,
    /// Require `Authorization: Bearer KEY` on `/v1/*`.
    #[arg(long)]
    pub api_key: Option<String>,
    /// Most requests accepted and not yet ended; past it, 429 with `Retry-After`.
    #[arg(long, default_value_t = 256, value_parser = positive_usize)]
    pub queue_limit: usize,
    /// After SIGTERM, how long requests in flight may go on before they are
    /// cancelled (e.g. `30s`).
    #[arg(long, default_value = "30s")]
    pub drain_timeout: String,
    /// `max_tokens` of a request that gives none (capped by the context).
    #[arg(long, default_value_t = 256, value_parser = positive_usize)]
    pub default_max_tokens: usize,
    /// Append every submission, token and completion durably to this file;
    /// a restarted server resumes the requests it left unfinished.
    #[arg(long)]
    pub token_log: Option<PathBuf>,
    #[command(flatten)]
    /// Nodes that join and leave.
    pub coordinator: super::coordinator::CoordinatorArgs,
}

/// Reads the token log of an earlier run of the service (a missing file is
/// an empty one), says on stderr what it resumes, and returns it with the
/// first request id free for new requests.
pub(super) fn read_token_log(path: &std::path::Path) -> anyhow::Result<(LoggedRun, u64)> {
    let logged = LoggedRun::read(path)?;
    let first_id = logged.requests.iter().map(|r| r.id + 1).max().unwrap_or(0);
    if !logged.requests.is_empty() {
        eprintln!(
            "token log {}: {} requests logged, resuming the {} unfinished",
            path.display(),
            logged.requests.len(),
            logged
                .requests
                .iter()
                .filter(|r| !logged.ended.contains_key(&r.id))
                .count()
        );
    }
    Ok((logged, first_id))
}

/// The name clients give as `model`: `--model-name`, or the model file's
/// name without `.gguf`.
pub fn served_model_name(args: &ServeArgs, model_path: &std::path::Path) -> String {
    args.model_name.clone().unwrap_or_else(|| {
        let name = model_path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "model".into());
        name.strip_suffix(".gguf").unwrap_or(&name).to_string()
    })
}

/// The HTTP side's settings from the arguments.
pub fn serve_config(
    args: &ServeArgs,
    model_name: String,
    drain_timeout: std::time::Duration,
    join_token: Option<String>,
) -> ServeConfig {
    ServeConfig {
        model_name,
        api_key: args.api_key.clone(),
        queue_limit: args.queue_limit,
        drain_timeout,
        default_max_tokens: args.default_max_tokens,
        join_token,
    }
}

/// Runs `tokenflow serve` until SIGTERM or Ctrl-C.
pub fn run(args: ServeArgs) -> anyhow::Result<()> {
    if args.coordinator.coordinator {
        return super::coordinator::run(args);
    }
    let drain_timeout = parse_duration("--drain-timeout", &args.drain_timeout)?;
    if let Some(path) = &args.token_log {
        check_output_file("--token-log", path)?;
    }
    // Bind first: a port in use is an error before any weight is loaded.
    let listener = std::net::TcpListener::bind(&args.listen)
        .with_context(|| format!("--listen {}: cannot bind", args.listen))?;
    let mut setup = args.engine.resolve()?;
    let model_name = served_model_name(&args, &setup.model_path);
    let mut resumed = Vec::new();
    let mut first_id = 0;
    if let Some(path) = &args.token_log {
        let logged;
        (logged, first_id) = read_token_log(path)?;
        resumed = logged.unfinished();
        setup.options.resumed = resumed
            .iter()
            .map(|r| (r.id, logged.tokens.get(&r.id).map_or(0, Vec::len)))
            .collect();
        setup.options.token_log = Some(path.clone());
    }
    let model = ModelInfo::new(
        setup.model.tokenizer.clone(),
        setup.model.config.context_length,
    );
    let spec = ServeSpec {
        run: setup.run_spec(resumed, Arrivals::Immediate),
        model,
        config: serve_config(&args, model_name.clone(), drain_timeout, None),
        first_id,
    };
    let outcome = serve(spec, listener, |addr| {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(
            out,
            "tokenflow serve: listening on http://{addr} (model `{model_name}`)"
        );
        let auth = match &args.api_key {
            Some(_) => " -H 'Authorization: Bearer $KEY'",
            None => "",
        };
        let _ = writeln!(
            out,
            "try: curl http://{addr}/v1/chat/completions -H 'Content-Type: application/json'{auth} \
             -d '{{\"model\": \"{model_name}\", \"messages\": [{{\"role\": \"user\", \"content\": \"What is the capital of France?\"}}]}}'"
        );
        let _ = out.flush();
    })?;
    eprintln!("tokenflow serve: stopped");
    if let Some(outcome) = outcome {
        print_summary(&outcome);
    }
    Ok(())
}
