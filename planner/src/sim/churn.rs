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
//! `ms`, `s`, `m` or `h` (seconds without a unit).
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

use super::error::{SimError, positive};
use super::random::{self, Purpose};
use super::spec::KeyValues;
use crate::cluster::Cluster;

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
    pub fn timeline(
        &self,
        cluster: &Cluster,
        horizon_s: f64,
        seed: u64,
    ) -> Result<Vec<ChurnEvent>, SimError> {
        let mut out = Vec::new();
        match self {
            ChurnSpec::None => {}
            ChurnSpec::Trace { path } => {
                out = read_trace(path, cluster)?;
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
                    renewal(&mut out, i as u32, horizon_s, || {
                        (
                            random::exponential(&mut rng, up),
                            random::exponential(&mut rng, down),
                        )
                    });
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
                    renewal(&mut out, i as u32, horizon_s, || {
                        (
                            random::weibull(&mut rng, *shape, *scale_s) / speedup,
                            random::weibull(&mut rng, *down_shape, *down_scale_s) / speedup,
                        )
                    });
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

fn renewal(
    out: &mut Vec<ChurnEvent>,
    node: u32,
    horizon_s: f64,
    mut draw: impl FnMut() -> (f64, f64),
) {
    let mut t = 0.0;
    loop {
        let (up, down) = draw();
        t += up;
        if t >= horizon_s {
            return;
        }
        out.push(ChurnEvent {
            time_s: t,
            node,
            up: false,
        });
        t += down;
        if t >= horizon_s {
            return;
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
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| SimError::Io {
        path: shown.clone(),
        message: e.to_string(),
    })?;
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
