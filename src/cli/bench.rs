//! `tokenflow bench`: a load generator for the dataflow engine. Poisson
//! (open loop) or closed-loop arrivals, prompt and output length
//! distributions, a seed; latency percentiles, `.hgrm` files, JSON and a plot.

use anyhow::{Context, bail};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::path::PathBuf;
use std::sync::Arc;
use tokenflow_engine::Request;
use tokenflow_engine::dataflow::{Arrivals, EngineEvent, run as run_engine};

use super::engine_args::{EngineArgs, warn_unreached_failures};
use super::generate::resolve_model;
use super::output_paths::check_output_dir;
use super::remote;
use tokenflow_operators::LlamaModel;

/// Most bytes of generated requests `bench` holds (prompts are made up front).
const MAX_REQUEST_BYTES: u64 = 4_000_000_000;
use super::report::{print_summary, write_comparison, write_outputs};
use super::{fidelity, recovery};
use tokenflow_engine::dataflow::Placement;

/// A distribution of lengths: `fixed:N` or `uniform:A:B` (inclusive).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LengthDist {
    /// Always `N`.
    Fixed(usize),
    /// Uniform in `A..=B`.
    Uniform(usize, usize),
}

impl std::str::FromStr for LengthDist {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let parts: Vec<&str> = s.split(':').collect();
        let num = |t: &str| match t.parse::<usize>() {
            Ok(0) => Err(format!("`{s}`: a length is at least 1 token")),
            Ok(n) => Ok(n),
            Err(_) => Err(format!("`{t}` in `{s}` is not a length")),
        };
        match parts.as_slice() {
            ["fixed", n] => Ok(Self::Fixed(num(n)?)),
            ["uniform", a, b] => {
                let (a, b) = (num(a)?, num(b)?);
                if a > b {
                    return Err(format!("`{s}`: {a} > {b}"));
                }
                Ok(Self::Uniform(a, b))
            }
            _ => Err(format!("`{s}`: expected fixed:N or uniform:A:B")),
        }
    }
}

impl LengthDist {
    /// The longest length it draws.
    pub fn max(&self) -> usize {
        match *self {
            Self::Fixed(n) | Self::Uniform(_, n) => n,
        }
    }

    fn sample(&self, rng: &mut ChaCha8Rng) -> usize {
        match *self {
            Self::Fixed(n) => n,
            Self::Uniform(a, b) => rng.random_range(a..=b),
        }
    }
}

/// Arguments of `tokenflow bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    #[command(flatten)]
    /// Model, cluster, plan, workers.
    pub engine: EngineArgs,
    /// Requests to send.
    #[arg(long, default_value_t = 32)]
    pub requests: usize,
    /// `poisson` (open loop at --rate) or `closed` (--concurrency in flight).
    #[arg(long, default_value = "closed")]
    pub arrival: String,
    /// Requests per second of the Poisson process.
    #[arg(long, default_value_t = 2.0, allow_negative_numbers = true)]
    pub rate: f64,
    /// Requests in flight in closed loop.
    #[arg(long, default_value_t = 8)]
    pub concurrency: usize,
    /// Prompt lengths in tokens.
    #[arg(long, default_value = "uniform:16:64")]
    pub prompt_len: LengthDist,
    /// Output lengths in tokens (EOS is ignored, as in vLLM's benchmark).
    #[arg(long, default_value = "fixed:32")]
    pub output_len: LengthDist,
    /// Seed of prompts, lengths and arrivals.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Folder for `.hgrm`, JSON, CSV and the latency plot.
    #[arg(long, default_value = "out/bench")]
    pub out: PathBuf,
    /// Name of this run in the plot's legend.
    #[arg(long, default_value = "tokenflow")]
    pub label: String,
    /// Also simulate the same cluster, plan and requests, and compare the
    /// simulator's TTFT and inter-token percentiles with the engine's (needs `--arrival poisson`).
    #[arg(long, conflicts_with = "url")]
    pub compare_sim: bool,
    /// Drive this OpenAI-compatible server instead of an engine of our own
    /// (`http://HOST:PORT`: `tokenflow serve`, llama.cpp's `llama-server`, vLLM):
    /// streamed `/v1/completions` of the same token prompts, timed on the client.
    /// The model file gives only the vocabulary the prompts are drawn from.
    #[arg(long)]
    pub url: Option<String>,
    /// With `--url`: the model to ask for (default: the first of its `/v1/models`).
    #[arg(long, requires = "url")]
    pub model_name: Option<String>,
    /// With `--url`: sent as `Authorization: Bearer KEY`.
    #[arg(long, requires = "url")]
    pub api_key: Option<String>,
    /// With `--url`: send prompts as token ids, or as their text for servers
    /// that take only text (llama-cpp-python's), which tokenize it again.
    #[arg(long, value_enum, default_value_t = PromptAs::Tokens, requires = "url")]
    pub prompt_as: PromptAs,
}

