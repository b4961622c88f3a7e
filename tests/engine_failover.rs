//! Nodes fail inside a running engine: sequences on a dead or restarted node are
//! re-routed and rebuilt from their token logs, and every request still gets the
//! tokens of the run without failures: none lost, none repeated. Detection is by
//! heartbeats only.

use std::collections::HashMap;
use std::ops::Range;
use std::path::PathBuf;
use std::time::Duration;

use tokenflow_engine::Request;
use tokenflow_engine::dataflow::{
    Arrivals, Communication, EngineOptions, FailureSchedule, NoPathReason, PlacementOptions,
    RequestError, RouterChoice, RunOutcome, RunSpec, SchedulerConfig, run,
};
use tokenflow_operators::LlamaModel;
use tokenflow_operators::SamplingParams;
use tokenflow_operators::tiny::{TinyModelSpec, write_tiny_model};
use tokenflow_planner::{Cluster, Plan};

fn tiny_path() -> PathBuf {
    let path = std::env::temp_dir().join(format!(
        "tokenflow-failover-tiny-{}.gguf",
        std::process::id()
    ));
    if !path.exists() {
        write_tiny_model(&TinyModelSpec::default(), &path).unwrap();
    }
    path
}

/// `n` nodes in one site whose links take `latency_ms`, so generation lasts long enough to fail in.
fn cluster(n: usize, latency_ms: f64) -> Cluster {
    let mut toml = format!(
        "name = \"failover\"\n[link_defaults]\nintra_site = {{ latency_ms = {latency_ms}, bandwidth_gbps = 10.0 }}\n"
    );
    for i in 0..n {
        toml.push_str(&format!(
            "[[nodes]]\nid = \"n{i}\"\ngpu = \"RTX4090\"\nsite = \"a\"\nregion = \"r\"\n"
        ));
    }
    Cluster::from_toml_str(&toml).unwrap()
}

fn requests(model: &LlamaModel, n: usize, max_tokens: usize, seeded: bool) -> Vec<Request> {
    let texts = [
        "the cat sat on the mat",
        "in the beginning",
        "hello, world! 123",
        "a",
        "once upon a time",
    ];
    (0..n)
        .map(|i| {
            let mut r = Request::greedy(
                i as u64,
                model.tokenizer.encode(texts[i % texts.len()]).unwrap(),
                max_tokens,
            );
            if seeded && i % 2 == 1 {
                r.sampling = SamplingParams {
                    temperature: 0.8,
                    top_p: 0.9,
                    seed: i as u64,
                    ..SamplingParams::greedy()
                };
            }
            r
        })
        .collect()
}

fn spec(
    stages: &[(Range<usize>, Vec<usize>)],
    c: &Cluster,
    reqs: Vec<Request>,
    failures: FailureSchedule,
) -> RunSpec {
    RunSpec {
        model_path: tiny_path(),
        plan: Plan::from_stages("failover", c, 6, "tiny", stages),
        cluster: c.clone(),
        options: EngineOptions {
            scheduler: SchedulerConfig {
                router: RouterChoice::LeastLoaded,
                heartbeat: Duration::from_millis(5),
                suspect_after: Duration::from_millis(40),
                stall_timeout: Duration::from_secs(20),
                ..SchedulerConfig::default()
            },
            placement: PlacementOptions::emulated(),
            failures,
            ..EngineOptions::default()
        },
        communication: Communication::Threads(2),
        requests: reqs,
        arrivals: Arrivals::Immediate,
    }
}

fn tokens(o: &RunOutcome) -> HashMap<u64, Vec<u32>> {
    assert!(o.refused.is_empty(), "refused: {:?}", o.refused);
    o.finished
        .iter()
        .map(|f| (f.seq, f.log.generated.clone()))
        .collect()
}

const REPLICATED: [(Range<usize>, [usize; 2]); 3] =
    [(0..2, [0, 1]), (2..4, [2, 3]), (4..6, [4, 5])];

