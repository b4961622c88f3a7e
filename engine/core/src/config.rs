//! The scheduling knobs, with the one set of defaults every executor uses.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use thiserror::Error;
use tokenflow_planner::router::RouterChoice;

use crate::batch::{BatchLimits, CallHold};

/// How requests are admitted, batched, routed and watched over: the same
/// settings for the timely engine, the simulator and the plain loop.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SchedulerConfig {
    /// Most tokens (prefill and decode together) in one stage call.
    pub token_budget: usize,
    /// Longest prefill chunk, so long prompts do not stall decodes.
    pub max_prefill_chunk: usize,
    /// Most sequences in one stage call.
    pub max_batch_sequences: usize,
    /// Longest a node holds a call for its sequences still on their way back,
    /// as a fraction of its mean call time (0: never; see [`CallHold`]).
    #[serde(default = "default_batch_hold")]
    pub batch_hold: f64,
    /// Most sequences running at once (the rest wait in order); `None`: only
    /// KV room limits them.
    pub max_running: Option<usize>,
    /// Path selection for new and restarted sequences.
    pub router: RouterChoice,
    /// How often every node is pinged while work is in flight.
    pub heartbeat: Duration,
    /// A node silent for this long (and for four of its recent round trips) is
    /// declared down: the detection delay.
    pub suspect_after: Duration,
    /// A sequence left without any path for this long fails.
    pub stall_timeout: Duration,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        Self {
            token_budget: 512,
            max_prefill_chunk: 256,
            max_batch_sequences: 64,
            batch_hold: default_batch_hold(),
            max_running: None,
            router: RouterChoice::default(),
            heartbeat: Duration::from_millis(50),
            suspect_after: Duration::from_millis(2000),
            stall_timeout: Duration::from_secs(30),
        }
    }
}

fn default_batch_hold() -> f64 {
    0.25
}

/// A scheduling setting out of its range.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[error("invalid option {field}: {message}")]
pub struct ConfigError {
    /// The setting (its field name).
    pub field: &'static str,
    /// What is wrong.
    pub message: String,
}

impl SchedulerConfig {
    /// Checks every setting: counts positive, a prefill chunk within the token
    /// budget, a positive heartbeat no longer than the detection delay.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let positive = [
            ("token_budget", self.token_budget),
            ("max_prefill_chunk", self.max_prefill_chunk),
            ("max_batch_sequences", self.max_batch_sequences),
            ("max_running", self.max_running.unwrap_or(1)),
        ];
        for (field, v) in positive {
            if v == 0 {
                return Err(ConfigError {
                    field,
                    message: "must be positive".into(),
                });
            }
        }
        if self.max_prefill_chunk > self.token_budget {
            return Err(ConfigError {
                field: "max_prefill_chunk",
                message: format!(
                    "{} is larger than the token budget {}",
                    self.max_prefill_chunk, self.token_budget
                ),
            });
        }
        if !(0.0..=1.0).contains(&self.batch_hold) {
            return Err(ConfigError {
                field: "batch_hold",
                message: format!("{} is not a fraction in 0..=1", self.batch_hold),
            });
        }
        if self.heartbeat.is_zero() || self.suspect_after < self.heartbeat {
            return Err(ConfigError {
                field: "suspect_after",
                message: format!(
                    "the detection delay {:?} must be at least one heartbeat ({:?}, positive)",
                    self.suspect_after, self.heartbeat
                ),
            });
        }
        if self.stall_timeout.is_zero() {
            return Err(ConfigError {
                field: "stall_timeout",
                message: "must be positive".into(),
            });
        }
        Ok(())
    }

    /// The limits of one stage call.
    pub fn batch_limits(&self) -> BatchLimits {
        BatchLimits {
            token_budget: self.token_budget,
            max_sequences: self.max_batch_sequences,
        }
    }

    /// How a node on paths of `path_stages` stages holds its calls: by
    /// [`SchedulerConfig::batch_hold`] on one-stage paths, never on longer
    /// ones. Measured: on one node the hold took `tokenflow serve` from 0.70
    /// to 1.02 of batch mode's throughput; on pipelines the simulator's study
    /// (`cargo run --release --example study -p tokenflow-sim`) lost goodput
    /// with it, even with prefills never held and idle nodes never holding:
    /// `chain-dp` on helix-24 (7 stages) 472 -> 349 tok/s within the SLO,
    /// `swarm` (6 stages) 409 -> 388, throughput unchanged, because the
    /// sequences of a pipeline spend much of their time on links, so a node
    /// rarely sees `held / S` of them at once and each hop's wait adds to every
    /// token and, through longer-held KV, to admission.
    pub fn call_hold(&self, path_stages: usize) -> CallHold {
        if path_stages > 1 {
            return CallHold::NEVER;
        }
        CallHold {
            fraction: self.batch_hold,
            path_stages,
        }
    }

    /// [`SchedulerConfig::heartbeat`] in µs.
    pub fn heartbeat_us(&self) -> u64 {
        self.heartbeat.as_micros().min(u64::MAX as u128) as u64
    }

    /// [`SchedulerConfig::suspect_after`] in µs.
    pub fn suspect_after_us(&self) -> u64 {
        self.suspect_after.as_micros().min(u64::MAX as u128) as u64
    }

    /// [`SchedulerConfig::stall_timeout`] in µs.
    pub fn stall_timeout_us(&self) -> u64 {
        self.stall_timeout.as_micros().min(u64::MAX as u128) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_each_bad_setting_is_named() {
        SchedulerConfig::default().validate().unwrap();
        type Breaker = fn(&mut SchedulerConfig);
        let cases: [(&str, Breaker); 8] = [
            ("batch_hold", |c| c.batch_hold = 1.5),
            ("batch_hold", |c| c.batch_hold = f64::NAN),
            ("token_budget", |c| c.token_budget = 0),
            ("max_batch_sequences", |c| c.max_batch_sequences = 0),
            ("max_running", |c| c.max_running = Some(0)),
            ("max_prefill_chunk", |c| c.max_prefill_chunk = 1000),
            ("suspect_after", |c| {
                c.suspect_after = Duration::from_millis(1)
            }),
            ("stall_timeout", |c| c.stall_timeout = Duration::ZERO),
        ];
        for (field, break_it) in cases {
            let mut c = SchedulerConfig::default();
            break_it(&mut c);
            assert_eq!(c.validate().unwrap_err().field, field);
        }
    }
}
