//! Requests: arrival processes (Poisson, gamma for bursts, a diurnal curve, or a trace file),
//! prompt and output length distributions, and the spec syntax of `--load`.
//!
//! ```text
//! poisson:rate=20[,prompt=LEN][,output=LEN][,requests=N]
//! gamma:rate=20,cv=4[,prompt=LEN][,output=LEN][,requests=N]   # cv > 1: bursts
//! diurnal:rate=20,amplitude=0.6,period=24h[,...]   # rate(t) = 20 (1 + 0.6 sin(2πt/24h))
//! trace:FILE                       # CSV arrival_s,prompt_tokens,output_tokens
//! LEN = N | uniform:MIN:MAX | lognormal:MEDIAN:SIGMA[:MAX]
//! ```
//!
//! Defaults: `prompt=uniform:256:768`, `output=uniform:64:192` (means 512 and 128,
//! the planner's default workload). A trace file may have a header line and `#`
//! comments; its arrivals are sorted.

use std::path::{Path, PathBuf};

use rand::Rng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::engine::RequestOutcome;
use super::error::{SimError, fitting, positive, too_large};
use super::random::{self, Purpose};
use super::spec::{self, KeyValues};

/// One request of a simulation.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SimRequest {
    /// Arrival time in seconds from the start.
    pub arrival_s: f64,
    /// Prompt tokens.
    pub prompt_tokens: u32,
    /// Tokens to generate (the request's `max_tokens`; no stop token ends it early).
    pub output_tokens: u32,
}

/// When requests arrive.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Arrivals {
    /// Poisson process of `rate` requests per second.
    Poisson {
        /// Requests per second.
        rate: f64,
    },
    /// Renewal process with gamma inter-arrival times: mean `1 / rate`,
    /// coefficient of variation `cv` (1 is Poisson, larger is burstier).
    Gamma {
        /// Requests per second.
        rate: f64,
        /// Coefficient of variation of inter-arrival times.
        cv: f64,
    },
    /// Demand that varies over the day: a Poisson process of rate
    /// `rate · (1 + amplitude · sin(2π t / period_s))` (drawn by thinning a
    /// process at the peak rate; Lewis and Shedler, 1979).
    Diurnal {
        /// Mean requests per second.
        rate: f64,
        /// Relative swing in [0, 1): the peak is `rate · (1 + amplitude)`.
        amplitude: f64,
        /// Length of one cycle, seconds.
        period_s: f64,
    },
    /// Requests (arrival and lengths) from a CSV file.
    Trace {
        /// The file.
        path: PathBuf,
    },
}

/// A distribution of token counts.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub enum Lengths {
    /// Always this many.
    Fixed(u32),
    /// Uniform over `min..=max`.
    Uniform {
        /// Smallest.
        min: u32,
        /// Largest.
        max: u32,
    },
    /// Log-normal with this median and log-space standard deviation, rounded,
    /// clamped to `1..=max`.
    LogNormal {
        /// Median.
        median: f64,
        /// Standard deviation of the logarithm.
        sigma: f64,
        /// Largest value.
        max: u32,
    },
}

impl Lengths {
    /// Parses `N`, `uniform:MIN:MAX` or `lognormal:MEDIAN:SIGMA[:MAX]`.
    pub fn parse(what: &str, text: &str) -> Result<Lengths, SimError> {
        let bad = |message: &str| SimError::Spec {
            what: what.to_string(),
            spec: text.to_string(),
            message: format!(
                "{message}; expected N, uniform:MIN:MAX or lognormal:MEDIAN:SIGMA[:MAX]"
            ),
        };
        let parts: Vec<&str> = text.split(':').map(str::trim).collect();
        let int = |s: &str| s.parse::<u32>().map_err(|e| bad(&format!("`{s}`: {e}")));
        let float = |s: &str| s.parse::<f64>().map_err(|e| bad(&format!("`{s}`: {e}")));
        let l = match parts.as_slice() {
            [n] => Lengths::Fixed(int(n)?),
            ["uniform", a, b] => Lengths::Uniform {
                min: int(a)?,
                max: int(b)?,
            },
            ["lognormal", m, s] => Lengths::LogNormal {
                median: float(m)?,
                sigma: float(s)?,
                max: 8192,
            },
            ["lognormal", m, s, x] => Lengths::LogNormal {
                median: float(m)?,
                sigma: float(s)?,
                max: int(x)?,
            },
            _ => return Err(bad("unknown form")),
        };
        l.check(what)?;
        Ok(l)
    }

