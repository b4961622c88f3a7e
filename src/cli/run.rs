//! `tokenflow run`: generate for one or more prompts through the dataflow
//! engine on an emulated cluster or a timely cluster of processes.

use anyhow::bail;
use clap::Args;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use tokenflow_engine::Request;
use tokenflow_engine::dataflow::durable_log::LoggedRun;
use tokenflow_engine::dataflow::{Arrivals, EngineEvent, run as run_engine};
use tokenflow_operators::SamplingParams;
use tokenflow_operators::chat::render_user_prompt;

use super::engine_args::{EngineArgs, positive_usize, warn_unreached_failures};
use super::output_paths::{check_output_dir, check_output_file};
use super::report::{print_summary, write_outputs};

/// Arguments of `tokenflow run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    /// Model, cluster, plan, workers.
    pub engine: EngineArgs,
    /// A prompt (repeat for several concurrent requests).
    #[arg(long, default_value = "What is the capital of France?")]
    pub prompt: Vec<String>,
    /// Wrap prompts in the model's chat template.
    #[arg(long)]
    pub chat: bool,
    /// Most tokens per request (at least 1).
    #[arg(long, default_value_t = 64, value_parser = positive_usize)]
    pub max_tokens: usize,
    /// Keep going past the end-of-sequence token.
    #[arg(long)]
    pub ignore_eos: bool,
    /// Stop when the output contains this text (repeatable).
    #[arg(long, value_parser = non_empty_text)]
    pub stop: Vec<String>,
    /// Folder for `.hgrm` files, latency JSON/CSV, metrics JSON and a latency plot.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Write each request's generated token ids as JSON here.
    #[arg(long)]
    pub tokens_json: Option<PathBuf>,
    /// Append every submission, token and completion durably to this file (JSON lines).
    #[arg(long)]
    pub token_log: Option<PathBuf>,
    /// Continue the unfinished requests of `--token-log` (its requests replace `--prompt`;
    /// prompts it never logged, as after a kill mid-submission, are started).
    #[arg(long, requires = "token_log")]
    pub resume: bool,
}

/// A text option that means nothing when empty (`--stop ''` would match
/// before the first token).
fn non_empty_text(text: &str) -> Result<String, String> {
    if text.is_empty() {
        return Err("must not be empty".into());
    }
    Ok(text.to_string())
}

/// Runs `tokenflow run`.
pub fn run(args: RunArgs) -> anyhow::Result<()> {
    if let Some(dir) = &args.out {
        check_output_dir("--out", dir)?;
    }
    if let Some(path) = &args.tokens_json {
        check_output_file("--tokens-json", path)?;
    }
    if let Some(path) = &args.token_log {
        check_output_file("--token-log", path)?;
    }
    let mut setup = args.engine.resolve()?;
    let tok = setup.model.tokenizer.clone();
    let tok = &tok;
    let mut requests: Vec<Request> = Vec::new();
    for (i, text) in args.prompt.iter().enumerate() {
        let text = if args.chat {
            render_user_prompt(text)
        } else {
            text.clone()
        };
        let stop_tokens = if args.ignore_eos {
            Vec::new()
        } else {
            tok.end_tokens()
        };
        requests.push(Request {
            id: i as u64,
            prompt: tok.encode(&text)?,
            max_tokens: args.max_tokens,
            sampling: SamplingParams::greedy(),
            stop_tokens,
            stop_strings: args.stop.clone(),
        });
    }
    if let Some(path) = &args.token_log {
        let logged = LoggedRun::read(path)?;
        if !logged.requests.is_empty() {
            if !args.resume {
                bail!(
                    "{} already holds a run: pass --resume to continue it, or remove it",
                    path.display()
                );
            }
            // Requests the killed run never logged were never started: run them too.
            let never_logged: Vec<Request> = requests
                .into_iter()
                .filter(|r| !logged.requests.iter().any(|q| q.id == r.id))
                .collect();
            requests = logged.unfinished();
            setup.options.resumed = requests
                .iter()
                .map(|r| (r.id, logged.tokens.get(&r.id).map_or(0, Vec::len)))
                .collect();
            eprintln!(
                "resuming {} unfinished of {} logged requests from {}{}",
                requests.len(),
                logged.requests.len(),
                path.display(),
                match never_logged.len() {
                    0 => String::new(),
                    n => format!(", and starting {n} it never logged"),
                }
            );
            requests.extend(never_logged);
        }
        setup.options.token_log = Some(path.clone());
    }
    let single = requests.len() == 1;
    let stream_tok = tok.clone();
    let observer = Arc::new(move |e: &EngineEvent| {
        if let EngineEvent::Token { token, .. } = e
            && single
            && !stream_tok.is_special(*token)
        {
            use std::io::Write;
            if let Ok(text) = stream_tok.decode(&[*token]) {
                print!("{text}");
                let _ = std::io::stdout().flush();
            }
        }
    });
    let spec = setup.run_spec(requests, Arrivals::Immediate);
    let Some(outcome) = run_engine(spec, Some(observer))? else {
        eprintln!("process finished; results are printed by process 0");
        return Ok(());
    };
    println!();
    warn_unreached_failures(&setup.requested_failures, outcome.wall);
    let mut by_seq: BTreeMap<u64, Vec<u32>> = BTreeMap::new();
    match &args.token_log {
        // The log holds every token, including those of earlier, interrupted runs.
        Some(path) => {
            let logged = LoggedRun::read(path)?;
            for r in &logged.requests {
                if let Some((Some(_), _)) = logged.ended.get(&r.id) {
                    by_seq.insert(r.id, logged.tokens.get(&r.id).cloned().unwrap_or_default());
                }
            }
        }
        None => {
            for f in &outcome.finished {
                by_seq.insert(f.seq, f.log.generated.clone());
            }
        }
    }
    if !single {
        for (seq, ids) in &by_seq {
            let ids: Vec<u32> = ids
                .iter()
                .copied()
                .filter(|&t| !tok.is_special(t))
                .collect();
            println!("[{seq}] {}", tok.decode(&ids)?.trim_end());
        }
    }
    for (seq, e) in &outcome.refused {
        eprintln!("[{seq}] {e}");
    }
    print_summary(&outcome);
    if let Some(path) = &args.tokens_json {
        std::fs::write(path, serde_json::to_string(&by_seq)?)?;
    }
    if let Some(dir) = &args.out {
        write_outputs(&outcome, dir, "run")?;
    }
    if !outcome.refused.is_empty() && outcome.finished.is_empty() {
        bail!("every request was refused");
    }
    Ok(())
}
