//! [`Coordinator`]: the node registry, the membership epochs and the loop that
//! changes them. Each epoch is one timely cluster: the coordinator is its
//! process 0 (the sequencer, no stage) and each node of the epoch's plan runs
//! one worker process, started by its agent. Timely clusters cannot change
//! members, so every change forms a new one:
//!
//! - a death (a worker's broken connection ends the run at once; an agent
//!   silent for the detection delay is declared dead and its epoch aborted)
//!   forms the next epoch at once, and the sessions continue there from the
//!   tokens their clients have ([`super::relay`]);
//! - a join forms a new epoch when the planner's evaluation of the plan with
//!   the new node beats the current plan's; a leave (SIGTERM to an agent)
//!   forms one without the node. Either way the old epoch is retired: its
//!   sessions finish where they are (no restart) while new requests go to the
//!   new epoch, and past the drain timeout what is left moves over.
//!
//! The re-plan rule is the simulator study's best by default (keep what the
//! nodes hold, re-plan only when a stage lost every replica); `on-change`
//! re-plans the whole placement at every change.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use crossbeam_channel::{Receiver, Sender};
use serde::Serialize;
use tokenflow_engine::dataflow::{
    AbortHandle, Arrivals, Communication, EngineOptions, MetricsBoard, RunSpec, live_channel,
    run_live,
};
use tokenflow_planner::gpu_catalog::GpuCatalog;
use tokenflow_planner::repair::live_plan;
use tokenflow_planner::{Cluster, ModelProfile, Plan, PlanOptions, evaluate, plan_with};

use super::cluster_file::cluster_toml;
use super::history::{NodeEvent, NodeHistory, unix_now};
use super::protocol::{AgentStatus, Prepare, Prepared, Registration, Stop, WorkerSpec};
use super::relay::{EpochId, Relay};
use crate::state::AppState;

/// When the placement is planned again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ReplanRule {
    /// Keep what the nodes hold; plan anew only when a stage lost every
    /// replica (and for a join the planner says is worth it).
    StageLoss,
    /// Plan the whole placement anew at every membership change.
    OnChange,
}

impl std::str::FromStr for ReplanRule {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "stage-loss" => Ok(ReplanRule::StageLoss),
            "on-change" => Ok(ReplanRule::OnChange),
            other => Err(format!(
                "`{other}` is not a re-plan rule (stage-loss, on-change)"
            )),
        }
    }
}

/// The coordinator's settings.
#[derive(Debug, Clone)]
pub struct CoordinatorConfig {
    /// The token nodes must present.
    pub join_token: String,
    /// Planner strategy for new placements.
    pub strategy: String,
    /// When to plan anew.
    pub replan: ReplanRule,
    /// How often each agent is asked for its status.
    pub heartbeat: Duration,
    /// An agent silent this long is declared dead (the detection delay).
    pub suspect_after: Duration,
    /// Nodes to wait for before the first epoch.
    pub min_nodes: usize,
    /// The address nodes reach the coordinator's timely process at (host only).
    pub advertise_host: String,
    /// Engine options of every epoch (placement and faults are the coordinator's).
    pub options: EngineOptions,
    /// A join re-plans only if the planner's throughput rises by this share.
    pub join_gain: f64,
    /// How long a retired epoch's sessions may finish there before they move.
    pub drain_timeout: Duration,
    /// Where the node history is kept.
    pub history: PathBuf,
}

/// What became of one epoch, for `/control/epochs`.
#[derive(Debug, Clone, Serialize)]
pub struct EpochRecord {
    /// The epoch.
    pub epoch: EpochId,
    /// What made it (`first`, `join d`, `leave a`, `failure: ...`, `death b`).
    pub cause: String,
    /// Nodes with a worker, in process order (process 1 first).
    pub nodes: Vec<String>,
    /// Its stages: `layers: nodes`.
    pub stages: Vec<String>,
    /// `kept` (the last plan without the lost nodes) or the strategy's name.
    pub planned_by: String,
    /// The planner's max-flow throughput of the plan, tokens/s.
    pub planned_tok_s: f64,
    /// Unix time the change was noticed (a run ended, a node joined or left).
    pub trigger_unix: f64,
    /// Seconds from the trigger to the plan.
    pub plan_s: f64,
    /// Seconds from the trigger to every worker started.
    pub started_s: f64,
    /// Seconds from the trigger to each phase of the coordinator's process
    /// and of each worker (`b: mesh connected`, ...).
    pub phases: Vec<(String, f64)>,
    /// Sessions it took over from a failed or drained epoch.
    pub sessions_in: usize,
    /// Seconds from the end of the epoch each session it took over ran in
    /// being noticed to that session's next token.
    pub resumed_s: Vec<f64>,
    /// How it ended (`None` while it runs).
    pub ended: Option<String>,
}

/// A node as the registry holds it.
#[derive(Debug, Clone)]
struct Member {
    reg: Registration,
    status: Option<AgentStatus>,
    last_seen: Instant,
    leaving: bool,
    /// Left out of epochs until then (it failed to start a worker).
    benched_until: Option<Instant>,
}

