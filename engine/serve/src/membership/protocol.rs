//! What the coordinator and the node agents say to each other (JSON over
//! HTTP, every call carrying the join token as a bearer token), and the checks
//! a registration must pass before its node is used.

use serde::{Deserialize, Serialize};
use tokenflow_engine::dataflow::EngineOptions;
use tokenflow_planner::Plan;
use tokenflow_planner::gpu_catalog::GpuCatalog;

/// A node agent's registration (`POST /control/join`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Registration {
    /// The node's name, unique in the cluster: letters, digits, `.`, `_`, `-`.
    pub name: String,
    /// Where the agent's own endpoint listens (`host:port`).
    pub agent: String,
    /// GPU kind, a catalogue name (`RTX4090`, `A100-80GB`, ...).
    pub gpu: String,
    /// Memory the node offers for weights and KV, MiB (default: the GPU's).
    #[serde(default)]
    pub memory_mb: Option<i64>,
    /// Fingerprint of the agent's model file; must be the coordinator's.
    pub model: String,
    /// Changes each time the agent starts: a name seen with a new incarnation
    /// is a node that restarted (its old self is gone).
    pub incarnation: u64,
    /// Speed measured on the node by a short profile (`tokenflow node
    /// --profile`); the planner uses it instead of the GPU kind's figures.
    #[serde(default)]
    pub measured: Option<NodeSpeed>,
}

/// A node's speed as its agent measured it, in the planner's GPU terms.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct NodeSpeed {
    /// Weight bytes read per second in batch-1 decode, GB/s.
    pub mem_bandwidth_gbs: f64,
    /// FLOP/s in prefill, TFLOPS.
    pub fp16_tflops: f64,
}

/// Why a registration is refused (400, or 409 for another model).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RegistrationError {
    /// The name is empty, too long or has characters other than `[A-Za-z0-9._-]`.
    #[error("name `{0}`: use 1-64 letters, digits, `.`, `_` or `-`")]
    BadName(String),
    /// The agent address is not `host:port`.
    #[error("agent address `{0}`: expected host:port")]
    BadAddress(String),
    /// The GPU kind is not in the catalogue.
    #[error("gpu `{asked}` is not a known GPU kind (known: {known})")]
    UnknownGpu {
        /// What was given.
        asked: String,
        /// The catalogue's names.
        known: String,
    },
    /// Memory zero or negative.
    #[error("memory_mb {0}: must be positive")]
    BadMemory(i64),
    /// Measured speeds that are not positive finite numbers.
    #[error("measured speed {0}: bandwidth and TFLOPS must be positive, finite and below 1e6")]
    BadSpeed(String),
    /// The node holds another model file.
    #[error(
        "model fingerprint {node} differs from the coordinator's {coordinator}: the node holds another model file"
    )]
    OtherModel {
        /// The node's.
        node: String,
        /// The coordinator's.
        coordinator: String,
    },
}

impl Registration {
    /// Checks every field against the catalogue and the coordinator's model fingerprint.
    pub fn check(&self, catalog: &GpuCatalog, model: &str) -> Result<(), RegistrationError> {
        let name_ok = !self.name.is_empty()
            && self.name.len() <= 64
            && self
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
        if !name_ok {
            return Err(RegistrationError::BadName(self.name.clone()));
        }
        // A host name, an IPv4 address or a bracketed IPv6 one: the address
        // goes into the planner's cluster file and other nodes' host lists.
        let host_ok = |h: &str| {
            !h.is_empty()
                && h.len() <= 253
                && h.chars().all(|c| {
                    c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ':' | '[' | ']')
                })
        };
        match self.agent.rsplit_once(':') {
            Some((host, port)) if host_ok(host) && port.parse::<u16>().is_ok_and(|p| p > 0) => {}
            _ => return Err(RegistrationError::BadAddress(self.agent.clone())),
        }
        if catalog.get(&self.gpu).is_none() {
            return Err(RegistrationError::UnknownGpu {
                asked: self.gpu.clone(),
                known: catalog.names(),
            });
        }
        if let Some(m) = self.memory_mb
            && m <= 0
        {
            return Err(RegistrationError::BadMemory(m));
        }
        // Positive, finite, and below any machine's (1e6 GB/s, 1e6 TFLOPS).
        let plausible = |v: f64| v.is_finite() && v > 0.0 && v < 1e6;
        if let Some(m) = self.measured
            && !(plausible(m.mem_bandwidth_gbs) && plausible(m.fp16_tflops))
        {
            return Err(RegistrationError::BadSpeed(format!("{m:?}")));
        }
        if self.model != model {
            return Err(RegistrationError::OtherModel {
                node: self.model.clone(),
                coordinator: model.to_string(),
            });
        }
        Ok(())
    }

    /// The host part of the agent's address (where its workers listen too).
    pub fn host(&self) -> &str {
        self.agent.rsplit_once(':').map_or("", |(h, _)| h)
    }
}

/// The coordinator's answer to a registration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Welcome {
    /// The name the node is known by.
    pub node: String,
    /// How often the coordinator will ask for the agent's status, ms.
    pub heartbeat_ms: u64,
}

