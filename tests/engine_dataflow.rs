//! The timely dataflow engine on the tiny model: every plan (splits, uneven
//! ranges, replicas, spans, 1 to 4 workers) and 1 to 64 concurrent requests give
//! the greedy tokens of the unsplit model; bad plans and requests past capacity
//! get typed errors and nothing else is affected; emulated links delay without
//! blocking.

// A one-stage split is a list holding one layer range.
#![allow(clippy::single_range_in_vec_init)]

use std::collections::HashMap;
use std::ops::Range;
use std::path::PathBuf;

use tokenflow_engine::dataflow::{
    Arrivals, Communication, EngineError, EngineOptions, PlacementError, PlacementOptions,
    RequestError, RouterChoice, RunOutcome, RunSpec, run,
};
use tokenflow_engine::{DirectGenerator, Request, SchedulerConfig};
use tokenflow_operators::LlamaModel;
use tokenflow_operators::device::default_device;
use tokenflow_operators::tiny::{TinyModelSpec, write_tiny_model};
use tokenflow_planner::ValidationError;
use tokenflow_planner::{Cluster, Plan};

fn tiny_path() -> PathBuf {
    let path =
        std::env::temp_dir().join(format!("tokenflow-engine-tiny-{}.gguf", std::process::id()));
    if !path.exists() {
        write_tiny_model(&TinyModelSpec::default(), &path).unwrap();
    }
    path
}

/// `n` nodes of `gpu` in one site, plus a far node `far` 40 ms away.
fn cluster(n: usize, gpu: &str, extra_gpus: &str) -> Cluster {
    let mut toml = format!(
        "name = \"test\"\n{extra_gpus}\n[link_defaults]\nintra_site = {{ latency_ms = 0.0, bandwidth_gbps = 100.0 }}\ninter_site = {{ latency_ms = 40.0, bandwidth_gbps = 1.0 }}\n"
    );
    for i in 0..n {
        toml.push_str(&format!(
            "[[nodes]]\nid = \"n{i}\"\ngpu = \"{gpu}\"\nsite = \"a\"\nregion = \"r\"\n"
        ));
    }
    toml.push_str("[[nodes]]\nid = \"far\"\ngpu = \"RTX3060\"\nsite = \"b\"\nregion = \"r\"\n");
    Cluster::from_toml_str(&toml).unwrap()
}

/// Stages as (layers, node indices).
type Stages = Vec<(Range<usize>, Vec<usize>)>;

fn plan(cluster: &Cluster, stages: &[(Range<usize>, Vec<usize>)]) -> Plan {
    Plan::from_stages("test", cluster, 6, "tiny", stages)
}

fn prompts(model: &LlamaModel, n: usize) -> Vec<Vec<u32>> {
    let texts = [
        "the cat sat on the mat",
        "in the beginning",
        "hello, world! 123",
        "a",
        "the other one: ünïcode 🦀",
        "once upon a time there was a long prompt that goes on and on and on",
    ];
    (0..n)
        .map(|i| model.tokenizer.encode(texts[i % texts.len()]).unwrap())
        .collect()
}

fn requests(model: &LlamaModel, n: usize, max_tokens: usize) -> Vec<Request> {
    prompts(model, n)
        .into_iter()
        .enumerate()
        .map(|(i, p)| Request::greedy(i as u64, p, max_tokens + i % 3))
        .collect()
}

fn reference(model: &LlamaModel, reqs: &[Request]) -> HashMap<u64, Vec<u32>> {
    let pipeline = model
        .pipeline(&[0..6], u64::MAX / 4, &default_device(), &mut |_, _| {})
        .unwrap();
    let mut g = DirectGenerator::new(pipeline, SchedulerConfig::default());
    for r in reqs {
        g.submit(r.clone()).unwrap();
    }
    g.run_to_completion()
        .unwrap()
        .into_iter()
        .map(|(seq, _, log)| (seq, log.generated))
        .collect()
}

fn spec(plan: Plan, cluster: Cluster, workers: usize, reqs: Vec<Request>) -> RunSpec {
    RunSpec {
        model_path: tiny_path(),
        plan,
        cluster,
        options: EngineOptions::default(),
        communication: Communication::Threads(workers),
        requests: reqs,
        arrivals: Arrivals::Immediate,
    }
}

fn tokens(outcome: &RunOutcome) -> HashMap<u64, Vec<u32>> {
    assert!(outcome.refused.is_empty(), "refused: {:?}", outcome.refused);
    outcome
        .finished
        .iter()
        .map(|f| (f.seq, f.log.generated.clone()))
        .collect()
}