/// What wakes the loop.
#[derive(Debug)]
enum Change {
    Joined(String),
    Leaving(String),
    Dead {
        name: String,
        why: String,
    },
    WorkerExited {
        name: String,
        epoch: EpochId,
        exit: i32,
    },
    EpochEnded {
        epoch: EpochId,
        error: Option<String>,
    },
}

/// An epoch whose run is going on.
struct LiveEpoch {
    plan: Plan,
    nodes: Vec<String>,
    abort: AbortHandle,
    retired_at: Option<Instant>,
    /// Why this coordinator ended it, if it did (its run's own error then
    /// says only that it was aborted).
    aborted: Option<String>,
}

impl LiveEpoch {
    fn abort(&mut self, why: String) {
        self.aborted.get_or_insert(why);
        self.abort.abort();
    }
}

/// The registry, the epochs, and the channel of changes.
pub struct Coordinator {
    config: CoordinatorConfig,
    model_path: PathBuf,
    model_fingerprint: String,
    profile: ModelProfile,
    catalog: GpuCatalog,
    relay: Arc<Relay>,
    history: NodeHistory,
    members: Mutex<BTreeMap<String, Member>>,
    changes: (Sender<Change>, Receiver<Change>),
    records: Mutex<Vec<EpochRecord>>,
    boards: Mutex<BTreeMap<EpochId, Arc<MetricsBoard>>>,
    http: reqwest::blocking::Client,
    stopping: std::sync::atomic::AtomicBool,
    manifest: std::sync::OnceLock<Result<super::model_fetch::ModelManifest, String>>,
    links: Mutex<super::cluster_file::MeasuredLinks>,
    /// Tells this coordinator's epochs from those of an earlier run (epochs
    /// count from 0 each run; an agent may still list an old epoch's worker).
    session: u64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Epochs whose records and measurements are kept (`/control/epochs`).
const KEPT_EPOCHS: usize = 256;

/// How long a node that failed to start a worker is left out of epochs.
const BENCH_FOR: Duration = Duration::from_secs(30);

/// How long an agent may take to start a worker (it first fetches the
/// stage's tensors if it holds no model file).
const START_TIMEOUT: Duration = Duration::from_secs(120);

/// How often a leave whose epoch could not be formed is tried again.
const LEAVE_RETRY: Duration = Duration::from_secs(1);

/// Why a call to an agent failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    /// The node is not registered (any more).
    #[error("node {0} is not registered")]
    Unknown(String),
    /// Nothing accepts connections at its address: it is gone.
    #[error("node {node}: {path}: cannot connect: {message}")]
    Unreachable {
        /// The node.
        node: String,
        /// The endpoint.
        path: String,
        /// The client's error.
        message: String,
    },
    /// It did not answer in time, answered with an error status, or with
    /// something that is not the expected message.
    #[error("node {node}: {path}: {message}")]
    Failed {
        /// The node.
        node: String,
        /// The endpoint.
        path: String,
        /// What went wrong.
        message: String,
    },
}