/// A node leaving on purpose (`POST /control/leave`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Leave {
    /// The node.
    pub name: String,
    /// Its incarnation (a stale agent's leave is ignored).
    pub incarnation: u64,
}

/// What became of one of an agent's workers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerState {
    /// The membership epoch it serves.
    pub epoch: u64,
    /// The coordinator run that started it ([`WorkerSpec::session`]).
    #[serde(default)]
    pub session: u64,
    /// Its process id.
    pub pid: u32,
    /// `None` while it runs; its exit code, or `-signal` when killed.
    pub exit: Option<i32>,
    /// Phases its run reached (`model opened`, `mesh connected`, `worker W
    /// loaded`) with their Unix times.
    #[serde(default)]
    pub phases: Vec<(String, f64)>,
}

/// An agent's answer to a heartbeat (`GET /agent/status`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentStatus {
    /// The node.
    pub name: String,
    /// Its incarnation.
    pub incarnation: u64,
    /// Whether it is draining to leave.
    pub leaving: bool,
    /// Its workers, newest last.
    pub workers: Vec<WorkerState>,
    /// Bytes of the model file fetched from the coordinator (0 for a node
    /// that holds the file).
    #[serde(default)]
    pub fetched_bytes: u64,
}

/// `POST /agent/prepare`: reserve an address for the worker of `epoch`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Prepare {
    /// The epoch.
    pub epoch: u64,
}

/// The address an agent's worker of an epoch will listen on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Prepared {
    /// `host:port` for the timely cluster.
    pub address: String,
}

/// Everything one process of an epoch's timely cluster needs
/// (`POST /agent/start`, then `tokenflow worker --spec FILE`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerSpec {
    /// The membership epoch.
    pub epoch: u64,
    /// The coordinator run it belongs to (epochs count from 0 in each run).
    #[serde(default)]
    pub session: u64,
    /// This process's index in `hosts` (0 is the coordinator).
    pub process: usize,
    /// Every process's address, in order.
    pub hosts: Vec<String>,
    /// The plan of this epoch.
    pub plan: Plan,
    /// The cluster of this epoch, in the planner's TOML format.
    pub cluster_toml: String,
    /// Engine options; every process must run the same.
    pub options: EngineOptions,
}

/// `POST /agent/stop`: end the worker of `epoch` (SIGKILL).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Stop {
    /// The epoch.
    pub epoch: u64,
    /// The coordinator run it belongs to.
    #[serde(default)]
    pub session: u64,
}

/// `POST /agent/measure`: time round trips and bandwidth to these peers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Measure {
    /// Each peer's name and agent address.
    pub peers: Vec<(String, String)>,
}

/// One measured link, from the asking node to `peer`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LinkMeasurement {
    /// The peer's name.
    pub peer: String,
    /// Median round trip of small requests, ms.
    pub rtt_ms: f64,
    /// Throughput of a 4 MiB transfer, Gbit/s.
    pub gbps: f64,
}

/// A bearer token compared in constant time (a timing leak would let a
/// stranger guess the join token byte by byte).
pub fn token_matches(given: Option<&str>, token: &str) -> bool {
    let Some(given) = given else {
        return false;
    };
    let (a, b) = (given.trim().as_bytes(), token.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn good() -> Registration {
        Registration {
            name: "a-1".into(),
            agent: "127.0.0.1:7001".into(),
            gpu: "RTX4090".into(),
            memory_mb: Some(4096),
            model: "abc".into(),
            incarnation: 1,
            measured: None,
        }
    }

    #[test]
    fn registrations_are_checked_field_by_field() {
        let catalog = GpuCatalog::builtin();
        assert_eq!(good().check(&catalog, "abc"), Ok(()));
        let cases: Vec<(Registration, &str)> = vec![
            (
                Registration {
                    name: "".into(),
                    ..good()
                },
                "name",
            ),
            (
                Registration {
                    name: "a b".into(),
                    ..good()
                },
                "name",
            ),
            (
                Registration {
                    agent: "nowhere".into(),
                    ..good()
                },
                "agent address",
            ),
            (
                Registration {
                    agent: "h:0".into(),
                    ..good()
                },
                "agent address",
            ),
            (
                Registration {
                    gpu: "TPU9".into(),
                    ..good()
                },
                "gpu `TPU9`",
            ),
            (
                Registration {
                    memory_mb: Some(-5),
                    ..good()
                },
                "memory_mb -5",
            ),
            (
                Registration {
                    memory_mb: Some(0),
                    ..good()
                },
                "memory_mb 0",
            ),
        ];
        for (r, says) in cases {
            let e = r.check(&catalog, "abc").unwrap_err().to_string();
            assert!(e.contains(says), "{e}");
        }
        let e = good().check(&catalog, "xyz").unwrap_err();
        assert!(matches!(e, RegistrationError::OtherModel { .. }));
    }

    #[test]
    fn tokens_match_exactly() {
        assert!(token_matches(Some("s3cret"), "s3cret"));
        assert!(token_matches(Some(" s3cret "), "s3cret"));
        assert!(!token_matches(Some("s3cre"), "s3cret"));
        assert!(!token_matches(Some("s3creT"), "s3cret"));
        assert!(!token_matches(None, "s3cret"));
    }
}
