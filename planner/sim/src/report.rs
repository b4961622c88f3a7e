//! Results of a comparison: one row per strategy, as Markdown, CSV and JSON,
//! `.hgrm` histograms, a latency percentile plot and a throughput timeline
//! with failures marked (SVG).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use plotters::prelude::*;
use serde::{Deserialize, Serialize};

use super::StrategyRun;
use super::engine::{SimStats, Timeline};
use super::error::SimError;
use super::spec::Slo;
use tokenflow_planner::latency::{
    LatencyError, LatencyReport, LatencySummary, latency_cdf_multi_svg_string,
};

/// One strategy's row.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StrategyResult {
    /// Strategy name.
    pub strategy: String,
    /// Why it has no figures (planning failed), if so.
    pub error: Option<String>,
    /// Nodes in its first plan.
    pub nodes: usize,
    /// Stages in its first plan.
    pub stages: usize,
    /// Max-flow decode throughput bound of the first plan, tokens/s.
    pub plan_bound_tok_s: f64,
    /// Counters and rates.
    pub stats: SimStats,
    /// Summary of each latency metric (ms).
    pub latency_ms: Vec<(String, LatencySummary)>,
    /// Throughput over time.
    pub timeline: Timeline,
    /// The histograms (written as `.hgrm`, not into JSON).
    #[serde(skip)]
    pub latency: LatencyReport,
    /// What the planner's analytic model
    /// ([`tokenflow_planner::service_model`]) predicted for the first plan.
    #[serde(default)]
    pub predicted: Option<tokenflow_planner::service_model::ServicePrediction>,
}

impl StrategyResult {
    /// A row from a run, or from the error that stopped it.
    pub fn new(strategy: &str, run: Result<StrategyRun, SimError>) -> StrategyResult {
        match run {
            Ok(r) => StrategyResult {
                strategy: strategy.to_string(),
                error: None,
                nodes: r.plan.nodes.len(),
                stages: r.plan.stages.len(),
                plan_bound_tok_s: r.outcome.plan_bound_tok_s,
                latency_ms: r.outcome.latency.summaries(),
                stats: r.outcome.stats,
                timeline: r.outcome.timeline,
                latency: r.outcome.latency,
                predicted: None,
            },
            Err(e) => StrategyResult {
                strategy: strategy.to_string(),
                error: Some(e.to_string()),
                nodes: 0,
                stages: 0,
                plan_bound_tok_s: 0.0,
                stats: SimStats::default(),
                latency_ms: Vec::new(),
                timeline: Timeline::default(),
                latency: LatencyReport::new(),
                predicted: None,
            },
        }
    }

    /// The summary of metric `name` (zeros when absent).
    pub fn summary(&self, name: &str) -> LatencySummary {
        self.latency_ms
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, s)| *s)
            .unwrap_or_default()
    }
}

/// All strategies on one scenario.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SimComparison {
    /// Cluster name.
    pub cluster: String,
    /// Model name.
    pub model: String,
    /// The load spec.
    pub load: String,
    /// The churn spec.
    pub churn: String,
    /// Router.
    pub router: String,
    /// Re-planning policy.
    pub replan: String,
    /// Arrival window, seconds.
    pub duration_s: f64,
    /// Seed.
    pub seed: u64,
    /// The SLO of goodput.
    pub slo: Slo,
    /// Requests offered.
    pub requests: u64,
    /// Node failures drawn.
    pub failures: u64,
    /// One row per strategy.
    pub rows: Vec<StrategyResult>,
}

const HEADER: [&str; 21] = [
    "strategy",
    "nodes",
    "stages",
    "bound_tok_s",
    "throughput_tok_s",
    "goodput_tok_s",
    "slo_met",
    "ttft_p50_s",
    "ttft_p99_s",
    "itl_p50_ms",
    "itl_p99_ms",
    "e2e_p50_s",
    "e2e_p99_s",
    "completed",
    "unfinished",
    "restarts",
    "tokens_recomputed",
    "no_path_s",
    "network_gb",
    "replans",
    "note",
];