/// How `bench --url` sends its prompts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PromptAs {
    /// Token ids.
    Tokens,
    /// Decoded text.
    Text,
}

/// The bench's requests (greedy, prompts of ordinary tokens drawn from
/// `model`'s vocabulary) and when they arrive.
pub fn make_requests(
    args: &BenchArgs,
    model: &LlamaModel,
) -> anyhow::Result<(Vec<Request>, Arrivals)> {
    let tok = &model.tokenizer;
    let vocab = tok.vocab_size() as u32;
    let mut rng = ChaCha8Rng::seed_from_u64(args.seed);
    let ordinary: Vec<u32> = (0..vocab).filter(|&t| !tok.is_special(t)).collect();
    if ordinary.is_empty() {
        bail!("the vocabulary has no ordinary token");
    }
    let context = model.config.context_length;
    if args.prompt_len.max() + args.output_len.max() > context {
        bail!(
            "--prompt-len up to {} plus --output-len up to {} tokens exceed the model's context of {context}",
            args.prompt_len.max(),
            args.output_len.max()
        );
    }
    let mut requests = Vec::new();
    for i in 0..args.requests {
        let p = args.prompt_len.sample(&mut rng);
        let o = args.output_len.sample(&mut rng);
        let prompt = (0..p)
            .map(|_| ordinary[rng.random_range(0..ordinary.len())])
            .collect();
        requests.push(Request::greedy(i as u64, prompt, o));
    }
    let arrivals = match args.arrival.as_str() {
        "closed" => Arrivals::ClosedLoop {
            concurrency: args.concurrency,
        },
        "poisson" => {
            let mut t = 0.0f64;
            let offsets = (0..args.requests)
                .map(|_| {
                    let u: f64 = rng.random_range(f64::EPSILON..1.0);
                    t += -u.ln() / args.rate;
                    (t * 1e6) as u64
                })
                .collect();
            Arrivals::At(offsets)
        }
        other => bail!("--arrival `{other}`: expected poisson or closed"),
    };
    Ok((requests, arrivals))
}

