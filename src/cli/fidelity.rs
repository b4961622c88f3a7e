//! The simulator against the real engine: the same cluster file, plan, model
//! profile and requests (arrival times and lengths) go through
//! `planner::sim::simulate_plan`, and its TTFT and inter-token percentiles are
//! set next to what the engine measured in the same command.
//!
//! The simulator's cost model is calibrated from stage times measured on this
//! host just before, stretched per GPU kind by the engine's own speed factor,
//! so both sides model the same emulated devices.

use anyhow::Context;
use serde::Serialize;
use std::path::Path;
use tokenflow_engine::Request;
use tokenflow_engine::dataflow::{EngineOptions, Placement, RunOutcome};
use tokenflow_operators::LlamaModel;
use tokenflow_operators::device::{default_device, device_name};
use tokenflow_operators::profile::{StageMeasurement, measure_blocks, static_profile};
use tokenflow_planner::latency::LatencyReport;
use tokenflow_planner::{Cluster, ModelProfile, Plan, PlanOptions};
use tokenflow_sim::{SimConfig, SimRequest, simulate_plan};

/// One row of the comparison.
#[derive(Debug, Clone, Serialize)]
pub struct FidelityRow {
    /// Metric and percentile, e.g. `ttft p50`.
    pub what: String,
    /// Measured by the engine, ms.
    pub engine_ms: f64,
    /// Predicted by the simulator, ms.
    pub simulated_ms: f64,
    /// (simulated − engine) / engine, percent.
    pub error_pct: f64,
}

/// The model's profile with stage times measured on this host, stretched per
/// GPU kind by the engine's speed factor, so the planner's cost model times the
/// same emulated devices as the engine.
pub fn calibrated_profile(
    model: &LlamaModel,
    cluster: &Cluster,
    placement: &Placement,
) -> anyhow::Result<ModelProfile> {
    eprintln!("measuring stage times on this host to calibrate the cost model");
    let mut profile = static_profile(model.name(), &model.config);
    let host = measure_blocks(
        model,
        device_name(),
        &default_device(),
        &StageMeasurement {
            layers: 5.min(model.config.n_layers),
            prompt: 64,
            context: 64,
            batches: vec![1, 4, 16],
            repeats: 3,
        },
    )?;
    // Each GPU kind runs at this host's speed divided by the engine's speed factor.
    for node in &placement.nodes {
        let Some(kind) = cluster.node(&node.id).map(|n| n.gpu.name.clone()) else {
            continue;
        };
        if profile.measured.iter().any(|m| m.device == kind) {
            continue;
        }
        for m in &host {
            let mut m = m.clone();
            m.device = kind.clone();
            m.seconds *= node.speed_factor;
            profile.measured.push(m);
        }
    }
    Ok(profile)
}

/// Simulates what the engine just ran and compares percentiles.
#[allow(clippy::too_many_arguments)]
pub fn compare(
    model: &LlamaModel,
    cluster: &Cluster,
    plan: &Plan,
    options: &EngineOptions,
    placement: &Placement,
    requests: &[Request],
    offsets_us: &[u64],
    outcome: &RunOutcome,
) -> anyhow::Result<Vec<FidelityRow>> {
    let profile = calibrated_profile(model, cluster, placement)?;
    // The engine's own scheduling settings: the same core policies run in both.
    let config = SimConfig {
        scheduler: options.scheduler.clone(),
        ..SimConfig::default()
    };
    let sim_requests: Vec<SimRequest> = requests
        .iter()
        .zip(offsets_us)
        .map(|(r, &t)| SimRequest {
            arrival_s: t as f64 / 1e6,
            prompt_tokens: r.prompt.len() as u32,
            output_tokens: r.max_tokens as u32,
        })
        .collect();
    let sim = simulate_plan(
        cluster,
        &profile,
        &PlanOptions::default(),
        plan,
        &config,
        &sim_requests,
    )
    .context("simulating the run")?;
    let engine = outcome.metrics.latency_report();
    Ok(rows(&engine, &sim.latency))
}

fn rows(engine: &LatencyReport, sim: &LatencyReport) -> Vec<FidelityRow> {
    let mut out = Vec::new();
    for metric in ["ttft", "inter_token", "e2e"] {
        let (Some(e), Some(s)) = (engine.get(metric), sim.get(metric)) else {
            continue;
        };
        for (name, q) in [("p50", 0.5), ("p99", 0.99)] {
            let em = e.value_at_quantile_us(q) as f64 / 1e3;
            let sm = s.value_at_quantile_us(q) as f64 / 1e3;
            out.push(FidelityRow {
                what: format!("{metric} {name}"),
                engine_ms: em,
                simulated_ms: sm,
                error_pct: if em > 0.0 {
                    100.0 * (sm - em) / em
                } else {
                    0.0
                },
            });
        }
    }
    out
}

/// Prints the comparison as a Markdown table and writes `fidelity.{md,json}` into `dir`.
pub fn report(rows: &[FidelityRow], dir: &Path) -> anyhow::Result<()> {
    let mut md =
        String::from("| latency | engine ms | simulator ms | error |\n|---|---:|---:|---:|\n");
    for r in rows {
        md.push_str(&format!(
            "| {} | {:.1} | {:.1} | {:+.1}% |\n",
            r.what, r.engine_ms, r.simulated_ms, r.error_pct
        ));
    }
    println!("\n## Simulator against the engine\n\n{md}");
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join("fidelity.md"), &md)?;
    std::fs::write(
        dir.join("fidelity.json"),
        serde_json::to_string_pretty(rows)?,
    )?;
    eprintln!("wrote {}", dir.join("fidelity.md").display());
    Ok(())
}