/// Why a node's registration was not taken.
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    /// A field is wrong.
    #[error(transparent)]
    Invalid(#[from] super::protocol::RegistrationError),
    /// The history could not record it.
    #[error(transparent)]
    History(#[from] super::history::HistoryError),
    /// Its heartbeat thread could not start.
    #[error("starting the node's heartbeat thread: {0}")]
    Thread(std::io::Error),
    /// The coordinator is shutting down.
    #[error("the coordinator is shutting down")]
    Stopping,
}

impl Coordinator {
    /// A coordinator for the model at `model_path` (whose fingerprint nodes
    /// must match), delivering through `relay`.
    pub fn new(
        config: CoordinatorConfig,
        model_path: PathBuf,
        model_fingerprint: String,
        profile: ModelProfile,
        relay: Arc<Relay>,
    ) -> Result<Self, super::history::HistoryError> {
        let history = NodeHistory::open(&config.history)?;
        let http = reqwest::blocking::Client::builder()
            .timeout(config.suspect_after.max(Duration::from_millis(200)))
            .build()
            .expect("an HTTP client builds");
        Ok(Self {
            config,
            model_path,
            model_fingerprint,
            profile,
            catalog: GpuCatalog::builtin(),
            relay,
            history,
            members: Mutex::new(BTreeMap::new()),
            changes: crossbeam_channel::unbounded(),
            records: Mutex::new(Vec::new()),
            boards: Mutex::new(BTreeMap::new()),
            http,
            stopping: std::sync::atomic::AtomicBool::new(false),
            manifest: std::sync::OnceLock::new(),
            links: Mutex::new(Default::default()),
            session: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64)
                ^ u64::from(std::process::id()),
        })
    }

    /// The settings.
    pub fn config(&self) -> &CoordinatorConfig {
        &self.config
    }

    /// The history of joins, leaves and deaths.
    pub fn history(&self) -> &NodeHistory {
        &self.history
    }

    /// Every epoch so far, with the phases its processes reached and how
    /// long the sessions it took over waited for their next token.
    pub fn records(&self) -> Vec<EpochRecord> {
        self.refresh_records();
        lock(&self.records).clone()
    }

    /// The model file's manifest for nodes that fetch it (hashed on first use).
    pub fn manifest(&self) -> Result<&super::model_fetch::ModelManifest, String> {
        self.manifest
            .get_or_init(|| {
                super::model_fetch::ModelManifest::of_file(&self.model_path)
                    .map_err(|e| e.to_string())
            })
            .as_ref()
            .map_err(Clone::clone)
    }

    /// Links the agents measured, by node pair.
    pub fn links(&self) -> super::cluster_file::MeasuredLinks {
        lock(&self.links).clone()
    }

    /// Asks `name`, on a thread of its own, to time its links to every other
    /// member; keeps the results for the next plans (the epoch loop does not
    /// wait for them).
    fn measure_links_later(self: &Arc<Self>, name: &str) {
        let (me, name) = (Arc::clone(self), name.to_string());
        let _ = std::thread::Builder::new()
            .name(format!("links-{name}"))
            .spawn(move || me.measure_links(&name));
    }

    /// Asks `name` to time its links to every other member; keeps the results.
    fn measure_links(&self, name: &str) {
        let peers: Vec<(String, String)> = lock(&self.members)
            .values()
            .filter(|m| m.reg.name != name)
            .map(|m| (m.reg.name.clone(), m.reg.agent.clone()))
            .collect();
        if peers.is_empty() {
            return;
        }
        let timeout = Duration::from_secs(10) * peers.len().min(30) as u32;
        match self.call::<_, Vec<super::protocol::LinkMeasurement>>(
            name,
            "/agent/measure",
            &super::protocol::Measure { peers },
            timeout,
        ) {
            Ok(measured) => {
                let mut links = lock(&self.links);
                for m in measured {
                    let key = if name < m.peer.as_str() {
                        (name.to_string(), m.peer.clone())
                    } else {
                        (m.peer.clone(), name.to_string())
                    };
                    links.insert(key, m);
                }
            }
            Err(e) => eprintln!("coordinator: node {name} could not time its links: {e}"),
        }
    }

    /// The model file.
    pub fn model_path(&self) -> &std::path::Path {
        &self.model_path
    }

    /// The relay of sessions.
    pub fn relay(&self) -> &Arc<Relay> {
        &self.relay
    }

    /// Registered nodes with their last status.
    pub fn nodes(&self) -> Vec<(Registration, Option<AgentStatus>, bool)> {
        lock(&self.members)
            .values()
            .map(|m| (m.reg.clone(), m.status.clone(), m.leaving))
            .collect()
    }

    /// Takes a registration: checked, recorded, then watched by heartbeats.
    pub fn join(self: &Arc<Self>, reg: Registration) -> Result<(), JoinError> {
        if self.stopping.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(JoinError::Stopping);
        }
        reg.check(&self.catalog, &self.model_fingerprint)?;
        let mut members = lock(&self.members);
        if let Some(old) = members.get(&reg.name) {
            if old.reg.incarnation == reg.incarnation {
                // The same agent again (it lost track of us): nothing changes.
                return Ok(());
            }
            // Restarted with a new incarnation: its old self is gone.
            self.history.record(&reg.name, NodeEvent::Death)?;
            let _ = self.changes.0.send(Change::Dead {
                name: reg.name.clone(),
                why: "came back with a new incarnation".into(),
            });
        }
        self.history.record(&reg.name, NodeEvent::Join)?;
        let name = reg.name.clone();
        let joined = name.clone();
        let incarnation = reg.incarnation;
        members.insert(
            name.clone(),
            Member {
                reg,
                status: None,
                last_seen: Instant::now(),
                leaving: false,
                benched_until: None,
            },
        );
        drop(members);
        let me = Arc::clone(self);
        std::thread::Builder::new()
            .name(format!("heartbeat-{name}"))
            .spawn(move || me.heartbeats(&name, incarnation))
            .map_err(JoinError::Thread)?;
        let _ = self.changes.0.send(Change::Joined(joined));
        Ok(())
    }

    /// A node asks to leave: its stages move before it goes.
    pub fn leave(&self, name: &str, incarnation: u64) -> bool {
        let mut members = lock(&self.members);
        match members.get_mut(name) {
            Some(m) if m.reg.incarnation == incarnation => {
                m.leaving = true;
                drop(members);
                let _ = self.changes.0.send(Change::Leaving(name.to_string()));
                true
            }
            _ => false,
        }
    }

    fn agent_url(&self, name: &str, path: &str) -> Option<String> {
        lock(&self.members)
            .get(name)
            .map(|m| format!("http://{}{path}", m.reg.agent))
    }

    fn call<T: Serialize, R: serde::de::DeserializeOwned>(
        &self,
        name: &str,
        path: &str,
        body: &T,
        timeout: Duration,
    ) -> Result<R, CallError> {
        let url = self
            .agent_url(name, path)
            .ok_or_else(|| CallError::Unknown(name.to_string()))?;
        let failed = |message: String| CallError::Failed {
            node: name.to_string(),
            path: path.to_string(),
            message,
        };
        let response = self
            .http
            .post(&url)
            .bearer_auth(&self.config.join_token)
            .timeout(timeout)
            .json(body)
            .send()
            .map_err(|e| {
                if e.is_connect() {
                    CallError::Unreachable {
                        node: name.to_string(),
                        path: path.to_string(),
                        message: e.to_string(),
                    }
                } else {
                    failed(e.to_string())
                }
            })?;
        let status = response.status();
        if !status.is_success() {
            let text = response.text().unwrap_or_default();
            return Err(failed(format!("{status}: {text}")));
        }
        response
            .json()
            .map_err(|e| failed(format!("bad answer: {e}")))
    }

    /// Asks `name` for its status every heartbeat until it is gone or replaced.
    fn heartbeats(&self, name: &str, incarnation: u64) {
        let mut reported: Vec<EpochId> = Vec::new();
        loop {
            std::thread::sleep(self.config.heartbeat);
            let url = {
                let members = lock(&self.members);
                match members.get(name) {
                    Some(m) if m.reg.incarnation == incarnation => {
                        format!("http://{}/agent/status", m.reg.agent)
                    }
                    _ => return,
                }
            };
            let answer = self
                .http
                .get(&url)
                .bearer_auth(&self.config.join_token)
                .timeout(self.config.suspect_after)
                .send()
                .ok()
                .filter(|r| r.status().is_success())
                .and_then(|r| r.json::<AgentStatus>().ok());
            let mut members = lock(&self.members);
            let Some(m) = members
                .get_mut(name)
                .filter(|m| m.reg.incarnation == incarnation)
            else {
                return;
            };
            match answer {
                Some(status) if status.incarnation == incarnation => {
                    // A worker that exited ends its epoch (a crash at start
                    // breaks no connection the mesh could see).
                    for w in status.workers.iter().filter(|w| w.session == self.session) {
                        if let Some(exit) = w.exit
                            && !reported.contains(&w.epoch)
                        {
                            reported.push(w.epoch);
                            let _ = self.changes.0.send(Change::WorkerExited {
                                name: name.to_string(),
                                epoch: w.epoch,
                                exit,
                            });
                        }
                    }
                    m.status = Some(status);
                    m.last_seen = Instant::now();
                }
                Some(_) => {
                    // Another incarnation answers at its address: this one is gone.
                    members.remove(name);
                    drop(members);
                    let _ = self.history.record(name, NodeEvent::Death);
                    let _ = self.changes.0.send(Change::Dead {
                        name: name.to_string(),
                        why: "another incarnation answers at its address".into(),
                    });
                    return;
                }
                None if m.last_seen.elapsed() >= self.config.suspect_after => {
                    let leaving = m.leaving;
                    members.remove(name);
                    drop(members);
                    let event = if leaving {
                        NodeEvent::Leave
                    } else {
                        NodeEvent::Death
                    };
                    let _ = self.history.record(name, event);
                    let _ = self.changes.0.send(Change::Dead {
                        name: name.to_string(),
                        why: format!("silent for {} ms", self.config.suspect_after.as_millis()),
                    });
                    return;
                }
                None => {}
            }
        }
    }

    /// Live members that may serve (registered, not leaving, not benched
    /// after failing to start a worker), in name order.
    fn serving_members(&self) -> Vec<Registration> {
        lock(&self.members)
            .values()
            .filter(|m| !m.leaving && m.benched_until.is_none_or(|t| Instant::now() >= t))
            .map(|m| m.reg.clone())
            .collect()
    }

    /// Keeps `name` out of the next epochs for [`BENCH_FOR`]: it failed to
    /// prepare or start a worker (a node that always fails would otherwise
    /// stop every epoch from forming).
    fn bench(&self, name: &str, why: &str) {
        if let Some(m) = lock(&self.members).get_mut(name) {
            m.benched_until = Some(Instant::now() + BENCH_FOR);
            eprintln!(
                "coordinator: node {name} left out of epochs for {} s: {why}",
                BENCH_FOR.as_secs()
            );
        }
    }

    /// The cluster of `members` as the planner reads it, and its TOML.
    fn cluster_for(&self, members: &[Registration]) -> Result<(Cluster, String), String> {
        let estimates = self.history.estimates(unix_now());
        let links = lock(&self.links).clone();
        let toml = cluster_toml(members, &estimates, &links, &self.catalog);
        let cluster = Cluster::from_toml_str(&toml).map_err(|e| format!("cluster: {e}"))?;
        Ok((cluster, toml))
    }

    /// The plan and cluster for `members`: the last plan without lost nodes
    /// when the rule keeps held stages and every stage kept a replica,
    /// otherwise the strategy's.
    fn plan_for(
        &self,
        members: &[Registration],
        keep: Option<&Plan>,
    ) -> Result<(Plan, Cluster, String, String), String> {
        let (cluster, toml) = self.cluster_for(members)?;
        if self.config.replan == ReplanRule::StageLoss
            && let Some(keep) = keep
        {
            let alive = |n: &str| members.iter().any(|m| m.name == n);
            let mut live = live_plan(keep, &alive);
            live.nodes.retain(|n| alive(n));
            if live.stages.iter().all(|s| !s.replicas.is_empty())
                && live
                    .validate_structure(&cluster, self.profile.num_layers() as u32)
                    .is_ok()
            {
                return Ok((live, cluster, toml, "kept".into()));
            }
        }
        let plan = plan_with(
            &self.config.strategy,
            &cluster,
            &self.profile,
            &PlanOptions::default(),
        )
        .map_err(|e| format!("planning with {}: {e}", self.config.strategy))?;
        Ok((plan, cluster, toml, self.config.strategy.clone()))
    }

    /// Fills each record's phases (from its board and the agents' last
    /// status) and resumptions (from the relay).
    fn refresh_records(&self) {
        let resumptions = self.relay.resumptions();
        let statuses: Vec<(String, AgentStatus)> = self
            .nodes()
            .into_iter()
            .filter_map(|(r, s, _)| s.map(|s| (r.name, s)))
            .collect();
        let boards = lock(&self.boards).clone();
        let mut records = lock(&self.records);
        for r in records.iter_mut() {
            let mut phases: Vec<(String, f64)> = Vec::new();
            if let Some(board) = boards.get(&r.epoch) {
                for (name, at) in board.phases() {
                    phases.push((format!("coordinator: {name}"), since(at, r.trigger_unix)));
                }
            }
            for (node, status) in &statuses {
                if let Some(w) = status
                    .workers
                    .iter()
                    .find(|w| w.epoch == r.epoch && w.session == self.session)
                {
                    for (name, at) in &w.phases {
                        phases.push((format!("{node}: {name}"), at - r.trigger_unix));
                    }
                }
            }
            if phases.len() > r.phases.len() {
                phases.sort_by(|a, b| a.1.total_cmp(&b.1));
                r.phases = phases;
            }
            let resumed: Vec<f64> = resumptions
                .iter()
                .filter(|x| x.epoch == r.epoch)
                .map(|x| x.stall_s)
                .collect();
            if !resumed.is_empty() {
                r.resumed_s = resumed;
            }
        }
    }

    fn throughput(&self, plan: &Plan, cluster: &Cluster) -> f64 {
        evaluate(plan, cluster, &self.profile, &PlanOptions::default()).throughput_tok_s
    }
}

