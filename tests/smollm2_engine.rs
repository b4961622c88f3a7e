//! SmolLM2 through the timely dataflow engine: for splits into 1, 3 and 30
//! stages, replicas and spans, on 1 to 3 workers, with an emulated
//! heterogeneous cluster, the greedy tokens equal the independent reference (up
//! to its first near-tie) and the unsplit model's, exactly.

mod common;

use std::ops::Range;

use common::{reference_run, smollm2_path};
use tokenflow_engine::Request;
use tokenflow_engine::dataflow::{
    Arrivals, Communication, EngineOptions, PlacementOptions, RouterChoice, RunSpec,
    SchedulerConfig, run,
};
use tokenflow_planner::{Cluster, Plan};

/// A plan case: name, stages as (layers, node indices), workers, emulation.
type Case = (&'static str, Vec<(Range<usize>, Vec<usize>)>, usize, bool);

fn cluster() -> Cluster {
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/clusters/hetero-4.toml");
    Cluster::from_path(path).unwrap()
}

#[test]
fn engine_tokens_equal_the_reference_for_every_plan() {
    let prompts = reference_run().prompts;
    let requests: Vec<Request> = prompts
        .iter()
        .enumerate()
        .map(|(i, p)| Request::greedy(i as u64, p.prompt_ids.clone(), p.tokens.len()))
        .collect();
    let c = cluster();
    let thirty: Vec<(Range<usize>, Vec<usize>)> =
        (0..30).map(|l| (l..l + 1, vec![l % 4])).collect();
    let plans: Vec<Case> = vec![
        ("1 stage", vec![(0..30, vec![0])], 1, false),
        (
            "3 stages, replicas",
            vec![(0..7, vec![0, 1]), (7..23, vec![2]), (23..30, vec![3, 1])],
            2,
            false,
        ),
        ("30 stages", thirty, 3, false),
        (
            "4 stages, emulated links and speeds",
            vec![
                (0..10, vec![0]),
                (10..19, vec![1]),
                (19..25, vec![3]),
                (25..30, vec![2]),
            ],
            2,
            true,
        ),
    ];
    let mut unsplit: Option<Vec<Vec<u32>>> = None;
    for (name, stages, workers, emulate) in plans {
        let plan = Plan::from_stages("test", &c, 30, "SmolLM2", &stages);
        let mut options = EngineOptions {
            scheduler: SchedulerConfig {
                router: RouterChoice::InterleavedWrr,
                ..SchedulerConfig::default()
            },
            // The numpy reference is f32.
            numerics: tokenflow_operators::quant::Numerics::Exact,
            ..EngineOptions::default()
        };
        if emulate {
            options.placement = PlacementOptions::emulated();
        }
        let spec = RunSpec {
            model_path: smollm2_path(),
            plan,
            cluster: c.clone(),
            options,
            communication: Communication::Threads(workers),
            requests: requests.clone(),
            arrivals: Arrivals::Immediate,
        };
        let outcome = run(spec, None).unwrap().unwrap();
        assert!(outcome.refused.is_empty(), "{name}: {:?}", outcome.refused);
        let mut got = vec![Vec::new(); prompts.len()];
        for f in outcome.finished {
            got[f.seq as usize] = f.log.generated;
        }
        for (p, tokens) in prompts.iter().zip(&got) {
            let exact = p.first_small_margin_step.unwrap_or(p.tokens.len());
            assert_eq!(
                &tokens[..exact],
                &p.tokens[..exact],
                "{name}: {} differs from the reference",
                p.name
            );
        }
        match &unsplit {
            None => unsplit = Some(got),
            Some(want) => assert_eq!(&got, want, "{name}: tokens differ from the unsplit model"),
        }
    }
}
