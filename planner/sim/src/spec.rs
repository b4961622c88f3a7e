//! Simulation settings: the engine-like scheduling knobs, the router, the
//! re-planning policy, the SLO, and the small spec syntaxes shared by the
//! command line (`key=value` lists, durations with units).

use std::fmt;

use serde::{Deserialize, Serialize};

use super::error::{SimError, non_negative, positive};

/// `key=value,key=value` pairs of a spec, consumed key by key.
pub(crate) struct KeyValues {
    what: String,
    spec: String,
    pairs: Vec<(String, String)>,
}

impl KeyValues {
    /// Splits `rest` (a part of `spec`) into pairs.
    pub(crate) fn parse(what: &str, spec: &str, rest: &str) -> Result<KeyValues, SimError> {
        let mut pairs: Vec<(String, String)> = Vec::new();
        for part in rest.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let Some((k, v)) = part.split_once('=') else {
                return Err(SimError::Spec {
                    what: what.into(),
                    spec: spec.into(),
                    message: format!("`{part}` is not key=value"),
                });
            };
            let k = k.trim().to_string();
            if pairs.iter().any(|(x, _)| *x == k) {
                return Err(SimError::Spec {
                    what: what.into(),
                    spec: spec.into(),
                    message: format!("`{k}` is given twice"),
                });
            }
            pairs.push((k, v.trim().to_string()));
        }
        Ok(KeyValues {
            what: what.into(),
            spec: spec.into(),
            pairs,
        })
    }

    /// Removes and returns the value of `key`.
    pub(crate) fn take(&mut self, key: &str) -> Option<String> {
        let i = self.pairs.iter().position(|(k, _)| k == key)?;
        Some(self.pairs.remove(i).1)
    }

    /// Removes `key` and parses it as a number.
    pub(crate) fn float(&mut self, key: &str) -> Result<Option<f64>, SimError> {
        match self.take(key) {
            None => Ok(None),
            Some(v) => v.parse::<f64>().map(Some).map_err(|e| SimError::Spec {
                what: self.what.clone(),
                spec: self.spec.clone(),
                message: format!("{key}=`{v}`: {e}"),
            }),
        }
    }

    /// Removes `key` and parses it as a duration (see [`duration`]).
    pub(crate) fn duration(&mut self, key: &str) -> Result<Option<f64>, SimError> {
        match self.take(key) {
            None => Ok(None),
            Some(v) => duration(&format!("{}.{key}", self.what), &v).map(Some),
        }
    }

    /// Fails if a key was not consumed.
    pub(crate) fn finish(self) -> Result<(), SimError> {
        match self.pairs.first() {
            None => Ok(()),
            Some((k, _)) => Err(SimError::Spec {
                what: self.what,
                spec: self.spec,
                message: format!("unknown key `{k}`"),
            }),
        }
    }
}

/// Parses a duration in seconds with the one grammar of [`tokenflow_planner::units`]
/// (`250ms`, `30s`, `5m`, `2h`; a unit is required except for `0`).
pub fn duration(what: &str, text: &str) -> Result<f64, SimError> {
    tokenflow_planner::units::parse_seconds(what, text).map_err(|e| SimError::Spec {
        what: what.into(),
        spec: text.into(),
        message: e.to_string(),
    })
}

use tokenflow_core::SchedulerConfig;
pub use tokenflow_planner::router::RouterChoice;

/// How often the router is asked for a path.
///
/// The planner's routers cost O(replicas) (min-latency: O(Σ replicas²)) per
/// call, which a 10,000-node plan cannot afford per request. With a pool the
/// simulator asks the router for `size` paths at once (with the down set and
/// loads of that moment, without KV masks) and hands them out in order,
/// skipping a path with a node that is not serving or lacks KV room (looking
/// at most 64 paths ahead, resuming there next time). Paths through a failed
/// node become usable again when it is back. The pool is refilled after a
/// re-plan, and when a look-ahead finds nothing, more than half of what it
/// skipped went through nodes that are not serving, and a quarter of the
/// plan's nodes have changed state since the last fill. For `interleaved-wrr`
/// this is the router's own sequence as long as no node is down or full; for
/// the load-dependent routers it routes on loads as of the last fill.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RouteCache {
    /// A pool (as many paths as the widest stage has replicas, at least 512)
    /// when the plan has more than 512 replicas, else one call per request.
    #[default]
    Auto,
    /// One router call per admission, with per-request KV masks (the engine's way).
    Off,
    /// A pool of this many paths.
    Pool(usize),
}

