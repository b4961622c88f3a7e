//! Node churn: failures and returns from an alternating renewal process per
//! node (exponential or Weibull up and down times), or from a trace file of
//! up/down intervals.
//!
//! ```text
//! none
//! exp[:scale=X]                      # each node's MTBF/MTTR from the cluster file
//! exp:mtbf=DUR,mttr=DUR[,scale=X]    # the same figures for every node
//! weibull:shape=K,scale=DUR,down-scale=DUR[,down-shape=K2][,speedup=X]
//! trace:FILE
//! ```
//!
//! `scale=X` (`speedup=X` for Weibull, whose `scale` is its own parameter)
//! divides every up and down time by X: the same availability, X times as many
//! failures, so that a run of minutes sees the churn of hours. Durations take
//! `ms`, `s`, `m` or `h` (a unit is required, see [`tokenflow_planner::units`]).
//!
//! Every node starts up. A trace file is CSV in the spirit of the Failure Trace
//! Archive's event tables: `node,start_s,end_s,state`, one interval per line,
//! `state` one of `down`/`0`/`unavailable` or `up`/`1`/`available`, times in
//! seconds from the start; `end_s` may be `inf` (never back). A first line that
//! does not parse is a header; `#` starts a comment. Down intervals of one node
//! must not overlap; up intervals are checked and otherwise implied. Nodes the
//! trace does not name never fail.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::error::{SimError, fitting, positive, too_large};
use super::random::{self, Purpose};
use super::spec::KeyValues;
use tokenflow_planner::cluster::Cluster;

/// How nodes fail and come back.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ChurnSpec {
    /// No node fails.
    None,
    /// Exponential up and down times.
    Exponential {
        /// Mean up time in seconds for every node (`None`: each node's MTBF).
        mtbf_s: Option<f64>,
        /// Mean down time in seconds for every node (`None`: each node's MTTR).
        mttr_s: Option<f64>,
        /// Time compression: up and down times are divided by it.
        scale: f64,
    },
    /// Weibull up times and Weibull down times, for every node.
    Weibull {
        /// Shape of up times (< 1: many short lives and a few long ones).
        shape: f64,
        /// Scale of up times, seconds.
        scale_s: f64,
        /// Shape of down times.
        down_shape: f64,
        /// Scale of down times, seconds.
        down_scale_s: f64,
        /// Time compression: up and down times are divided by it.
        speedup: f64,
    },
    /// Up/down intervals from a file.
    Trace {
        /// The file.
        path: PathBuf,
    },
}

/// One change of a node's state.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ChurnEvent {
    /// Seconds from the start.
    pub time_s: f64,
    /// Node index in the cluster.
    pub node: u32,
    /// True: the node comes back; false: it fails.
    pub up: bool,
}

impl ChurnSpec {
    /// Parses the `--churn` syntax (see the module documentation).
    pub fn parse(text: &str) -> Result<ChurnSpec, SimError> {
        let t = text.trim();
        let (kind, rest) = t.split_once(':').unwrap_or((t, ""));
        let bad = |message: String| SimError::Spec {
            what: "churn".into(),
            spec: text.into(),
            message,
        };
        match kind.trim() {
            "none" if rest.is_empty() => Ok(ChurnSpec::None),
            "trace" => {
                if rest.trim().is_empty() {
                    return Err(bad("trace:FILE needs a file".into()));
                }
                Ok(ChurnSpec::Trace {
                    path: PathBuf::from(rest.trim()),
                })
            }
            "exp" => {
                let mut kv = KeyValues::parse("churn", text, rest)?;
                let mtbf_s = kv.duration("mtbf")?;
                let mttr_s = kv.duration("mttr")?;
                let scale = kv.float("scale")?.unwrap_or(1.0);
                kv.finish()?;
                if let Some(m) = mtbf_s {
                    positive("churn.mtbf", m)?;
                }
                positive("churn.scale", scale)?;
                Ok(ChurnSpec::Exponential {
                    mtbf_s,
                    mttr_s,
                    scale,
                })
            }
            "weibull" => {
                let mut kv = KeyValues::parse("churn", text, rest)?;
                let need = |v: Option<f64>, k: &str| {
                    v.ok_or_else(|| bad(format!("{k}= is required (weibull:shape=K,scale=DUR,down-scale=DUR[,down-shape=K2][,speedup=X])")))
                };
                let shape = need(kv.float("shape")?, "shape")?;
                let scale_s = need(kv.duration("scale")?, "scale")?;
                let down_scale_s = need(kv.duration("down-scale")?, "down-scale")?;
                let down_shape = kv.float("down-shape")?.unwrap_or(1.0);
                let speedup = kv.float("speedup")?.unwrap_or(1.0);
                kv.finish()?;
                positive("churn.shape", shape)?;
                positive("churn.scale", scale_s)?;
                positive("churn.down-shape", down_shape)?;
                positive("churn.down-scale", down_scale_s)?;
                positive("churn.speedup", speedup)?;
                Ok(ChurnSpec::Weibull {
                    shape,
                    scale_s,
                    down_shape,
                    down_scale_s,
                    speedup,
                })
            }
            other => Err(bad(format!(
                "unknown churn model `{other}` (none, exp, weibull, trace)"
            ))),
        }
    }

