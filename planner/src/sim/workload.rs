//! Requests: arrival processes (Poisson, gamma for bursts, or a trace file),
//! prompt and output length distributions, and the spec syntax of `--load`.
//!
//! ```text
//! poisson:rate=20[,prompt=LEN][,output=LEN][,requests=N]
//! gamma:rate=20,cv=4[,prompt=LEN][,output=LEN][,requests=N]   # cv > 1: bursts
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

use super::error::{SimError, positive};
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
            other => {
                return Err(bad(format!(
                    "unknown arrival process `{other}` (poisson, gamma, trace)"
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
    /// relative to the current directory.
    pub fn generate(&self, duration_s: f64, seed: u64) -> Result<Vec<SimRequest>, SimError> {
        if duration_s.is_nan() || duration_s <= 0.0 {
            return Err(SimError::InvalidNumber {
                field: "duration".into(),
                requirement: "positive".into(),
                value: duration_s,
            });
        }
        let cap = self.max_requests.unwrap_or(usize::MAX);
        let mut out = Vec::new();
        match &self.arrivals {
            Arrivals::Trace { path } => {
                for r in read_trace(path)? {
                    if r.arrival_s < duration_s && out.len() < cap {
                        out.push(r);
                    }
                }
            }
            a => {
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
                        Arrivals::Trace { .. } => unreachable!("handled above"),
                    };
                    if t >= duration_s || out.len() >= cap {
                        break;
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

/// Reads a request trace: CSV lines `arrival_s,prompt_tokens,output_tokens`
/// (a first line that does not start with a digit is a header; `#` starts a
/// comment), sorted by arrival.
pub fn read_trace(path: &Path) -> Result<Vec<SimRequest>, SimError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| SimError::Io {
        path: shown.clone(),
        message: e.to_string(),
    })?;
    parse_trace(&shown, &text)
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

/// A duration with an optional unit (`ms`, `s`, `m`, `h`; seconds without).
pub fn parse_duration(what: &str, text: &str) -> Result<f64, SimError> {
    spec::duration(what, text)
}
