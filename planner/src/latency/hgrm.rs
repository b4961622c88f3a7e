//! The `.hgrm` percentile-distribution text format of HdrHistogram.
//!
//! Byte for byte what Java's `AbstractHistogram.outputPercentileDistribution(out, 5, ratio)`
//! prints for a histogram with 3 significant digits, so files load in the HdrHistogram
//! plotter (<https://hdrhistogram.github.io/HdrHistogram/plotFiles.html>) and in any
//! tool that reads Java's output.

use std::io::Write;

use super::error::LatencyError;
use super::histogram::{LatencyHistogram, SIGNIFICANT_DIGITS};

/// Percentile ticks per half distance to 100%, as in the usual Java output.
pub const TICKS_PER_HALF_DISTANCE: u32 = 5;

/// Value unit ratio that prints microsecond samples as milliseconds.
pub const MICROS_PER_MILLI: f64 = 1000.0;

/// Writes `hist` as an `.hgrm` percentile distribution, dividing values by `unit_ratio`
/// (use [`MICROS_PER_MILLI`] for milliseconds).
///
/// Layout: the header `       Value     Percentile TotalCount 1/(1-Percentile)` and a
/// blank line; one row per percentile step as `%12.3f %2.12f %10d %14.2f`, the final
/// (100%) row without its infinite last column; then the footer lines
/// `#[Mean    = …, StdDeviation   = …]`, `#[Max     = …, Total count    = …]` and
/// `#[Buckets = …, SubBuckets     = …]`. An empty histogram gives the header and a
/// footer of zeros.
pub fn write_hgrm(
    hist: &LatencyHistogram,
    out: &mut impl Write,
    unit_ratio: f64,
) -> Result<(), LatencyError> {
    if !(unit_ratio.is_finite() && unit_ratio > 0.0) {
        return Err(LatencyError::InvalidUnitRatio(unit_ratio));
    }
    let p = usize::from(SIGNIFICANT_DIGITS);
    write!(
        out,
        "{:>12} {:>14} {:>10} {:>14}\n\n",
        "Value", "Percentile", "TotalCount", "1/(1-Percentile)"
    )?;
    for step in hist.percentile_steps(TICKS_PER_HALF_DISTANCE) {
        let value = step.value_us as f64 / unit_ratio;
        if step.quantile < 1.0 {
            writeln!(
                out,
                "{value:12.p$} {:2.12} {:10} {:14.2}",
                step.quantile,
                step.total_count,
                1.0 / (1.0 - step.quantile)
            )?;
        } else {
            writeln!(
                out,
                "{value:12.p$} {:2.12} {:10}",
                step.quantile, step.total_count
            )?;
        }
    }
    writeln!(
        out,
        "#[Mean    = {:12.p$}, StdDeviation   = {:12.p$}]",
        hist.mean_us() / unit_ratio,
        hist.stdev_us() / unit_ratio
    )?;
    writeln!(
        out,
        "#[Max     = {:12.p$}, Total count    = {:12}]",
        hist.max_us() as f64 / unit_ratio,
        hist.count()
    )?;
    writeln!(
        out,
        "#[Buckets = {:12}, SubBuckets     = {:12}]",
        hist.bucket_count(),
        hist.sub_bucket_count()
    )?;
    Ok(())
}

/// [`write_hgrm`] into a `String`.
pub fn hgrm_string(hist: &LatencyHistogram, unit_ratio: f64) -> Result<String, LatencyError> {
    let mut buf = Vec::new();
    write_hgrm(hist, &mut buf, unit_ratio)?;
    // Only ASCII is written.
    Ok(String::from_utf8_lossy(&buf).into_owned())
}
