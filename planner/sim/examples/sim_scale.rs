//! Scale benchmark of the simulator: a synthetic community cluster of 10,000
//! nodes serving 1,000,000 requests with churn, on one core.
//!
//! ```sh
//! cargo run --release --example sim_scale -p tokenflow-planner
//! cargo run --release --example sim_scale -p tokenflow-planner -- NODES REQUESTS
//! ```
//!
//! Environment: `MODEL` (default `Llama-3-8B`), `STRATEGY` (default `even`),
//! `ROUTER` (default `interleaved-wrr`), `LOAD` (offered decode tokens as a
//! fraction of the plan's max-flow bound, default 0.1), `CHURN` (default
//! `exp:scale=100`: each node's MTBF and MTTR from the generator, 100 times
//! faster), `SEED` (default 1). Prints the time of each phase, the events
//! processed and events per second.

use std::time::Instant;

use tokenflow_core::SchedulerConfig;
use tokenflow_planner::flow::max_flow;
use tokenflow_planner::{PlanOptions, plan_with, presets};
use tokenflow_sim::synthetic::community_spec;
use tokenflow_sim::{
    ChurnSpec, RouterChoice, Scenario, SimCluster, SimConfig, Simulator, WorkloadSpec,
};

fn env(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_string())
}

fn main() {
    if let Err(e) = run() {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let nodes: usize = args.first().map_or(Ok(10_000), |s| s.parse())?;
    let requests: usize = args.get(1).map_or(Ok(1_000_000), |s| s.parse())?;
    let model = presets::load_model(&env("MODEL", "Llama-3-8B"))?;
    let strategy = env("STRATEGY", "even");
    let router = RouterChoice::parse(&env("ROUTER", "interleaved-wrr"))?;
    let load: f64 = env("LOAD", "0.1").parse()?;
    let seed: u64 = env("SEED", "1").parse()?;
    let churn = ChurnSpec::parse(&env("CHURN", "exp:scale=100"))?;

    let t = Instant::now();
    let cluster = SimCluster::from_spec(community_spec(nodes, seed), None)?;
    println!(
        "cluster: {} nodes in {:.1} s",
        cluster.cluster.len(),
        t.elapsed().as_secs_f64()
    );
    let options = PlanOptions::default();
    let t = Instant::now();
    let plan = plan_with(&strategy, &cluster.cluster, &model, &options)?;
    let cm = tokenflow_planner::cost::CostModel::new(&model, &options);
    let bound = max_flow(&plan, &cluster.cluster, &cm).throughput;
    println!(
        "plan `{strategy}`: {} nodes, {} stages, bound {bound:.0} tok/s, in {:.1} s",
        plan.nodes.len(),
        plan.stages.len(),
        t.elapsed().as_secs_f64()
    );
    let mean_output = 128.0;
    let rate = load * bound / mean_output;
    let duration = requests as f64 / rate;
    let scenario = Scenario {
        workload: WorkloadSpec::parse(&format!(
            "poisson:rate={rate},prompt=uniform:256:768,output=uniform:64:192,requests={requests}"
        ))?,
        churn,
        duration_s: duration * 1.05,
        seed,
        config: SimConfig {
            scheduler: SchedulerConfig {
                router,
                ..SchedulerConfig::default()
            },
            drain_s: Some(duration),
            ..SimConfig::default()
        },
        options,
    };
    let t = Instant::now();
    let sim = Simulator::new(&cluster, &model, &scenario)?;
    println!(
        "workload: {} requests at {rate:.0}/s over {:.0} s, {} churn events, drawn in {:.1} s",
        sim.requests().len(),
        duration,
        sim.churn().len(),
        t.elapsed().as_secs_f64()
    );
    let t = Instant::now();
    let mut last = Instant::now();
    let run = sim.run_plan(&strategy, plan, Some(bound), &mut |p| {
        if last.elapsed().as_secs_f64() > 10.0 {
            last = Instant::now();
            eprintln!(
                "  t = {:.0} s simulated, {}/{} requests, {} events",
                p.time_s, p.done, p.total, p.events
            );
        }
    })?;
    let wall = t.elapsed().as_secs_f64();
    let s = &run.outcome.stats;
    println!(
        "simulated {:.0} s in {wall:.1} s wall: {} events, {:.2} M events/s, {} router calls",
        s.end_s,
        s.events,
        s.events as f64 / wall / 1e6,
        s.router_calls
    );
    println!(
        "completed {} of {} (unfinished {}), {:.0} tok/s, {} failures, {} returns, {} restarts, {} tokens recomputed, {} replans",
        s.completed,
        s.requests,
        s.unfinished,
        s.throughput_tok_s,
        s.failures,
        s.returns,
        s.restarts,
        s.tokens_recomputed,
        s.replans
    );
    println!("{}", run.outcome.latency.to_markdown_table());
    Ok(())
}
