//! [`LatencySummary`]: the handful of numbers usually reported for a latency metric.

use serde::{Deserialize, Serialize};

use super::histogram::LatencyHistogram;

/// Count, mean, percentiles and maximum of a histogram, in milliseconds.
///
/// Percentiles are HdrHistogram values (the highest value equivalent to the bucket that
/// holds the quantile), so they are within 0.1% of the exact sample percentiles.
/// Every field is 0 for an empty histogram.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct LatencySummary {
    /// Number of samples.
    pub count: u64,
    /// Mean, ms.
    pub mean_ms: f64,
    /// Median, ms.
    pub p50_ms: f64,
    /// 90th percentile, ms.
    pub p90_ms: f64,
    /// 99th percentile, ms.
    pub p99_ms: f64,
    /// 99.9th percentile, ms.
    pub p999_ms: f64,
    /// Maximum, ms.
    pub max_ms: f64,
    /// Samples above one hour, recorded as one hour.
    #[serde(default)]
    pub clamped: u64,
}

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

impl LatencySummary {
    /// Summarises `hist`.
    pub fn from_histogram(hist: &LatencyHistogram) -> Self {
        if hist.is_empty() {
            return Self {
                clamped: hist.clamped(),
                ..Self::default()
            };
        }
        Self {
            count: hist.count(),
            mean_ms: hist.mean_us() / 1000.0,
            p50_ms: ms(hist.value_at_quantile_us(0.5)),
            p90_ms: ms(hist.value_at_quantile_us(0.9)),
            p99_ms: ms(hist.value_at_quantile_us(0.99)),
            p999_ms: ms(hist.value_at_quantile_us(0.999)),
            max_ms: ms(hist.max_us()),
            clamped: hist.clamped(),
        }
    }
}

impl From<&LatencyHistogram> for LatencySummary {
    fn from(hist: &LatencyHistogram) -> Self {
        Self::from_histogram(hist)
    }
}