/// `value` as another process reads it from its JSON.
fn json_round_trip<T: Serialize + serde::de::DeserializeOwned>(value: &T) -> Result<T, String> {
    serde_json::to_string(value)
        .and_then(|text| serde_json::from_str(&text))
        .map_err(|e| format!("a worker spec does not round-trip through JSON: {e}"))
}

/// A free port on `host`, for the coordinator's process of a new epoch.
fn free_port(host: &str) -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind((host, 0))?.local_addr()?.port())
}

fn secs_since(t: Instant) -> f64 {
    t.elapsed().as_secs_f64()
}

/// The loop that forms and retires epochs; runs until `stop` is set and
/// every epoch has ended.
pub struct EpochLoop {
    coordinator: Arc<Coordinator>,
    app: Arc<AppState>,
    epochs: BTreeMap<EpochId, LiveEpoch>,
    current: Option<EpochId>,
    last_plan: Option<Plan>,
    next_epoch: EpochId,
    pending_cause: Option<(String, Instant)>,
    /// When a leave last tried to form an epoch without its node.
    leave_tried: Option<Instant>,
}

impl EpochLoop {
    /// A loop for `coordinator`, showing each epoch's measurements on `app`.
    pub fn new(coordinator: Arc<Coordinator>, app: Arc<AppState>) -> Self {
        Self {
            coordinator,
            app,
            epochs: BTreeMap::new(),
            current: None,
            last_plan: None,
            next_epoch: 0,
            pending_cause: None,
            leave_tried: None,
        }
    }