impl RouteCache {
    /// Parses `auto`, `off` or a pool size.
    pub fn parse(text: &str) -> Result<RouteCache, SimError> {
        match text.trim() {
            "auto" => Ok(RouteCache::Auto),
            "off" | "0" => Ok(RouteCache::Off),
            n => n
                .parse::<usize>()
                .map(RouteCache::Pool)
                .map_err(|e| SimError::Spec {
                    what: "route-cache".into(),
                    spec: text.into(),
                    message: format!("{e}; expected auto, off or a pool size"),
                }),
        }
    }
}

/// When the simulator re-plans, besides a stage losing its last replica
/// (which always re-plans).
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ReplanPolicy {
    /// Only when a stage has no live replica left.
    #[default]
    StageLoss,
    /// On every membership change (failure or return).
    OnChange,
    /// On a membership change while the live plan's max-flow throughput bound
    /// is below this fraction of the first plan's (all nodes up): a failure
    /// that drops it below, and every return while it stays below (Petals'
    /// rebalancing, which moves servers when throughput would improve enough).
    Threshold(f64),
    /// Load-aware scaling every `interval_s` seconds (besides stage loss):
    /// from the arrival rate of the last interval, add replicas to the
    /// bottleneck stage while the planner's service model says the plan cannot
    /// sustain [`ELASTIC_HEADROOM`] times it, and release the replica whose
    /// loss costs least while it still could with [`ELASTIC_RELEASE`] to spare.
    Elastic {
        /// Seconds between scaling decisions.
        interval_s: f64,
    },
}

/// The load-aware policy sizes the plan for this many times the measured rate.
pub const ELASTIC_HEADROOM: f64 = 1.6;

/// A replica is released only if the plan without it still sustains this
/// many times the headroom's rate (hysteresis against flapping).
pub const ELASTIC_RELEASE: f64 = 1.25;

impl ReplanPolicy {
    /// Parses `stage-loss`, `on-change`, `threshold:F` with F in (0, 1], or
    /// `elastic[:INTERVAL]` (default 20 s).
    pub fn parse(text: &str) -> Result<ReplanPolicy, SimError> {
        let t = text.trim();
        match t {
            "stage-loss" | "none" => return Ok(ReplanPolicy::StageLoss),
            "on-change" => return Ok(ReplanPolicy::OnChange),
            "elastic" => return Ok(ReplanPolicy::Elastic { interval_s: 20.0 }),
            _ => {}
        }
        if let Some(d) = t.strip_prefix("elastic:") {
            let v = duration("replan.elastic", d)?;
            // Each decision re-evaluates the plan with the service model; a
            // sub-second interval would spend the run deciding.
            if !(v.is_finite() && v >= 1.0) {
                return Err(SimError::InvalidNumber {
                    field: "replan.elastic".into(),
                    requirement: "an interval of at least 1 s".into(),
                    value: v,
                });
            }
            return Ok(ReplanPolicy::Elastic { interval_s: v });
        }
        if let Some(f) = t.strip_prefix("threshold:") {
            let v: f64 = f.trim().parse().map_err(|e| SimError::Spec {
                what: "replan".into(),
                spec: text.into(),
                message: format!("{e}"),
            })?;
            if !(v > 0.0 && v <= 1.0) {
                return Err(SimError::InvalidNumber {
                    field: "replan.threshold".into(),
                    requirement: "in (0, 1]".into(),
                    value: v,
                });
            }
            return Ok(ReplanPolicy::Threshold(v));
        }
        Err(SimError::Spec {
            what: "replan".into(),
            spec: text.into(),
            message: "expected stage-loss, on-change, threshold:FRACTION or elastic[:INTERVAL]"
                .into(),
        })
    }
}

impl fmt::Display for ReplanPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReplanPolicy::StageLoss => f.write_str("stage-loss"),
            ReplanPolicy::OnChange => f.write_str("on-change"),
            ReplanPolicy::Threshold(v) => write!(f, "threshold:{v}"),
            ReplanPolicy::Elastic { interval_s } => write!(f, "elastic:{interval_s}s"),
        }
    }
}

/// A service-level objective: a request meets it when its time to first token
/// and its mean inter-token latency are both within bounds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Slo {
    /// Bound on time to first token, seconds.
    pub ttft_s: f64,
    /// Bound on the mean inter-token latency of a request, seconds.
    pub itl_s: f64,
}

impl Default for Slo {
    fn default() -> Self {
        Slo {
            ttft_s: 10.0,
            itl_s: 1.0,
        }
    }
}