/// Runs `tokenflow bench`.
pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    if args.requests == 0 {
        bail!("--requests must be positive");
    }
    // Every request and its prompt are made up front: refuse what cannot fit.
    let request_bytes =
        (args.prompt_len.max() as u64 * 4 + 256).saturating_mul(args.requests as u64);
    if request_bytes > MAX_REQUEST_BYTES {
        bail!(
            "--requests {} with prompts up to {} tokens would hold about {:.1} GB of requests; the limit is {:.1} GB",
            args.requests,
            args.prompt_len.max(),
            request_bytes as f64 / 1e9,
            MAX_REQUEST_BYTES as f64 / 1e9
        );
    }
    match args.arrival.as_str() {
        "closed" if args.concurrency == 0 => bail!("--concurrency must be positive"),
        "poisson" if !(args.rate > 0.0 && args.rate.is_finite()) => {
            bail!(
                "--rate {}: must be a positive, finite number of requests per second",
                args.rate
            )
        }
        "closed" | "poisson" => {}
        other => bail!("--arrival `{other}`: expected poisson or closed"),
    }
    if args.compare_sim && args.arrival != "poisson" {
        bail!("--compare-sim needs --arrival poisson (the simulator replays arrival times)");
    }
    check_output_dir("--out", &args.out)?;
    if let Some(url) = &args.url {
        let path = resolve_model(&args.engine.model)?;
        let model =
            LlamaModel::open(&path).with_context(|| format!("opening {}", path.display()))?;
        let (requests, arrivals) = make_requests(&args, &model)?;
        return remote::bench(&args, url, &requests, &arrivals, &model.tokenizer);
    }
    let setup = args.engine.resolve()?;
    let (requests, arrivals) = make_requests(&args, &setup.model)?;
    let bar = ProgressBar::new(args.requests as u64);
    bar.set_style(
        ProgressStyle::with_template("{spinner} {bar:40} {pos}/{len} requests, {msg} [{elapsed}]")
            .context("progress template")?,
    );
    let tokens = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let (b, t) = (bar.clone(), Arc::clone(&tokens));
    let observer = Arc::new(move |e: &EngineEvent| match e {
        EngineEvent::Token { .. } => {
            let n = t.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
            if n % 16 == 0 {
                b.set_message(format!("{n} tokens"));
            }
        }
        _ => b.inc(1),
    });
    eprintln!(
        "numerics {}, {} kernels",
        setup.options.numerics,
        tokenflow_operators::quant::KernelSet::detect().name()
    );
    let with_failures = !setup.options.failures.is_empty();
    let spec = setup.run_spec(requests.clone(), arrivals.clone());
    // With failures injected, first the same load without them: the answers must
    // not change, and the two latency distributions are compared.
    let baseline = if with_failures && spec.communication.is_first() {
        eprintln!("baseline run without failures");
        let mut clean = spec.clone();
        clean.options.failures = Default::default();
        run_engine(clean, None)?
    } else {
        None
    };
    if with_failures {
        eprintln!("run with failures");
    }
    let outcome = run_engine(spec, Some(observer))?;
    bar.finish();
    let Some(outcome) = outcome else {
        eprintln!("process finished; results are printed by process 0");
        return Ok(());
    };
    for (seq, e) in &outcome.refused {
        eprintln!("[{seq}] {e}");
    }
    warn_unreached_failures(&setup.requested_failures, outcome.wall);
    let placement = Placement::new(
        &setup.plan,
        &setup.cluster,
        &setup.model.config,
        setup.communication.peers(),
        &setup.options.placement,
    )?;
    match &baseline {
        Some(clean) => {
            println!("\n# Without failures\n");
            print_summary(clean);
            println!("\n# With failures\n");
            print_summary(&outcome);
            let answers = |o: &tokenflow_engine::dataflow::RunOutcome| {
                let mut v: Vec<(u64, Vec<u32>)> = o
                    .finished
                    .iter()
                    .map(|f| (f.seq, f.log.generated.clone()))
                    .collect();
                v.sort();
                v
            };
            let same = answers(clean) == answers(&outcome);
            println!(
                "answers with failures identical to those without: {}",
                if same { "yes" } else { "NO" }
            );
            write_outputs(clean, &args.out.join("no-failures"), "no failures")?;
            write_outputs(&outcome, &args.out, &args.label)?;
            write_comparison(
                &[("no failures", clean), (args.label.as_str(), &outcome)],
                &args.out.join("latency-compare.svg"),
            )?;
            if !same {
                bail!("the answers changed under failures");
            }
            let rows = recovery::compare(
                &setup.model,
                &setup.cluster,
                &setup.plan,
                &placement,
                &setup.options.failures,
                &requests,
                &outcome,
            )?;
            recovery::report(&rows, setup.options.scheduler.router.name(), &args.out)?;
        }
        None => {
            print_summary(&outcome);
            write_outputs(&outcome, &args.out, &args.label)?;
        }
    }
    if let (true, Arrivals::At(offsets)) = (args.compare_sim, &arrivals) {
        let rows = fidelity::compare(
            &setup.model,
            &setup.cluster,
            &setup.plan,
            &setup.options,
            &placement,
            &requests,
            offsets,
            &outcome,
        )?;
        fidelity::report(&rows, &args.out)?;
    }
    Ok(())
}