fn replicated() -> Vec<(Range<usize>, Vec<usize>)> {
    REPLICATED
        .iter()
        .map(|(r, n)| (r.clone(), n.to_vec()))
        .collect()
}

#[test]
fn a_node_that_dies_mid_generation_loses_nothing() {
    let model = LlamaModel::open(tiny_path()).unwrap();
    let c = cluster(6, 3.0);
    let reqs = requests(&model, 16, 30, true);
    let clean = run(
        spec(&replicated(), &c, reqs.clone(), FailureSchedule::default()),
        None,
    )
    .unwrap()
    .unwrap();
    let want = tokens(&clean);
    assert_eq!(clean.metrics.sequencer.restarts, 0);
    // n2 serves half of stage 1; it dies 150 ms in and never returns.
    let failures = FailureSchedule::parse("n2@150ms").unwrap();
    let outcome = run(spec(&replicated(), &c, reqs, failures), None)
        .unwrap()
        .unwrap();
    assert_eq!(tokens(&outcome), want);
    assert!(
        outcome.metrics.sequencer.failures_detected >= 1,
        "{:?}",
        outcome.metrics.sequencer.failures_detected
    );
    assert!(
        outcome.metrics.sequencer.restarts > 0 && outcome.metrics.sequencer.recomputed_tokens > 0
    );
    assert!(outcome.metrics.latency.contains_key("recovery"));
}

#[test]
fn a_node_that_restarts_between_heartbeats_loses_nothing() {
    let model = LlamaModel::open(tiny_path()).unwrap();
    let c = cluster(6, 3.0);
    let reqs = requests(&model, 12, 30, false);
    let want = tokens(
        &run(
            spec(&replicated(), &c, reqs.clone(), FailureSchedule::default()),
            None,
        )
        .unwrap()
        .unwrap(),
    );
    // Down for 10 ms, shorter than the 40 ms detection delay: only its new incarnation tells.
    let failures = FailureSchedule::parse("n3@120ms-130ms,n0@200ms-210ms").unwrap();
    let outcome = run(spec(&replicated(), &c, reqs, failures), None)
        .unwrap()
        .unwrap();
    assert_eq!(tokens(&outcome), want);
    assert!(outcome.metrics.sequencer.restarts > 0);
}

#[test]
fn chaos_many_requests_random_kills_and_returns() {
    let model = LlamaModel::open(tiny_path()).unwrap();
    let c = cluster(8, 2.0);
    // Stage 1 has three replicas, the others two; n7 spans stages 1 and 2.
    let stages = vec![
        (0..2, vec![0, 1]),
        (2..4, vec![2, 3, 7]),
        (4..6, vec![4, 5, 7]),
    ];
    let reqs = requests(&model, 100, 24, true);
    let want = tokens(
        &run(
            spec(&stages, &c, reqs.clone(), FailureSchedule::default()),
            None,
        )
        .unwrap()
        .unwrap(),
    );
    let ids: Vec<String> = (0..8).map(|i| format!("n{i}")).collect();
    let failures = FailureSchedule::random_churn(
        &ids,
        Duration::from_millis(400),
        Duration::from_millis(60),
        Duration::from_secs(3),
        7,
    )
    .unwrap();
    assert!(
        failures.outages.len() >= 8,
        "{} outages",
        failures.outages.len()
    );
    let outages = failures.clone();
    let outcome = run(spec(&stages, &c, reqs, failures), None)
        .unwrap()
        .unwrap();
    assert_eq!(outcome.finished.len(), 100);
    assert_eq!(tokens(&outcome), want);
    assert!(outcome.metrics.sequencer.restarts > 0);
    let span = Duration::from_micros(outcome.metrics.sequencer.span_us);
    let injected = outages.outages.iter().filter(|o| o.down_at < span).count();
    eprintln!(
        "chaos: {injected} failures injected in {:.2} s, {} detected, {} restarts, {} tokens recomputed, {} generated",
        span.as_secs_f64(),
        outcome.metrics.sequencer.failures_detected,
        outcome.metrics.sequencer.restarts,
        outcome.metrics.sequencer.recomputed_tokens,
        outcome.metrics.sequencer.tokens
    );
}

