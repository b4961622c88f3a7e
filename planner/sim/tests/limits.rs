//! Bounded resources: sizes that cannot fit in memory are refused at once,
//! with the memory they would need and the field that asks for it, before
//! anything is allocated; sizes that fit still work.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use tokenflow_planner::cluster::ClusterSpec;
use tokenflow_planner::gpu_catalog::GpuCatalog;
use tokenflow_planner::{Cluster, PlanError, PlanOptions, presets};
use tokenflow_sim::{
    ChurnSpec, Scenario, SimCluster, SimConfig, SimError, Simulator, WorkloadSpec,
};

/// Refusals must be immediate: well under a second even on a busy 2-core machine.
const FAST: Duration = Duration::from_secs(2);

fn scenario_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../data/scenarios")
}

fn tmp(name: &str, text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tokenflow-limits-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

const GROUPS: &str = r#"
name = "groups"
[link_defaults]
intra_site = { latency_ms = 0.1, bandwidth_gbps = 10.0 }
inter_site = { latency_ms = 1.0, bandwidth_gbps = 1.0 }
[[nodes]]
id = "a"
gpu = "RTX4090"
count = 4
site = "home"
region = "eu"
[[nodes]]
id = "b"
gpu = "RTX3090"
count = COUNT
site = "rack"
region = "eu"
"#;

#[test]
fn a_cluster_of_four_billion_nodes_is_refused_at_once() {
    // The file that made `tokenflow plan` grow past 20 GB, as TOML and as JSON.
    let text = GROUPS.replace("COUNT", "4000000000");
    let spec: ClusterSpec = toml::from_str(&text).unwrap();
    let json = tmp("huge.json", &serde_json::to_string(&spec).unwrap());
    let toml_file = tmp("huge.toml", &text);
    for path in [&toml_file, &json] {
        let started = Instant::now();
        let err = Cluster::from_path(path).unwrap_err();
        assert!(started.elapsed() < FAST, "{:?}", started.elapsed());
        match &err {
            PlanError::TooLarge {
                field,
                needed_bytes,
                available_bytes,
                ..
            } => {
                assert_eq!(field, "nodes[1].count");
                // At least the size of a resolved node per node.
                let node = std::mem::size_of::<tokenflow_planner::cluster::Node>() as u64;
                assert!(*needed_bytes >= 4_000_000_004 * node, "{needed_bytes}");
                assert!(needed_bytes > available_bytes);
            }
            other => panic!("{other}"),
        }
        let msg = err.to_string();
        assert!(
            msg.starts_with("nodes[1].count: 4000000004 nodes") && msg.contains("TiB of memory"),
            "{msg}"
        );
    }
    // The simulator's reader refuses it the same way.
    assert!(matches!(
        SimCluster::from_path(&toml_file),
        Err(SimError::Plan(PlanError::TooLarge { .. }))
    ));
}

#[test]
fn the_node_budget_is_a_real_bound_not_a_fixed_cap() {
    let spec: ClusterSpec = toml::from_str(&GROUPS.replace("COUNT", "20000")).unwrap();
    let catalog = GpuCatalog::builtin();
    // 20,004 nodes need megabytes: refused within 1 MiB, resolved within 64 MiB.
    let started = Instant::now();
    let err = spec.resolve_within(None, &catalog, 1 << 20).unwrap_err();
    assert!(started.elapsed() < FAST);
    assert!(
        matches!(&err, PlanError::TooLarge { field, needed_bytes, .. }
            if field == "nodes[1].count" && *needed_bytes > 1 << 20),
        "{err}"
    );
    let c = spec.resolve_within(None, &catalog, 64 << 20).unwrap();
    assert_eq!(c.len(), 20_004);
    // Links between the groups come from the rules, without a matrix.
    let (a, b) = (c.index_of("a-0").unwrap(), c.index_of("b-19999").unwrap());
    assert!((c.link(a, b).latency_s - 0.001).abs() < 1e-12);
    assert!((c.link(b, b - 1).latency_s - 0.0001).abs() < 1e-12);
}

fn helix() -> SimCluster {
    SimCluster::from_path(scenario_dir().join("helix-24.toml")).unwrap()
}

fn scenario(load: &str, churn: &str, duration_s: f64, drain_s: f64) -> Scenario {
    Scenario {
        workload: WorkloadSpec::parse(load).unwrap(),
        churn: ChurnSpec::parse(churn).unwrap(),
        duration_s,
        seed: 1,
        config: SimConfig {
            drain_s: Some(drain_s),
            ..SimConfig::default()
        },
        options: PlanOptions::default(),
    }
}

#[test]
fn a_workload_of_3e14_requests_is_refused_before_it_is_drawn() {
    let cluster = helix();
    let model = presets::model("LLaMA-30B").unwrap();
    // poisson:rate=1e12 for 300 s: 3e14 requests, about 27 PiB.
    let sc = scenario("poisson:rate=1e12", "none", 300.0, 300.0);
    let started = Instant::now();
    let err = Simulator::new(&cluster, &model, &sc)
        .err()
        .expect("refused");
    assert!(started.elapsed() < FAST, "{:?}", started.elapsed());
    let SimError::TooLarge {
        field,
        needed_bytes,
        available_bytes,
        ..
    } = &err
    else {
        panic!("{err}")
    };
    assert_eq!(field, "load.rate x duration");
    assert!(*needed_bytes as f64 >= 3e14 * 16.0 && needed_bytes > available_bytes);
    let msg = err.to_string();
    assert!(
        msg.contains("3.00e14 requests") && msg.contains("PiB"),
        "{msg}"
    );

    // Ten years at 20 requests/s (the longest duration accepted): 6.3e9 requests.
    let sc = scenario("poisson:rate=20", "none", 3.15e8, 0.0);
    let started = Instant::now();
    assert!(matches!(
        Simulator::new(&cluster, &model, &sc),
        Err(SimError::TooLarge { .. })
    ));
    assert!(started.elapsed() < FAST);

    // The same rate with requests=N is small, and runs.
    let sc = scenario("poisson:rate=1e12,requests=50", "none", 300.0, 300.0);
    let sim = Simulator::new(&cluster, &model, &sc).unwrap();
    assert_eq!(sim.requests().len(), 50);
}

#[test]
fn the_request_budget_is_a_real_bound() {
    let w = WorkloadSpec::parse("gamma:rate=1000,cv=3").unwrap();
    // 300,000 requests (about 28 MB) do not fit in 1 MiB ...
    let err = w.generate_within(300.0, 1, 1 << 20).unwrap_err();
    assert!(matches!(err, SimError::TooLarge { .. }), "{err}");
    // ... but fit in 256 MiB, and the draws are those of the unbounded call.
    let within = w.generate_within(300.0, 1, 256 << 20).unwrap();
    assert_eq!(within, w.generate(300.0, 1).unwrap());
    assert!(
        (250_000..350_000).contains(&within.len()),
        "{}",
        within.len()
    );
    // With a cap, the cap is the size.
    let capped = WorkloadSpec::parse("poisson:rate=1000,requests=10").unwrap();
    assert_eq!(capped.generate_within(300.0, 1, 1 << 20).unwrap().len(), 10);
    let err = WorkloadSpec::parse("poisson:rate=1e9,requests=100000000")
        .unwrap()
        .generate_within(300.0, 1, 1 << 20)
        .unwrap_err();
    assert!(
        matches!(&err, SimError::TooLarge { field, .. } if field == "load.requests"),
        "{err}"
    );
    // A trace is measured before it is parsed.
    let trace = tmp("arrivals.csv", &"0.5,10,10\n".repeat(20_000));
    let w = WorkloadSpec::parse(&format!("trace:{}", trace.display())).unwrap();
    assert!(matches!(
        w.generate_within(1e6, 1, 100_000),
        Err(SimError::TooLarge { .. })
    ));
    assert_eq!(w.generate_within(1e6, 1, 64 << 20).unwrap().len(), 20_000);
}

#[test]
fn churn_with_millisecond_up_and_down_times_is_bounded() {
    let cluster = helix();
    let model = presets::model("LLaMA-30B").unwrap();
    // Every node up for 1 ms and down for 1 ms on average, for 10 days:
    // 24 nodes x 2 events per 2 ms x 864,000 s = 2e10 events, about 600 GiB.
    let sc = scenario(
        "poisson:rate=1,requests=10",
        "exp:mtbf=1ms,mttr=1ms",
        864_000.0,
        0.0,
    );
    let started = Instant::now();
    let err = Simulator::new(&cluster, &model, &sc)
        .err()
        .expect("refused");
    assert!(started.elapsed() < FAST, "{:?}", started.elapsed());
    let msg = err.to_string();
    assert!(
        matches!(&err, SimError::TooLarge { field, .. } if field == "churn")
            && msg.contains("2.07e10 failures and returns"),
        "{msg}"
    );
    // Weibull times are bounded by their means too.
    let w = ChurnSpec::parse("weibull:shape=0.7,scale=1ms,down-scale=1ms").unwrap();
    let started = Instant::now();
    assert!(matches!(
        w.timeline(&cluster.cluster, 864_000.0, 1),
        Err(SimError::TooLarge { .. })
    ));
    assert!(started.elapsed() < FAST);

    // Within a small budget: 1 s up and down over an hour is about 86,400
    // events (2.8 MB), refused within 1 MiB, drawn within 64 MiB.
    let e = ChurnSpec::parse("exp:mtbf=1s,mttr=1s").unwrap();
    assert!(matches!(
        e.timeline_within(&cluster.cluster, 3600.0, 1, 1 << 20),
        Err(SimError::TooLarge { .. })
    ));
    let events = e
        .timeline_within(&cluster.cluster, 3600.0, 1, 64 << 20)
        .unwrap();
    assert!((80_000..93_000).contains(&events.len()), "{}", events.len());
    assert_eq!(events, e.timeline(&cluster.cluster, 3600.0, 1).unwrap());
    let expected = e.expected_events(&cluster.cluster, 3600.0).unwrap();
    assert!((expected - 86_400.0).abs() < 1.0, "{expected}");
}

#[test]
fn diurnal_arrivals_follow_their_curve_and_bad_figures_are_named() {
    // rate(t) = 20 (1 + 0.8 sin(2π t / 400 s)): the first quarter-cycle
    // around the peak (50..150 s) gets about 1.8 / 0.2 = 9 times the
    // arrivals of the one around the trough (250..350 s).
    let w = WorkloadSpec::parse("diurnal:rate=20,amplitude=0.8,period=400s").unwrap();
    let reqs = w.generate(400.0, 3).unwrap();
    let count = |a: f64, b: f64| {
        reqs.iter()
            .filter(|r| r.arrival_s >= a && r.arrival_s < b)
            .count() as f64
    };
    let (peak, trough) = (count(50.0, 150.0), count(250.0, 350.0));
    assert!(peak > 4.0 * trough, "peak {peak} trough {trough}");
    // The mean rate is kept: about 8,000 over one whole period.
    let n = reqs.len() as f64;
    assert!((n - 8000.0).abs() < 400.0, "{n}");
    assert!(reqs.windows(2).all(|p| p[0].arrival_s <= p[1].arrival_s));
    for (spec, field) in [
        ("diurnal:rate=2,amplitude=1.5", "amplitude"),
        ("diurnal:rate=2,period=0s", "period"),
        ("diurnal:rate=2,amplitude=NaN", "amplitude"),
    ] {
        let e = WorkloadSpec::parse(spec).unwrap_err().to_string();
        assert!(e.contains(field), "{spec}: {e}");
    }
}