impl SimComparison {
    fn cells(&self) -> Vec<Vec<String>> {
        self.rows
            .iter()
            .map(|r| {
                if let Some(e) = &r.error {
                    let mut v = vec![r.strategy.clone()];
                    v.extend((1..HEADER.len() - 1).map(|_| "-".to_string()));
                    v.push(format!("error: {e}").replace(['|', ','], ";"));
                    return v;
                }
                let (t, i, e) = (
                    r.summary("ttft"),
                    r.summary("inter_token"),
                    r.summary("e2e"),
                );
                let s = &r.stats;
                vec![
                    r.strategy.clone(),
                    r.nodes.to_string(),
                    r.stages.to_string(),
                    format!("{:.0}", r.plan_bound_tok_s),
                    format!("{:.1}", s.throughput_tok_s),
                    format!("{:.1}", s.goodput_tok_s),
                    format!("{:.0}%", s.slo_attainment * 100.0),
                    format!("{:.2}", t.p50_ms / 1000.0),
                    format!("{:.2}", t.p99_ms / 1000.0),
                    format!("{:.0}", i.p50_ms),
                    format!("{:.0}", i.p99_ms),
                    format!("{:.1}", e.p50_ms / 1000.0),
                    format!("{:.1}", e.p99_ms / 1000.0),
                    s.completed.to_string(),
                    s.unfinished.to_string(),
                    s.restarts.to_string(),
                    s.tokens_recomputed.to_string(),
                    format!("{:.1}", s.time_without_path_s),
                    format!("{:.2}", s.network_bytes / 1e9),
                    s.replans.to_string(),
                    String::new(),
                ]
            })
            .collect()
    }

    /// A Markdown table with a line describing the scenario above it.
    pub fn to_markdown(&self) -> String {
        let mut s = format!(
            "### {} on {}: load `{}`, churn `{}`\n\n{} requests over {} s, {} failures drawn, router {}, re-plan {}, SLO TTFT <= {} s and mean ITL <= {} s, seed {}\n\n",
            self.model,
            self.cluster,
            self.load,
            self.churn,
            self.requests,
            self.duration_s,
            self.failures,
            self.router,
            self.replan,
            self.slo.ttft_s,
            self.slo.itl_s,
            self.seed
        );
        let _ = writeln!(s, "| {} |", HEADER.join(" | "));
        let _ = writeln!(s, "|{}", "---|".repeat(HEADER.len()));
        for row in self.cells() {
            let _ = writeln!(s, "| {} |", row.join(" | "));
        }
        s
    }

    /// CSV with a header line; scenario columns first.
    pub fn to_csv(&self) -> String {
        let mut s = format!("cluster,model,churn,{}\n", HEADER.join(","));
        for row in self.cells() {
            let _ = writeln!(
                s,
                "{},{},{},{}",
                self.cluster,
                self.model,
                self.churn.replace(',', ";"),
                row.join(",")
            );
        }
        s
    }

    /// Pretty JSON of everything but the histograms.
    pub fn to_json(&self) -> Result<String, SimError> {
        Ok(serde_json::to_string_pretty(self)? + "\n")
    }

    /// Latency percentile plot: TTFT, inter-token and end-to-end panels, one line per strategy.
    pub fn latency_svg(&self) -> Result<String, SimError> {
        let runs: Vec<(&str, &LatencyReport)> = self
            .rows
            .iter()
            .filter(|r| r.error.is_none())
            .map(|r| (r.strategy.as_str(), &r.latency))
            .collect();
        Ok(latency_cdf_multi_svg_string(
            &runs,
            &[],
            &format!("{} on {}, churn {}", self.model, self.cluster, self.churn),
        )?)
    }

