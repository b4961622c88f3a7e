//! Running every strategy on the same inputs and tabulating the evaluations
//! (Markdown, CSV, JSON, SVG plot).

use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::cluster::Cluster;
use crate::evaluate::{Evaluation, evaluate};
use crate::options::PlanOptions;
use crate::plan::Plan;
use crate::profile::ModelProfile;
use crate::strategy::{self, Context};

/// One strategy's outcome.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ComparisonRow {
    /// Strategy name.
    pub strategy: String,
    /// Planning wall time, milliseconds.
    pub planning_ms: f64,
    /// The plan's figures, when it planned.
    pub evaluation: Option<Evaluation>,
    /// The plan, when it planned.
    pub plan: Option<Plan>,
    /// The error, when it did not.
    pub error: Option<String>,
}

/// Every strategy on one cluster and model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Comparison {
    /// Cluster name.
    pub cluster: String,
    /// Model name.
    pub model: String,
    /// LP-relaxation upper bound on throughput (tokens/s) for any stage placement.
    pub lp_bound_tok_s: Option<f64>,
    /// One row per strategy.
    pub rows: Vec<ComparisonRow>,
}

/// Runs every registered strategy.
pub fn compare_all(cluster: &Cluster, model: &ModelProfile, options: &PlanOptions) -> Comparison {
    compare(cluster, model, options, &strategy::names())
}

/// Runs the named strategies (unknown names become error rows).
pub fn compare(
    cluster: &Cluster,
    model: &ModelProfile,
    options: &PlanOptions,
    names: &[&str],
) -> Comparison {
    let ctx = Context::new(cluster, model, options);
    let mut rows = Vec::new();
    for name in names {
        let t0 = Instant::now();
        let result = strategy::by_name(name).and_then(|s| {
            crate::presets::check_model(model)?;
            options.validate()?;
            s.plan(&ctx)
        });
        let planning_ms = t0.elapsed().as_secs_f64() * 1000.0;
        rows.push(match result {
            Ok(plan) => ComparisonRow {
                strategy: name.to_string(),
                planning_ms,
                evaluation: Some(evaluate(&plan, cluster, model, options)),
                plan: Some(plan),
                error: None,
            },
            Err(e) => ComparisonRow {
                strategy: name.to_string(),
                planning_ms,
                evaluation: None,
                plan: None,
                error: Some(e.to_string()),
            },
        });
    }
    Comparison {
        cluster: cluster.name.clone(),
        model: model.name.clone(),
        lp_bound_tok_s: strategy::max_flow::lp_upper_bound(&ctx).ok(),
        rows,
    }
}

const HEADER: [&str; 13] = [
    "strategy",
    "nodes",
    "stages",
    "throughput_tok_s",
    "of_lp_bound",
    "ttft_s",
    "itl_ms",
    "availability",
    "recovery_s_per_h",
    "net_kib_per_tok",
    "max_mem",
    "plan_ms",
    "note",
];

impl Comparison {
    fn cells(&self) -> Vec<Vec<String>> {
        self.rows
            .iter()
            .map(|r| match &r.evaluation {
                Some(e) => vec![
                    r.strategy.clone(),
                    e.nodes_used.to_string(),
                    e.stages.to_string(),
                    format!("{:.1}", e.throughput_tok_s),
                    self.lp_bound_tok_s
                        .filter(|b| *b > 0.0)
                        .map(|b| format!("{:.0}%", 100.0 * e.throughput_tok_s / b))
                        .unwrap_or_default(),
                    format!("{:.3}", e.ttft_s),
                    format!("{:.1}", e.itl_s * 1000.0),
                    format!("{:.5}", e.availability),
                    format!("{:.1}", e.recovery_s_per_hour),
                    format!("{:.1}", e.network_bytes_per_token / 1024.0),
                    format!("{:.0}%", e.max_memory_fraction * 100.0),
                    format!("{:.0}", r.planning_ms),
                    r.plan
                        .as_ref()
                        .map(|p| p.notes.join("; "))
                        .unwrap_or_default()
                        .replace(['|', ','], " "),
                ],
                None => {
                    let mut v = vec![r.strategy.clone()];
                    v.extend(std::iter::repeat_n(String::new(), HEADER.len() - 3));
                    v.push(format!("{:.0}", r.planning_ms));
                    v.push(
                        format!("error: {}", r.error.clone().unwrap_or_default())
                            .replace(['|', ','], ";"),
                    );
                    v
                }
            })
            .collect()
    }

    /// A Markdown table, with the LP bound in a line above it.
    pub fn to_markdown(&self) -> String {
        let mut s = format!("### {} on {}\n\n", self.model, self.cluster);
        if let Some(b) = self.lp_bound_tok_s {
            s.push_str(&format!(
                "LP upper bound on decode throughput: {b:.1} tok/s\n\n"
            ));
        }
        s.push_str(&format!("| {} |\n", HEADER.join(" | ")));
        s.push_str(&format!("|{}\n", "---|".repeat(HEADER.len())));
        for row in self.cells() {
            s.push_str(&format!("| {} |\n", row.join(" | ")));
        }
        s
    }

    /// CSV with a header line.
    pub fn to_csv(&self) -> String {
        let mut s = format!("cluster,model,{}\n", HEADER.join(","));
        for row in self.cells() {
            s.push_str(&format!(
                "{},{},{}\n",
                self.cluster,
                self.model,
                row.join(",")
            ));
        }
        s
    }

    /// Pretty JSON of everything, plans included.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }

    /// An SVG bar chart of throughput per strategy (with the LP bound as a line).
    pub fn to_svg(&self) -> Result<String, crate::error::PlanError> {
        let bars: Vec<(String, f64)> = self
            .rows
            .iter()
            .map(|r| {
                (
                    r.strategy.clone(),
                    r.evaluation
                        .as_ref()
                        .map(|e| e.throughput_tok_s)
                        .unwrap_or(0.0),
                )
            })
            .collect();
        crate::plot::bar_chart_svg(
            &format!(
                "Decode throughput bound: {} on {}",
                self.model, self.cluster
            ),
            "tokens/s",
            &bars,
            self.lp_bound_tok_s.map(|b| ("LP upper bound", b)),
        )
    }

    /// Writes [`Comparison::to_svg`] to `path`.
    pub fn write_svg(
        &self,
        path: impl AsRef<std::path::Path>,
    ) -> Result<(), crate::error::PlanError> {
        std::fs::write(path.as_ref(), self.to_svg()?).map_err(|e| crate::error::PlanError::Io {
            path: path.as_ref().display().to_string(),
            message: e.to_string(),
        })
    }
}
