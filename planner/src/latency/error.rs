//! Typed errors of the latency module.

use std::io;
use std::path::PathBuf;

use thiserror::Error;

/// Why a byte buffer is not a histogram written by
/// [`LatencyHistogram::to_bytes`](super::LatencyHistogram::to_bytes).
#[derive(Debug, Error, Clone, PartialEq)]
pub enum DecodeError {
    /// Fewer bytes than the fixed 40-byte V2 header.
    #[error("{len} bytes is shorter than the 40-byte HdrHistogram V2 header")]
    TooShort {
        /// Bytes given.
        len: usize,
    },
    /// The first four bytes are not the HdrHistogram V2 cookie.
    #[error("cookie {found:#010x} is not the HdrHistogram V2 cookie {expected:#010x}")]
    BadCookie {
        /// Cookie found.
        found: u32,
        /// Cookie expected.
        expected: u32,
    },
    /// A deflate-compressed V2 histogram (as in `.hlog` files); only the plain encoding is read.
    #[error("compressed HdrHistogram V2 encoding is not supported; use the plain V2 encoding")]
    CompressedUnsupported,
    /// The header announces a payload that the buffer does not hold.
    #[error("header announces a {declared}-byte payload but {available} bytes follow the header")]
    PayloadLength {
        /// Payload length from the header.
        declared: u64,
        /// Bytes after the header.
        available: usize,
    },
    /// The histogram was recorded with another range, precision or encoding option.
    #[error(
        "incompatible histogram: lowest {low}, highest {high}, {sigfig} significant digits, \
         normalizing offset {offset}, ratio {ratio} (expected lowest 1, highest {expected_high}, \
         3 digits, offset 0, ratio 1)"
    )]
    Incompatible {
        /// Lowest discernible value.
        low: u64,
        /// Highest trackable value.
        high: u64,
        /// Significant value digits.
        sigfig: u32,
        /// Normalizing index offset.
        offset: u32,
        /// Integer-to-double conversion ratio.
        ratio: f64,
        /// The highest trackable value this module uses.
        expected_high: u64,
    },
    /// The counts payload is malformed.
    #[error("malformed counts payload: {0}")]
    Payload(String),
    /// Bytes after the payload that are not this module's clamped-count trailer.
    #[error("{0} unexpected bytes after the histogram payload")]
    TrailingBytes(usize),
}

/// Everything that can go wrong while encoding, writing or plotting latency histograms.
#[derive(Debug, Error)]
pub enum LatencyError {
    /// Bytes that do not decode to a histogram.
    #[error("cannot decode latency histogram: {0}")]
    Decode(#[from] DecodeError),
    /// A histogram that cannot be encoded (a count above `i64::MAX`).
    #[error("cannot encode latency histogram: {0}")]
    Encode(String),
    /// A value unit ratio that is not finite and positive.
    #[error("value unit ratio must be finite and positive, got {0}")]
    InvalidUnitRatio(f64),
    /// Writing to a stream failed.
    #[error("write failed: {0}")]
    Io(#[from] io::Error),
    /// Creating a directory failed.
    #[error("cannot create directory {path}: {source}")]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// The operating system's error.
        source: io::Error,
    },
    /// Writing a file failed.
    #[error("cannot write {path}: {source}")]
    WriteFile {
        /// The file.
        path: PathBuf,
        /// The operating system's error.
        source: io::Error,
    },
    /// Two metric names map to the same file name once sanitised.
    #[error("metrics `{first}` and `{second}` would both be written to {file}")]
    FileNameCollision {
        /// The first metric.
        first: String,
        /// The second metric.
        second: String,
        /// The shared file name.
        file: String,
    },
    /// Serialising summaries to JSON failed.
    #[error("cannot serialise latency summaries: {0}")]
    Json(#[from] serde_json::Error),
    /// Plotters reported an error while drawing.
    #[error("cannot draw plot: {0}")]
    Plot(String),
}
