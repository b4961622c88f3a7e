//! Demand that varies, and the resources used: every strategy's fixed plan
//! against load-aware scaling (`--replan elastic`) on a diurnal load with
//! churn, with goodput, SLO attainment and the GPU-hours each holds.
//!
//! ```sh
//! cargo run --release --example elastic -p tokenflow-sim
//! ```
//!
//! Environment: `SCENARIO` (default `helix-24`), `MODEL` (`LLaMA-30B`), `LOAD`
//! (default `diurnal:rate=3,amplitude=0.7,period=600s`), `SLO`
//! (`ttft=5s,itl=400ms`), `DURATION` (arrival window, s, default 1200: two
//! cycles), `INTERVAL` (scaling interval, default `20s`), `SEED` (1). Churn is
//! the study's low rate (mean MTBF compressed to 60 minutes). The elastic rows
//! start from their strategy's plan for the mean rate and resize it by whole
//! replicas every interval from the rate measured over the last one.

use tokenflow_core::SchedulerConfig;
use tokenflow_planner::{presets, strategy};
use tokenflow_sim::{
    ChurnSpec, ReplanPolicy, RouterChoice, Scenario, SimCluster, SimConfig, Simulator, Slo,
    WorkloadSpec,
};

fn env(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_string())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../data/scenarios");
    let cluster = SimCluster::from_path(format!("{dir}/{}.toml", env("SCENARIO", "helix-24")))?;
    let model = presets::load_model(&env("MODEL", "LLaMA-30B"))?;
    let duration: f64 = env("DURATION", "1200").parse()?;
    let scenario = |replan: ReplanPolicy| -> Result<Scenario, Box<dyn std::error::Error>> {
        Ok(Scenario {
            workload: WorkloadSpec::parse(&format!(
                "{},prompt=uniform:128:896,output=uniform:32:224",
                env("LOAD", "diurnal:rate=3,amplitude=0.7,period=600s")
            ))?,
            churn: ChurnSpec::compressed(&cluster.cluster, 3600.0),
            duration_s: duration,
            seed: env("SEED", "1").parse()?,
            config: SimConfig {
                drain_s: Some(duration),
                scheduler: SchedulerConfig {
                    router: RouterChoice::InterleavedWrr,
                    ..Default::default()
                },
                slo: Slo::parse(&env("SLO", "ttft=5s,itl=400ms"))?,
                replan,
                ..Default::default()
            },
            options: Default::default(),
        })
    };
    let fixed = scenario(ReplanPolicy::StageLoss)?;
    let elastic = scenario(ReplanPolicy::parse(&format!(
        "elastic:{}",
        env("INTERVAL", "20s")
    ))?)?;
    let sim_fixed = Simulator::new(&cluster, &model, &fixed)?;
    let sim_elastic = Simulator::new(&cluster, &model, &elastic)?;
    println!(
        "{} on {}: {} requests, {} failures drawn, load {}\n",
        model.name,
        cluster.cluster.name,
        sim_fixed.requests().len(),
        sim_fixed.churn().iter().filter(|e| !e.up).count(),
        env("LOAD", "diurnal:rate=3,amplitude=0.7,period=600s")
    );
    println!(
        "| strategy | policy | goodput tok/s | within SLO | GPU-hours | SLO requests per GPU-hour | nodes at start | scalings | restarts |"
    );
    println!("|---|---|---:|---:|---:|---:|---:|---:|---:|");
    let mut rows = Vec::new();
    for name in strategy::names() {
        rows.push((name, "fixed", sim_fixed.run(name, &mut |_| {})));
    }
    for name in ["goodput", "availability", "swarm"] {
        rows.push((name, "elastic", sim_elastic.run(name, &mut |_| {})));
    }
    for (name, policy, run) in rows {
        match run {
            Ok(r) => {
                let st = &r.outcome.stats;
                let good = st.slo_attainment * st.requests as f64;
                println!(
                    "| {name} | {policy} | {:.1} | {:.1}% | {:.2} | {:.0} | {} | {} | {} |",
                    st.goodput_tok_s,
                    st.slo_attainment * 100.0,
                    st.gpu_hours,
                    good / st.gpu_hours.max(1e-9),
                    r.plan.nodes.len(),
                    st.scalings,
                    st.restarts
                );
            }
            Err(e) => println!("| {name} | {policy} | {e} | | | | | | |"),
        }
    }
    Ok(())
}