#[test]
fn every_plan_gives_the_tokens_of_the_unsplit_model() {
    let model = LlamaModel::open(tiny_path()).unwrap();
    let c = cluster(6, "RTX4090", "");
    let plans: Vec<(&str, Stages)> = vec![
        ("one stage", vec![(0..6, vec![0])]),
        ("six stages", (0..6).map(|l| (l..l + 1, vec![l])).collect()),
        (
            "uneven",
            vec![(0..1, vec![0]), (1..5, vec![1]), (5..6, vec![2])],
        ),
        (
            "replicas",
            vec![(0..2, vec![0, 1]), (2..3, vec![2]), (3..6, vec![3, 4, 5])],
        ),
        // Node 0 spans stages 0 and 1; node 1 serves stage 1 only.
        (
            "spans",
            vec![(0..2, vec![0]), (2..4, vec![0, 1]), (4..6, vec![2])],
        ),
    ];
    for (n_requests, max_tokens) in [(1, 12), (7, 10), (64, 6)] {
        let reqs = requests(&model, n_requests, max_tokens);
        let want = reference(&model, &reqs);
        for (name, stages) in &plans {
            for workers in [1, 2, 4] {
                for router in [
                    RouterChoice::MinLatency,
                    RouterChoice::InterleavedWrr,
                    RouterChoice::LeastLoaded,
                ] {
                    if router != RouterChoice::MinLatency && (workers != 2 || n_requests == 1) {
                        continue;
                    }
                    let mut s = spec(plan(&c, stages), c.clone(), workers, reqs.clone());
                    s.options.scheduler.router = router;
                    s.options.scheduler.token_budget = 64;
                    s.options.scheduler.max_prefill_chunk = 8;
                    let outcome = run(s, None).unwrap().unwrap();
                    assert_eq!(
                        tokens(&outcome),
                        want,
                        "{name}, {workers} workers, {n_requests} requests, {router:?}"
                    );
                }
            }
        }
    }
}

#[test]
fn replicas_share_the_load() {
    let model = LlamaModel::open(tiny_path()).unwrap();
    let c = cluster(3, "RTX4090", "");
    let p = plan(&c, &[(0..3, vec![0, 1]), (3..6, vec![2])]);
    let reqs = requests(&model, 16, 4);
    let mut s = spec(p, c, 2, reqs);
    s.options.scheduler.router = RouterChoice::InterleavedWrr;
    let outcome = run(s, None).unwrap().unwrap();
    let stages = &outcome.metrics.stages;
    let tokens = |k: &str| stages.get(k).map_or(0, |s| s.tokens);
    assert!(
        tokens("n0 stage 0") > 0 && tokens("n1 stage 0") > 0,
        "{stages:?}"
    );
}

#[test]
fn bad_plans_are_refused_before_anything_starts() {
    let c = cluster(3, "RTX4090", "");
    let model = LlamaModel::open(tiny_path()).unwrap();
    let reqs = requests(&model, 1, 2);
    let check = |p: Plan, c: Cluster, want: &dyn Fn(&PlacementError) -> bool| match run(
        spec(p, c, 1, reqs.clone()),
        None,
    ) {
        Err(EngineError::Placement(e)) => assert!(want(&e), "unexpected error: {e}"),
        other => panic!(
            "expected a placement error, got {:?}",
            other.map(|o| o.is_some())
        ),
    };
    let mut missing = plan(&c, &[(0..3, vec![0]), (3..6, vec![1])]);
    missing.stages[1].start = 4;
    check(missing, c.clone(), &|e| {
        matches!(
            e,
            PlacementError::Plan(ValidationError::LayerMissing { layer: 3 })
        )
    });
    let mut twice = plan(&c, &[(0..3, vec![0]), (3..6, vec![1])]);
    twice.stages[1].start = 2;
    check(twice, c.clone(), &|e| {
        matches!(
            e,
            PlacementError::Plan(ValidationError::LayerCoveredTwice { layer: 2, .. })
        )
    });
    let mut unknown = plan(&c, &[(0..6, vec![0])]);
    unknown.stages[0].replicas[0].node = "ghost".into();
    check(
        unknown,
        c.clone(),
        &|e| matches!(e, PlacementError::Plan(ValidationError::UnknownNode { node, .. }) if node == "ghost"),
    );
    let mut hop = plan(&c, &[(0..3, vec![0]), (3..6, vec![1])]);
    hop.stages[0].replicas[0].next = vec![tokenflow_planner::plan::NextHop {
        node: "n2".into(),
        weight: 1.0,
    }];
    check(
        hop,
        c.clone(),
        &|e| matches!(e, PlacementError::Plan(ValidationError::UnknownNextHop { to, .. }) if to == "n2"),
    );
    // A GPU of 100 kB cannot hold the tiny model's stages.
    let small = cluster(
        2,
        "Tiny",
        "[[gpu]]\nname = \"Tiny\"\nmemory_gib = 0.0001\nfp16_tflops = 1.0\nmem_bandwidth_gbs = 1.0\n",
    );
    let p = plan(&small, &[(0..6, vec![0])]);
    match run(spec(p, small, 1, reqs.clone()), None) {
        Err(e @ EngineError::Placement(PlacementError::NodeMemory { .. })) => {
            assert!(e.to_string().contains("MB missing"), "{e}")
        }
        other => panic!("expected NodeMemory, got {:?}", other.map(|o| o.is_some())),
    }
}

