//! Latency histograms shared by the engine's `run`/`bench` and the simulator.
//!
//! * [`LatencyHistogram`]: an HdrHistogram of microseconds (1 µs to 1 hour, 3
//!   significant digits, clamping above), mergeable and portable as HdrHistogram V2 bytes;
//! * [`write_hgrm`]: the `.hgrm` percentile distribution text of Java's HdrHistogram;
//! * [`LatencySummary`] and [`LatencyReport`]: named metrics, with Markdown, CSV and
//!   JSON summaries and [`LatencyReport::write_dir`];
//! * [`plot`]: SVG percentile plots of one or several runs.

mod encoding;
pub mod error;
pub mod hgrm;
pub mod histogram;
pub mod plot;
pub mod report;
pub mod summary;

pub use error::{DecodeError, LatencyError};
pub use hgrm::{MICROS_PER_MILLI, TICKS_PER_HALF_DISTANCE, hgrm_string, write_hgrm};
pub use histogram::{HIGHEST_US, LOWEST_US, LatencyHistogram, SIGNIFICANT_DIGITS};
pub use plot::{
    latency_cdf_multi_svg, latency_cdf_multi_svg_string, latency_cdf_svg, latency_cdf_svg_string,
};
pub use report::LatencyReport;
pub use summary::LatencySummary;

/// Conventional metric names of a [`LatencyReport`].
pub mod metric {
    /// Time to first token: request arrival to first generated token.
    pub const TTFT: &str = "ttft";
    /// Time between consecutive generated tokens of a request.
    pub const INTER_TOKEN: &str = "inter_token";
    /// End to end: request arrival to last token.
    pub const E2E: &str = "e2e";
    /// Time a request waits before its prefill starts.
    pub const QUEUE: &str = "queue";
}
