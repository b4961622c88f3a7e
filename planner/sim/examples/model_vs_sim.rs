//! The planner's analytic service model against the simulator, strategy by
//! strategy, on one scenario: goodput, SLO share, TTFT and inter-token latency
//! as each predicts them, and the goodput strategy's candidates.
//!
//! ```sh
//! cargo run --release --example model_vs_sim -p tokenflow-sim -- \
//!     helix-24 LLaMA-30B poisson:rate=4.5 ttft=5s,itl=400ms [none|low|high] [strategies]
//! ```
//!
//! Scenarios are the files of `planner/data/scenarios/`; the churn levels are
//! the study's (mean MTBF compressed to 60 or 10 minutes).

use tokenflow_core::SchedulerConfig;
use tokenflow_planner::{presets, strategy};
use tokenflow_sim::{
    ChurnSpec, RouterChoice, Scenario, SimCluster, SimConfig, Simulator, Slo, WorkloadSpec,
};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let a: Vec<String> = std::env::args().collect();
    if a.len() < 5 {
        eprintln!("usage: model_vs_sim SCENARIO MODEL LOAD SLO [none|low|high] [STRATEGIES]");
        std::process::exit(2);
    }
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../data/scenarios");
    let cluster = SimCluster::from_path(format!("{dir}/{}.toml", a[1]))?;
    let model = presets::load_model(&a[2])?;
    let churn = match a.get(5).map(String::as_str).unwrap_or("none") {
        "none" => ChurnSpec::None,
        "high" => ChurnSpec::compressed(&cluster.cluster, 600.0),
        _ => ChurnSpec::compressed(&cluster.cluster, 3600.0),
    };
    let scenario = Scenario {
        workload: WorkloadSpec::parse(&format!(
            "{},prompt=uniform:128:896,output=uniform:32:224",
            a[3]
        ))?,
        churn,
        duration_s: 300.0,
        seed: 1,
        config: SimConfig {
            drain_s: Some(300.0),
            scheduler: SchedulerConfig {
                router: RouterChoice::InterleavedWrr,
                ..Default::default()
            },
            slo: Slo::parse(&a[4])?,
            ..Default::default()
        },
        options: Default::default(),
    };
    let sim = Simulator::new(&cluster, &model, &scenario)?;
    let names: Vec<String> = match a.get(6) {
        Some(list) => list.split(',').map(String::from).collect(),
        None => strategy::names().into_iter().map(String::from).collect(),
    };
    let cmp = sim.compare(&names, &mut |_, _| {});
    println!("| strategy | | goodput tok/s | SLO share | TTFT s | ITL s | notes |");
    println!("|---|---|---:|---:|---:|---:|---|");
    for r in &cmp.rows {
        let mean = |m: &str| {
            r.latency_ms
                .iter()
                .find(|x| x.0 == m)
                .map_or(f64::NAN, |x| x.1.mean_ms / 1e3)
        };
        println!(
            "| {} | sim | {:.1} | {:.2} | {:.3} | {:.3} | {} restarts, {} re-plans |",
            r.strategy,
            r.stats.goodput_tok_s,
            r.stats.slo_attainment,
            mean("ttft"),
            mean("inter_token"),
            r.stats.restarts,
            r.stats.replans
        );
        if let Some(p) = &r.predicted {
            println!(
                "| | model | {:.1} | {:.2} | {:.3} | {:.3} | sustainable {:.3} req/s, bottleneck {}, {:.1}% lost to failures |",
                p.goodput_tok_s,
                p.slo_share,
                p.ttft_s,
                p.itl_s,
                p.max_rate,
                p.bottleneck,
                p.failure_loss * 100.0
            );
        }
    }
    if names.iter().any(|n| n == "goodput") {
        let run = sim.run("goodput", &mut |_| {})?;
        for note in &run.plan.notes {
            println!("goodput: {note}");
        }
        println!("{}", run.plan.to_table());
    }
    Ok(())
}
