//! Planning at scale: every strategy on synthetic community clusters of
//! 1,000 and 10,000 desktop GPUs (the recipe of `gen_community.py`, seeded),
//! with planning time and peak memory, each strategy in its own process so
//! that its peak is its own and a strategy past the time limit is stopped and
//! marked, not skipped.
//!
//! ```sh
//! cargo run --release --example plan_scale -p tokenflow-sim                 # 1,000 and 10,000 nodes
//! cargo run --release --example plan_scale -p tokenflow-sim -- 1000 2000    # other sizes
//! ```
//!
//! Environment: `MODEL` (default `Llama-2-70B`), `SEED` (default 1),
//! `LIMIT_S` (per strategy and size, default 600), `STRATEGIES`
//! (comma-separated, default all). Prints a Markdown table: nodes, strategy,
//! planning seconds, peak resident memory (the child's `VmHWM`), stages,
//! nodes used, the max-flow bound of the plan.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tokenflow_planner::flow::max_flow;
use tokenflow_planner::{PlanOptions, plan_with, presets, strategy};
use tokenflow_sim::synthetic::community_cluster;

fn env(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_string())
}

fn peak_kib() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    s.lines()
        .find(|l| l.starts_with("VmHWM:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Child: plan once and print `secs peak_kib stages nodes bound`.
fn one(nodes: usize, name: &str) -> Result<(), Box<dyn std::error::Error>> {
    let seed: u64 = env("SEED", "1").parse()?;
    let model = presets::load_model(&env("MODEL", "Llama-2-70B"))?;
    let cluster = community_cluster(nodes, seed)?;
    let options = PlanOptions::default();
    let cost = tokenflow_planner::cost::CostModel::new(&model, &options);
    let t0 = Instant::now();
    let plan = plan_with(name, &cluster, &model, &options)?;
    let secs = t0.elapsed().as_secs_f64();
    let bound = max_flow(&plan, &cluster, &cost).throughput;
    println!(
        "{secs:.3} {} {} {} {bound:.1}",
        peak_kib().unwrap_or(0),
        plan.stages.len(),
        plan.nodes.len()
    );
    Ok(())
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().is_some_and(|a| a == "--one") {
        let run = || -> Result<(), Box<dyn std::error::Error>> { one(args[1].parse()?, &args[2]) };
        if let Err(e) = run() {
            println!("error {e}");
        }
        return;
    }
    let sizes: Vec<usize> = if args.is_empty() {
        vec![1000, 10_000]
    } else {
        args.iter().filter_map(|a| a.parse().ok()).collect()
    };
    let limit = Duration::from_secs_f64(env("LIMIT_S", "600").parse().unwrap_or(600.0));
    let names: Vec<String> = match std::env::var("STRATEGIES") {
        Ok(s) => s.split(',').map(|x| x.trim().to_string()).collect(),
        Err(_) => strategy::names().into_iter().map(String::from).collect(),
    };
    let exe = std::env::current_exe().expect("own path");
    println!("| nodes | strategy | planning s | peak MB | stages | nodes used | bound tok/s |");
    println!("|---:|---|---:|---:|---:|---:|---:|");
    for &n in &sizes {
        for name in &names {
            let mut child = match Command::new(&exe)
                .args(["--one", &n.to_string(), name])
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
            {
                Ok(c) => c,
                Err(e) => {
                    println!("| {n} | {name} | could not start: {e} | | | | |");
                    continue;
                }
            };
            let t0 = Instant::now();
            let status = loop {
                match child.try_wait() {
                    Ok(Some(s)) => break Some(s),
                    Ok(None) if t0.elapsed() > limit => {
                        let _ = child.kill();
                        let _ = child.wait();
                        break None;
                    }
                    Ok(None) => std::thread::sleep(Duration::from_millis(50)),
                    Err(_) => break None,
                }
            };
            let mut out = String::new();
            if let Some(mut o) = child.stdout.take() {
                let _ = o.read_to_string(&mut out);
            }
            let f: Vec<&str> = out.split_whitespace().collect();
            match status {
                None => println!(
                    "| {n} | {name} | over {:.0} s (stopped) | | | | |",
                    limit.as_secs_f64()
                ),
                Some(_) if f.first() == Some(&"error") => {
                    println!("| {n} | {name} | {} | | | | |", out.trim())
                }
                Some(_) if f.len() >= 5 => println!(
                    "| {n} | {name} | {} | {:.0} | {} | {} | {} |",
                    f[0],
                    f[1].parse::<f64>().unwrap_or(0.0) / 1024.0,
                    f[2],
                    f[3],
                    f[4]
                ),
                Some(s) => println!("| {n} | {name} | exited ({s}) | | | | |"),
            }
        }
    }
}
