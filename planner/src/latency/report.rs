//! [`LatencyReport`]: named latency histograms of one run, and their text and file outputs.

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize, Serializer};

use super::error::LatencyError;
use super::hgrm::{MICROS_PER_MILLI, hgrm_string};
use super::histogram::LatencyHistogram;
use super::summary::LatencySummary;

/// Named latency histograms (e.g. [`TTFT`](super::metric::TTFT),
/// [`INTER_TOKEN`](super::metric::INTER_TOKEN)) in the order the names were first used.
///
/// Serde writes it as a sequence of `[name, histogram]` pairs; reading merges repeated
/// names.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(from = "Vec<(String, LatencyHistogram)>")]
pub struct LatencyReport {
    metrics: Vec<(String, LatencyHistogram)>,
}

impl LatencyReport {
    /// An empty report.
    pub fn new() -> Self {
        Self::default()
    }

    /// The histogram called `name`, added empty (at the end) if absent.
    pub fn metric_mut(&mut self, name: &str) -> &mut LatencyHistogram {
        let i = match self.metrics.iter().position(|(n, _)| n == name) {
            Some(i) => i,
            None => {
                self.metrics
                    .push((name.to_owned(), LatencyHistogram::new()));
                self.metrics.len() - 1
            }
        };
        &mut self.metrics[i].1
    }

    /// Records `us` microseconds into metric `name`.
    pub fn record_us(&mut self, name: &str, us: u64) {
        self.metric_mut(name).record_us(us);
    }

    /// Records `d` into metric `name`.
    pub fn record(&mut self, name: &str, d: Duration) {
        self.metric_mut(name).record(d);
    }

    /// Sets metric `name` to `hist`, keeping its position; returns the histogram it replaced.
    pub fn insert(&mut self, name: &str, hist: LatencyHistogram) -> Option<LatencyHistogram> {
        match self.metrics.iter_mut().find(|(n, _)| n == name) {
            Some((_, h)) => Some(std::mem::replace(h, hist)),
            None => {
                self.metrics.push((name.to_owned(), hist));
                None
            }
        }
    }

    /// The histogram called `name`.
    pub fn get(&self, name: &str) -> Option<&LatencyHistogram> {
        self.metrics.iter().find(|(n, _)| n == name).map(|(_, h)| h)
    }

    /// Metric names in order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.metrics.iter().map(|(n, _)| n.as_str())
    }

    /// `(name, histogram)` pairs in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &LatencyHistogram)> {
        self.metrics.iter().map(|(n, h)| (n.as_str(), h))
    }

    /// Number of metrics.
    pub fn len(&self) -> usize {
        self.metrics.len()
    }

    /// True when the report has no metric.
    pub fn is_empty(&self) -> bool {
        self.metrics.is_empty()
    }

    /// Merges every metric of `other` into the same-named metric here (new names go last).
    pub fn merge(&mut self, other: &LatencyReport) {
        for (name, hist) in &other.metrics {
            self.metric_mut(name).merge(hist);
        }
    }

    /// `(name, summary)` for every metric, in order.
    pub fn summaries(&self) -> Vec<(String, LatencySummary)> {
        self.metrics
            .iter()
            .map(|(n, h)| (n.clone(), LatencySummary::from_histogram(h)))
            .collect()
    }

    /// A Markdown table, one row per metric:
    /// `| metric | count | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms |`.
    pub fn to_markdown_table(&self) -> String {
        let mut s = String::from(
            "| metric | count | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms |\n\
             |---|---:|---:|---:|---:|---:|---:|\n",
        );
        for (name, m) in self.summaries() {
            let _ = writeln!(
                s,
                "| {} | {} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} |",
                name.replace('|', "\\|"),
                m.count,
                m.p50_ms,
                m.p90_ms,
                m.p99_ms,
                m.p999_ms,
                m.max_ms
            );
        }
        s
    }

    /// CSV with the header `metric,count,mean_ms,p50_ms,p90_ms,p99_ms,p99_9_ms,max_ms,clamped`.
    pub fn to_csv(&self) -> String {
        let mut s =
            String::from("metric,count,mean_ms,p50_ms,p90_ms,p99_ms,p99_9_ms,max_ms,clamped\n");
        for (name, m) in self.summaries() {
            let _ = writeln!(
                s,
                "{},{},{:.3},{:.3},{:.3},{:.3},{:.3},{:.3},{}",
                csv_field(&name),
                m.count,
                m.mean_ms,
                m.p50_ms,
                m.p90_ms,
                m.p99_ms,
                m.p999_ms,
                m.max_ms,
                m.clamped
            );
        }
        s
    }

    /// Pretty JSON object `{ name: summary, … }` in metric order.
    pub fn to_json(&self) -> Result<String, LatencyError> {
        Ok(serde_json::to_string_pretty(&SummaryMap(
            &self.summaries(),
        ))?)
    }

    /// Writes `<prefix><name>.hgrm` (values in ms) for every metric, then
    /// `<prefix>latency.json` and `<prefix>latency.csv`, into `dir` (created if needed).
    /// Characters of metric names outside `[A-Za-z0-9_.-]` become `_`; `prefix` is used
    /// as given. Returns the paths written, in that order.
    pub fn write_dir(
        &self,
        dir: impl AsRef<Path>,
        prefix: &str,
    ) -> Result<Vec<PathBuf>, LatencyError> {
        let dir = dir.as_ref();
        let mut files: Vec<(String, String)> = Vec::with_capacity(self.metrics.len() + 2);
        for (name, hist) in &self.metrics {
            let file = format!("{prefix}{}.hgrm", sanitize(name));
            if let Some(i) = files.iter().position(|(f, _)| *f == file) {
                return Err(LatencyError::FileNameCollision {
                    first: self.metrics[i].0.clone(),
                    second: name.clone(),
                    file,
                });
            }
            files.push((file, hgrm_string(hist, MICROS_PER_MILLI)?));
        }
        files.push((format!("{prefix}latency.json"), self.to_json()? + "\n"));
        files.push((format!("{prefix}latency.csv"), self.to_csv()));

        fs::create_dir_all(dir).map_err(|source| LatencyError::CreateDir {
            path: dir.to_path_buf(),
            source,
        })?;
        let mut written = Vec::with_capacity(files.len());
        for (file, contents) in files {
            let path = dir.join(file);
            fs::write(&path, contents).map_err(|source| LatencyError::WriteFile {
                path: path.clone(),
                source,
            })?;
            written.push(path);
        }
        Ok(written)
    }
}

impl Serialize for LatencyReport {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.metrics.iter())
    }
}

impl From<Vec<(String, LatencyHistogram)>> for LatencyReport {
    fn from(metrics: Vec<(String, LatencyHistogram)>) -> Self {
        let mut report = LatencyReport::new();
        for (name, hist) in &metrics {
            report.metric_mut(name).merge(hist);
        }
        report
    }
}

/// Serialises summaries as a JSON object that keeps their order.
struct SummaryMap<'a>(&'a [(String, LatencySummary)]);

impl Serialize for SummaryMap<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.0.iter().map(|(n, s)| (n, s)))
    }
}

/// A file-name-safe version of a metric name.
fn sanitize(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Quotes a CSV field when it needs it.
fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_owned()
    }
}