    /// A short label for tables, e.g. `exp:mtbf=1800s,mttr=300s`.
    pub fn label(&self) -> String {
        match self {
            ChurnSpec::None => "none".into(),
            ChurnSpec::Exponential {
                mtbf_s,
                mttr_s,
                scale,
            } => {
                let mut parts = Vec::new();
                if let Some(m) = mtbf_s {
                    parts.push(format!("mtbf={m}s"));
                }
                if let Some(m) = mttr_s {
                    parts.push(format!("mttr={m}s"));
                }
                if *scale != 1.0 {
                    parts.push(format!("scale={scale}"));
                }
                if parts.is_empty() {
                    "exp".into()
                } else {
                    format!("exp:{}", parts.join(","))
                }
            }
            ChurnSpec::Weibull {
                shape,
                scale_s,
                down_shape,
                down_scale_s,
                speedup,
            } => format!(
                "weibull:shape={shape},scale={scale_s}s,down-shape={down_shape},down-scale={down_scale_s}s,speedup={speedup}"
            ),
            ChurnSpec::Trace { path } => format!("trace:{}", path.display()),
        }
    }

    /// Every failure and return before `horizon_s`, sorted by time (then node),
    /// drawn with `seed` from one stream per node: the same for every strategy.
    /// Refuses, before drawing them, events that cannot fit in the memory
    /// available now (see [`ChurnSpec::timeline_within`]).
    pub fn timeline(
        &self,
        cluster: &Cluster,
        horizon_s: f64,
        seed: u64,
    ) -> Result<Vec<ChurnEvent>, SimError> {
        self.timeline_within(
            cluster,
            horizon_s,
            seed,
            tokenflow_planner::error::available_memory(),
        )
    }

    /// How many failures and returns happen before `horizon_s` on average:
    /// per node, two per mean up-plus-down cycle (the renewal rate); `None` for a
    /// trace (its lines count).
    pub fn expected_events(&self, cluster: &Cluster, horizon_s: f64) -> Option<f64> {
        let cycles = |up: f64, down: f64| {
            if up.is_finite() {
                2.0 * horizon_s / (up + down)
            } else {
                0.0 // never fails
            }
        };
        match self {
            ChurnSpec::None => Some(0.0),
            ChurnSpec::Trace { .. } => None,
            ChurnSpec::Exponential {
                mtbf_s,
                mttr_s,
                scale,
            } => Some(
                cluster
                    .nodes
                    .iter()
                    .map(|node| {
                        let a = node.availability;
                        let up = mtbf_s.unwrap_or(a.mtbf_hours * 3600.0) / scale;
                        let down = mttr_s.unwrap_or(a.mttr_hours * 3600.0) / scale;
                        cycles(up, down)
                    })
                    .sum(),
            ),
            ChurnSpec::Weibull {
                shape,
                scale_s,
                down_shape,
                down_scale_s,
                speedup,
            } => {
                let mean = |k: f64, scale: f64| scale * gamma_fn(1.0 + 1.0 / k) / speedup;
                let up = mean(*shape, *scale_s);
                let down = mean(*down_shape, *down_scale_s);
                Some(cluster.len() as f64 * cycles(up, down))
            }
        }
    }

