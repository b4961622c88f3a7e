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

/// Why a failure spec or a churn model was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum FaultSpecError {
    /// A part that is not `node@TIME` or `node@DOWN-UP`.
    #[error("--fail `{part}`: {message}")]
    Syntax {
        /// The part.
        part: String,
        /// What is wrong, with the expected form.
        message: String,
    },
    /// A time that is not a duration.
    #[error(transparent)]
    Duration(#[from] tokenflow_planner::units::DurationError),
    /// Churn parameters that make no outages, or too many to hold.
    #[error("--churn: {0}")]
    Churn(String),
}

/// The most outages a churn model may draw: each is about 50 bytes and is
/// looked up by every stage on every step.
pub const MAX_OUTAGES: u64 = 1_000_000;

impl FailureSchedule {
    /// Parses `node@DOWN[-UP],...`, e.g. `node3@5s,node1@1.5s-3s` (durations
    /// in the one grammar of [`tokenflow_planner::units`]).
    pub fn parse(spec: &str) -> Result<Self, FaultSpecError> {
        use tokenflow_planner::units::parse_duration;
        let mut outages = Vec::new();
        for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let syntax = |message: &str| FaultSpecError::Syntax {
                part: part.into(),
                message: message.into(),
            };
            let (node, times) = part.split_once('@').ok_or_else(|| {
                syntax("expected node@TIME or node@DOWN-UP, e.g. n1@2s or n1@2s-4s")
            })?;
            if node.is_empty() {
                return Err(syntax("no node id before `@`"));
            }
            let (down, up) = match times.split_once('-') {
                Some((d, u)) => (
                    parse_duration("--fail down time", d)?,
                    Some(parse_duration("--fail up time", u)?),
                ),
                None => (parse_duration("--fail time", times)?, None),
            };
            if up.is_some_and(|u| u <= down) {
                return Err(syntax("the node must come back after it fails"));
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
    /// (mean `mtbf`) and down times (mean `mttr`, at least 1 ms), drawn from
    /// `seed`. Refused when it would draw nothing (a zero horizon or mean) or
    /// more than [`MAX_OUTAGES`] outages on average.
    pub fn random_churn(
        nodes: &[String],
        mtbf: Duration,
        mttr: Duration,
        horizon: Duration,
        seed: u64,
    ) -> Result<Self, FaultSpecError> {
        if mtbf.is_zero() || mttr.is_zero() {
            return Err(FaultSpecError::Churn(
                "mtbf and mttr must be positive".into(),
            ));
        }
        if horizon.is_zero() {
            return Err(FaultSpecError::Churn(
                "horizon is zero: no node would ever fail".into(),
            ));
        }
        let cycle = mtbf.as_secs_f64() + mttr.as_secs_f64().max(1e-3);
        let expected = nodes.len() as f64 * horizon.as_secs_f64() / cycle;
        if expected > MAX_OUTAGES as f64 {
            return Err(FaultSpecError::Churn(format!(
                "{} nodes failing every {:.3} s for {:.0} s make about {expected:.3e} outages \
                 (about {:.1} MB), more than the {MAX_OUTAGES} allowed: raise mtbf/mttr or shorten the horizon",
                nodes.len(),
                cycle,
                horizon.as_secs_f64(),
                expected * 50.0 / 1e6
            )));
        }
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut exp = |mean: Duration| {
            let u: f64 = rng.random_range(f64::EPSILON..1.0);
            // Bounded: -ln(EPSILON) < 37 means, within MAX_DURATION for any accepted mean.
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
        Ok(Self { outages })
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

/// A schedule resolved to node indices and absolute times (µs since the
/// epoch): per node, its outages merged into disjoint intervals in time order,
/// so every lookup is a binary search (stages ask on every step, and churn can
/// hold hundreds of thousands of outages).
#[derive(Debug, Clone, Default)]
pub struct FaultClock {
    per_node: Vec<Vec<(u64, u64)>>,
}

impl FaultClock {
    /// Resolves `schedule` for nodes `ids` (index = node index) from `start_us`.
    pub fn new(schedule: &FailureSchedule, ids: &[String], start_us: u64) -> Self {
        let index: std::collections::HashMap<&str, usize> = ids
            .iter()
            .enumerate()
            .map(|(i, id)| (id.as_str(), i))
            .collect();
        let at =
            |d: Duration| start_us.saturating_add(u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
        let mut per_node = vec![Vec::new(); ids.len()];
        for o in &schedule.outages {
            if let Some(&i) = index.get(o.node.as_str()) {
                per_node[i].push((at(o.down_at), o.up_at.map_or(u64::MAX, at)));
            }
        }
        for v in &mut per_node {
            v.sort_unstable();
            // A node that fails again while down is one outage.
            let mut merged: Vec<(u64, u64)> = Vec::with_capacity(v.len());
            for &(d, u) in v.iter() {
                match merged.last_mut() {
                    Some(last) if d <= last.1 => last.1 = last.1.max(u),
                    _ => merged.push((d, u)),
                }
            }
            *v = merged;
        }
        Self { per_node }
    }

    /// Outages of `node` that began by `now_us`.
    fn begun(&self, node: u32, now_us: u64) -> (&[(u64, u64)], usize) {
        let v = self.per_node.get(node as usize).map_or(&[][..], |v| &v[..]);
        (v, v.partition_point(|&(d, _)| d <= now_us))
    }

    /// Whether node `node` is down at `now_us`.
    pub fn is_down(&self, node: u32, now_us: u64) -> bool {
        let (v, n) = self.begun(node, now_us);
        n > 0 && now_us < v[n - 1].1
    }

    /// How many times node `node` has failed by `now_us`: its memory is empty
    /// whenever this number changes.
    pub fn incarnation(&self, node: u32, now_us: u64) -> u32 {
        self.begun(node, now_us).1 as u32
    }

    /// When anything next changes for `node` after `now_us` (a failure or a return).
    pub fn next_change(&self, node: u32, now_us: u64) -> Option<u64> {
        let (v, n) = self.begun(node, now_us);
        if n > 0 && now_us < v[n - 1].1 {
            let up = v[n - 1].1;
            return (up != u64::MAX).then_some(up);
        }
        v.get(n).map(|&(d, _)| d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The lookups agree with a linear scan of the raw outages (overlaps included).
    #[test]
    fn binary_search_agrees_with_a_scan() {
        let ids: Vec<String> = (0..3).map(|i| format!("n{i}")).collect();
        let mut schedule = FailureSchedule::random_churn(
            &ids,
            Duration::from_millis(20),
            Duration::from_millis(10),
            Duration::from_secs(2),
            5,
        )
        .unwrap();
        schedule.extend(FailureSchedule::parse("n1@100ms-150ms,n1@120ms-300ms,n2@1s").unwrap());
        let clock = FaultClock::new(&schedule, &ids, 1_000);
        for node in 0..3u32 {
            let mut raw: Vec<(u64, u64)> = schedule
                .outages
                .iter()
                .filter(|o| o.node == ids[node as usize])
                .map(|o| {
                    (
                        1_000 + o.down_at.as_micros() as u64,
                        o.up_at.map_or(u64::MAX, |u| 1_000 + u.as_micros() as u64),
                    )
                })
                .collect();
            raw.sort_unstable();
            for now in (0..2_200_000u64).step_by(997) {
                let down = raw.iter().any(|&(d, u)| d <= now && now < u);
                assert_eq!(clock.is_down(node, now), down, "node {node} at {now}");
                if let Some(t) = clock.next_change(node, now) {
                    assert!(t > now);
                    // Nothing changes strictly between now and t.
                    let mid = now + (t - now) / 2;
                    assert_eq!(clock.is_down(node, mid), down, "node {node} {now}..{t}");
                }
            }
        }
    }

    proptest::proptest! {
        #[test]
        fn any_fail_spec_parses_or_is_refused(text in "\\PC{0,40}") {
            if let Ok(schedule) = FailureSchedule::parse(&text) {
                for o in &schedule.outages {
                    proptest::prop_assert!(o.down_at <= tokenflow_planner::units::MAX_DURATION);
                    proptest::prop_assert!(o.up_at.is_none_or(|u| u > o.down_at));
                }
            }
        }

        #[test]
        fn spec_shaped_text(node in "[a-z0-9-]{0,6}", d in "[0-9.e+-]{0,6}", u in "[0-9.e+-]{0,6}", unit in "(ms|s|m|h|us|x|)") {
            let _ = FailureSchedule::parse(&format!("{node}@{d}{unit}-{u}{unit}"));
        }
    }

    #[test]
    fn churn_refusals() {
        let ids = vec!["a".to_string(); 10];
        let ms = Duration::from_millis;
        assert!(matches!(
            FailureSchedule::random_churn(&ids, ms(1), ms(1), Duration::from_secs(3600), 0),
            Err(FaultSpecError::Churn(m)) if m.contains("outages")
        ));
        assert!(FailureSchedule::random_churn(&ids, ms(1), ms(1), Duration::ZERO, 0).is_err());
        assert!(FailureSchedule::random_churn(&ids, Duration::ZERO, ms(1), ms(100), 0).is_err());
        assert!(FailureSchedule::parse("n1@1e30s").is_err());
        assert!(
            FailureSchedule::parse("n1@5")
                .unwrap_err()
                .to_string()
                .contains("--fail")
        );
    }
}
