//! The dataflow engine against the plain loop, side by side in one run, on
//! SmolLM2 (`scripts/fetch-model.sh`). Run with `cargo bench --bench engine`.
//!
//! - Engine overhead: one sequence, every stage on one worker, against
//!   `DirectGenerator` calling the same stage operators: decode tokens/s ratio.
//! - Batching: 32 concurrent sequences against 1 through the engine: aggregate
//!   tokens/s ratio.
//! - Across processes is measured by `tokenflow bench --hostfile` (see README).
//!
//! Runs alternate (plain, engine, plain, engine, ...) so that a noisy neighbour
//! hurts both sides alike; the table reports the median of each side.

// A one-stage split is a list holding one layer range.
#![allow(clippy::single_range_in_vec_init)]

use std::time::Instant;

use tokenflow_engine::dataflow::{Arrivals, Communication, EngineOptions, RunSpec, run};
use tokenflow_engine::{DirectGenerator, GeneratorConfig, Request};
use tokenflow_operators::LlamaModel;
use tokenflow_operators::device::default_device;
use tokenflow_planner::{Cluster, Plan};

const MODEL: &str = "models/SmolLM2-135M-Instruct.Q4_1.gguf";
const TOKENS: usize = 64;
const REPEATS: usize = 3;

fn requests(model: &LlamaModel, n: usize) -> Vec<Request> {
    (0..n)
        .map(|i| {
            let prompt = model
                .tokenizer
                .encode(&format!("Story number {i}: once upon a time"))
                .unwrap();
            Request::greedy(i as u64, prompt, TOKENS)
        })
        .collect()
}

/// Generated tokens per second of the plain loop, timed from first step to last token.
fn direct(model: &LlamaModel, reqs: &[Request]) -> f64 {
    let pipeline = model
        .pipeline(
            &[0..model.config.n_layers],
            u64::MAX / 4,
            &default_device(),
            &mut |_, _| {},
        )
        .unwrap();
    let mut g = DirectGenerator::new(pipeline, GeneratorConfig::default());
    for r in reqs {
        g.submit(r.clone()).unwrap();
    }
    let start = Instant::now();
    let done = g.run_to_completion().unwrap();
    let tokens: usize = done.iter().map(|(_, _, log)| log.generated.len()).sum();
    tokens as f64 / start.elapsed().as_secs_f64()
}

/// Generated tokens per second of the engine (one worker, one stage), over its run.
fn engine(model: &LlamaModel, reqs: &[Request], cluster: &Cluster) -> f64 {
    let n = model.config.n_layers;
    let plan = Plan::from_stages("bench", cluster, n, model.name(), &[(0..n, vec![0])]);
    let spec = RunSpec {
        model_path: MODEL.into(),
        plan,
        cluster: cluster.clone(),
        options: EngineOptions::default(),
        communication: Communication::Threads(1),
        requests: reqs.to_vec(),
        arrivals: Arrivals::Immediate,
    };
    let outcome = run(spec, None).unwrap().unwrap();
    assert!(outcome.refused.is_empty());
    outcome.metrics.tokens_per_second()
}

/// Aggregate decode tokens/s of the engine: tokens after each sequence's first,
/// over the time from the last first token to the last token (prefill excluded).
fn engine_decode(model: &LlamaModel, reqs: &[Request], cluster: &Cluster) -> f64 {
    let n = model.config.n_layers;
    let plan = Plan::from_stages("bench", cluster, n, model.name(), &[(0..n, vec![0])]);
    let spec = RunSpec {
        model_path: MODEL.into(),
        plan,
        cluster: cluster.clone(),
        options: EngineOptions::default(),
        communication: Communication::Threads(1),
        requests: reqs.to_vec(),
        arrivals: Arrivals::Immediate,
    };
    let outcome = run(spec, None).unwrap().unwrap();
    // All sequences decode in lock step once the last prefill is done: count the
    // steps of the sequence that started last, times the sequences, over its decode time.
    let last = outcome
        .finished
        .iter()
        .max_by_key(|f| f.timing.first_token_us)
        .unwrap();
    let span = (last.timing.finished_us - last.timing.first_token_us) as f64 / 1e6;
    (last.log.generated.len() - 1) as f64 * outcome.finished.len() as f64 / span
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    if !std::path::Path::new(MODEL).exists() {
        eprintln!("{MODEL} is missing: run scripts/fetch-model.sh");
        return;
    }
    let model = LlamaModel::open(MODEL).unwrap();
    let cluster = Cluster::from_toml_str(
        "name = \"local\"\n[[nodes]]\nid = \"local\"\ngpu = \"RTX4090\"\nsite = \"here\"\nregion = \"here\"\n",
    )
    .unwrap();
    let one = requests(&model, 1);
    let many = requests(&model, 32);
    let (mut d1, mut e1, mut e32) = (Vec::new(), Vec::new(), Vec::new());
    let (mut dec1, mut dec32) = (Vec::new(), Vec::new());
    for _ in 0..REPEATS {
        d1.push(direct(&model, &one));
        e1.push(engine(&model, &one, &cluster));
        e32.push(engine(&model, &many, &cluster));
        dec1.push(engine_decode(&model, &one, &cluster));
        dec32.push(engine_decode(&model, &many, &cluster));
    }
    let (d1, e1, e32) = (median(d1), median(e1), median(e32));
    let (dec1, dec32) = (median(dec1), median(dec32));
    println!("| measurement | tokens/s | ratio | target |");
    println!("|---|---:|---:|---:|");
    println!("| plain loop, 1 sequence | {d1:.1} | | |");
    println!(
        "| engine, 1 sequence, 1 worker | {e1:.1} | {:.3} of plain | ≥ 0.95 |",
        e1 / d1
    );
    println!(
        "| engine, 32 sequences, 1 worker, prefill included | {e32:.1} | {:.2}× 1 sequence | |",
        e32 / e1
    );
    println!("| engine decode only, 1 sequence | {dec1:.1} | | |");
    println!(
        "| engine decode only, 32 sequences | {dec32:.1} | {:.2}× 1 sequence | ≥ 5× |",
        dec32 / dec1
    );
}