    fn check(&self, what: &str) -> Result<(), SimError> {
        let bad = |message: String| SimError::Spec {
            what: what.to_string(),
            spec: format!("{self:?}"),
            message,
        };
        match *self {
            Lengths::Fixed(0) => Err(bad("must be at least 1 token".into())),
            Lengths::Uniform { min, max } if min == 0 || min > max => {
                Err(bad(format!("need 1 <= MIN <= MAX, got {min}..{max}")))
            }
            Lengths::LogNormal { median, sigma, max } => {
                positive(&format!("{what}.median"), median)?;
                super::error::non_negative(&format!("{what}.sigma"), sigma)?;
                if max == 0 {
                    return Err(bad("MAX must be at least 1".into()));
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// Mean of the distribution (approximate for the clamped log-normal).
    pub fn mean(&self) -> f64 {
        match *self {
            Lengths::Fixed(n) => n as f64,
            Lengths::Uniform { min, max } => (min as f64 + max as f64) / 2.0,
            Lengths::LogNormal { median, sigma, max } => {
                (median * (sigma * sigma / 2.0).exp()).min(max as f64)
            }
        }
    }

    /// Largest value the distribution can give.
    pub fn max(&self) -> u32 {
        match *self {
            Lengths::Fixed(n) => n,
            Lengths::Uniform { max, .. } | Lengths::LogNormal { max, .. } => max,
        }
    }

    fn draw(&self, rng: &mut ChaCha8Rng) -> u32 {
        match *self {
            Lengths::Fixed(n) => n,
            Lengths::Uniform { min, max } => rng.random_range(min..=max),
            Lengths::LogNormal { median, sigma, max } => {
                let v = (median.ln() + sigma * random::normal(rng)).exp().round();
                v.clamp(1.0, max as f64) as u32
            }
        }
    }
}

/// A request workload: arrivals and lengths.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkloadSpec {
    /// The arrival process.
    pub arrivals: Arrivals,
    /// Prompt lengths (unused with a trace).
    pub prompt: Lengths,
    /// Output lengths (unused with a trace).
    pub output: Lengths,
    /// Stop after this many requests, if given.
    pub max_requests: Option<usize>,
}

impl WorkloadSpec {
    /// Parses the `--load` syntax (see the module documentation).
    pub fn parse(text: &str) -> Result<WorkloadSpec, SimError> {
        let what = "load";
        let bad = |message: String| SimError::Spec {
            what: what.into(),
            spec: text.to_string(),
            message,
        };
        let (kind, rest) = text.split_once(':').unwrap_or((text, ""));
        if kind.trim() == "trace" {
            if rest.trim().is_empty() {
                return Err(bad("trace:FILE needs a file".into()));
            }
            return Ok(WorkloadSpec {
                arrivals: Arrivals::Trace {
                    path: PathBuf::from(rest.trim()),
                },
                prompt: Lengths::Fixed(1),
                output: Lengths::Fixed(1),
                max_requests: None,
            });
        }
        let mut kv = KeyValues::parse(what, text, rest)?;
        let rate = kv
            .float("rate")?
            .ok_or_else(|| bad("rate=R is required".into()))?;
        positive("load.rate", rate)?;
        let arrivals = match kind.trim() {
            "poisson" => Arrivals::Poisson { rate },
            "gamma" => {
                let cv = kv.float("cv")?.unwrap_or(1.0);
                positive("load.cv", cv)?;
                Arrivals::Gamma { rate, cv }
            }
            "diurnal" => {
                let amplitude = kv.float("amplitude")?.unwrap_or(0.5);
                if !(0.0..1.0).contains(&amplitude) {
                    return Err(SimError::InvalidNumber {
                        field: "load.amplitude".into(),
                        requirement: "in [0, 1)".into(),
                        value: amplitude,
                    });
                }
                let period_s = match kv.take("period") {
                    Some(p) => positive("load.period", parse_duration("load.period", &p)?)?,
                    None => 3600.0,
                };
                Arrivals::Diurnal {
                    rate,
                    amplitude,
                    period_s,
                }
            }
            other => {
                return Err(bad(format!(
                    "unknown arrival process `{other}` (poisson, gamma, diurnal, trace)"
                )));
            }
        };
        let prompt = match kv.take("prompt") {
            Some(p) => Lengths::parse("load.prompt", &p)?,
            None => Lengths::Uniform { min: 256, max: 768 },
        };
        let output = match kv.take("output") {
            Some(p) => Lengths::parse("load.output", &p)?,
            None => Lengths::Uniform { min: 64, max: 192 },
        };
        let max_requests = match kv.take("requests") {
            Some(n) => Some(
                n.parse::<usize>()
                    .ok()
                    .filter(|&n| n > 0)
                    .ok_or_else(|| bad(format!("requests=`{n}` must be a positive integer")))?,
            ),
            None => None,
        };
        kv.finish()?;
        Ok(WorkloadSpec {
            arrivals,
            prompt,
            output,
            max_requests,
        })
    }

    /// The requests arriving within `duration_s` seconds (all of a trace when
    /// infinite), at most `max_requests`, drawn with `seed`. Trace paths are
    /// relative to the current directory. Refuses, before drawing them,
    /// requests that cannot fit in the memory available now (see
    /// [`WorkloadSpec::generate_within`]).
    pub fn generate(&self, duration_s: f64, seed: u64) -> Result<Vec<SimRequest>, SimError> {
        self.generate_within(
            duration_s,
            seed,
            tokenflow_planner::error::available_memory(),
        )
    }

    /// How many requests arrive within `duration_s` on average: rate ×
    /// duration, at most `max_requests`; `None` for a trace (its lines count).
    pub fn expected_requests(&self, duration_s: f64) -> Option<f64> {
        let rate = match self.arrivals {
            Arrivals::Poisson { rate }
            | Arrivals::Gamma { rate, .. }
            | Arrivals::Diurnal { rate, .. } => rate,
            Arrivals::Trace { .. } => return None,
        };
        let n = rate * duration_s;
        Some(self.max_requests.map_or(n, |cap| n.min(cap as f64)))
    }

    /// [`WorkloadSpec::generate`] with `memory_bytes` for the requests instead
    /// of the memory available now: refused when the expected count (or a
    /// trace's size) needs more, at [`bytes_per_request`] each, or as soon as
    /// the draws pass what fits. Within the limit the draws are the same.
    pub fn generate_within(
        &self,
        duration_s: f64,
        seed: u64,
        memory_bytes: u64,
    ) -> Result<Vec<SimRequest>, SimError> {
        if duration_s.is_nan() || duration_s <= 0.0 {
            return Err(SimError::InvalidNumber {
                field: "duration".into(),
                requirement: "positive".into(),
                value: duration_s,
            });
        }
        let each = bytes_per_request();
        let fit = fitting(memory_bytes, each);
        let field = if self.max_requests.is_some_and(|cap| {
            self.expected_requests(duration_s)
                .is_some_and(|n| n >= cap as f64)
        }) {
            "load.requests"
        } else {
            "load.rate x duration"
        };
        let refuse = |count: f64| too_large(field, "requests", count, each, memory_bytes);
        let cap = self.max_requests.unwrap_or(usize::MAX);
        let mut out = Vec::new();
        match &self.arrivals {
            Arrivals::Trace { path } => {
                for r in read_trace_within(path, memory_bytes)? {
                    if r.arrival_s < duration_s && out.len() < cap {
                        out.push(r);
                    }
                }
            }
            a => {
                let expected = self.expected_requests(duration_s).unwrap_or(0.0);
                // Not `expected > fit`: a NaN count is refused too.
                if !expected.le(&(fit as f64)) {
                    return Err(refuse(expected));
                }
                // Room for the mean and six standard deviations (gamma: cv times
                // Poisson's), so the vector rarely grows.
                let cv = match *a {
                    Arrivals::Gamma { cv, .. } => cv,
                    Arrivals::Diurnal { amplitude, .. } => 1.0 + amplitude,
                    _ => 1.0,
                };
                let room = expected + 6.0 * cv * expected.sqrt() + 16.0;
                out.reserve((room.min(fit as f64) as usize).min(cap));
                let mut ta = random::stream(seed, Purpose::Arrivals, 0);
                let mut tl = random::stream(seed, Purpose::Lengths, 0);
                let mut t = 0.0;
                // The first request arrives after one inter-arrival time.
                loop {
                    t += match *a {
                        Arrivals::Poisson { rate } => random::exponential(&mut ta, 1.0 / rate),
                        Arrivals::Gamma { rate, cv } => {
                            let k = 1.0 / (cv * cv);
                            random::gamma(&mut ta, k, 1.0 / (rate * k))
                        }
                        Arrivals::Diurnal {
                            rate,
                            amplitude,
                            period_s,
                        } => {
                            // Thinning: candidates at the peak rate, each kept
                            // with probability rate(t) / peak.
                            let peak = rate * (1.0 + amplitude);
                            let mut dt = 0.0;
                            loop {
                                dt += random::exponential(&mut ta, 1.0 / peak);
                                let at = t + dt;
                                let now = rate
                                    * (1.0
                                        + amplitude
                                            * (std::f64::consts::TAU * at / period_s).sin());
                                if at >= duration_s || random::open01(&mut ta) * peak <= now {
                                    break;
                                }
                            }
                            dt
                        }
                        Arrivals::Trace { .. } => unreachable!("handled above"),
                    };
                    if t >= duration_s || out.len() >= cap {
                        break;
                    }
                    if out.len() as u64 >= fit {
                        return Err(refuse(out.len() as f64 + 1.0));
                    }
                    out.push(SimRequest {
                        arrival_s: t,
                        prompt_tokens: self.prompt.draw(&mut tl),
                        output_tokens: self.output.draw(&mut tl),
                    });
                }
            }
        }
        if out.is_empty() {
            return Err(SimError::NoRequests { duration_s });
        }
        Ok(out)
    }
}

/// Bytes a simulation holds per offered request: the request itself, its
/// outcome in each run, and its place in the admission queue (a `u32` in a
/// queue that grows by doubling). Sequences in flight, bounded by KV room,
/// are not counted.
pub fn bytes_per_request() -> u64 {
    use std::mem::size_of;
    (size_of::<SimRequest>() + size_of::<RequestOutcome>() + 2 * size_of::<u32>()) as u64
}

/// Reads a request trace: CSV lines `arrival_s,prompt_tokens,output_tokens`
/// (a first line that does not start with a digit is a header; `#` starts a
/// comment), sorted by arrival.
pub fn read_trace(path: &Path) -> Result<Vec<SimRequest>, SimError> {
    read_trace_within(path, tokenflow_planner::error::available_memory())
}

/// [`read_trace`], refusing a file whose text, or whose lines as requests
/// ([`bytes_per_request`] each), need more than `memory_bytes`.
pub fn read_trace_within(path: &Path, memory_bytes: u64) -> Result<Vec<SimRequest>, SimError> {
    let shown = path.display().to_string();
    let text = read_bounded(path, memory_bytes, "load", "requests", bytes_per_request())?;
    parse_trace(&shown, &text)
}

/// Reads a trace file whose text, and whose lines at `line_bytes` each, fit in
/// `memory_bytes`: the size is checked before the file is read, the lines
/// before they are parsed.
pub(crate) fn read_bounded(
    path: &Path,
    memory_bytes: u64,
    field: &str,
    noun: &str,
    line_bytes: u64,
) -> Result<String, SimError> {
    let shown = path.display().to_string();
    let io = |e: std::io::Error| SimError::Io {
        path: shown.clone(),
        message: e.to_string(),
    };
    let size = std::fs::metadata(path).map_err(io)?.len();
    if size > memory_bytes {
        return Err(too_large(
            field,
            "bytes of trace",
            size as f64,
            1,
            memory_bytes,
        ));
    }
    let text = std::fs::read_to_string(path).map_err(io)?;
    let lines = text.lines().count() as u64;
    if size.saturating_add(lines.saturating_mul(line_bytes)) > memory_bytes {
        return Err(too_large(
            field,
            noun,
            lines as f64,
            line_bytes,
            memory_bytes,
        ));
    }
    Ok(text)
}

/// Parses request trace text (see [`read_trace`]); `name` is used in errors.
pub fn parse_trace(name: &str, text: &str) -> Result<Vec<SimRequest>, SimError> {
    let mut out = Vec::new();
    for (k, raw) in text.lines().enumerate() {
        let line = raw.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        if out.is_empty() && k == first_content_line(text) && !starts_numeric(line) {
            continue; // header
        }
        let bad = |message: String| SimError::Trace {
            path: name.to_string(),
            line: k + 1,
            message,
        };
        let cols: Vec<&str> = line.split(',').map(str::trim).collect();
        if cols.len() != 3 {
            return Err(bad(format!(
                "expected arrival_s,prompt_tokens,output_tokens, got `{line}`"
            )));
        }
        let arrival_s: f64 = cols[0]
            .parse()
            .map_err(|e| bad(format!("arrival `{}`: {e}", cols[0])))?;
        if !(arrival_s.is_finite() && arrival_s >= 0.0) {
            return Err(bad(format!("arrival {arrival_s} must be finite and >= 0")));
        }
        let int = |s: &str, what: &str| -> Result<u32, SimError> {
            s.parse::<u32>()
                .ok()
                .filter(|&v| v > 0)
                .ok_or_else(|| bad(format!("{what} `{s}` must be a positive integer")))
        };
        out.push(SimRequest {
            arrival_s,
            prompt_tokens: int(cols[1], "prompt_tokens")?,
            output_tokens: int(cols[2], "output_tokens")?,
        });
    }
    out.sort_by(|a, b| a.arrival_s.total_cmp(&b.arrival_s));
    Ok(out)
}

fn first_content_line(text: &str) -> usize {
    text.lines()
        .position(|l| !l.split('#').next().unwrap_or("").trim().is_empty())
        .unwrap_or(0)
}

fn starts_numeric(line: &str) -> bool {
    line.chars()
        .next()
        .is_some_and(|c| c.is_ascii_digit() || c == '.' || c == '-' || c == '+')
}

/// A duration with a unit (`ms`, `s`, `m`, `h`; see [`tokenflow_planner::units`]).
pub fn parse_duration(what: &str, text: &str) -> Result<f64, SimError> {
    spec::duration(what, text)
}
