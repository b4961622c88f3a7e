//! Node failure models: MTBF and MTTR given directly or measured from a trace
//! of up/down intervals.
//!
//! A trace file is CSV with lines `start_hours,end_hours,state` where state is
//! `up` or `down`; a first line starting with `start` is a header, `#` starts a comment.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{PlanError, positive};

/// A failure model as written in a cluster file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum AvailabilitySpec {
    /// Mean time between failures and mean time to repair, in hours.
    Model {
        /// Mean time between failures (hours up between two failures).
        mtbf_hours: f64,
        /// Mean time to repair (hours down per failure).
        mttr_hours: f64,
    },
    /// A trace file of up/down intervals, relative to the cluster file.
    Trace {
        /// Path of the CSV trace.
        trace: String,
    },
}

/// A resolved failure model. `mtbf_hours` is infinite for a node that never fails.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Availability {
    /// Mean time between failures in hours.
    pub mtbf_hours: f64,
    /// Mean time to repair in hours.
    pub mttr_hours: f64,
}

impl Availability {
    /// A node that never fails.
    pub fn always_up() -> Availability {
        Availability {
            mtbf_hours: f64::INFINITY,
            mttr_hours: 0.0,
        }
    }

    /// Steady-state probability that the node is up: MTBF / (MTBF + MTTR).
    pub fn steady_state(&self) -> f64 {
        if self.mtbf_hours.is_infinite() {
            1.0
        } else {
            self.mtbf_hours / (self.mtbf_hours + self.mttr_hours)
        }
    }

    /// Expected failures per hour of wall time: 1 / (MTBF + MTTR).
    pub fn failures_per_hour(&self) -> f64 {
        if self.mtbf_hours.is_infinite() {
            0.0
        } else {
            1.0 / (self.mtbf_hours + self.mttr_hours)
        }
    }

    /// Measures MTBF and MTTR from `(start, end, up)` intervals in hours.
    pub fn from_intervals(
        field: &str,
        intervals: &[(f64, f64, bool)],
    ) -> Result<Availability, PlanError> {
        let (mut up, mut down, mut failures) = (0.0, 0.0, 0u32);
        for (k, &(s, e, is_up)) in intervals.iter().enumerate() {
            if !(s.is_finite() && e.is_finite() && e > s) {
                return Err(PlanError::InvalidField {
                    field: format!("{field} line {}", k + 1),
                    message: format!("interval {s}..{e} must have end > start"),
                });
            }
            if is_up {
                up += e - s;
            } else {
                down += e - s;
                failures += 1;
            }
        }
        if failures == 0 {
            return Ok(Availability::always_up());
        }
        Ok(Availability {
            mtbf_hours: (up / failures as f64).max(1e-9),
            mttr_hours: down / failures as f64,
        })
    }
}

impl AvailabilitySpec {
    /// Checks the figures or reads the trace (relative to `base`).
    pub fn resolve(&self, field: &str, base: Option<&Path>) -> Result<Availability, PlanError> {
        match self {
            AvailabilitySpec::Model {
                mtbf_hours,
                mttr_hours,
            } => {
                let mtbf = positive(&format!("{field}.mtbf_hours"), *mtbf_hours)?;
                let mttr = crate::error::non_negative(&format!("{field}.mttr_hours"), *mttr_hours)?;
                Ok(Availability {
                    mtbf_hours: mtbf,
                    mttr_hours: mttr,
                })
            }
            AvailabilitySpec::Trace { trace } => {
                let path = match base {
                    Some(b) => b.join(trace),
                    None => Path::new(trace).to_path_buf(),
                };
                let text = std::fs::read_to_string(&path).map_err(|e| PlanError::Io {
                    path: path.display().to_string(),
                    message: e.to_string(),
                })?;
                let shown = format!("{field}.trace ({})", path.display());
                Availability::from_intervals(&shown, &parse_trace(&shown, &text)?)
            }
        }
    }
}

/// Parses a CSV trace into `(start, end, up)` intervals.
pub fn parse_trace(field: &str, text: &str) -> Result<Vec<(f64, f64, bool)>, PlanError> {
    let mut out = Vec::new();
    for (k, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || (k == 0 && line.starts_with("start")) {
            continue;
        }
        let bad = |message: String| PlanError::InvalidField {
            field: format!("{field} line {}", k + 1),
            message,
        };
        let cols: Vec<&str> = line.split(',').map(str::trim).collect();
        if cols.len() != 3 {
            return Err(bad(format!(
                "expected start_hours,end_hours,state, got `{line}`"
            )));
        }
        let num = |s: &str| s.parse::<f64>().map_err(|e| bad(format!("`{s}`: {e}")));
        let up = match cols[2] {
            "up" => true,
            "down" => false,
            other => return Err(bad(format!("state must be up or down, got `{other}`"))),
        };
        out.push((num(cols[0])?, num(cols[1])?, up));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trace_gives_mtbf_and_mttr() {
        let text = "start_hours,end_hours,state\n0,10,up\n10,12,down\n12,30,up\n30,31,down\n";
        let iv = parse_trace("t", text).unwrap();
        let a = Availability::from_intervals("t", &iv).unwrap();
        assert!((a.mtbf_hours - 14.0).abs() < 1e-9);
        assert!((a.mttr_hours - 1.5).abs() < 1e-9);
        assert!((a.steady_state() - 14.0 / 15.5).abs() < 1e-12);
    }

    #[test]
    fn bad_state_is_reported_with_line() {
        let err = parse_trace("t", "0,1,sideways").unwrap_err();
        assert!(err.to_string().contains("line 1"), "{err}");
    }

    #[test]
    fn zero_mtbf_rejected() {
        let spec = AvailabilitySpec::Model {
            mtbf_hours: 0.0,
            mttr_hours: 1.0,
        };
        let err = spec.resolve("nodes[0].availability", None).unwrap_err();
        assert!(err.to_string().contains("nodes[0].availability.mtbf_hours"));
    }
}
