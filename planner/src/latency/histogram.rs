//! [`LatencyHistogram`]: an HdrHistogram of latencies in microseconds.

use std::fmt;
use std::time::Duration;

use hdrhistogram::Histogram;
use hdrhistogram::serialization::{Serializer as _, V2Serializer};
use serde::de::{self, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::encoding;
use super::error::{DecodeError, LatencyError};

/// Lowest discernible latency, in microseconds.
pub const LOWEST_US: u64 = 1;
/// Highest trackable latency, in microseconds (one hour). Larger samples are clamped to it.
pub const HIGHEST_US: u64 = 3_600_000_000;
/// Significant decimal digits kept for every value (relative error below 0.1%).
pub const SIGNIFICANT_DIGITS: u8 = 3;

/// One step of a percentile iteration: what a `.hgrm` row or a plot point shows.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct PercentileStep {
    /// Highest value equivalent to the step's bucket, in microseconds.
    pub value_us: u64,
    /// The quantile iterated to, in `[0, 1]`.
    pub quantile: f64,
    /// Samples at or below `value_us`.
    pub total_count: u64,
}

/// A latency histogram in microseconds from [`LOWEST_US`] to [`HIGHEST_US`] with
/// [`SIGNIFICANT_DIGITS`] significant digits.
///
/// It never resizes: samples above one hour are recorded as one hour and counted in
/// [`clamped`](Self::clamped). Histograms merge exactly, also across processes through
/// [`to_bytes`](Self::to_bytes) and [`from_bytes`](Self::from_bytes) (or serde, which
/// goes through the same bytes).
#[derive(Clone)]
pub struct LatencyHistogram {
    hist: Histogram<u64>,
    clamped: u64,
}

impl LatencyHistogram {
    /// An empty histogram.
    pub fn new() -> Self {
        let hist = Histogram::new_with_bounds(LOWEST_US, HIGHEST_US, SIGNIFICANT_DIGITS)
            .expect("constant histogram bounds are valid");
        Self { hist, clamped: 0 }
    }

    /// Records one sample of `us` microseconds (clamped to one hour).
    pub fn record_us(&mut self, us: u64) {
        self.record_n_us(us, 1);
    }

    /// Records `n` samples of `us` microseconds each (clamped to one hour).
    pub fn record_n_us(&mut self, us: u64, n: u64) {
        if n == 0 {
            return;
        }
        if us > HIGHEST_US {
            self.clamped = self.clamped.saturating_add(n);
        }
        self.hist.saturating_record_n(us.min(HIGHEST_US), n);
    }

    /// Records one sample of duration `d`, truncated to whole microseconds.
    pub fn record(&mut self, d: Duration) {
        self.record_us(u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
    }

    /// Adds every sample of `other` to this histogram.
    pub fn merge(&mut self, other: &LatencyHistogram) {
        if self.hist.add(&other.hist).is_err() {
            // Unreachable: both histograms have the same fixed range. Fall back to
            // re-recording each bucket, clamped, rather than losing samples.
            for v in other.hist.iter_recorded() {
                self.hist
                    .saturating_record_n(v.value_iterated_to(), v.count_at_value());
            }
        }
        self.clamped = self.clamped.saturating_add(other.clamped);
    }

    /// Number of samples recorded.
    pub fn count(&self) -> u64 {
        self.hist.len()
    }

    /// Samples at or below `us` microseconds, within the histogram's precision
    /// (what a Prometheus bucket `le` counts).
    pub fn count_at_or_below(&self, us: u64) -> u64 {
        self.hist.count_between(0, us.min(HIGHEST_US))
    }

    /// True when no sample has been recorded.
    pub fn is_empty(&self) -> bool {
        self.hist.is_empty()
    }

    /// Number of samples above one hour that were recorded as one hour.
    pub fn clamped(&self) -> u64 {
        self.clamped
    }

    /// The value (µs) that a fraction `q` of the samples are at or below, within the
    /// histogram's precision; `q` is clamped to `[0, 1]` (NaN counts as 0). 0 when empty.
    pub fn value_at_quantile_us(&self, q: f64) -> u64 {
        let q = if q.is_nan() { 0.0 } else { q.clamp(0.0, 1.0) };
        self.hist.value_at_quantile(q)
    }

    /// [`value_at_quantile_us`](Self::value_at_quantile_us) as a [`Duration`].
    pub fn value_at_quantile(&self, q: f64) -> Duration {
        Duration::from_micros(self.value_at_quantile_us(q))
    }

    /// Mean of the samples in microseconds (0 when empty).
    pub fn mean_us(&self) -> f64 {
        self.hist.mean()
    }

    /// Standard deviation of the samples in microseconds (0 when empty).
    pub fn stdev_us(&self) -> f64 {
        self.hist.stdev()
    }

    /// Largest sample in microseconds, rounded up to its bucket's highest equivalent
    /// value (0 when empty).
    pub fn max_us(&self) -> u64 {
        if self.is_empty() { 0 } else { self.hist.max() }
    }

    /// Smallest sample in microseconds, rounded down to its bucket's lowest equivalent
    /// value (0 when empty).
    pub fn min_us(&self) -> u64 {
        if self.is_empty() { 0 } else { self.hist.min() }
    }

    /// Encodes the histogram in the HdrHistogram V2 binary format (uncompressed), which
    /// any HdrHistogram implementation decodes. When samples were clamped, a 12-byte
    /// trailer carrying the clamped count follows the V2 payload; other decoders ignore it.
    ///
    /// Fails only if a bucket count exceeds `i64::MAX`.
    pub fn to_bytes(&self) -> Result<Vec<u8>, LatencyError> {
        let mut out = Vec::new();
        V2Serializer::new()
            .serialize(&self.hist, &mut out)
            .map_err(|e| LatencyError::Encode(e.to_string()))?;
        encoding::push_trailer(&mut out, self.clamped);
        Ok(out)
    }

    /// Decodes bytes from [`to_bytes`](Self::to_bytes) (or a plain V2 histogram with the
    /// same range and precision from another HdrHistogram implementation).
    ///
    /// Garbage gives a [`DecodeError`]; this never panics and allocates at most in
    /// proportion to the input and the fixed histogram size.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut checked = encoding::check(bytes)?;
        let hist: Histogram<u64> = hdrhistogram::serialization::Deserializer::new()
            .deserialize(&mut checked.histogram)
            .map_err(|e| DecodeError::Payload(e.to_string()))?;
        if checked.clamped > hist.count_at(HIGHEST_US) {
            return Err(DecodeError::Payload(format!(
                "clamped count {} exceeds the {} samples at the one-hour bucket",
                checked.clamped,
                hist.count_at(HIGHEST_US)
            )));
        }
        Ok(Self {
            hist,
            clamped: checked.clamped,
        })
    }

