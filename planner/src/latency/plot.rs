//! SVG percentile plots of latency histograms, drawn with plotters' SVG backend.
//!
//! The plot is HdrHistogram's classic percentile distribution: x is the percentile on a
//! `1/(1-p)` log scale, drawn as `x = -log10(1-p)` with ticks labelled 0%, 90%, 99%,
//! 99.9%, …; y is the latency in milliseconds. Text is emitted as SVG `<text>` elements
//! for the viewer to render, so no font or system library is needed.

use std::fs;
use std::path::Path;

use plotters::coord::Shift;
use plotters::prelude::*;

use super::error::LatencyError;
use super::hgrm::TICKS_PER_HALF_DISTANCE;
use super::histogram::LatencyHistogram;
use super::report::LatencyReport;

/// Metrics drawn by [`latency_cdf_multi_svg`] when it is given no metric names and the
/// reports hold all of them.
pub const DEFAULT_PANEL_METRICS: [&str; 3] = [
    super::metric::TTFT,
    super::metric::INTER_TOKEN,
    super::metric::E2E,
];

/// Fewest and most decades of `1/(1-p)` on the x axis (99% and 99.9999999999%).
const MIN_DECADES: u32 = 2;
const MAX_DECADES: u32 = 12;

/// One line: legend name and `(−log10(1−p), ms)` points.
struct Line {
    name: String,
    points: Vec<(f64, f64)>,
}

fn plot_err(e: impl std::fmt::Display) -> LatencyError {
    LatencyError::Plot(e.to_string())
}

/// Points of the percentile curve of `hist`; the maximum is placed at `p = 1 − 1/count`.
fn curve(hist: &LatencyHistogram) -> Vec<(f64, f64)> {
    let mut points: Vec<(f64, f64)> = hist
        .percentile_steps(TICKS_PER_HALF_DISTANCE)
        .into_iter()
        .filter(|s| s.quantile < 1.0)
        .map(|s| {
            let x = (-(1.0 - s.quantile).log10()).max(0.0);
            (x, s.value_us as f64 / 1000.0)
        })
        .collect();
    if !hist.is_empty() {
        let last_x = points.last().map_or(0.0, |p| p.0);
        let x = (hist.count() as f64).log10().max(last_x);
        points.push((x, hist.max_us() as f64 / 1000.0));
    }
    points.retain(|p| p.0 <= f64::from(MAX_DECADES));
    points
}

/// Label of the tick at `x = −log10(1−p)`: 0%, 90%, 99%, 99.9%, …
fn percentile_label(x: f64) -> String {
    let k = x.round();
    if (x - k).abs() > 1e-9 || k < 0.0 {
        return String::new();
    }
    match k as u32 {
        0 => "0%".to_owned(),
        1 => "90%".to_owned(),
        k => format!(
            "99{}{}%",
            if k > 2 { "." } else { "" },
            "9".repeat(k as usize - 2)
        ),
    }
}

/// Draws one percentile chart with a legend into `area`.
fn draw_panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    caption: &str,
    lines: &[Line],
) -> Result<(), LatencyError> {
    let max_x = lines
        .iter()
        .flat_map(|l| l.points.iter().map(|p| p.0))
        .fold(0.0f64, f64::max);
    let decades = (max_x.ceil() as u32).clamp(MIN_DECADES, MAX_DECADES);
    let max_y = lines
        .iter()
        .flat_map(|l| l.points.iter().map(|p| p.1))
        .fold(0.0f64, f64::max);
    let y_top = if max_y > 0.0 { max_y * 1.05 } else { 1.0 };

    let mut chart = ChartBuilder::on(area)
        .caption(caption, ("sans-serif", 18))
        .margin(12)
        .margin_right(36)
        .x_label_area_size(40)
        .y_label_area_size(64)
        .build_cartesian_2d(0f64..f64::from(decades), 0f64..y_top)
        .map_err(plot_err)?;
    chart
        .configure_mesh()
        .x_labels(decades as usize + 1)
        .light_line_style(WHITE.mix(0.0))
        .x_desc("percentile")
        .y_desc("latency (ms)")
        .x_label_formatter(&|x| percentile_label(*x))
        .draw()
        .map_err(plot_err)?;
    for (i, line) in lines.iter().enumerate() {
        let style = ShapeStyle::from(&Palette99::pick(i)).stroke_width(2);
        chart
            .draw_series(LineSeries::new(line.points.iter().copied(), style))
            .map_err(plot_err)?
            .label(line.name.as_str())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
    }
    if !lines.is_empty() {
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()
            .map_err(plot_err)?;
    }
    Ok(())
}