    /// [`ChurnSpec::timeline`] with `memory_bytes` for the events instead of
    /// the memory available now: refused when the expected count (or a trace's
    /// size) needs more, at [`bytes_per_event`] each, or as soon as the draws
    /// pass what fits, so that tiny up and down times over a long horizon
    /// neither loop for long nor exhaust memory. Within the limit the events
    /// are the same.
    pub fn timeline_within(
        &self,
        cluster: &Cluster,
        horizon_s: f64,
        seed: u64,
        memory_bytes: u64,
    ) -> Result<Vec<ChurnEvent>, SimError> {
        let each = bytes_per_event();
        let fit = fitting(memory_bytes, each);
        let refuse =
            |count: f64| too_large("churn", "failures and returns", count, each, memory_bytes);
        // Not `n > fit`: a NaN count is refused too.
        if let Some(n) = self.expected_events(cluster, horizon_s)
            && !n.le(&(fit as f64))
        {
            return Err(refuse(n));
        }
        let mut out = Vec::new();
        match self {
            ChurnSpec::None => {}
            ChurnSpec::Trace { path } => {
                out = read_trace_within(path, cluster, memory_bytes)?;
                out.retain(|e| e.time_s < horizon_s);
            }
            ChurnSpec::Exponential {
                mtbf_s,
                mttr_s,
                scale,
            } => {
                for (i, node) in cluster.nodes.iter().enumerate() {
                    let a = node.availability;
                    let up = mtbf_s.unwrap_or(a.mtbf_hours * 3600.0) / scale;
                    let down = mttr_s.unwrap_or(a.mttr_hours * 3600.0) / scale;
                    if !up.is_finite() {
                        continue; // never fails
                    }
                    let mut rng = random::stream(seed, Purpose::Churn, i as u64);
                    renewal(&mut out, fit, i as u32, horizon_s, || {
                        (
                            random::exponential(&mut rng, up),
                            random::exponential(&mut rng, down),
                        )
                    })
                    .map_err(|n| refuse(n as f64))?;
                }
            }
            ChurnSpec::Weibull {
                shape,
                scale_s,
                down_shape,
                down_scale_s,
                speedup,
            } => {
                for i in 0..cluster.len() {
                    let mut rng = random::stream(seed, Purpose::Churn, i as u64);
                    renewal(&mut out, fit, i as u32, horizon_s, || {
                        (
                            random::weibull(&mut rng, *shape, *scale_s) / speedup,
                            random::weibull(&mut rng, *down_shape, *down_scale_s) / speedup,
                        )
                    })
                    .map_err(|n| refuse(n as f64))?;
                }
            }
        }
        out.sort_by(|a, b| {
            a.time_s
                .total_cmp(&b.time_s)
                .then(a.node.cmp(&b.node))
                .then(a.up.cmp(&b.up))
        });
        Ok(out)
    }
}

/// Bytes a simulation holds per churn event: the event, the sort's buffer
/// (half the events) and its time in each run's timeline.
pub fn bytes_per_event() -> u64 {
    use std::mem::size_of;
    (size_of::<ChurnEvent>() + size_of::<ChurnEvent>() / 2 + size_of::<f64>()) as u64
}

/// The gamma function for x >= 1 (Lanczos, g = 7: about 15 digits), for the
/// means of Weibull times; infinite past f64's range.
/// Mean MTBF over the nodes of `cluster` with a finite one, seconds (0 when none).
pub fn mean_mtbf_s(cluster: &Cluster) -> f64 {
    let (sum, n) = cluster
        .nodes
        .iter()
        .map(|x| x.availability.mtbf_hours * 3600.0)
        .filter(|m| m.is_finite())
        .fold((0.0, 0usize), |(s, n), m| (s + m, n + 1));
    if n == 0 { 0.0 } else { sum / n as f64 }
}