#[test]
fn requests_past_capacity_are_refused_and_the_rest_complete() {
    let model = LlamaModel::open(tiny_path()).unwrap();
    // Weights of the whole tiny model plus KV room for about one 150-token sequence.
    let cfg = &model.config;
    let weights =
        tokenflow_engine::dataflow::placement::stage_weight_bytes(cfg, &(0..6), true, true);
    let kv_per_token = cfg.kv_bytes_per_token_per_layer() * 6;
    let memory = weights + kv_per_token * 150;
    let gib = memory as f64 / (1u64 << 30) as f64;
    let c = cluster(
        1,
        "Small",
        &format!(
            "[[gpu]]\nname = \"Small\"\nmemory_gib = {gib}\nfp16_tflops = 1.0\nmem_bandwidth_gbs = 1.0\n"
        ),
    );
    let p = plan(&c, &[(0..6, vec![0])]);
    let mut reqs = requests(&model, 4, 100);
    // Needs 400 tokens of KV: never fits.
    reqs.push(Request::greedy(99, reqs[0].prompt.clone(), 390));
    let want = reference(&model, &reqs[..4]);
    let outcome = run(spec(p, c, 1, reqs), None).unwrap().unwrap();
    assert_eq!(outcome.refused.len(), 1, "{:?}", outcome.refused);
    assert!(matches!(
        outcome.refused[0].1,
        RequestError::PastCapacity { seq: 99, .. }
    ));
    let got: HashMap<u64, Vec<u32>> = outcome
        .finished
        .iter()
        .map(|f| (f.seq, f.log.generated.clone()))
        .collect();
    // The four others ran one or two at a time as KV freed, and all finished.
    assert_eq!(got, want);
}

#[test]
fn bad_prompts_are_refused_and_the_rest_complete() {
    let model = LlamaModel::open(tiny_path()).unwrap();
    let c = cluster(2, "RTX4090", "");
    let p = plan(&c, &[(0..3, vec![0]), (3..6, vec![1])]);
    let mut reqs = requests(&model, 3, 5);
    reqs.push(Request::greedy(10, vec![], 5));
    reqs.push(Request::greedy(11, vec![1, 999_999], 5));
    reqs.push(Request::greedy(0, vec![1, 2], 5)); // duplicate id
    let want = reference(&model, &reqs[..3]);
    let outcome = run(spec(p, c, 2, reqs), None).unwrap().unwrap();
    let mut refused: Vec<u64> = outcome.refused.iter().map(|(s, _)| *s).collect();
    refused.sort();
    assert_eq!(refused, vec![0, 10, 11]);
    let got: HashMap<u64, Vec<u32>> = outcome
        .finished
        .iter()
        .map(|f| (f.seq, f.log.generated.clone()))
        .collect();
    assert_eq!(got, want);
}

#[test]
fn emulated_links_delay_tokens_without_changing_them() {
    let model = LlamaModel::open(tiny_path()).unwrap();
    let c = cluster(1, "RTX4090", "");
    // n0 holds the first half, `far` (40 ms away, a slower GPU) the second.
    let p = plan(&c, &[(0..3, vec![0]), (3..6, vec![1])]);
    let reqs = requests(&model, 2, 5);
    let want = reference(&model, &reqs);
    let mut s = spec(p, c, 2, reqs);
    s.options.placement = PlacementOptions::emulated();
    let outcome = run(s, None).unwrap().unwrap();
    assert_eq!(tokens(&outcome), want);
    // Every token crosses n0 -> far and far -> n0 (the feedback edge): at least 80 ms apart.
    let gaps = outcome.metrics.latency.get("inter_token").unwrap();
    assert!(gaps.min_us() >= 80_000, "min gap {} µs", gaps.min_us());
    let ttft = outcome.metrics.latency.get("ttft").unwrap();
    assert!(ttft.min_us() >= 40_000, "min ttft {} µs", ttft.min_us());
    assert!(
        outcome.metrics.links.contains_key("n0 -> far"),
        "{:?}",
        outcome.metrics.links
    );
}