/// The percentile plot of each `(legend name, histogram)` as an SVG document.
pub fn latency_cdf_svg_string(
    series: &[(&str, &LatencyHistogram)],
    title: &str,
) -> Result<String, LatencyError> {
    let lines: Vec<Line> = series
        .iter()
        .map(|(name, h)| Line {
            name: (*name).to_owned(),
            points: curve(h),
        })
        .collect();
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (960, 540)).into_drawing_area();
        root.fill(&WHITE).map_err(plot_err)?;
        draw_panel(&root, title, &lines)?;
        root.present().map_err(plot_err)?;
    }
    Ok(svg)
}

/// Writes [`latency_cdf_svg_string`] to `path`.
pub fn latency_cdf_svg(
    series: &[(&str, &LatencyHistogram)],
    title: &str,
    path: impl AsRef<Path>,
) -> Result<(), LatencyError> {
    write_file(path.as_ref(), &latency_cdf_svg_string(series, title)?)
}

/// Side-by-side percentile panels, one per metric, each with one line per run, as an
/// SVG document: compares runs (say with and without churn, or two strategies).
///
/// `metrics` names the panels in order; when empty, the panels are
/// [`DEFAULT_PANEL_METRICS`] that some run holds, or, if none, every metric of the runs
/// in order of first appearance. A run without a panel's metric has no line in it.
pub fn latency_cdf_multi_svg_string(
    runs: &[(&str, &LatencyReport)],
    metrics: &[&str],
    title: &str,
) -> Result<String, LatencyError> {
    let panels = panel_metrics(runs, metrics);
    let n = u32::try_from(panels.len().max(1)).unwrap_or(u32::MAX);
    let mut svg = String::new();
    {
        let root =
            SVGBackend::with_string(&mut svg, (520u32.saturating_mul(n), 500)).into_drawing_area();
        root.fill(&WHITE).map_err(plot_err)?;
        let body = root.titled(title, ("sans-serif", 22)).map_err(plot_err)?;
        if panels.is_empty() {
            draw_panel(&body, "no latency metrics", &[])?;
        } else {
            for (area, metric) in body.split_evenly((1, panels.len())).iter().zip(&panels) {
                let lines: Vec<Line> = runs
                    .iter()
                    .filter_map(|(run, report)| {
                        report.get(metric).map(|h| Line {
                            name: (*run).to_owned(),
                            points: curve(h),
                        })
                    })
                    .collect();
                draw_panel(area, metric, &lines)?;
            }
        }
        root.present().map_err(plot_err)?;
    }
    Ok(svg)
}

/// Writes [`latency_cdf_multi_svg_string`] to `path`.
pub fn latency_cdf_multi_svg(
    runs: &[(&str, &LatencyReport)],
    metrics: &[&str],
    title: &str,
    path: impl AsRef<Path>,
) -> Result<(), LatencyError> {
    write_file(
        path.as_ref(),
        &latency_cdf_multi_svg_string(runs, metrics, title)?,
    )
}

/// The panels of a multi-run plot (see [`latency_cdf_multi_svg_string`]).
fn panel_metrics(runs: &[(&str, &LatencyReport)], metrics: &[&str]) -> Vec<String> {
    if !metrics.is_empty() {
        return metrics.iter().map(|m| (*m).to_owned()).collect();
    }
    let held = |m: &str| runs.iter().any(|(_, r)| r.get(m).is_some());
    let defaults: Vec<String> = DEFAULT_PANEL_METRICS
        .iter()
        .filter(|m| held(m))
        .map(|m| (*m).to_owned())
        .collect();
    if !defaults.is_empty() {
        return defaults;
    }
    let mut all: Vec<String> = Vec::new();
    for (_, report) in runs {
        for name in report.names() {
            if !all.iter().any(|a| a == name) {
                all.push(name.to_owned());
            }
        }
    }
    all
}

fn write_file(path: &Path, contents: &str) -> Result<(), LatencyError> {
    fs::write(path, contents).map_err(|source| LatencyError::WriteFile {
        path: path.to_path_buf(),
        source,
    })
}