impl ChurnSpec {
    /// Exponential churn that keeps each node's MTBF and MTTR from the
    /// cluster file, with time compressed (a whole-number factor, at least 1)
    /// so that the mean MTBF over the nodes is `mean_mtbf_s`: heterogeneity is
    /// kept, and a run of minutes sees the failures of days (the study's churn).
    pub fn compressed(cluster: &Cluster, mean_mtbf_s: f64) -> ChurnSpec {
        ChurnSpec::Exponential {
            mtbf_s: None,
            mttr_s: None,
            scale: (self::mean_mtbf_s(cluster) / mean_mtbf_s).max(1.0).round(),
        }
    }
}

/// Mean of a Weibull distribution of shape `k` and scale `scale`: `scale · Γ(1 + 1/k)`.
pub fn weibull_mean(k: f64, scale: f64) -> f64 {
    scale * gamma_fn(1.0 + 1.0 / k)
}

fn gamma_fn(x: f64) -> f64 {
    const G: f64 = 7.0;
    const C: [f64; 9] = [
        0.999_999_999_999_809_9,
        676.520_368_121_885_1,
        -1_259.139_216_722_402_8,
        771.323_428_777_653_1,
        -176.615_029_162_140_6,
        12.507_343_278_686_905,
        -0.138_571_095_265_720_12,
        9.984_369_578_019_572e-6,
        1.505_632_735_149_311_6e-7,
    ];
    let x = x - 1.0;
    let mut a = C[0];
    for (k, &c) in C.iter().enumerate().skip(1) {
        a += c / (x + k as f64);
    }
    let t = x + G + 0.5;
    let ln = 0.5 * (2.0 * std::f64::consts::PI).ln() + (x + 0.5) * t.ln() - t + a.ln();
    ln.exp()
}

/// Appends one node's alternating failures and returns before `horizon_s`;
/// `Err(count)` once the events would pass `fit`.
fn renewal(
    out: &mut Vec<ChurnEvent>,
    fit: u64,
    node: u32,
    horizon_s: f64,
    mut draw: impl FnMut() -> (f64, f64),
) -> Result<(), usize> {
    let mut t = 0.0;
    loop {
        let (up, down) = draw();
        t += up;
        if t >= horizon_s {
            return Ok(());
        }
        if out.len() as u64 + 2 > fit {
            return Err(out.len() + 2);
        }
        out.push(ChurnEvent {
            time_s: t,
            node,
            up: false,
        });
        t += down;
        if t >= horizon_s {
            return Ok(());
        }
        out.push(ChurnEvent {
            time_s: t,
            node,
            up: true,
        });
    }
}

/// Reads a churn trace (see the module documentation) against `cluster`.
pub fn read_trace(path: &Path, cluster: &Cluster) -> Result<Vec<ChurnEvent>, SimError> {
    read_trace_within(path, cluster, tokenflow_planner::error::available_memory())
}

/// [`read_trace`], refusing a file whose text, or whose lines as events (two
/// per line at [`bytes_per_event`] each, and the interval kept while parsing),
/// need more than `memory_bytes`.
pub fn read_trace_within(
    path: &Path,
    cluster: &Cluster,
    memory_bytes: u64,
) -> Result<Vec<ChurnEvent>, SimError> {
    let shown = path.display().to_string();
    let line_bytes = 2 * bytes_per_event() + std::mem::size_of::<(u32, f64, f64, usize)>() as u64;
    let text = super::workload::read_bounded(path, memory_bytes, "churn", "intervals", line_bytes)?;
    parse_trace(&shown, &text, cluster)
}