    /// Runs until `stop` is set, then lets sessions end (the relay is closed
    /// by the caller) and aborts the epochs left after `drain` (their
    /// workers see the coordinator's process go and exit).
    pub fn run(mut self, stop: &std::sync::atomic::AtomicBool, drain: Duration) {
        let c = Arc::clone(&self.coordinator);
        let mut stop_since: Option<Instant> = None;
        loop {
            let stopping = stop.load(std::sync::atomic::Ordering::SeqCst);
            if stopping {
                c.stopping.store(true, std::sync::atomic::Ordering::SeqCst);
                let since = *stop_since.get_or_insert_with(Instant::now);
                if self.epochs.is_empty() {
                    break;
                }
                if since.elapsed() >= drain {
                    for e in self.epochs.values_mut() {
                        e.abort("the coordinator is stopping and the drain timeout passed".into());
                    }
                }
            }
            // Every change waiting is taken before an epoch is formed, so a
            // burst of joins gives one epoch over all of them.
            if let Ok(change) = c.changes.1.recv_timeout(Duration::from_millis(20)) {
                self.on_change(change, stopping);
                while let Ok(change) = c.changes.1.try_recv() {
                    self.on_change(change, stopping);
                }
            }
            if stopping {
                continue;
            }
            self.drain_retired();
            self.retry_leaves();
            self.release_leavers();
            if self.current.is_none() {
                let members = c.serving_members();
                let needed = if self.next_epoch == 0 {
                    c.config.min_nodes.max(1)
                } else {
                    1
                };
                if members.len() >= needed {
                    let (cause, trigger) = self
                        .pending_cause
                        .take()
                        .unwrap_or_else(|| ("first".into(), Instant::now()));
                    if let Err(e) = self.form(&cause, trigger, None) {
                        eprintln!("coordinator: epoch {}: {e}", self.next_epoch - 1);
                        self.pending_cause = Some((cause, trigger));
                        std::thread::sleep(Duration::from_millis(250));
                    }
                }
            }
        }
        // Every epoch has ended: its workers saw the coordinator's process
        // leave and exit on their own.
    }

