//! Failure injection: when each node is down, as a schedule of outages relative
//! to the start of a run. A schedule comes from a spec (`node3@5s,node1@12s-15s`),
//! from random churn drawn from MTBF/MTTR (exponential up and down times), or
//! from a test.
//!
//! Stage operators read the schedule to drop what a dead node holds and what is
//! sent to it; nobody else does. The sequencer learns of failures only from
//! missed heartbeats and from a node's incarnation changing, as it would across
//! a network.

use std::time::Duration;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

/// A node down from `down_at` until `up_at` (for good when `None`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outage {
    /// Node id.
    pub node: String,
    /// When it fails, from the start of the run.
    pub down_at: Duration,
    /// When it is back (with empty memory), from the start of the run.
    pub up_at: Option<Duration>,
}

/// Outages of a run.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct FailureSchedule {
    /// The outages, in any order.
    pub outages: Vec<Outage>,
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let (num, scale) = if let Some(v) = t.strip_suffix("ms") {
        (v, 1e-3)
    } else if let Some(v) = t.strip_suffix('s') {
        (v, 1.0)
    } else {
        return Err(format!("`{t}`: give a unit, e.g. 5s or 500ms"));
    };
    let v: f64 = num
        .parse()
        .map_err(|_| format!("`{t}` is not a duration"))?;
    if !(v.is_finite() && v >= 0.0) {
        return Err(format!("`{t}` is not a non-negative duration"));
    }
    Ok(Duration::from_secs_f64(v * scale))
}

impl FailureSchedule {
    /// Parses `node@DOWN[-UP],...`, e.g. `node3@5s,node1@1.5s-3s` (durations in s or ms).
    pub fn parse(spec: &str) -> Result<Self, String> {
        let mut outages = Vec::new();
        for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (node, times) = part
                .split_once('@')
                .ok_or_else(|| format!("`{part}`: expected node@time or node@down-up"))?;
            if node.is_empty() {
                return Err(format!("`{part}`: no node id"));
            }
            let (down, up) = match times.split_once('-') {
                Some((d, u)) => (parse_duration(d)?, Some(parse_duration(u)?)),
                None => (parse_duration(times)?, None),
            };
            if up.is_some_and(|u| u <= down) {
                return Err(format!("`{part}`: the node must come back after it fails"));
            }
            outages.push(Outage {
                node: node.to_string(),
                down_at: down,
                up_at: up,
            });
        }
        Ok(Self { outages })
    }

    /// Random churn until `horizon`: each node alternates exponential up times
    /// (mean `mtbf`) and down times (mean `mttr`), drawn from `seed`.
    pub fn random_churn(
        nodes: &[String],
        mtbf: Duration,
        mttr: Duration,
        horizon: Duration,
        seed: u64,
    ) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut exp = |mean: Duration| {
            let u: f64 = rng.random_range(f64::EPSILON..1.0);
            Duration::from_secs_f64(-u.ln() * mean.as_secs_f64())
        };
        let mut outages = Vec::new();
        for node in nodes {
            let mut t = exp(mtbf);
            while t < horizon {
                let down = exp(mttr).max(Duration::from_millis(1));
                outages.push(Outage {
                    node: node.clone(),
                    down_at: t,
                    up_at: Some(t + down),
                });
                t += down + exp(mtbf);
            }
        }
        Self { outages }
    }

    /// Whether nothing fails.
    pub fn is_empty(&self) -> bool {
        self.outages.is_empty()
    }

    /// Adds another schedule's outages.
    pub fn extend(&mut self, other: FailureSchedule) {
        self.outages.extend(other.outages);
    }
}

/// A schedule resolved to node indices and absolute times (µs since the epoch).
#[derive(Debug, Clone, Default)]
pub struct FaultClock {
    per_node: Vec<Vec<(u64, u64)>>,
}

impl FaultClock {
    /// Resolves `schedule` for nodes `ids` (index = node index) from `start_us`.
    pub fn new(schedule: &FailureSchedule, ids: &[String], start_us: u64) -> Self {
        let mut per_node = vec![Vec::new(); ids.len()];
        for o in &schedule.outages {
            if let Some(i) = ids.iter().position(|id| id == &o.node) {
                let down = start_us + o.down_at.as_micros() as u64;
                let up = o
                    .up_at
                    .map_or(u64::MAX, |u| start_us + u.as_micros() as u64);
                per_node[i].push((down, up));
            }
        }
        for v in &mut per_node {
            v.sort_unstable();
        }
        Self { per_node }
    }

    /// Whether node `node` is down at `now_us`.
    pub fn is_down(&self, node: u32, now_us: u64) -> bool {
        self.per_node
            .get(node as usize)
            .is_some_and(|v| v.iter().any(|&(d, u)| d <= now_us && now_us < u))
    }

    /// How many times node `node` has failed by `now_us`: its memory is empty
    /// whenever this number changes.
    pub fn incarnation(&self, node: u32, now_us: u64) -> u32 {
        self.per_node.get(node as usize).map_or(0, |v| {
            v.iter().filter(|&&(d, _)| d <= now_us).count() as u32
        })
    }

    /// When anything next changes for `node` after `now_us` (a failure or a return).
    pub fn next_change(&self, node: u32, now_us: u64) -> Option<u64> {
        self.per_node.get(node as usize).and_then(|v| {
            v.iter()
                .flat_map(|&(d, u)| [d, u])
                .filter(|&t| t > now_us && t != u64::MAX)
                .min()
        })
    }
}