/// Parses churn trace text; `name` is used in errors.
pub fn parse_trace(name: &str, text: &str, cluster: &Cluster) -> Result<Vec<ChurnEvent>, SimError> {
    let mut downs: Vec<(u32, f64, f64, usize)> = Vec::new();
    let mut first = true;
    for (k, raw) in text.lines().enumerate() {
        let line = raw.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let bad = |message: String| SimError::Trace {
            path: name.to_string(),
            line: k + 1,
            message,
        };
        let cols: Vec<&str> = line.split(',').map(str::trim).collect();
        let header = first && cols.get(1).is_some_and(|c| parse_time(c).is_none());
        first = false;
        if header {
            continue;
        }
        if cols.len() != 4 {
            return Err(bad(format!(
                "expected node,start_s,end_s,state, got `{line}`"
            )));
        }
        let node = cluster
            .index_of(cols[0])
            .ok_or_else(|| SimError::UnknownNode {
                field: format!("{name} line {}", k + 1),
                node: cols[0].to_string(),
            })? as u32;
        let start =
            parse_time(cols[1]).ok_or_else(|| bad(format!("start `{}` is not a time", cols[1])))?;
        let end =
            parse_time(cols[2]).ok_or_else(|| bad(format!("end `{}` is not a time", cols[2])))?;
        if !(start.is_finite() && start >= 0.0 && end > start) {
            return Err(bad(format!(
                "interval {start}..{end} needs 0 <= start < end"
            )));
        }
        let up = match cols[3].to_ascii_lowercase().as_str() {
            "up" | "1" | "available" => true,
            "down" | "0" | "unavailable" => false,
            other => {
                return Err(bad(format!(
                    "state `{other}` is not up/down (1/0, available/unavailable)"
                )));
            }
        };
        if !up {
            downs.push((node, start, end, k + 1));
        }
    }
    downs.sort_by(|a, b| a.0.cmp(&b.0).then(a.1.total_cmp(&b.1)));
    for w in downs.windows(2) {
        if w[0].0 == w[1].0 && w[1].1 < w[0].2 {
            return Err(SimError::Trace {
                path: name.to_string(),
                line: w[1].3,
                message: format!(
                    "down interval of `{}` overlaps the one on line {}",
                    cluster.nodes[w[1].0 as usize].id, w[0].3
                ),
            });
        }
    }
    let mut out = Vec::new();
    for (node, start, end, _) in downs {
        out.push(ChurnEvent {
            time_s: start,
            node,
            up: false,
        });
        if end.is_finite() {
            out.push(ChurnEvent {
                time_s: end,
                node,
                up: true,
            });
        }
    }
    out.sort_by(|a, b| {
        a.time_s
            .total_cmp(&b.time_s)
            .then(a.node.cmp(&b.node))
            .then(a.up.cmp(&b.up))
    });
    Ok(out)
}

fn parse_time(s: &str) -> Option<f64> {
    match s {
        "inf" | "infinity" | "" => Some(f64::INFINITY),
        _ => s.parse::<f64>().ok().filter(|v| !v.is_nan()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gamma_function_matches_known_values() {
        for (x, want) in [
            (1.0, 1.0),
            (1.5, 0.886_226_925_452_758),
            (2.0, 1.0),
            (5.0, 24.0),
            (11.0, 3_628_800.0),
        ] {
            let got = gamma_fn(x);
            assert!((got - want).abs() <= 1e-12 * want, "gamma({x}) = {got}");
        }
        assert!(gamma_fn(1e4).is_infinite());
    }

    #[test]
    fn renewal_stops_at_what_fits() {
        let mut out = Vec::new();
        // Up 1 s, down 1 s, over 100 s: 100 events, but only 10 fit.
        assert_eq!(renewal(&mut out, 10, 0, 100.0, || (1.0, 1.0)), Err(12));
        assert_eq!(out.len(), 10);
        out.clear();
        assert_eq!(renewal(&mut out, 1000, 0, 100.0, || (1.0, 1.0)), Ok(()));
        assert_eq!(out.len(), 99);
        // Draws that no longer move time (1e-300 s after t = 1) end in the
        // refusal, not in an endless loop.
        out.clear();
        let mut first = true;
        let draws = || {
            let up = if first { 1.0 } else { 1e-300 };
            first = false;
            (up, 1e-300)
        };
        assert!(renewal(&mut out, 1000, 0, 2.0, draws).is_err());
    }
}