    fn on_change(&mut self, change: Change, stopping: bool) {
        let c = Arc::clone(&self.coordinator);
        let now = Instant::now();
        match change {
            Change::EpochEnded { epoch, error } => {
                let Some(ended) = self.epochs.remove(&epoch) else {
                    return;
                };
                let left = c.relay.epoch_ended(epoch);
                let error = ended.aborted.clone().or(error);
                let how = match &error {
                    Some(e) => format!("failed: {e}"),
                    None => "finished".to_string(),
                };
                if let Some(r) = lock(&c.records).iter_mut().find(|r| r.epoch == epoch) {
                    r.ended = Some(format!("{how} ({left} sessions left in it)"));
                }
                eprintln!("coordinator: epoch {epoch} {how}; {left} sessions continue elsewhere");
                if self.current == Some(epoch) {
                    self.current = None;
                    self.last_plan = Some(ended.plan);
                    if !stopping {
                        let cause = match error {
                            Some(e) => format!("failure: {e}"),
                            None => "epoch ended".into(),
                        };
                        self.pending_cause = Some((cause, now));
                    }
                }
            }
            Change::Dead { name, why } => {
                eprintln!("coordinator: node {name} is gone ({why})");
                for (id, e) in self.epochs.iter_mut() {
                    if e.nodes.contains(&name) {
                        eprintln!("coordinator: aborting epoch {id}, which ran on {name}");
                        e.abort(format!("node {name} is gone ({why})"));
                    }
                }
            }
            Change::WorkerExited { name, epoch, exit } => {
                // Exit 0: the worker's epoch ended cleanly.
                if exit != 0
                    && let Some(e) = self.epochs.get_mut(&epoch)
                {
                    eprintln!(
                        "coordinator: the worker of node {name} for epoch {epoch} exited ({exit}): aborting the epoch"
                    );
                    e.abort(format!("the worker of node {name} exited ({exit})"));
                }
            }
            Change::Joined(name) => {
                eprintln!("coordinator: node {name} joined");
                if !stopping {
                    c.measure_links_later(&name);
                }
                let Some(current) = self.current else {
                    return;
                };
                if stopping {
                    return;
                }
                let members = c.serving_members();
                let Some(live) = self.epochs.get(&current) else {
                    return;
                };
                let Ok((candidate, cluster, _, by)) = c.plan_for(&members, None) else {
                    return;
                };
                let now_tok_s = c.throughput(&live.plan, &cluster);
                let new_tok_s = c.throughput(&candidate, &cluster);
                let uses = candidate.nodes.contains(&name);
                let better = new_tok_s > now_tok_s * (1.0 + c.config.join_gain);
                if uses && (better || c.config.replan == ReplanRule::OnChange) {
                    eprintln!(
                        "coordinator: with {name} the plan gives {new_tok_s:.1} tok/s against {now_tok_s:.1}: new epoch"
                    );
                    if let Err(e) = self.form(&format!("join {name}"), now, Some((candidate, by))) {
                        eprintln!("coordinator: {e}");
                    }
                } else {
                    eprintln!(
                        "coordinator: with {name} the plan gives {new_tok_s:.1} tok/s against {now_tok_s:.1}: kept"
                    );
                }
            }
            Change::Leaving(name) => {
                eprintln!("coordinator: node {name} is leaving");
                let uses = self
                    .current
                    .and_then(|e| self.epochs.get(&e))
                    .is_some_and(|e| e.nodes.contains(&name));
                if uses && !stopping {
                    self.leave_tried = Some(now);
                    // The current plan without the node, or a new one if a
                    // stage would be left without a replica.
                    if let Err(e) = self.form(&format!("leave {name}"), now, None) {
                        eprintln!(
                            "coordinator: {e} (tried again in {} s)",
                            LEAVE_RETRY.as_secs()
                        );
                    }
                }
            }
        }
    }

