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
use tokenflow_engine::{DirectGenerator, Request, SchedulerConfig, TokenEvent};
use tokenflow_operators::LlamaModel;
use tokenflow_operators::device::default_device;
use tokenflow_planner::{Cluster, Plan};

const MODEL: &str = "models/SmolLM2-135M-Instruct.Q4_1.gguf";
const TOKENS: usize = 64;
const REPEATS: usize = 5;

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

/// Decode tokens/s of the plain loop: from the step after every prefill to the last token.
fn direct_decode(model: &LlamaModel, reqs: &[Request]) -> f64 {
    let pipeline = model
        .pipeline(
            &[0..model.config.n_layers],
            u64::MAX / 4,
            &default_device(),
            &mut |_, _| {},
        )
        .unwrap();
    let mut g = DirectGenerator::new(pipeline, SchedulerConfig::default());
    for r in reqs {
        g.submit(r.clone()).unwrap();
    }
    // Prefill: until every sequence has its first token.
    let mut started = std::collections::HashSet::new();
    while started.len() < reqs.len() {
        for e in g.step().unwrap() {
            if let TokenEvent::Token { seq, .. } = e {
                started.insert(seq);
            }
        }
    }
    let start = Instant::now();
    let mut tokens = 0usize;
    while g.has_work() {
        tokens += g
            .step()
            .unwrap()
            .iter()
            .filter(|e| matches!(e, TokenEvent::Token { .. }))
            .count();
    }
    tokens as f64 / start.elapsed().as_secs_f64()
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

fn best(v: &[f64]) -> f64 {
    v.iter().copied().fold(0.0, f64::max)
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
    for _ in 0..REPEATS {
        d1.push(direct_decode(&model, &one));
        e1.push(engine_decode(&model, &one, &cluster));
        e32.push(engine_decode(&model, &many, &cluster));
    }
    println!(
        "decode tokens/s (prefill excluded), {REPEATS} alternating runs each; median and best"
    );
    println!("| measurement | median | best | ratio (median) | ratio (best) | target |");
    println!("|---|---:|---:|---:|---:|---:|");
    let (md, bd) = (median(d1.clone()), best(&d1));
    let (me1, be1) = (median(e1.clone()), best(&e1));
    let (me32, be32) = (median(e32.clone()), best(&e32));
    println!("| plain loop, 1 sequence | {md:.1} | {bd:.1} | | | |");
    println!(
        "| engine, 1 sequence, 1 worker | {me1:.1} | {be1:.1} | {:.3} of plain | {:.3} of plain | ≥ 0.95 |",
        me1 / md,
        be1 / bd
    );
    println!(
        "| engine, 32 sequences, 1 worker | {me32:.1} | {be32:.1} | {:.2}× 1 sequence | {:.2}× 1 sequence | ≥ 5× |",
        me32 / me1,
        be32 / be1
    );
}
