//! Printing and writing what a run measured: percentile tables, `.hgrm` files,
//! JSON and a latency plot.

use anyhow::Context;
use std::path::Path;
use tokenflow_engine::dataflow::RunOutcome;
use tokenflow_planner::latency::latency_cdf_multi_svg;

/// Prints the latency percentiles, stage and link tables.
pub fn print_summary(outcome: &RunOutcome) {
    let m = &outcome.metrics;
    println!("\n## Placement\n\n{}", outcome.placement);
    println!(
        "## Latency (ms)\n\n{}",
        m.latency_report().to_markdown_table()
    );
    println!(
        "requests: {} completed, {} refused or failed; {} tokens in {:.2} s = {:.1} tokens/s\n",
        m.sequencer.completed,
        m.sequencer.failed,
        m.sequencer.tokens,
        m.sequencer.span_us as f64 / 1e6,
        m.tokens_per_second()
    );
    if m.sequencer.failures_detected > 0 || m.sequencer.restarts > 0 {
        println!(
            "failures detected: {}; stage replicas re-planned: {}; sequences restarted: {}; tokens recomputed: {} ({:.1}% of generated)\n",
            m.sequencer.failures_detected,
            m.sequencer.replans,
            m.sequencer.restarts,
            m.sequencer.recomputed_tokens,
            100.0 * m.sequencer.recomputed_tokens as f64 / m.sequencer.tokens.max(1) as f64
        );
    }
    println!("## Stage operators\n\n{}", m.stages_table());
    if !m.links.is_empty() {
        println!("## Links\n\n{}", m.links_table());
    }
}

/// Writes `<name>.hgrm` per latency metric, `latency.{json,csv}`, `metrics.json` and `latency.svg` into `dir`.
pub fn write_outputs(outcome: &RunOutcome, dir: &Path, label: &str) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let report = outcome.metrics.latency_report();
    let mut written = report.write_dir(dir, "")?;
    let metrics = dir.join("metrics.json");
    std::fs::write(&metrics, serde_json::to_string_pretty(&outcome.metrics)?)
        .with_context(|| format!("writing {}", metrics.display()))?;
    written.push(metrics);
    let svg = dir.join("latency.svg");
    latency_cdf_multi_svg(&[(label, &report)], &[], "Token latency", &svg)?;
    written.push(svg);
    for p in written {
        eprintln!("wrote {}", p.display());
    }
    Ok(())
}

/// One SVG of the latency distributions of several runs, side by side per metric.
pub fn write_comparison(runs: &[(&str, &RunOutcome)], path: &Path) -> anyhow::Result<()> {
    let reports: Vec<_> = runs
        .iter()
        .map(|(name, o)| (*name, o.metrics.latency_report()))
        .collect();
    let refs: Vec<(&str, &tokenflow_planner::latency::LatencyReport)> =
        reports.iter().map(|(n, r)| (*n, r)).collect();
    latency_cdf_multi_svg(&refs, &[], "Token latency", path)?;
    eprintln!("wrote {}", path.display());
    Ok(())
}
