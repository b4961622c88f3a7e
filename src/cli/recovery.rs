//! The recovery cost the planner expects of a plan against what a run with
//! failures measured: failures, sequences restarted per failure, tokens
//! prefilled again, and the GPU-seconds that costs, per restart and per hour.
//!
//! The expectation is `planner::expected_recovery` on the run's own plan, with
//! the cost model calibrated on this host (as for `--compare-sim`), each node's
//! failure rate taken from the failures injected during the run, and the mean
//! number of sequences in flight measured by Little's law. What it tests is the
//! planner's cost of one failure: who is hit, and what re-prefilling them costs.

use std::collections::HashMap;
use std::path::Path;

use serde::Serialize;
use tokenflow_engine::Request;
use tokenflow_engine::dataflow::{FailureSchedule, Placement, RunOutcome};
use tokenflow_operators::LlamaModel;
use tokenflow_planner::cost::CostModel;
use tokenflow_planner::options::Workload;
use tokenflow_planner::{Cluster, Plan, PlanOptions, expected_recovery};

use super::fidelity::calibrated_profile;

/// One figure, expected and measured.
#[derive(Debug, Clone, Serialize)]
pub struct RecoveryRow {
    /// What is counted.
    pub what: String,
    /// The planner's expectation.
    pub expected: f64,
    /// What the run measured.
    pub measured: f64,
}

/// Sets the planner's expected recovery cost of `plan` next to what `outcome` measured.
#[allow(clippy::too_many_arguments)]
pub fn compare(
    model: &LlamaModel,
    cluster: &Cluster,
    plan: &Plan,
    placement: &Placement,
    failures: &FailureSchedule,
    requests: &[Request],
    outcome: &RunOutcome,
) -> anyhow::Result<Vec<RecoveryRow>> {
    let m = &outcome.metrics;
    let span_s = m.sequencer.span_us as f64 / 1e6;
    if span_s <= 0.0 || requests.is_empty() {
        anyhow::bail!("nothing ran: no recovery cost to compare");
    }
    let span_h = span_s / 3600.0;
    // Failures that happened while the run lasted, per node.
    let mut injected: HashMap<&str, f64> = HashMap::new();
    for o in &failures.outages {
        if o.down_at.as_secs_f64() < span_s {
            *injected.entry(o.node.as_str()).or_default() += 1.0;
        }
    }
    let n = requests.len() as f64;
    let workload = Workload {
        prompt_tokens: (requests.iter().map(|r| r.prompt.len()).sum::<usize>() as f64 / n).round()
            as u32,
        output_tokens: (requests.iter().map(|r| r.max_tokens).sum::<usize>() as f64 / n).round()
            as u32,
    };
    let profile = calibrated_profile(model, cluster, placement)?;
    let options = PlanOptions {
        workload,
        ..PlanOptions::default()
    };
    let cm = CostModel::new(&profile, &options);
    // Little's law: time in the system summed over requests, divided by the span.
    let in_system_s: f64 = outcome
        .finished
        .iter()
        .map(|f| f.timing.finished_us.saturating_sub(f.timing.submitted_us) as f64 / 1e6)
        .sum();
    let in_flight = in_system_s / span_s;
    let known = workload.prompt_tokens as f64 + workload.output_tokens as f64 / 2.0;
    let est = expected_recovery(plan, cluster, &cm, in_flight, known, &|node| {
        injected.get(node.id.as_str()).copied().unwrap_or(0.0) / span_h
    });
    let failures_seen: f64 = injected.values().sum();
    let restarts = m.sequencer.restarts as f64;
    let per = |x: f64, by: f64| if by > 0.0 { x / by } else { 0.0 };
    let replay_gpu_s = m.replay_gpu_s();
    Ok(vec![
        RecoveryRow {
            what: "node failures per hour".into(),
            expected: est.failures_per_hour,
            measured: failures_seen / span_h,
        },
        RecoveryRow {
            what: "sequences restarted per failure".into(),
            expected: est.restarts_per_failure,
            measured: per(restarts, failures_seen),
        },
        RecoveryRow {
            what: "tokens prefilled again per restart".into(),
            expected: est.known_tokens,
            measured: per(m.sequencer.recomputed_tokens as f64, restarts),
        },
        RecoveryRow {
            what: "GPU-seconds per restart".into(),
            expected: est.gpu_s_per_restart,
            measured: per(replay_gpu_s, restarts),
        },
        RecoveryRow {
            what: "GPU-seconds of re-prefill per hour".into(),
            expected: est.gpu_s_per_hour,
            measured: replay_gpu_s / span_h,
        },
    ])
}

/// Prints the rows as a Markdown table, with `router` (the run's) named against
/// the expectation's, and writes `recovery.{md,json}` into `dir`.
pub fn report(rows: &[RecoveryRow], router: &str, dir: &Path) -> anyhow::Result<()> {
    let mut md = String::from(
        "| recovery cost | expected (planner) | measured | measured / expected |\n|---|---:|---:|---:|\n",
    );
    for r in rows {
        let ratio = if r.expected > 0.0 {
            format!("{:.2}", r.measured / r.expected)
        } else {
            "-".into()
        };
        md.push_str(&format!(
            "| {} | {:.3} | {:.3} | {ratio} |\n",
            r.what, r.expected, r.measured
        ));
    }
    md.push_str(&format!(
        "\nThe expectation sends paths in proportion to the plan's routing weights, as the \
         `round-robin` router does; this run's router: `{router}`.\n"
    ));
    println!("\n## Recovery cost\n\n{md}");
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join("recovery.md"), &md)?;
    std::fs::write(
        dir.join("recovery.json"),
        serde_json::to_string_pretty(rows)?,
    )?;
    eprintln!("wrote {}", dir.join("recovery.md").display());
    Ok(())
}
