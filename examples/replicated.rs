//! A stage with replicas and a router: the middle stage runs on three nodes,
//! and the least-loaded router spreads twelve concurrent requests over them.
//! Every request gets the tokens of the unsplit model.
//!
//! `cargo run --release --example replicated`

use std::path::PathBuf;

use tokenflow_engine::Request;
use tokenflow_engine::dataflow::{
    Arrivals, Communication, EngineOptions, RouterChoice, RunSpec, SchedulerConfig, run,
};
use tokenflow_operators::LlamaModel;
use tokenflow_operators::tiny::{TinyModelSpec, write_tiny_model};
use tokenflow_planner::{Cluster, Plan};

fn model_path() -> anyhow::Result<PathBuf> {
    let smollm2 =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/SmolLM2-135M-Instruct.Q4_1.gguf");
    if smollm2.exists() {
        return Ok(smollm2);
    }
    let tiny = std::env::temp_dir().join("tokenflow-example-replicated-tiny.gguf");
    write_tiny_model(&TinyModelSpec::default(), &tiny)?;
    Ok(tiny)
}

fn main() -> anyhow::Result<()> {
    let path = model_path()?;
    let model = LlamaModel::open(&path)?;
    let n = model.config.n_layers;
    let cluster = Cluster::from_toml_str(
        "name = \"rack\"\n[link_defaults]\nintra_site = { latency_ms = 0.1, bandwidth_gbps = 10.0 }\n[[nodes]]\nid = \"gpu\"\ngpu = \"RTX4090\"\ncount = 5\nsite = \"rack\"\nregion = \"here\"\n",
    )?;
    // Stage 1 (the middle third) has three replicas: gpu-1, gpu-2, gpu-3.
    let plan = Plan::from_stages(
        "replicated",
        &cluster,
        n,
        model.name(),
        &[
            (0..n / 3, vec![0]),
            (n / 3..2 * n / 3, vec![1, 2, 3]),
            (2 * n / 3..n, vec![4]),
        ],
    );
    let requests: Vec<Request> = (0..12)
        .map(|i| {
            Request::greedy(
                i,
                model
                    .tokenizer
                    .encode(&format!("Question {i}: why is the sky"))
                    .unwrap(),
                8,
            )
        })
        .collect();
    let spec = |plan: Plan, router| RunSpec {
        model_path: path.clone(),
        plan,
        cluster: cluster.clone(),
        options: EngineOptions {
            scheduler: SchedulerConfig {
                router,
                ..SchedulerConfig::default()
            },
            ..EngineOptions::default()
        },
        communication: Communication::Threads(2),
        requests: requests.clone(),
        arrivals: Arrivals::Immediate,
    };
    let outcome = run(spec(plan, RouterChoice::LeastLoaded), None)?.expect("one process");
    println!("{}", outcome.placement);
    println!("{}", outcome.metrics.stages_table());
    for replica in ["gpu-1", "gpu-2", "gpu-3"] {
        let tokens = outcome
            .metrics
            .stages
            .get(&format!("{replica} stage 1"))
            .map_or(0, |s| s.tokens);
        println!("{replica} ran {tokens} tokens of stage 1");
        assert!(tokens > 0, "the router left {replica} idle");
    }
    // The same requests on the unsplit model give the same tokens.
    let whole = Plan::from_stages("whole", &cluster, n, model.name(), &[(0..n, vec![0])]);
    let reference = run(spec(whole, RouterChoice::MinLatency), None)?.expect("one process");
    let sorted = |o: &tokenflow_engine::dataflow::RunOutcome| {
        let mut v: Vec<_> = o
            .finished
            .iter()
            .map(|f| (f.seq, f.log.generated.clone()))
            .collect();
        v.sort();
        v
    };
    assert_eq!(sorted(&outcome), sorted(&reference));
    println!(
        "all {} requests match the unsplit model",
        outcome.finished.len()
    );
    Ok(())
}
