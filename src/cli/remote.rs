//! `tokenflow bench --url`: the bench's load against any OpenAI-compatible
//! server, timed on the client from the streamed chunks, with the same
//! percentile table, `.hgrm`, JSON, CSV and SVG outputs as the engine's bench.

use anyhow::{Context, bail};
use indicatif::{ProgressBar, ProgressStyle};
use std::time::Duration;
use tokenflow_engine::dataflow::metrics::names;
use tokenflow_engine::dataflow::{Arrivals, EngineMetrics, FinishedRequest, RunOutcome};
use tokenflow_engine::{FinishReason, Request, TokenLog};
use tokenflow_operators::TextTokenizer;
use tokenflow_serve::client::{LoadPrompt, LoadRequest, LoadSchedule, OpenAiClient, run_load};

use super::bench::{BenchArgs, PromptAs};
use super::report::{print_summary, write_outputs};

fn us(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// Runs the load of `requests` on `arrivals` against `url`.
pub fn bench(
    args: &BenchArgs,
    url: &str,
    requests: &[Request],
    arrivals: &Arrivals,
    tokenizer: &TextTokenizer,
) -> anyhow::Result<()> {
    let client = OpenAiClient::new(url, args.api_key.clone())?;
    let runtime = tokio_runtime()?;
    let model = match &args.model_name {
        Some(m) => m.clone(),
        None => runtime
            .block_on(client.models())
            .with_context(|| format!("asking {url} for its models (or give --model-name)"))?
            .into_iter()
            .next()
            .with_context(|| format!("{url}/v1/models lists no model"))?,
    };
    drop(runtime);
    let schedule = match arrivals {
        Arrivals::At(offsets) => LoadSchedule::At(offsets.clone()),
        Arrivals::ClosedLoop { concurrency } => LoadSchedule::Closed(*concurrency),
        Arrivals::Immediate => LoadSchedule::At(vec![0; requests.len()]),
    };
    let load = requests
        .iter()
        .map(|r| {
            let prompt = match args.prompt_as {
                PromptAs::Tokens => LoadPrompt::Tokens(r.prompt.clone()),
                PromptAs::Text => LoadPrompt::Text(
                    tokenizer
                        .decode(&r.prompt)
                        .with_context(|| format!("decoding the prompt of request {}", r.id))?,
                ),
            };
            Ok(LoadRequest {
                prompt,
                max_tokens: r.max_tokens,
            })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    eprintln!("{} requests to {url}, model `{model}`", load.len());
    let bar = ProgressBar::new(load.len() as u64);
    bar.set_style(
        ProgressStyle::with_template("{spinner} {bar:40} {pos}/{len} requests [{elapsed}]")
            .context("progress template")?,
    );
    let b = bar.clone();
    let outcome = run_load(&client, &model, &load, &schedule, move |_| b.inc(1))?;
    bar.finish();
    let mut metrics = EngineMetrics::default();
    let mut finished = Vec::new();
    let mut errors = 0usize;
    for (r, answer) in requests.iter().zip(&outcome.answers) {
        match answer {
            // A stream that stops without saying why, or for a reason other than
            // a stop rule (vLLM's `abort`), was cut short: not an answer.
            Ok(a) if !matches!(a.finish_reason.as_deref(), Some("stop" | "length")) => {
                metrics.sequencer.failed += 1;
                errors += 1;
                if errors <= 5 {
                    eprintln!(
                        "[{}] the stream ended {} after {} of {} tokens",
                        r.id,
                        a.finish_reason
                            .as_deref()
                            .map_or("without a finish_reason".to_string(), |f| format!(
                                "with finish_reason `{f}`"
                            )),
                        a.completion_tokens,
                        r.max_tokens
                    );
                }
            }
            Ok(a) => {
                metrics.record_latency(names::TTFT, us(a.ttft));
                for gap in &a.gaps {
                    metrics.record_latency(names::INTER_TOKEN, us(*gap));
                }
                metrics.record_latency(names::E2E, us(a.total));
                metrics.sequencer.completed += 1;
                metrics.sequencer.tokens += a.completion_tokens as u64;
                finished.push(FinishedRequest {
                    seq: r.id,
                    reason: match a.finish_reason.as_deref() {
                        Some("stop") => FinishReason::Stop,
                        _ => FinishReason::Length,
                    },
                    log: TokenLog {
                        prompt: r.prompt.clone(),
                        generated: a.token_ids.clone(),
                    },
                    timing: Default::default(),
                });
            }
            Err(e) => {
                metrics.sequencer.failed += 1;
                errors += 1;
                if errors <= 5 {
                    eprintln!("[{}] {e}", r.id);
                }
            }
        }
    }
    metrics.sequencer.span_us = us(outcome.wall);
    let result = RunOutcome {
        finished,
        refused: Vec::new(),
        metrics,
        placement: format!(
            "remote endpoint {url}, model `{model}` (latency measured by the client)\n"
        ),
        wall: outcome.wall,
    };
    print_summary(&result);
    write_outputs(&result, &args.out, &args.label)?;
    if errors == requests.len() {
        bail!("every request to {url} failed");
    }
    Ok(())
}

fn tokio_runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}