    /// A leaving node still in the current epoch (its new epoch could not be
    /// formed): try again every [`LEAVE_RETRY`].
    fn retry_leaves(&mut self) {
        let Some(current) = self.current.and_then(|e| self.epochs.get(&e)) else {
            return;
        };
        if self.leave_tried.is_some_and(|t| t.elapsed() < LEAVE_RETRY) {
            return;
        }
        let c = Arc::clone(&self.coordinator);
        let leaving: Option<String> = lock(&c.members)
            .values()
            .find(|m| m.leaving && current.nodes.contains(&m.reg.name))
            .map(|m| m.reg.name.clone());
        if let Some(name) = leaving {
            let now = Instant::now();
            self.leave_tried = Some(now);
            if let Err(e) = self.form(&format!("leave {name}"), now, None) {
                eprintln!(
                    "coordinator: {e} (tried again in {} s)",
                    LEAVE_RETRY.as_secs()
                );
            }
        }
    }

    /// Retired epochs past the drain timeout: their sessions move.
    fn drain_retired(&mut self) {
        let c = &self.coordinator;
        for (&id, e) in &self.epochs {
            if let Some(at) = e.retired_at
                && at.elapsed() >= c.config.drain_timeout
                && c.relay.sessions_in(id) > 0
            {
                let moved = c.relay.move_sessions(id);
                if moved > 0 {
                    eprintln!("coordinator: epoch {id} drained too slowly: {moved} sessions moved");
                }
            }
        }
    }

    /// Leaving nodes no epoch uses any more are told to go.
    fn release_leavers(&mut self) {
        let c = Arc::clone(&self.coordinator);
        let leavers: Vec<Registration> = lock(&c.members)
            .values()
            .filter(|m| m.leaving)
            .map(|m| m.reg.clone())
            .collect();
        for reg in leavers {
            if self.epochs.values().any(|e| e.nodes.contains(&reg.name)) {
                continue;
            }
            let released: Result<serde_json::Value, CallError> = c.call(
                &reg.name,
                "/agent/release",
                &serde_json::json!({}),
                Duration::from_millis(500),
            );
            if released.is_ok() || !lock(&c.members).contains_key(&reg.name) {
                let mut members = lock(&c.members);
                if members
                    .get(&reg.name)
                    .is_some_and(|m| m.reg.incarnation == reg.incarnation)
                {
                    members.remove(&reg.name);
                    drop(members);
                    let _ = c.history.record(&reg.name, NodeEvent::Leave);
                    eprintln!("coordinator: node {} left", reg.name);
                }
            }
        }
    }

