//! The simulator: hand-computed latencies, determinism, conservation, churn,
//! SLO goodput and typed errors on bad input.

use std::path::PathBuf;

use tokenflow_core::SchedulerConfig;
use tokenflow_planner::cost::CostModel;
use tokenflow_planner::latency::metric;
use tokenflow_planner::{Cluster, Plan, PlanError, PlanOptions, plan_with, presets};
use tokenflow_sim::{
    ChurnSpec, Failover, ReplanPolicy, RouterChoice, Scenario, SimCluster, SimConfig, SimError,
    SimRequest, Simulator, Slo, WorkloadSpec, simulate_plan, strategy_list,
};

const ONE_NODE: &str = r#"
name = "one"
[[nodes]]
id = "a"
gpu = "RTX4090"
site = "s"
region = "r"
"#;

const TWO_NODES: &str = r#"
name = "two"
[link_defaults]
intra_site = { latency_ms = 2.0, bandwidth_gbps = 1.0 }
[[nodes]]
id = "a"
gpu = "RTX4090"
site = "s"
region = "r"
[[nodes]]
id = "b"
gpu = "RTX3090"
site = "s"
region = "r"
"#;

fn scenario_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../data/scenarios")
}

fn tmp(name: &str, text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tokenflow-sim-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

fn us(s: f64) -> f64 {
    (s * 1e6).floor()
}

fn close(got_us: u64, want_s: f64) -> bool {
    // Nanosecond rounding, microsecond truncation, HdrHistogram's 0.1%.
    let want = us(want_s);
    (got_us as f64 - want).abs() <= 2.0 + want * 1e-3
}

#[test]
fn single_node_single_request_matches_the_cost_model() {
    let cluster = Cluster::from_toml_str(ONE_NODE).unwrap();
    let model = presets::model("Llama-3-8B").unwrap();
    let options = PlanOptions::default();
    let plan = plan_with("even", &cluster, &model, &options).unwrap();
    assert_eq!(plan.stages.len(), 1);
    let requests = [SimRequest {
        arrival_s: 0.5,
        prompt_tokens: 100,
        output_tokens: 3,
    }];
    let out = simulate_plan(
        &cluster,
        &model,
        &options,
        &plan,
        &SimConfig::default(),
        &requests,
    )
    .unwrap();
    let cm = CostModel::new(&model, &options);
    let gpu = &cluster.nodes[0].gpu;
    let prefill = cm.step_time(gpu, &(0..32), 0.0, 100.0);
    let decode = cm.step_time(gpu, &(0..32), 1.0, 0.0);
    let l = &out.latency;
    let ttft = l.get(metric::TTFT).unwrap();
    let itl = l.get(metric::INTER_TOKEN).unwrap();
    let e2e = l.get(metric::E2E).unwrap();
    assert_eq!((ttft.count(), itl.count(), e2e.count()), (1, 2, 1));
    assert!(
        close(ttft.max_us(), prefill),
        "{} vs {prefill}",
        ttft.max_us()
    );
    assert!(close(itl.max_us(), decode), "{} vs {decode}", itl.max_us());
    assert!(close(e2e.max_us(), prefill + 2.0 * decode));
    assert_eq!(l.get(metric::QUEUE).unwrap().max_us(), 0);
    assert_eq!(out.stats.tokens_generated, 3);
    assert_eq!(out.stats.completed, 1);
    assert!((out.stats.end_s - (0.5 + prefill + 2.0 * decode)).abs() < 1e-6);
}

#[test]
fn two_stage_pipeline_adds_link_and_feedback_times() {
    let cluster = Cluster::from_toml_str(TWO_NODES).unwrap();
    let model = presets::model("Llama-3-8B").unwrap();
    let options = PlanOptions::default();
    let plan = Plan::from_stages(
        "manual",
        &cluster,
        32,
        &model.name,
        &[(0..16, vec![0]), (16..32, vec![1])],
    );
    let requests = [SimRequest {
        arrival_s: 0.0,
        prompt_tokens: 300,
        output_tokens: 2,
    }];
    let config = SimConfig {
        scheduler: SchedulerConfig {
            router: RouterChoice::InterleavedWrr,
            ..SchedulerConfig::default()
        },
        ..SimConfig::default()
    };
    let out = simulate_plan(&cluster, &model, &options, &plan, &config, &requests).unwrap();
    let cm = CostModel::new(&model, &options);
    let (a, b) = (&cluster.nodes[0].gpu, &cluster.nodes[1].gpu);
    let ab = cluster.link(0, 1);
    let ba = cluster.link(1, 0);
    // 300 prompt tokens: chunks of 256 and 44, each a round trip through both stages.
    let chunk = |p: f64| {
        cm.step_time(a, &(0..16), 0.0, p)
            + ab.time(p * cm.activation_bytes(16))
            + cm.step_time(b, &(16..32), 0.0, p)
    };
    let ttft = chunk(256.0) + ba.time(44.0 * 4.0) + chunk(44.0);
    let itl = ba.time(4.0)
        + cm.step_time(a, &(0..16), 1.0, 0.0)
        + ab.time(cm.activation_bytes(16))
        + cm.step_time(b, &(16..32), 1.0, 0.0);
    let l = &out.latency;
    assert!(close(l.get(metric::TTFT).unwrap().max_us(), ttft));
    assert!(close(l.get(metric::INTER_TOKEN).unwrap().max_us(), itl));
    let bytes = 300.0 * cm.activation_bytes(16) + 44.0 * 4.0 + 4.0 + cm.activation_bytes(16);
    assert!((out.stats.network_bytes - bytes).abs() < 1e-6);
}

fn rack_scenario(churn: ChurnSpec, seed: u64) -> Scenario {
    Scenario {
        workload: WorkloadSpec::parse("poisson:rate=15,prompt=uniform:64:512,output=uniform:16:96")
            .unwrap(),
        churn,
        duration_s: 30.0,
        seed,
        config: SimConfig {
            drain_s: Some(120.0),
            ..SimConfig::default()
        },
        options: PlanOptions::default(),
    }
}

#[test]
fn same_seed_gives_identical_json_and_other_seeds_differ() {
    let cluster = SimCluster::from_path(scenario_dir().join("rack-4090.toml")).unwrap();
    let model = presets::model("Llama-3-8B").unwrap();
    let churn = ChurnSpec::parse("exp:mtbf=20s,mttr=5s").unwrap();
    let names = strategy_list("even,petals,chain-dp").unwrap();
    let json = |seed| {
        let sc = rack_scenario(churn.clone(), seed);
        let sim = Simulator::new(&cluster, &model, &sc).unwrap();
        sim.compare(&names, &mut |_, _| {}).to_json().unwrap()
    };
    let a = json(3);
    assert_eq!(a, json(3));
    assert_ne!(a, json(4));
}

#[test]
fn conservation_without_churn() {
    let cluster = SimCluster::from_path(scenario_dir().join("helix-24.toml")).unwrap();
    let model = presets::model("LLaMA-30B").unwrap();
    let mut sc = rack_scenario(ChurnSpec::None, 1);
    sc.config.drain_s = None;
    let sim = Simulator::new(&cluster, &model, &sc).unwrap();
    let total_out: u64 = sim.requests().iter().map(|r| r.output_tokens as u64).sum();
    for s in ["even", "chain-dp"] {
        let run = sim.run(s, &mut |_| {}).unwrap();
        let st = &run.outcome.stats;
        assert_eq!(
            st.completed + st.rejected + st.unfinished,
            st.requests,
            "{s}"
        );
        assert_eq!(st.completed, sim.requests().len() as u64, "{s}");
        assert_eq!(st.tokens_generated, total_out, "{s}");
        let per_req: u64 = run.outcome.requests.iter().map(|o| o.tokens as u64).sum();
        assert_eq!(per_req, total_out);
        assert_eq!(st.restarts, 0);
        let l = &run.outcome.latency;
        assert_eq!(l.get(metric::E2E).unwrap().count(), st.completed);
        assert_eq!(l.get(metric::TTFT).unwrap().count(), st.completed);
        assert_eq!(
            l.get(metric::INTER_TOKEN).unwrap().count(),
            total_out - st.completed
        );
        assert!(st.goodput_tok_s <= st.throughput_tok_s + 1e-9);
        assert!(st.goodput_req_s <= st.throughput_req_s + 1e-9);
    }
}

#[test]
fn a_failure_restarts_sequences_which_still_complete() {
    let cluster = SimCluster::from_path(scenario_dir().join("rack-4090.toml")).unwrap();
    let model = presets::model("Llama-3-8B").unwrap();
    let trace = tmp(
        "churn.csv",
        "node,start_s,end_s,state\nr4090-0,0,5,up\nr4090-0,5,12,down\nr4090-3,8,inf,down\n",
    );
    let mut sc = rack_scenario(ChurnSpec::Trace { path: trace }, 2);
    sc.config.drain_s = None;
    let sim = Simulator::new(&cluster, &model, &sc).unwrap();
    assert_eq!(sim.churn().len(), 3);
    let run = sim.run("even", &mut |_| {}).unwrap();
    let st = &run.outcome.stats;
    assert_eq!((st.failures, st.returns), (2, 1));
    assert!(st.restarts > 0 && st.requests_restarted > 0, "{st:?}");
    assert!(st.tokens_recomputed > 0);
    assert_eq!(st.completed, sim.requests().len() as u64);
    let total_out: u64 = sim.requests().iter().map(|r| r.output_tokens as u64).sum();
    assert_eq!(st.tokens_generated, total_out);
    assert!(st.weight_bytes_loaded > 0.0); // r4090-0 reloads when it comes back
    assert_eq!(run.outcome.timeline.failures_s, vec![5.0, 8.0]);
}

#[test]
fn losing_the_only_replica_replans_and_counts_time_without_a_path() {
    let cluster = SimCluster::from_path(scenario_dir().join("rack-4090.toml")).unwrap();
    let model = presets::model("Llama-3-8B").unwrap();
    // odp uses one node here; take it away for a while.
    let plan = plan_with("odp", &cluster.cluster, &model, &PlanOptions::default()).unwrap();
    assert_eq!(plan.nodes.len(), 1);
    let node = plan.nodes[0].clone();
    let trace = tmp("odp.csv", &format!("{node},10,20,down\n"));
    let mut sc = rack_scenario(ChurnSpec::Trace { path: trace }, 5);
    sc.config.drain_s = None;
    let sim = Simulator::new(&cluster, &model, &sc).unwrap();
    let run = sim.run("odp", &mut |_| {}).unwrap();
    let st = &run.outcome.stats;
    assert!(st.replans >= 1, "{st:?}");
    assert!(st.time_without_path_s > 0.0);
    assert!(st.weight_bytes_loaded > 0.0);
    assert_eq!(st.completed, sim.requests().len() as u64);
    // On-change re-plans on the return too.
    sc.config.replan = ReplanPolicy::OnChange;
    let sim = Simulator::new(&cluster, &model, &sc).unwrap();
    let st2 = sim.run("odp", &mut |_| {}).unwrap().outcome.stats;
    assert!(st2.replans >= st.replans);
}

#[test]
fn tight_slo_lowers_goodput_not_throughput() {
    let cluster = SimCluster::from_path(scenario_dir().join("rack-4090.toml")).unwrap();
    let model = presets::model("Llama-3-8B").unwrap();
    let mut sc = rack_scenario(ChurnSpec::None, 9);
    let loose = Simulator::new(&cluster, &model, &sc)
        .unwrap()
        .run("even", &mut |_| {})
        .unwrap()
        .outcome
        .stats;
    sc.config.slo = Slo {
        ttft_s: 1e-3,
        itl_s: 1e-3,
    };
    let tight = Simulator::new(&cluster, &model, &sc)
        .unwrap()
        .run("even", &mut |_| {})
        .unwrap()
        .outcome
        .stats;
    assert_eq!(loose.throughput_tok_s, tight.throughput_tok_s);
    assert!(loose.goodput_tok_s > 0.0 && loose.goodput_tok_s <= loose.throughput_tok_s);
    assert_eq!(tight.goodput_tok_s, 0.0);
}

#[test]
fn bad_inputs_give_typed_errors() {
    assert!(matches!(
        WorkloadSpec::parse("poisson:rate=0"),
        Err(SimError::InvalidNumber { .. })
    ));
    assert!(matches!(
        WorkloadSpec::parse("poisson:rate=-3"),
        Err(SimError::InvalidNumber { .. })
    ));
    assert!(matches!(
        WorkloadSpec::parse("poisson:rate=x"),
        Err(SimError::Spec { .. })
    ));
    assert!(matches!(
        WorkloadSpec::parse("zipf:rate=1"),
        Err(SimError::Spec { .. })
    ));
    assert!(matches!(
        WorkloadSpec::parse("poisson:rate=1,prompt=uniform:9:3"),
        Err(SimError::Spec { .. })
    ));
    assert!(matches!(
        WorkloadSpec::parse("poisson:rate=1,colour=red"),
        Err(SimError::Spec { .. })
    ));
    assert!(matches!(
        strategy_list("even,nope"),
        Err(SimError::Plan(PlanError::UnknownStrategy { .. }))
    ));
    for bad in [
        "exp:mtbf=-1",
        "exp:mtbf=abc",
        "weibull:shape=1",
        "flaky",
        "exp:mtbf",
    ] {
        assert!(ChurnSpec::parse(bad).is_err(), "{bad}");
    }
    assert!(matches!(
        ReplanPolicy::parse("threshold:1.5"),
        Err(SimError::InvalidNumber { .. })
    ));
    assert!(matches!(
        Slo::parse("ttft=soon"),
        Err(SimError::Spec { .. })
    ));
    assert!(matches!(
        RouterChoice::parse("random").map_err(SimError::from),
        Err(SimError::UnknownRouter(_))
    ));

    let cluster = Cluster::from_toml_str(TWO_NODES).unwrap();
    for (text, line) in [
        ("a,1,2,sideways\n", 1),
        ("node,start,end,state\na,5,2,down\n", 2),
        ("a,1,x,down\n", 1),
        ("a,1,5,down\na,3,9,down\n", 2),
        ("a,1,5\n", 1),
    ] {
        let spec = ChurnSpec::Trace {
            path: tmp("bad.csv", text),
        };
        match spec.timeline(&cluster, 100.0, 1) {
            Err(SimError::Trace { line: l, .. }) => assert_eq!(l, line, "{text}"),
            other => panic!("{text}: {other:?}"),
        }
    }
    assert!(matches!(
        ChurnSpec::Trace {
            path: tmp("ghost.csv", "ghost,1,2,down\n")
        }
        .timeline(&cluster, 100.0, 1),
        Err(SimError::UnknownNode { .. })
    ));
    assert!(matches!(
        ChurnSpec::Trace {
            path: PathBuf::from("/nonexistent/churn.csv")
        }
        .timeline(&cluster, 100.0, 1),
        Err(SimError::Io { .. })
    ));
    assert!(matches!(
        WorkloadSpec::parse(&format!("trace:{}", tmp("req.csv", "0.5,10,0\n").display()))
            .unwrap()
            .generate(10.0, 1),
        Err(SimError::Trace { line: 1, .. })
    ));

    let model = presets::model("Llama-3-8B").unwrap();
    let options = PlanOptions::default();
    let plan = Plan::from_stages(
        "manual",
        &cluster,
        32,
        &model.name,
        &[(0..16, vec![0]), (16..32, vec![1])],
    );
    let reqs = [
        SimRequest {
            arrival_s: 2.0,
            prompt_tokens: 5,
            output_tokens: 5,
        },
        SimRequest {
            arrival_s: 1.0,
            prompt_tokens: 5,
            output_tokens: 5,
        },
    ];
    let cfg = SimConfig::default();
    assert!(matches!(
        simulate_plan(&cluster, &model, &options, &plan, &cfg, &reqs),
        Err(SimError::InvalidNumber { .. })
    ));
    let bad_cfg = SimConfig {
        scheduler: SchedulerConfig {
            max_prefill_chunk: 1024,
            ..SchedulerConfig::default()
        },
        ..SimConfig::default()
    };
    assert!(matches!(
        simulate_plan(&cluster, &model, &options, &plan, &bad_cfg, &reqs[..1]),
        Err(SimError::Scheduler(e)) if e.field == "max_prefill_chunk"
    ));
    let mut wrong = plan.clone();
    wrong.stages[1].replicas[0].node = "ghost".into();
    assert!(matches!(
        simulate_plan(&cluster, &model, &options, &wrong, &cfg, &reqs[..1]),
        Err(SimError::Plan(PlanError::Invalid(_)))
    ));
    let sc = Scenario {
        duration_s: -1.0,
        ..rack_scenario(ChurnSpec::None, 1)
    };
    let c = SimCluster::from_cluster(cluster);
    assert!(matches!(
        Simulator::new(&c, &model, &sc),
        Err(SimError::InvalidNumber { .. })
    ));
}

#[test]
fn oversized_requests_are_rejected_not_stuck() {
    let cluster = Cluster::from_toml_str(ONE_NODE).unwrap();
    let model = presets::model("Llama-3-8B").unwrap();
    let options = PlanOptions::default();
    let plan = plan_with("even", &cluster, &model, &options).unwrap();
    let reqs = [
        SimRequest {
            arrival_s: 0.0,
            prompt_tokens: 4_000_000,
            output_tokens: 10,
        },
        SimRequest {
            arrival_s: 0.1,
            prompt_tokens: 10,
            output_tokens: 10,
        },
    ];
    let out = simulate_plan(
        &cluster,
        &model,
        &options,
        &plan,
        &SimConfig::default(),
        &reqs,
    )
    .unwrap();
    assert_eq!((out.stats.rejected, out.stats.completed), (1, 1));
    assert!(out.requests[0].rejected);
}

/// The context ends a sequence as the engine's stop rule does (so KV is
/// reserved for at most the context), and a prompt that fills the context is
/// refused as the engine refuses it.
#[test]
fn the_context_length_cuts_outputs_and_refuses_full_prompts() {
    let cluster = Cluster::from_toml_str(ONE_NODE).unwrap();
    let model = presets::model("Llama-3-8B").unwrap();
    assert_eq!(model.context_length, Some(8192));
    let options = PlanOptions::default();
    let plan = plan_with("even", &cluster, &model, &options).unwrap();
    let reqs = [
        SimRequest {
            arrival_s: 0.0,
            prompt_tokens: 8000,
            output_tokens: 1000,
        },
        SimRequest {
            arrival_s: 0.0,
            prompt_tokens: 8192,
            output_tokens: 1,
        },
        SimRequest {
            arrival_s: 0.0,
            prompt_tokens: 10,
            output_tokens: 20,
        },
    ];
    let out = simulate_plan(
        &cluster,
        &model,
        &options,
        &plan,
        &SimConfig::default(),
        &reqs,
    )
    .unwrap();
    assert_eq!((out.stats.rejected, out.stats.completed), (1, 2));
    assert_eq!(out.requests[0].tokens, 192);
    assert!(out.requests[1].rejected);
    assert_eq!(out.requests[2].tokens, 20);
}

#[test]
fn gamma_arrivals_are_burstier_with_the_same_rate() {
    let stats = |spec: &str| {
        let r = WorkloadSpec::parse(spec)
            .unwrap()
            .generate(2000.0, 7)
            .unwrap();
        let gaps: Vec<f64> = r
            .windows(2)
            .map(|w| w[1].arrival_s - w[0].arrival_s)
            .collect();
        let mean = gaps.iter().sum::<f64>() / gaps.len() as f64;
        let var = gaps.iter().map(|g| (g - mean).powi(2)).sum::<f64>() / gaps.len() as f64;
        (mean, var.sqrt() / mean)
    };
    let (m, cv) = stats("poisson:rate=10");
    assert!(
        (m - 0.1).abs() < 0.005 && (cv - 1.0).abs() < 0.05,
        "{m} {cv}"
    );
    let (m, cv) = stats("gamma:rate=10,cv=3");
    assert!((m - 0.1).abs() < 0.01 && (cv - 3.0).abs() < 0.4, "{m} {cv}");
    let r =
        WorkloadSpec::parse("poisson:rate=50,prompt=lognormal:300:0.5:1000,output=7,requests=100")
            .unwrap()
            .generate(1000.0, 1)
            .unwrap();
    assert_eq!(r.len(), 100);
    assert!(
        r.iter()
            .all(|q| q.output_tokens == 7 && (1..=1000).contains(&q.prompt_tokens))
    );
}

#[test]
fn weibull_and_exponential_churn_alternate_per_node() {
    let cluster = Cluster::from_path(scenario_dir().join("community-64.toml")).unwrap();
    for spec in [
        "weibull:shape=0.7,scale=10m,down-scale=2m,down-shape=1.5",
        "exp:scale=100",
        "exp:mtbf=10m,mttr=1m",
    ] {
        let events = ChurnSpec::parse(spec)
            .unwrap()
            .timeline(&cluster, 3600.0, 3)
            .unwrap();
        assert!(events.len() > 50, "{spec}: {}", events.len());
        assert!(events.windows(2).all(|w| w[0].time_s <= w[1].time_s));
        for n in 0..cluster.len() as u32 {
            let mine: Vec<bool> = events
                .iter()
                .filter(|e| e.node == n)
                .map(|e| e.up)
                .collect();
            assert!(
                mine.iter().enumerate().all(|(k, &up)| up == (k % 2 == 1)),
                "{spec}"
            );
        }
    }
    // Every node of community-64 has an availability model; exp:scale keeps MTTR/MTBF ratios.
    let none = ChurnSpec::None.timeline(&cluster, 3600.0, 3).unwrap();
    assert!(none.is_empty());
}

#[test]
fn threshold_policy_replans_when_capacity_drops() {
    let cluster = SimCluster::from_path(scenario_dir().join("rack-4090.toml")).unwrap();
    let model = presets::model("Llama-3-8B").unwrap();
    let trace = tmp(
        "half.csv",
        "r4090-0,5,40,down\nr4090-1,6,40,down\nr4090-2,7,40,down\nr4090-3,8,40,down\n",
    );
    let mut sc = rack_scenario(ChurnSpec::Trace { path: trace }, 4);
    sc.config.drain_s = None;
    let run = |sc: &Scenario| {
        Simulator::new(&cluster, &model, sc)
            .unwrap()
            .run("even", &mut |_| {})
            .unwrap()
            .outcome
            .stats
    };
    let base = run(&sc);
    assert_eq!(base.replans, 0);
    sc.config.replan = ReplanPolicy::Threshold(0.9);
    let t = run(&sc);
    assert!(t.replans >= 1, "{t:?}");
    assert_eq!(t.completed, base.completed);
}

#[test]
fn pooled_routing_conserves_requests_under_churn() {
    let cluster = SimCluster::from_path(scenario_dir().join("community-64.toml")).unwrap();
    let model = presets::model("Llama-2-70B").unwrap();
    let mut sc = rack_scenario(ChurnSpec::parse("exp:scale=50").unwrap(), 8);
    sc.workload =
        WorkloadSpec::parse("poisson:rate=0.5,prompt=uniform:32:128,output=uniform:8:32").unwrap();
    sc.config.drain_s = None;
    for router in [RouterChoice::InterleavedWrr, RouterChoice::LeastLoaded] {
        sc.config.scheduler.router = router;
        sc.config.route_cache = tokenflow_sim::RouteCache::Pool(32);
        let sim = Simulator::new(&cluster, &model, &sc).unwrap();
        let st = sim.run("petals", &mut |_| {}).unwrap().outcome.stats;
        assert_eq!(
            st.completed,
            sim.requests().len() as u64,
            "{router}: {st:?}"
        );
        assert!(st.router_calls >= 32);
        let total_out: u64 = sim.requests().iter().map(|r| r.output_tokens as u64).sum();
        assert_eq!(st.tokens_generated, total_out);
    }
}

#[test]
fn comparison_writes_tables_plots_and_histograms() {
    let cluster = SimCluster::from_path(scenario_dir().join("rack-4090.toml")).unwrap();
    let model = presets::model("Llama-3-8B").unwrap();
    let sc = rack_scenario(ChurnSpec::parse("exp:mtbf=20s,mttr=5s").unwrap(), 1);
    let sim = Simulator::new(&cluster, &model, &sc).unwrap();
    let names = strategy_list("even,petals").unwrap();
    let cmp = sim.compare(&names, &mut |_, _| {});
    let dir = std::env::temp_dir().join(format!("tokenflow-sim-out-{}", std::process::id()));
    let files = cmp.write_dir(&dir).unwrap();
    for f in [
        "compare.md",
        "compare.csv",
        "compare.json",
        "latency.svg",
        "throughput.svg",
        "even-ttft.hgrm",
        "petals-inter_token.hgrm",
        "petals-e2e.hgrm",
        "even-queue.hgrm",
    ] {
        assert!(files.contains(&dir.join(f)), "{f} missing");
    }
    let svg = std::fs::read_to_string(dir.join("throughput.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("node failure"));
    let csv = std::fs::read_to_string(dir.join("compare.csv")).unwrap();
    assert_eq!(csv.lines().count(), 3);
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn elastic_scaling_releases_nodes_at_low_demand_and_adds_them_back() {
    // A rack of 8 RTX 4090 with Llama-3-8B, one stage on every GPU, under a
    // demand that swings from 0.3 to 5.7 req/s: the elastic policy holds
    // fewer GPU-hours than the fixed plan, releases by draining (no restart
    // without churn), and every request is still served.
    let cluster = SimCluster::from_path(scenario_dir().join("rack-4090.toml")).unwrap();
    let model = presets::load_model("Llama-3-8B").unwrap();
    let scenario = |replan: ReplanPolicy| Scenario {
        workload: WorkloadSpec::parse(
            "diurnal:rate=3,amplitude=0.9,period=200s,prompt=uniform:128:896,output=uniform:32:224",
        )
        .unwrap(),
        churn: ChurnSpec::None,
        duration_s: 400.0,
        seed: 5,
        config: SimConfig {
            drain_s: Some(400.0),
            scheduler: SchedulerConfig {
                router: RouterChoice::InterleavedWrr,
                ..Default::default()
            },
            slo: Slo::parse("ttft=2s,itl=100ms").unwrap(),
            replan,
            ..Default::default()
        },
        options: PlanOptions::default(),
    };
    let fixed = scenario(ReplanPolicy::StageLoss);
    let elastic = scenario(ReplanPolicy::parse("elastic:20s").unwrap());
    let a = Simulator::new(&cluster, &model, &fixed)
        .unwrap()
        .run("even", &mut |_| {})
        .unwrap();
    let b = Simulator::new(&cluster, &model, &elastic)
        .unwrap()
        .run("even", &mut |_| {})
        .unwrap();
    let (fa, fb) = (&a.outcome.stats, &b.outcome.stats);
    assert_eq!(fa.scalings, 0);
    assert!(fb.scalings >= 2, "{fb:?}");
    assert!(
        fb.gpu_hours < 0.8 * fa.gpu_hours,
        "{} vs {}",
        fb.gpu_hours,
        fa.gpu_hours
    );
    // 8 GPUs held for the whole run, to within the run's end.
    assert!(
        (fa.gpu_hours - 8.0 * fa.end_s / 3600.0).abs() < 1e-6,
        "{fa:?}"
    );
    assert_eq!(fb.restarts, 0, "released nodes drain first");
    assert_eq!(fb.completed + fb.rejected, fb.requests);
    assert_eq!(fa.requests, fb.requests);
    for bad in ["elastic:0s", "elastic:0.5s", "elastic:inf"] {
        assert!(
            ReplanPolicy::parse(bad)
                .unwrap_err()
                .to_string()
                .contains("elastic"),
            "{bad}"
        );
    }
}

#[test]
fn elastic_growth_returns_to_the_plan_it_started_from() {
    // helix-24 with LLaMA-30B: availability places 5 stages with several
    // replicas each. Shrunk for a trickle of demand and then grown for more
    // than the whole cluster can serve, the plan must be the one it started
    // from, not every free node piled onto one stage (what growing by the
    // model's bottleneck node alone did: 18 replicas of stage 0 and one of
    // each other stage).
    let cluster = SimCluster::from_path(scenario_dir().join("helix-24.toml")).unwrap();
    let model = presets::load_model("LLaMA-30B").unwrap();
    let options = PlanOptions::default();
    let cm = CostModel::new(&model, &options);
    let base = plan_with("availability", &cluster.cluster, &model, &options).unwrap();
    let per_stage = |p: &Plan| -> Vec<(std::ops::Range<usize>, Vec<String>)> {
        p.stages
            .iter()
            .map(|st| {
                let mut ns: Vec<String> = st.replicas.iter().map(|r| r.node.clone()).collect();
                ns.sort();
                (st.layers(), ns)
            })
            .collect()
    };
    assert!(base.stages.iter().all(|st| st.replicas.len() >= 2));
    let all_up = |_: usize| true;
    let small = tokenflow_sim::elastic::rescale(
        &base,
        &base,
        &cluster.cluster,
        &cm,
        &options,
        0.05,
        &all_up,
    )
    .expect("a trickle of demand releases replicas");
    assert!(small.nodes.len() < base.nodes.len());
    let grown = tokenflow_sim::elastic::rescale(
        &small,
        &base,
        &cluster.cluster,
        &cm,
        &options,
        1e3,
        &all_up,
    )
    .expect("a flood of demand adds them back");
    // Every node back on its own stage, and as much as the base plan sustains.
    for ((r, ns), (br, bns)) in per_stage(&grown).iter().zip(per_stage(&base).iter()) {
        assert_eq!(r, br);
        assert!(ns.iter().all(|n| bns.contains(n)), "{ns:?} vs {bns:?}");
    }
    let mut flood = options.clone();
    flood.target.request_rate = 1e3;
    let rate = |p: &Plan| {
        tokenflow_planner::service_model::predict(p, &cluster.cluster, &cm, &flood).max_rate
    };
    assert!(
        rate(&grown) >= 0.99 * rate(&base),
        "{} vs {}",
        rate(&grown),
        rate(&base)
    );
    assert!(
        rate(&grown) > 1.5 * rate(&small),
        "{} vs {}",
        rate(&grown),
        rate(&small)
    );
    // A node that is down is not added back.
    let down = &base.stages[0].replicas.last().unwrap().node;
    let d = cluster.cluster.index_of(down).unwrap();
    let grown = tokenflow_sim::elastic::rescale(
        &small,
        &base,
        &cluster.cluster,
        &cm,
        &options,
        1e3,
        &|i| i != d,
    )
    .expect("grows");
    assert!(!grown.nodes.contains(down));
}

#[test]
fn epoch_failover_restarts_every_sequence_after_detection_and_formation() {
    let cluster = SimCluster::from_path(scenario_dir().join("rack-4090.toml")).unwrap();
    let model = presets::model("Llama-3-8B").unwrap();
    let trace = tmp(
        "epoch.csv",
        "node,start_s,end_s,state\nr4090-0,5,5.5,down\n",
    );
    let run = |failover: Failover, detection_s: f64| {
        let mut sc = rack_scenario(
            ChurnSpec::Trace {
                path: trace.clone(),
            },
            3,
        );
        sc.config.drain_s = None;
        sc.config.failover = failover;
        sc.config.detection_s = detection_s;
        let sim = Simulator::new(&cluster, &model, &sc).unwrap();
        let run = sim.run("even", &mut |_| {}).unwrap();
        let total_out: u64 = sim.requests().iter().map(|r| r.output_tokens as u64).sum();
        assert_eq!(run.outcome.stats.tokens_generated, total_out);
        assert_eq!(run.outcome.stats.completed, sim.requests().len() as u64);
        let gap = run
            .outcome
            .requests
            .iter()
            .map(|o| o.max_gap_s)
            .fold(0.0, f64::max);
        (run.outcome.stats.requests_restarted, gap)
    };
    let (in_place, _) = run(Failover::InPlace, 0.0);
    let (late, late_gap) = run(Failover::InPlace, 0.8);
    let (epoch, epoch_gap) = run(Failover::Epoch { form_s: 1.5 }, 0.8);
    assert!(in_place > 0 && in_place == late, "{in_place} {late}");
    // Every sequence running at the death restarts, not only the dead node's.
    assert!(epoch > in_place, "epoch {epoch} vs in place {in_place}");
    // The sequences on the dead node wait at least the detection delay, and
    // under epochs at least detection and formation.
    assert!(late_gap >= 0.8, "{late_gap}");
    assert!(epoch_gap >= 2.3, "{epoch_gap}");
    assert!(Failover::parse("epoch:form=250ms").unwrap() == Failover::Epoch { form_s: 0.25 });
    assert!(Failover::parse("in-place").unwrap() == Failover::InPlace);
    for bad in [
        "epoch:form=-1s",
        "epoch:x=1s",
        "sideways",
        "in-place:form=1s",
    ] {
        assert!(Failover::parse(bad).is_err(), "{bad}");
    }
}
