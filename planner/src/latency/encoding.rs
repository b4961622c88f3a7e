//! Validation of HdrHistogram V2 bytes before they reach the decoder, and this module's
//! clamped-count trailer.
//!
//! The `hdrhistogram` decoder trusts its header (it allocates the announced payload
//! length and a histogram of the announced range) and negates a zig-zag value that can
//! overflow. Checking the header against the fixed range and scanning the varints first
//! makes decoding of arbitrary bytes panic-free and bounded in memory.

use super::error::DecodeError;
use super::histogram::{HIGHEST_US, LOWEST_US, SIGNIFICANT_DIGITS};

/// Cookie of the plain V2 encoding.
const V2_COOKIE: u32 = 0x1c84_9303 | 0x10;
/// Cookie of the deflate-compressed V2 encoding.
const V2_COMPRESSED_COOKIE: u32 = 0x1c84_9304 | 0x10;
/// Size of the V2 header.
const HEADER_LEN: usize = 40;
/// Marks the trailer that carries the clamped count.
const TRAILER_MAGIC: [u8; 4] = *b"TFcl";
/// Size of the trailer: magic and a big-endian `u64`.
const TRAILER_LEN: usize = 12;

/// Bytes that passed [`check`].
pub(crate) struct Checked<'a> {
    /// Header and payload, without any trailer.
    pub histogram: &'a [u8],
    /// Clamped count from the trailer (0 without one).
    pub clamped: u64,
}

/// Appends the clamped-count trailer when `clamped` is non-zero.
pub(crate) fn push_trailer(out: &mut Vec<u8>, clamped: u64) {
    if clamped > 0 {
        out.extend_from_slice(&TRAILER_MAGIC);
        out.extend_from_slice(&clamped.to_be_bytes());
    }
}

fn be_u32(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_be_bytes(a)
}

fn be_u64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_be_bytes(a)
}

/// Checks the header, the payload's varints and the trailer.
pub(crate) fn check(bytes: &[u8]) -> Result<Checked<'_>, DecodeError> {
    if bytes.len() < HEADER_LEN {
        return Err(DecodeError::TooShort { len: bytes.len() });
    }
    match be_u32(bytes, 0) {
        V2_COOKIE => {}
        V2_COMPRESSED_COOKIE => return Err(DecodeError::CompressedUnsupported),
        found => {
            return Err(DecodeError::BadCookie {
                found,
                expected: V2_COOKIE,
            });
        }
    }
    let declared = be_u32(bytes, 4);
    let offset = be_u32(bytes, 8);
    let sigfig = be_u32(bytes, 12);
    let low = be_u64(bytes, 16);
    let high = be_u64(bytes, 24);
    let ratio = f64::from_bits(be_u64(bytes, 32));
    if offset != 0
        || sigfig != u32::from(SIGNIFICANT_DIGITS)
        || low != LOWEST_US
        || high != HIGHEST_US
        || ratio != 1.0
    {
        return Err(DecodeError::Incompatible {
            low,
            high,
            sigfig,
            offset,
            ratio,
            expected_high: HIGHEST_US,
        });
    }
    let rest = &bytes[HEADER_LEN..];
    let payload_len = usize::try_from(declared)
        .ok()
        .filter(|&n| n <= rest.len())
        .ok_or(DecodeError::PayloadLength {
            declared: u64::from(declared),
            available: rest.len(),
        })?;
    scan_payload(&rest[..payload_len])?;
    let trailer = &rest[payload_len..];
    let clamped = match trailer.len() {
        0 => 0,
        TRAILER_LEN if trailer[..4] == TRAILER_MAGIC => be_u64(trailer, 4),
        n => return Err(DecodeError::TrailingBytes(n)),
    };
    Ok(Checked {
        histogram: &bytes[..HEADER_LEN + payload_len],
        clamped,
    })
}

/// Reads the payload's LEB128-style varints (at most 9 bytes, the ninth contributing all
/// 8 bits) exactly as the decoder will, rejecting truncation and the one zig-zag value
/// (`u64::MAX`, i.e. `i64::MIN`) whose negation overflows.
fn scan_payload(payload: &[u8]) -> Result<(), DecodeError> {
    let mut i = 0;
    while i < payload.len() {
        let mut value: u64 = 0;
        let mut k = 0;
        loop {
            let Some(&b) = payload.get(i + k) else {
                return Err(DecodeError::Payload(format!(
                    "varint at byte {i} is truncated"
                )));
            };
            if k == 8 {
                value |= u64::from(b) << 56;
                k += 1;
                break;
            }
            value |= u64::from(b & 0x7f) << (7 * k);
            k += 1;
            if b & 0x80 == 0 {
                break;
            }
        }
        if value == u64::MAX {
            return Err(DecodeError::Payload(format!(
                "zig-zag value at byte {i} is out of range"
            )));
        }
        i += k;
    }
    Ok(())
}