    /// Forms the next epoch over the serving members (with `planned`, or
    /// planned here), retires the current one and opens the new one.
    fn form(
        &mut self,
        cause: &str,
        trigger: Instant,
        planned: Option<(Plan, String)>,
    ) -> Result<(), String> {
        let c = Arc::clone(&self.coordinator);
        let epoch = self.next_epoch;
        self.next_epoch += 1;
        let trigger_unix = unix_now() - secs_since(trigger);
        let members = c.serving_members();
        if members.is_empty() {
            return Err("no node to serve on".into());
        }
        let keep = self
            .current
            .and_then(|e| self.epochs.get(&e).map(|l| l.plan.clone()))
            .or_else(|| self.last_plan.clone());
        let (plan, cluster, toml, planned_by) = match planned {
            Some((p, by)) => {
                let (cluster, toml) = c.cluster_for(&members)?;
                (p, cluster, toml, by)
            }
            None => c.plan_for(&members, keep.as_ref())?,
        };
        let plan_s = secs_since(trigger);
        let nodes: Vec<String> = plan.nodes.clone();
        // Every node of the plan reserves its worker's address.
        let mut hosts = vec![format!(
            "{}:{}",
            c.config.advertise_host,
            free_port(&c.config.advertise_host)
                .map_err(|e| format!("a port for epoch {epoch}: {e}"))?
        )];
        for n in &nodes {
            let p: Prepared = c
                .call(
                    n,
                    "/agent/prepare",
                    &Prepare { epoch },
                    c.config.suspect_after,
                )
                .inspect_err(|e| self.suspect(n, e))
                .map_err(|e| e.to_string())?;
            hosts.push(p.address);
        }
        let mut options = c.config.options.clone();
        options.placement.node_workers = nodes
            .iter()
            .enumerate()
            .map(|(i, n)| (n.clone(), i + 1))
            .collect();
        options.placement.emulate_links = false;
        options.placement.emulate_speed = false;
        options.fault_linger = Duration::ZERO;
        // A worker that neither sends nor answers probes (stopped, hung) ends
        // the epoch after this long, and the mesh must form within it: ten
        // detection delays, at least 5 s (a worker starts in well under 1 s).
        options.connect_timeout = options
            .connect_timeout
            .min((c.config.suspect_after * 10).max(Duration::from_secs(5)));
        options.token_log = None;
        options.resumed = Default::default();
        for (i, n) in nodes.iter().enumerate() {
            let spec = WorkerSpec {
                epoch,
                session: c.session,
                process: i + 1,
                hosts: hosts.clone(),
                plan: plan.clone(),
                cluster_toml: toml.clone(),
                options: options.clone(),
            };
            let _: serde_json::Value = c
                .call(n, "/agent/start", &spec, START_TIMEOUT)
                .inspect_err(|e| {
                    self.suspect(n, e);
                    // The workers already started end when the mesh times out.
                    for m in &nodes[..i] {
                        let _: Result<serde_json::Value, CallError> = c.call(
                            m,
                            "/agent/stop",
                            &Stop {
                                epoch,
                                session: c.session,
                            },
                            c.config.suspect_after,
                        );
                    }
                })
                .map_err(|e| e.to_string())?;
        }
        let started_s = secs_since(trigger);
        let (client, intake) = live_channel();
        let abort = client.abort_handle();
        let board = Arc::new(MetricsBoard::default());
        // Every process must hold bit-identical figures (they are compared
        // before any token), and serde_json's float parsing is not always the
        // exact inverse of its printing: this process runs the plan and the
        // options as the workers parse them from the text they were sent.
        let spec = RunSpec {
            model_path: c.model_path.clone(),
            plan: json_round_trip(&plan)?,
            cluster: cluster.clone(),
            options: json_round_trip(&options)?,
            communication: Communication::Cluster {
                workers: 1,
                process: 0,
                hosts,
            },
            requests: Vec::new(),
            arrivals: Arrivals::Immediate,
        };
        let relay = Arc::clone(&c.relay);
        let tx = c.changes.0.clone();
        let run_board = Arc::clone(&board);
        std::thread::Builder::new()
            .name(format!("epoch-{epoch}"))
            .spawn(move || {
                let observer: tokenflow_engine::dataflow::runner::EventObserver =
                    Arc::new(move |e| relay.on_event(epoch, e));
                let result = run_live(spec, intake, Some(observer), Some(run_board));
                let _ = tx.send(Change::EpochEnded {
                    epoch,
                    error: result.err().map(|e| e.to_string()),
                });
            })
            .map_err(|e| format!("starting epoch {epoch}: {e}"))?;
        let planned_tok_s = c.throughput(&plan, &cluster);
        let stages = plan
            .stages
            .iter()
            .map(|s| {
                let names: Vec<&str> = s.replicas.iter().map(|r| r.node.as_str()).collect();
                format!("{}..{}: {}", s.start, s.end, names.join(","))
            })
            .collect();
        let (_, waiting) = c.relay.counts();
        if let Some(old) = self.current
            && let Some(e) = self.epochs.get_mut(&old)
        {
            e.retired_at = Some(Instant::now());
        }
        if let Some(old) = self.current {
            c.relay.retire_epoch(old);
        }
        c.relay.open_epoch(epoch, client);
        self.app.set_board(Arc::clone(&board));
        {
            // Measurements of the last epochs only (a long-lived service forms many).
            let mut boards = lock(&c.boards);
            boards.insert(epoch, board);
            while boards.len() > KEPT_EPOCHS {
                boards.pop_first();
            }
        }
        eprintln!(
            "coordinator: epoch {epoch} ({cause}) on {} with {} sessions to continue; plan {planned_by}, {planned_tok_s:.1} tok/s",
            nodes.join(", "),
            waiting
        );
        let mut records = lock(&c.records);
        if records.len() >= KEPT_EPOCHS {
            records.remove(0);
        }
        records.push(EpochRecord {
            epoch,
            cause: cause.to_string(),
            nodes: nodes.clone(),
            stages,
            planned_by,
            planned_tok_s,
            trigger_unix,
            plan_s,
            started_s,
            phases: Vec::new(),
            sessions_in: waiting,
            resumed_s: Vec::new(),
            ended: None,
        });
        self.epochs.insert(
            epoch,
            LiveEpoch {
                plan: plan.clone(),
                nodes,
                abort,
                retired_at: None,
                aborted: None,
            },
        );
        self.current = Some(epoch);
        self.last_plan = Some(plan);
        Ok(())
    }

    /// A node that failed a control call is checked at its next heartbeat;
    /// one that refuses connections is taken for dead now.
    fn suspect(&self, name: &str, error: &CallError) {
        let c = &self.coordinator;
        if matches!(error, CallError::Unreachable { .. }) {
            let removed = lock(&c.members).remove(name).is_some();
            if removed {
                let _ = c.history.record(name, NodeEvent::Death);
                // Its epochs (if any) end too.
                let _ = c.changes.0.send(Change::Dead {
                    name: name.to_string(),
                    why: error.to_string(),
                });
            }
        } else {
            c.bench(name, &error.to_string());
        }
    }
}

fn since(at: SystemTime, trigger_unix: f64) -> f64 {
    at.duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
        - trigger_unix
}