impl Slo {
    /// Parses `ttft=DURATION,itl=DURATION` (either may be left out: default).
    pub fn parse(text: &str) -> Result<Slo, SimError> {
        let mut kv = KeyValues::parse("slo", text, text)?;
        let mut slo = Slo::default();
        if let Some(v) = kv.duration("ttft")? {
            slo.ttft_s = positive("slo.ttft", v)?;
        }
        if let Some(v) = kv.duration("itl")? {
            slo.itl_s = positive("slo.itl", v)?;
        }
        kv.finish()?;
        Ok(slo)
    }
}

/// How the executor recovers when a node dies.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Failover {
    /// The engine's failover inside one timely cluster: only the sequences
    /// on the dead node restart (after the detection delay), elsewhere.
    #[default]
    InPlace,
    /// The coordinator's membership epochs (`serve --coordinator`): a death
    /// ends the whole timely cluster, so every node's KV is dropped and every
    /// sequence restarts once the next epoch has formed, `form_s` after the
    /// detection delay (no node serves in between).
    Epoch {
        /// Seconds from detection to the next epoch serving (process start,
        /// connection mesh, weight load).
        form_s: f64,
    },
}

impl Failover {
    /// Parses `in-place` or `epoch:form=DURATION`.
    pub fn parse(text: &str) -> Result<Failover, SimError> {
        let t = text.trim();
        let (kind, rest) = t.split_once(':').unwrap_or((t, ""));
        match kind {
            "in-place" if rest.is_empty() => Ok(Failover::InPlace),
            "epoch" => {
                let mut kv = KeyValues::parse("failover", text, rest)?;
                let form_s = kv.duration("form")?.unwrap_or(0.0);
                kv.finish()?;
                non_negative("failover.form", form_s)?;
                Ok(Failover::Epoch { form_s })
            }
            _ => Err(SimError::Spec {
                what: "failover".into(),
                spec: text.into(),
                message: "expected in-place or epoch:form=DURATION".into(),
            }),
        }
    }
}

/// The scheduling core's settings (the engine's, same names and defaults)
/// and the simulator's own.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SimConfig {
    /// Batching, admission and routing: [`tokenflow_core::SchedulerConfig`]
    /// (its heartbeat and detection settings are the engine's; the simulator
    /// sees churn as it happens).
    #[serde(flatten)]
    pub scheduler: SchedulerConfig,
    /// Router call batching for large plans.
    pub route_cache: RouteCache,
    /// When to re-plan besides stage loss.
    pub replan: ReplanPolicy,
    /// Bandwidth of the source nodes load weights from (a hub or a peer), Gbit/s;
    /// a node's own downlink cap applies on top.
    pub weight_source_gbps: f64,
    /// The SLO for goodput.
    pub slo: Slo,
    /// How long to keep running after the last arrival before counting the
    /// rest as unfinished, seconds (`None`: until every request ends).
    pub drain_s: Option<f64>,
    /// Bins of the throughput timeline.
    pub timeline_bins: usize,
    /// Seconds from a node's death to the executor noticing it (its
    /// sequences wait that long before they restart; 0: at once).
    #[serde(default)]
    pub detection_s: f64,
    /// How a death is recovered from.
    #[serde(default)]
    pub failover: Failover,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            scheduler: SchedulerConfig::default(),
            route_cache: RouteCache::default(),
            replan: ReplanPolicy::default(),
            weight_source_gbps: 10.0,
            slo: Slo::default(),
            drain_s: None,
            timeline_bins: 120,
            detection_s: 0.0,
            failover: Failover::InPlace,
        }
    }
}

impl SimConfig {
    /// Checks every knob.
    pub fn check(&self) -> Result<(), SimError> {
        self.scheduler.validate()?;
        if self.timeline_bins == 0 {
            return Err(SimError::InvalidNumber {
                field: "timeline_bins".into(),
                requirement: "positive".into(),
                value: 0.0,
            });
        }
        if self.route_cache == RouteCache::Pool(0) {
            return Err(SimError::InvalidNumber {
                field: "route_cache".into(),
                requirement: "a positive pool size".into(),
                value: 0.0,
            });
        }
        positive("weight_source_gbps", self.weight_source_gbps)?;
        non_negative("detection", self.detection_s)?;
        if let Failover::Epoch { form_s } = self.failover {
            non_negative("failover.form", form_s)?;
        }
        positive("slo.ttft", self.slo.ttft_s)?;
        positive("slo.itl", self.slo.itl_s)?;
        if let Some(d) = self.drain_s {
            non_negative("drain", d)?;
        }
        Ok(())
    }
}
