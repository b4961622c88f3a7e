//! What a run measured: request latencies, stage batches and busy time, link
//! traffic. Each worker records its own; [`EngineMetrics::merge`] joins them
//! across workers and processes (they travel as JSON through a small dataflow).

use std::collections::BTreeMap;
use tokenflow_core::sequencer::SequencerCounters;

use serde::{Deserialize, Serialize};
use tokenflow_planner::latency::{LatencyHistogram, LatencyReport};

use super::link::LinkTraffic;

/// Names of the per-request latency histograms.
pub mod names {
    /// Submission to first token.
    pub const TTFT: &str = "ttft";
    /// Gap between consecutive tokens of a sequence.
    pub const INTER_TOKEN: &str = "inter_token";
    /// Submission to last token.
    pub const E2E: &str = "e2e";
    /// Submission to the start of the first prefill (waiting for KV room or a path).
    pub const QUEUE: &str = "queue";
    /// Detection of a failure to the restarted sequence's next token.
    pub const RECOVERY: &str = "recovery";
}

/// One stage operator's work on one worker.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct StageStats {
    /// Batches run.
    pub batches: u64,
    /// Tokens run (prefill and decode).
    pub tokens: u64,
    /// Microseconds the stage computed, stretched by node speed.
    pub busy_us: u64,
    /// Tokens prefilled again after a failure (steps of a restarted sequence
    /// before its next token).
    pub replay_tokens: u64,
    /// The share of `busy_us` those tokens took, by token count within each batch.
    pub replay_busy_us: u64,
    /// Tokens per batch.
    pub batch_tokens: LatencyHistogram,
    /// Ready steps waiting when a batch started.
    pub queue_len: LatencyHistogram,
}

impl StageStats {
    fn merge(&mut self, other: &StageStats) {
        self.batches += other.batches;
        self.tokens += other.tokens;
        self.busy_us += other.busy_us;
        self.replay_tokens += other.replay_tokens;
        self.replay_busy_us += other.replay_busy_us;
        self.batch_tokens.merge(&other.batch_tokens);
        self.queue_len.merge(&other.queue_len);
    }
}

/// Everything measured on one worker (or merged over many).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct EngineMetrics {
    /// Per-request latencies by name (see [`names`]).
    pub latency: BTreeMap<String, LatencyHistogram>,
    /// Per stage operator, keyed `"<node> stage <k>"`, `"<node> embed"`, `"<node> head"`.
    pub stages: BTreeMap<String, StageStats>,
    /// Per directed link `"<from> -> <to>"`.
    pub links: BTreeMap<String, LinkTraffic>,
    /// The sequencer's counts (requests completed, failed, cancelled, tokens,
    /// restarts, recomputed tokens, failures detected, re-plans, span), under
    /// their own names in the JSON.
    #[serde(flatten)]
    pub sequencer: SequencerCounters,
    /// Requests waiting for admission, as last seen (a gauge).
    #[serde(default)]
    pub queued: u64,
    /// Sequences admitted and not yet ended, as last seen (a gauge).
    #[serde(default)]
    pub in_flight: u64,
    /// Stages with no replica believed up, as last seen (a gauge; 0 is healthy).
    #[serde(default)]
    pub stages_down: u64,
}

impl EngineMetrics {
    /// Takes the sequencer's counts (it runs on one worker, so they are its
    /// worker's own and replace what was there).
    pub fn absorb_sequencer(&mut self, c: &SequencerCounters) {
        self.sequencer = *c;
    }

    /// Sets the sequencer's gauges: requests waiting, sequences in flight,
    /// stages without a live replica.
    pub fn set_gauges(&mut self, queued: usize, in_flight: usize, stages_down: usize) {
        self.queued = queued as u64;
        self.in_flight = in_flight as u64;
        self.stages_down = stages_down as u64;
    }

    /// Records a request latency in µs.
    pub fn record_latency(&mut self, name: &str, us: u64) {
        self.latency
            .entry(name.to_string())
            .or_default()
            .record_us(us);
    }

    /// Stats of stage operator `key`.
    pub fn stage(&mut self, key: &str) -> &mut StageStats {
        if !self.stages.contains_key(key) {
            self.stages.insert(key.to_string(), StageStats::default());
        }
        self.stages.get_mut(key).expect("inserted above")
    }

