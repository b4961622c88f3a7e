//! The Prometheus text exposition format (version 0.0.4) of the engine's
//! measurements: request latency histograms, gauges of the queue and of
//! sequences in flight, counters of tokens, restarts and failures, per-stage
//! batches and busy time, per-link bytes.

use std::fmt::Write;

use tokenflow_engine::dataflow::EngineMetrics;
use tokenflow_engine::dataflow::metrics::names;
use tokenflow_planner::latency::LatencyHistogram;

/// Upper bounds (seconds) of the latency histograms' buckets.
pub const LATENCY_BUCKETS_S: [f64; 16] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
];

/// Upper bounds of the batch-size histograms' buckets (tokens per stage call).
const BATCH_BUCKETS: [f64; 10] = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0];

/// What the HTTP side counts itself.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HttpCounters {
    /// Requests accepted into the engine.
    pub accepted: u64,
    /// Requests turned away with 429.
    pub overloaded: u64,
    /// Requests answered with another 4xx.
    pub rejected: u64,
    /// Clients that went away before their answer ended.
    pub disconnected: u64,
}

/// Escapes a label value (backslash, quote, newline).
fn label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// One histogram series: cumulative buckets, `+Inf`, sum and count. `scale`
/// turns a recorded value into the exposed unit.
fn histogram(
    out: &mut String,
    name: &str,
    labels: &str,
    h: &LatencyHistogram,
    bounds: &[f64],
    scale: f64,
) {
    let sep = if labels.is_empty() { "" } else { "," };
    for &le in bounds {
        let count = h.count_at_or_below((le / scale) as u64);
        let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{le}\"}} {count}");
    }
    let _ = writeln!(
        out,
        "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {}",
        h.count()
    );
    let braces = if labels.is_empty() {
        String::new()
    } else {
        format!("{{{labels}}}")
    };
    let _ = writeln!(
        out,
        "{name}_sum{braces} {}",
        h.mean_us() * h.count() as f64 * scale
    );
    let _ = writeln!(out, "{name}_count{braces} {}", h.count());
}

fn scalar(out: &mut String, name: &str, kind: &str, help: &str, value: impl std::fmt::Display) {
    header(out, name, kind, help);
    let _ = writeln!(out, "{name} {value}");
}