    /// Percentile steps as `outputPercentileDistribution` prints them: ticks per half
    /// distance to 100%, the last step at quantile 1. Empty for an empty histogram.
    pub(crate) fn percentile_steps(&self, ticks_per_half_distance: u32) -> Vec<PercentileStep> {
        if self.is_empty() {
            return Vec::new();
        }
        let mut total = 0u64;
        self.hist
            .iter_quantiles(ticks_per_half_distance.max(1))
            .map(|v| {
                total = total.saturating_add(v.count_since_last_iteration());
                PercentileStep {
                    value_us: v.value_iterated_to(),
                    quantile: v.quantile_iterated_to(),
                    total_count: total,
                }
            })
            .collect()
    }

    /// Number of buckets (powers of two) covering the range, as HdrHistogram reports it.
    pub(crate) fn bucket_count(&self) -> u64 {
        u64::from(self.hist.buckets())
    }

    /// Number of sub-buckets per bucket, as HdrHistogram reports it (2048 for 3 digits).
    pub(crate) fn sub_bucket_count(&self) -> u64 {
        // counts length = (buckets + 1) * sub_bucket_count / 2
        let len = self.hist.distinct_values() as u64;
        2 * len / (self.bucket_count() + 1)
    }
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        Self::new()
    }
}

impl PartialEq for LatencyHistogram {
    fn eq(&self, other: &Self) -> bool {
        self.clamped == other.clamped && self.hist == other.hist
    }
}

impl fmt::Debug for LatencyHistogram {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LatencyHistogram")
            .field("count", &self.count())
            .field("min_us", &self.min_us())
            .field("mean_us", &self.mean_us())
            .field("max_us", &self.max_us())
            .field("clamped", &self.clamped)
            .finish()
    }
}

impl Serialize for LatencyHistogram {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let bytes = self.to_bytes().map_err(serde::ser::Error::custom)?;
        serializer.serialize_bytes(&bytes)
    }
}

impl<'de> Deserialize<'de> for LatencyHistogram {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let bytes = deserializer.deserialize_byte_buf(BytesVisitor)?;
        LatencyHistogram::from_bytes(&bytes).map_err(de::Error::custom)
    }
}

/// Accepts bytes as a byte string or as a sequence of `u8` (how JSON writes them).
struct BytesVisitor;

impl<'de> Visitor<'de> for BytesVisitor {
    type Value = Vec<u8>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("HdrHistogram V2 bytes")
    }

    fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Self::Value, E> {
        Ok(v.to_vec())
    }

    fn visit_byte_buf<E: de::Error>(self, v: Vec<u8>) -> Result<Self::Value, E> {
        Ok(v)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1 << 16));
        while let Some(b) = seq.next_element::<u8>()? {
            out.push(b);
        }
        Ok(out)
    }
}