    /// Adds another worker's measurements.
    pub fn merge(&mut self, other: &EngineMetrics) {
        for (k, h) in &other.latency {
            self.latency.entry(k.clone()).or_default().merge(h);
        }
        for (k, s) in &other.stages {
            self.stages.entry(k.clone()).or_default().merge(s);
        }
        for (k, t) in &other.links {
            let e = self.links.entry(k.clone()).or_default();
            e.messages += t.messages;
            e.bytes += t.bytes;
        }
        self.sequencer.merge(&other.sequencer);
        self.queued += other.queued;
        self.in_flight += other.in_flight;
        self.stages_down += other.stages_down;
    }

    /// The request latencies as a report (TTFT, inter-token, end-to-end, queue).
    pub fn latency_report(&self) -> LatencyReport {
        let mut report = LatencyReport::new();
        for name in [names::TTFT, names::INTER_TOKEN, names::E2E, names::QUEUE] {
            report.insert(name, self.latency.get(name).cloned().unwrap_or_default());
        }
        if let Some(h) = self.latency.get(names::RECOVERY) {
            report.insert(names::RECOVERY, h.clone());
        }
        report
    }

    /// Emulated GPU-seconds spent prefilling known tokens again after failures,
    /// over every stage operator.
    pub fn replay_gpu_s(&self) -> f64 {
        self.stages.values().map(|s| s.replay_busy_us).sum::<u64>() as f64 / 1e6
    }

    /// Generated tokens per second over the run.
    pub fn tokens_per_second(&self) -> f64 {
        let c = &self.sequencer;
        if c.span_us == 0 {
            0.0
        } else {
            c.tokens as f64 / (c.span_us as f64 / 1e6)
        }
    }

    /// A Markdown table of stage operators: batches, tokens, mean batch, busy share, queue p99.
    pub fn stages_table(&self) -> String {
        let mut out = String::from(
            "| stage operator | batches | tokens | mean batch | busy s | busy % | queue p99 |\n|---|---|---|---|---|---|---|\n",
        );
        for (k, s) in &self.stages {
            let mean = if s.batches == 0 {
                0.0
            } else {
                s.tokens as f64 / s.batches as f64
            };
            let span_us = self.sequencer.span_us;
            let busy = if span_us == 0 {
                0.0
            } else {
                100.0 * s.busy_us as f64 / span_us as f64
            };
            out.push_str(&format!(
                "| {k} | {} | {} | {mean:.1} | {:.2} | {busy:.0} | {} |\n",
                s.batches,
                s.tokens,
                s.busy_us as f64 / 1e6,
                s.queue_len.value_at_quantile_us(0.99),
            ));
        }
        out
    }

    /// A Markdown table of link traffic.
    pub fn links_table(&self) -> String {
        let mut out =
            String::from("| link | messages | bytes | bytes/message |\n|---|---|---|---|\n");
        for (k, t) in &self.links {
            let per = t.bytes.checked_div(t.messages).unwrap_or(0);
            out.push_str(&format!("| {k} | {} | {} | {per} |\n", t.messages, t.bytes));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_adds_each_count_once() {
        let mut part = EngineMetrics {
            sequencer: SequencerCounters {
                completed: 2,
                restarts: 3,
                recomputed_tokens: 40,
                failures_detected: 1,
                replans: 1,
                span_us: 10,
                ..SequencerCounters::default()
            },
            ..EngineMetrics::default()
        };
        part.stage("a stage 0").replay_busy_us = 500_000;
        let mut total = EngineMetrics::default();
        total.merge(&part);
        total.merge(&part);
        assert_eq!(total.sequencer.completed, 4);
        assert_eq!(total.sequencer.restarts, 6);
        assert_eq!(total.sequencer.recomputed_tokens, 80);
        assert_eq!(total.sequencer.failures_detected, 2);
        assert_eq!(total.sequencer.replans, 2);
        assert_eq!(total.sequencer.span_us, 10);
        assert!((total.replay_gpu_s() - 1.0).abs() < 1e-12);
    }
}