    /// Throughput over time, one line per strategy, failures as red ticks and
    /// re-plans as dots on the strategy's line.
    pub fn throughput_svg(&self) -> Result<String, SimError> {
        let plot = |e: &dyn std::fmt::Display| SimError::Latency(LatencyError::Plot(e.to_string()));
        let rows: Vec<&StrategyResult> = self.rows.iter().filter(|r| r.error.is_none()).collect();
        let x_max = rows
            .iter()
            .map(|r| r.timeline.bin_s * r.timeline.tokens_per_s.len() as f64)
            .fold(self.duration_s, f64::max);
        let y_max = rows
            .iter()
            .flat_map(|r| r.timeline.tokens_per_s.iter().copied())
            .fold(0.0f64, f64::max)
            .max(1.0)
            * 1.1;
        let mut svg = String::new();
        {
            let root = SVGBackend::with_string(&mut svg, (960, 520)).into_drawing_area();
            root.fill(&WHITE).map_err(|e| plot(&e))?;
            let mut chart = ChartBuilder::on(&root)
                .caption(
                    format!(
                        "Throughput: {} on {}, churn {}",
                        self.model, self.cluster, self.churn
                    ),
                    ("sans-serif", 18),
                )
                .margin(12)
                .margin_right(28)
                .x_label_area_size(40)
                .y_label_area_size(70)
                .build_cartesian_2d(0f64..x_max, 0f64..y_max)
                .map_err(|e| plot(&e))?;
            chart
                .configure_mesh()
                .light_line_style(WHITE.mix(0.0))
                .x_desc("time (s)")
                .y_desc("generated tokens/s")
                .draw()
                .map_err(|e| plot(&e))?;
            // Failures are the same for every strategy: draw them once, under the
            // lines, from the run that lasted longest (a run stops when all is done).
            if let Some(first) = rows.iter().max_by_key(|r| r.timeline.failures_s.len()) {
                let red = RGBColor(200, 40, 40).mix(0.5);
                chart
                    .draw_series(first.timeline.failures_s.iter().map(|&t| {
                        PathElement::new(vec![(t, 0.0), (t, y_max * 0.06)], red.stroke_width(2))
                    }))
                    .map_err(|e| plot(&e))?
                    .label("node failure")
                    .legend(move |(x, y)| {
                        PathElement::new(
                            vec![(x + 10, y - 6), (x + 10, y + 6)],
                            red.stroke_width(2),
                        )
                    });
            }
            for (k, r) in rows.iter().enumerate() {
                let style = ShapeStyle::from(&Palette99::pick(k)).stroke_width(2);
                let bin = r.timeline.bin_s;
                let points: Vec<(f64, f64)> = r
                    .timeline
                    .tokens_per_s
                    .iter()
                    .enumerate()
                    .map(|(i, &v)| ((i as f64 + 0.5) * bin, v))
                    .collect();
                chart
                    .draw_series(LineSeries::new(points.iter().copied(), style))
                    .map_err(|e| plot(&e))?
                    .label(r.strategy.as_str())
                    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
                let at = |t: f64| {
                    let i = ((t / bin) as usize).min(points.len().saturating_sub(1));
                    points.get(i).map_or(0.0, |p| p.1)
                };
                chart
                    .draw_series(
                        r.timeline
                            .replans_s
                            .iter()
                            .map(|&t| Circle::new((t, at(t)), 4, style.filled())),
                    )
                    .map_err(|e| plot(&e))?;
            }
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::UpperRight)
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK)
                .draw()
                .map_err(|e| plot(&e))?;
            root.present().map_err(|e| plot(&e))?;
        }
        Ok(svg)
    }

    /// Writes `compare.md`, `compare.csv`, `compare.json`, `latency.svg`,
    /// `throughput.svg` and, per strategy, `<strategy>-{ttft,inter_token,e2e,queue}.hgrm`
    /// with `<strategy>-latency.{json,csv}` into `dir` (created if needed).
    pub fn write_dir(&self, dir: impl AsRef<Path>) -> Result<Vec<PathBuf>, SimError> {
        let dir = dir.as_ref();
        std::fs::create_dir_all(dir).map_err(|e| SimError::Io {
            path: dir.display().to_string(),
            message: e.to_string(),
        })?;
        let mut written = Vec::new();
        let files = [
            ("compare.md", self.to_markdown()),
            ("compare.csv", self.to_csv()),
            ("compare.json", self.to_json()?),
            ("latency.svg", self.latency_svg()?),
            ("throughput.svg", self.throughput_svg()?),
        ];
        for (name, text) in files {
            let path = dir.join(name);
            std::fs::write(&path, text).map_err(|e| SimError::Io {
                path: path.display().to_string(),
                message: e.to_string(),
            })?;
            written.push(path);
        }
        for r in self.rows.iter().filter(|r| r.error.is_none()) {
            written.extend(r.latency.write_dir(dir, &format!("{}-", r.strategy))?);
        }
        Ok(written)
    }
}