/// The whole exposition for `metrics` and the HTTP side's `http` counts.
pub fn render(metrics: &EngineMetrics, http: &HttpCounters) -> String {
    let mut out = String::new();
    let empty = LatencyHistogram::new();
    for (metric, name, help) in [
        (
            names::TTFT,
            "tokenflow_time_to_first_token_seconds",
            "Submission to first token.",
        ),
        (
            names::INTER_TOKEN,
            "tokenflow_inter_token_latency_seconds",
            "Time between consecutive tokens of a sequence.",
        ),
        (
            names::E2E,
            "tokenflow_request_latency_seconds",
            "Submission to the last token.",
        ),
        (
            names::QUEUE,
            "tokenflow_queue_time_seconds",
            "Submission to admission.",
        ),
        (
            names::RECOVERY,
            "tokenflow_recovery_seconds",
            "Failure detected to the next token on a new path.",
        ),
    ] {
        header(&mut out, name, "histogram", help);
        let h = metrics.latency.get(metric).unwrap_or(&empty);
        histogram(&mut out, name, "", h, &LATENCY_BUCKETS_S, 1e-6);
    }
    scalar(
        &mut out,
        "tokenflow_queue_depth",
        "gauge",
        "Requests waiting for admission.",
        metrics.queued,
    );
    scalar(
        &mut out,
        "tokenflow_sequences_in_flight",
        "gauge",
        "Sequences admitted and not ended.",
        metrics.in_flight,
    );
    scalar(
        &mut out,
        "tokenflow_stages_without_replica",
        "gauge",
        "Stages with no replica believed up (0 is healthy).",
        metrics.stages_down,
    );
    scalar(
        &mut out,
        "tokenflow_generated_tokens_total",
        "counter",
        "Tokens generated.",
        metrics.sequencer.tokens,
    );
    scalar(
        &mut out,
        "tokenflow_requests_completed_total",
        "counter",
        "Requests that ran to a stop rule.",
        metrics.sequencer.completed,
    );
    scalar(
        &mut out,
        "tokenflow_requests_failed_total",
        "counter",
        "Requests refused or failed by the engine (cancellations included).",
        metrics.sequencer.failed,
    );
    scalar(
        &mut out,
        "tokenflow_requests_cancelled_total",
        "counter",
        "Requests their client withdrew.",
        metrics.sequencer.cancelled,
    );
    scalar(
        &mut out,
        "tokenflow_restarts_total",
        "counter",
        "Sequences restarted on a new path after a failure.",
        metrics.sequencer.restarts,
    );
    scalar(
        &mut out,
        "tokenflow_recomputed_tokens_total",
        "counter",
        "Tokens prefilled again by restarts.",
        metrics.sequencer.recomputed_tokens,
    );
    scalar(
        &mut out,
        "tokenflow_failures_detected_total",
        "counter",
        "Node failures or restarts detected.",
        metrics.sequencer.failures_detected,
    );
    scalar(
        &mut out,
        "tokenflow_replans_total",
        "counter",
        "Stage replicas added by re-planning.",
        metrics.sequencer.replans,
    );
    scalar(
        &mut out,
        "tokenflow_http_requests_accepted_total",
        "counter",
        "Requests the HTTP side handed to the engine.",
        http.accepted,
    );
    scalar(
        &mut out,
        "tokenflow_http_requests_overloaded_total",
        "counter",
        "Requests turned away with 429.",
        http.overloaded,
    );
    scalar(
        &mut out,
        "tokenflow_http_requests_rejected_total",
        "counter",
        "Requests answered with another 4xx.",
        http.rejected,
    );
    scalar(
        &mut out,
        "tokenflow_http_clients_disconnected_total",
        "counter",
        "Clients gone before their answer ended.",
        http.disconnected,
    );

    header(
        &mut out,
        "tokenflow_stage_batches_total",
        "counter",
        "Batches a stage operator ran.",
    );
    for (stage, s) in &metrics.stages {
        let _ = writeln!(
            out,
            "tokenflow_stage_batches_total{{stage=\"{}\"}} {}",
            label(stage),
            s.batches
        );
    }
    header(
        &mut out,
        "tokenflow_stage_tokens_total",
        "counter",
        "Tokens a stage operator computed.",
    );
    for (stage, s) in &metrics.stages {
        let _ = writeln!(
            out,
            "tokenflow_stage_tokens_total{{stage=\"{}\"}} {}",
            label(stage),
            s.tokens
        );
    }
    header(
        &mut out,
        "tokenflow_stage_busy_seconds_total",
        "counter",
        "Time a stage operator spent computing.",
    );
    for (stage, s) in &metrics.stages {
        let _ = writeln!(
            out,
            "tokenflow_stage_busy_seconds_total{{stage=\"{}\"}} {}",
            label(stage),
            s.busy_us as f64 * 1e-6
        );
    }
    header(
        &mut out,
        "tokenflow_stage_batch_tokens",
        "histogram",
        "Tokens per stage call.",
    );
    for (stage, s) in &metrics.stages {
        let labels = format!("stage=\"{}\"", label(stage));
        histogram(
            &mut out,
            "tokenflow_stage_batch_tokens",
            &labels,
            &s.batch_tokens,
            &BATCH_BUCKETS,
            1.0,
        );
    }
    header(
        &mut out,
        "tokenflow_link_bytes_total",
        "counter",
        "Bytes sent over a directed link.",
    );
    for (link, t) in &metrics.links {
        let (from, to) = link.split_once(" -> ").unwrap_or((link.as_str(), ""));
        let _ = writeln!(
            out,
            "tokenflow_link_bytes_total{{from=\"{}\",to=\"{}\"}} {}",
            label(from),
            label(to),
            t.bytes
        );
    }
    header(
        &mut out,
        "tokenflow_link_messages_total",
        "counter",
        "Messages sent over a directed link.",
    );
    for (link, t) in &metrics.links {
        let (from, to) = link.split_once(" -> ").unwrap_or((link.as_str(), ""));
        let _ = writeln!(
            out,
            "tokenflow_link_messages_total{{from=\"{}\",to=\"{}\"}} {}",
            label(from),
            label(to),
            t.messages
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_cumulative_and_end_at_the_count() {
        let mut m = EngineMetrics::default();
        for us in [500, 20_000, 20_000, 3_000_000] {
            m.record_latency(names::TTFT, us);
        }
        m.stage("a \"quoted\" stage 0").batches = 2;
        let text = render(&m, &HttpCounters::default());
        assert!(text.contains("tokenflow_time_to_first_token_seconds_bucket{le=\"0.001\"} 1"));
        assert!(text.contains("tokenflow_time_to_first_token_seconds_bucket{le=\"0.025\"} 3"));
        assert!(text.contains("tokenflow_time_to_first_token_seconds_bucket{le=\"+Inf\"} 4"));
        assert!(text.contains("tokenflow_time_to_first_token_seconds_count 4"));
        assert!(
            text.contains("tokenflow_stage_batches_total{stage=\"a \\\"quoted\\\" stage 0\"} 2")
        );
        // Every sample line is `name{labels} value` or `name value`.
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let value = line.rsplit(' ').next().unwrap();
            assert!(value.parse::<f64>().is_ok(), "{line}");
        }
    }
}
