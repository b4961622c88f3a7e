//! Wall-clock microseconds shared by every worker and process on one host.
//!
//! Link emulation stamps a message when it leaves a node and delays it at the
//! receiver; an `Instant` cannot cross processes, the system clock can.

use std::time::{SystemTime, UNIX_EPOCH};

/// Microseconds since the Unix epoch.
pub fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}