#[test]
fn a_stage_that_loses_its_only_replica_is_replanned() {
    let model = LlamaModel::open(tiny_path()).unwrap();
    let c = cluster(3, 3.0);
    let stages = vec![(0..2, vec![0]), (2..4, vec![1]), (4..6, vec![2])];
    let reqs = requests(&model, 6, 40, true);
    let want = tokens(
        &run(
            spec(&stages, &c, reqs.clone(), FailureSchedule::default()),
            None,
        )
        .unwrap()
        .unwrap(),
    );
    // n1 holds stage 1 alone and dies for good: another node loads it.
    let outcome = run(
        spec(
            &stages,
            &c,
            reqs,
            FailureSchedule::parse("n1@100ms").unwrap(),
        ),
        None,
    )
    .unwrap()
    .unwrap();
    assert_eq!(tokens(&outcome), want);
    // At least one re-plan (a node busy loading weights may also be suspected for a while).
    assert!(outcome.metrics.sequencer.replans >= 1);
    let served: Vec<&String> = outcome
        .metrics
        .stages
        .iter()
        .filter(|(k, s)| k.ends_with("stage 1") && !k.starts_with("n1 ") && s.tokens > 0)
        .map(|(k, _)| k)
        .collect();
    assert!(!served.is_empty(), "{:?}", outcome.metrics.stages.keys());
}

#[test]
fn when_no_node_can_take_the_stage_requests_fail_naming_the_missing_memory() {
    let model = LlamaModel::open(tiny_path()).unwrap();
    let cfg = &model.config;
    use tokenflow_engine::dataflow::placement::stage_weight_bytes;
    let heaviest = stage_weight_bytes(cfg, &(0..2), true, false).max(stage_weight_bytes(
        cfg,
        &(4..6),
        false,
        true,
    ));
    // Room for the heaviest node's weights and 150 tokens of KV: too little to also take stage 1.
    let memory = heaviest + cfg.kv_bytes_per_token_per_layer() * 2 * 150;
    let gib = memory as f64 / (1u64 << 30) as f64;
    let mut toml = format!(
        "name = \"small\"\n[[gpu]]\nname = \"Small\"\nmemory_gib = {gib}\nfp16_tflops = 1.0\nmem_bandwidth_gbs = 1.0\n[link_defaults]\nintra_site = {{ latency_ms = 3.0, bandwidth_gbps = 10.0 }}\n"
    );
    for i in 0..3 {
        toml.push_str(&format!(
            "[[nodes]]\nid = \"n{i}\"\ngpu = \"Small\"\nsite = \"a\"\nregion = \"r\"\n"
        ));
    }
    let c = Cluster::from_toml_str(&toml).unwrap();
    let stages = vec![(0..2, vec![0]), (2..4, vec![1]), (4..6, vec![2])];
    let reqs = requests(&model, 2, 40, false);
    let mut s = spec(
        &stages,
        &c,
        reqs,
        FailureSchedule::parse("n1@100ms").unwrap(),
    );
    s.options.scheduler.stall_timeout = Duration::from_millis(300);
    let outcome = run(s, None).unwrap().unwrap();
    assert_eq!(outcome.refused.len(), 2, "{:?}", outcome.refused);
    for (_, e) in &outcome.refused {
        assert!(
            matches!(e, RequestError::NoPath { reason: NoPathReason::StageDown { stage: 1, repair: Some(r), .. }, .. } if r.contains("MB missing")),
            "{e}"
        );
    }
}

#[test]
fn failure_specs_are_checked() {
    assert!(FailureSchedule::parse("n1@5s,n2@1.5s-3s").is_ok());
    assert!(FailureSchedule::parse("n1@5").is_err());
    assert!(FailureSchedule::parse("n1@3s-1s").is_err());
    assert!(FailureSchedule::parse("@3s").is_err());
    assert!(FailureSchedule::parse("n1").is_err());
}
