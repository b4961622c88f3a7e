//! The node agent (`tokenflow node --join URL --token SECRET ...`): registers
//! with the coordinator, answers its heartbeats with the state of its workers,
//! starts one worker process per epoch it is part of (and kills one when told),
//! and on SIGTERM asks to leave, waits until the coordinator has moved its
//! stages away (its last epoch drained), then exits.
//!
//! Endpoints (all need the join token): `GET /agent/status`, `POST
//! /agent/prepare` (reserve a worker address for an epoch), `POST
//! /agent/start` (a [`WorkerSpec`]), `POST /agent/stop`, `POST /agent/release`.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::routing::{get, post};
use serde_json::json;

use super::control::{ControlError, check_token, parse_body};
use super::model_fetch::{FetchError, PartialModel};
use super::protocol::{
    AgentStatus, Leave, LinkMeasurement, Measure, Prepare, Prepared, Registration, Stop,
    WorkerSpec, WorkerState,
};
use super::worker::PhaseLine;
use crate::server::termination;

/// An agent's settings.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// The coordinator's base URL, e.g. `http://10.0.0.1:8000`.
    pub join: String,
    /// The cluster's join token.
    pub token: String,
    /// The node's name.
    pub name: String,
    /// GPU kind (a catalogue name).
    pub gpu: String,
    /// Memory offered, MiB (default: the GPU kind's).
    pub memory_mb: Option<i64>,
    /// The model file (with `fetch_model`: where the partial copy is written).
    pub model_path: PathBuf,
    /// Its fingerprint (with `fetch_model`: taken from the coordinator).
    pub model_fingerprint: String,
    /// Fetch the model from the coordinator, only the tensors of this node's
    /// stages, instead of reading a local file.
    pub fetch_model: bool,
    /// Speed measured here, registered for the planner.
    pub measured: Option<super::protocol::NodeSpeed>,
    /// The `tokenflow` binary that runs workers (`tokenflow worker`).
    pub worker_exe: PathBuf,
    /// Where worker specs are written.
    pub work_dir: PathBuf,
    /// After SIGTERM, the longest wait for the coordinator to release the node.
    pub leave_timeout: Duration,
}

/// Why an agent stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// Serving or spawning failed.
    #[error("node agent: {0}")]
    Io(#[from] std::io::Error),
    /// The model could not be fetched from the coordinator.
    #[error("node agent: {0}")]
    Fetch(#[from] FetchError),
    /// The coordinator refused the registration (wrong token, bad field).
    #[error("the coordinator refused node `{name}` ({status}): {message}")]
    Refused {
        /// The node.
        name: String,
        /// The HTTP status.
        status: u16,
        /// The coordinator's message.
        message: String,
    },
}

struct WorkerProc {
    epoch: u64,
    session: u64,
    child: Child,
    exit: Option<i32>,
    phases: Arc<Mutex<Vec<(String, f64)>>>,
}

/// The agent's state, shared by its endpoints and its threads.
struct Agent {
    config: AgentConfig,
    advertise: String,
    incarnation: u64,
    workers: Mutex<Vec<WorkerProc>>,
    leaving: AtomicBool,
    released: AtomicBool,
    last_contact: Mutex<Instant>,
    refused: Mutex<Option<AgentError>>,
    stop: tokio::sync::Notify,
    spawner: Spawner,
    partial: Option<PartialModel>,
    http: reqwest::blocking::Client,
}

/// Starts child processes from one thread that lives as long as the agent:
/// Linux's parent-death signal fires when the *thread* that forked exits,
/// so a worker forked from a passing thread would be killed with it.
struct Spawner {
    requests: Mutex<std::sync::mpsc::Sender<SpawnRequest>>,
}

type SpawnRequest = (Command, std::sync::mpsc::Sender<std::io::Result<Child>>);

impl Spawner {
    fn new() -> std::io::Result<Self> {
        let (tx, rx) = std::sync::mpsc::channel::<SpawnRequest>();
        std::thread::Builder::new()
            .name("spawner".into())
            .spawn(move || {
                for (mut cmd, reply) in rx {
                    let _ = reply.send(cmd.spawn());
                }
            })?;
        Ok(Self {
            requests: Mutex::new(tx),
        })
    }

    fn spawn(&self, cmd: Command) -> std::io::Result<Child> {
        let (tx, rx) = std::sync::mpsc::channel();
        lock(&self.requests)
            .send((cmd, tx))
            .map_err(|_| std::io::Error::other("the spawner thread is gone"))?;
        rx.recv()
            .map_err(|_| std::io::Error::other("the spawner thread is gone"))?
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Makes `cmd`'s child get SIGKILL when this process dies, however it dies:
/// a worker outliving its agent would serve an epoch nobody watches. (The
/// signal comes when the forking *thread* ends: fork from a thread that
/// lives as long as the process.)
#[cfg(target_os = "linux")]
pub fn die_with_parent(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: only async-signal-safe calls (prctl, getppid, _exit) run between
    // fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::getppid() != parent {
                libc::_exit(1);
            }
            Ok(())
        });
    }
}

/// Elsewhere, children get their own process group, which a service manager
/// can kill as one; there is no parent-death signal to ask for.
#[cfg(all(unix, not(target_os = "linux")))]
pub fn die_with_parent(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    cmd.process_group(0);
}

/// No parent-death signal on this platform.
#[cfg(not(unix))]
pub fn die_with_parent(_cmd: &mut Command) {}

fn exit_code(status: std::process::ExitStatus) -> i32 {
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        if let Some(sig) = status.signal() {
            return -sig;
        }
    }
    status.code().unwrap_or(-1)
}

impl Agent {
    fn status(&self) -> AgentStatus {
        let mut workers = lock(&self.workers);
        for w in workers.iter_mut() {
            if w.exit.is_none()
                && let Ok(Some(status)) = w.child.try_wait()
            {
                w.exit = Some(exit_code(status));
            }
        }
        AgentStatus {
            name: self.config.name.clone(),
            incarnation: self.incarnation,
            leaving: self.leaving.load(Ordering::SeqCst),
            workers: workers
                .iter()
                .map(|w| WorkerState {
                    epoch: w.epoch,
                    session: w.session,
                    pid: w.child.id(),
                    exit: w.exit,
                    phases: lock(&w.phases).clone(),
                })
                .collect(),
            fetched_bytes: self.partial.as_ref().map_or(0, PartialModel::fetched_bytes),
        }
    }

    fn running(&self) -> usize {
        self.status()
            .workers
            .iter()
            .filter(|w| w.exit.is_none())
            .count()
    }

    fn host(&self) -> String {
        self.advertise
            .rsplit_once(':')
            .map_or("127.0.0.1", |(h, _)| h)
            .to_string()
    }

    /// Starts the worker of `spec`; `raw` is the spec as the coordinator sent
    /// it, handed on unchanged (printing it again could change its floats'
    /// last bits, and every process must hold the same).
    fn start(&self, spec: WorkerSpec, raw: &[u8]) -> Result<u32, ControlError> {
        if self.leaving.load(Ordering::SeqCst) {
            return Err(leaving_error());
        }
        if spec.process == 0 || spec.process >= spec.hosts.len() {
            return Err(ControlError::bad(format!(
                "process {} of {} hosts: a worker is process 1 or later",
                spec.process,
                spec.hosts.len()
            )));
        }
        if let Some(partial) = &self.partial {
            let fetched = partial
                .ensure(&self.http, &spec.plan, &self.config.name)
                .map_err(ControlError::internal)?;
            if fetched > 0 {
                eprintln!(
                    "node {}: fetched {fetched} bytes of the model for epoch {} ({} of {} bytes in all)",
                    self.config.name,
                    spec.epoch,
                    partial.fetched_bytes(),
                    partial.file_len()
                );
            }
        }
        std::fs::create_dir_all(&self.config.work_dir).map_err(ControlError::internal)?;
        let file = self.config.work_dir.join(format!(
            "{}-{}-{}-epoch-{}.json",
            self.config.name, self.incarnation, spec.session, spec.epoch
        ));
        std::fs::write(&file, raw).map_err(ControlError::internal)?;
        let mut cmd = Command::new(&self.config.worker_exe);
        cmd.arg("worker")
            .arg("--spec")
            .arg(&file)
            .arg("--model")
            .arg(&self.config.model_path)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        die_with_parent(&mut cmd);
        let mut child = self.spawner.spawn(cmd).map_err(ControlError::internal)?;
        let pid = child.id();
        let phases = Arc::new(Mutex::new(vec![(
            "worker started".to_string(),
            super::history::unix_now(),
        )]));
        if let Some(stdout) = child.stdout.take() {
            let (phases, name, epoch) = (Arc::clone(&phases), self.config.name.clone(), spec.epoch);
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                    match serde_json::from_str::<PhaseLine>(&line) {
                        Ok(p) => lock(&phases).push((p.phase, p.t)),
                        Err(_) => eprintln!("node {name} worker {epoch}: {line}"),
                    }
                }
            });
        }
        let mut workers = lock(&self.workers);
        // Keep the last few finished workers for the status; drop older ones.
        let finished = workers.iter().filter(|w| w.exit.is_some()).count();
        if finished > 8 {
            let mut drop_n = finished - 8;
            workers.retain(|w| {
                let old = w.exit.is_some() && drop_n > 0;
                drop_n -= usize::from(old);
                !old
            });
        }
        workers.push(WorkerProc {
            epoch: spec.epoch,
            session: spec.session,
            child,
            exit: None,
            phases,
        });
        Ok(pid)
    }

    /// Sends SIGKILL to the worker of `epoch`; the next status reaps it (no
    /// wait under the lock the heartbeats take).
    fn stop_worker(&self, session: u64, epoch: u64) {
        for w in lock(&self.workers).iter_mut() {
            if w.epoch == epoch && w.session == session && w.exit.is_none() {
                let _ = w.child.kill();
            }
        }
    }

    fn kill_all(&self) {
        for w in lock(&self.workers).iter_mut() {
            if w.exit.is_none() {
                let _ = w.child.kill();
                if let Ok(status) = w.child.wait() {
                    w.exit = Some(exit_code(status));
                }
            }
        }
    }

    fn registration(&self) -> Registration {
        Registration {
            name: self.config.name.clone(),
            agent: self.advertise.clone(),
            gpu: self.config.gpu.clone(),
            memory_mb: self.config.memory_mb,
            model: self.config.model_fingerprint.clone(),
            incarnation: self.incarnation,
            measured: self.config.measured,
        }
    }

    /// Registers, retrying while the coordinator cannot be reached; a
    /// refusal is final.
    fn register(&self, http: &reqwest::blocking::Client) -> Result<Duration, AgentError> {
        let url = format!("{}/control/join", self.config.join.trim_end_matches('/'));
        let mut told = false;
        loop {
            let sent = http
                .post(&url)
                .bearer_auth(&self.config.token)
                .json(&self.registration())
                .send();
            match sent {
                Ok(r) if r.status().is_success() => {
                    *lock(&self.last_contact) = Instant::now();
                    let heartbeat_ms = r
                        .json::<super::protocol::Welcome>()
                        .map_or(100, |w| w.heartbeat_ms);
                    eprintln!(
                        "node {}: joined {} as incarnation {}",
                        self.config.name, self.config.join, self.incarnation
                    );
                    // Silent this long: the coordinator restarted and forgot us.
                    return Ok(Duration::from_millis(heartbeat_ms.saturating_mul(30))
                        .max(Duration::from_secs(3)));
                }
                Ok(r) if r.status().is_client_error() => {
                    let status = r.status().as_u16();
                    let body: serde_json::Value = r.json().unwrap_or_default();
                    let message = body["error"]["message"]
                        .as_str()
                        .unwrap_or("no reason given")
                        .to_string();
                    return Err(AgentError::Refused {
                        name: self.config.name.clone(),
                        status,
                        message,
                    });
                }
                other => {
                    if !told {
                        let why = match other {
                            Ok(r) => r.status().to_string(),
                            Err(e) => e.to_string(),
                        };
                        eprintln!(
                            "node {}: cannot reach the coordinator at {} ({why}); retrying",
                            self.config.name, self.config.join
                        );
                        told = true;
                    }
                    std::thread::sleep(Duration::from_millis(250));
                }
            }
            if self.leaving.load(Ordering::SeqCst) {
                return Ok(Duration::MAX);
            }
        }
    }
}

fn leaving_error() -> ControlError {
    ControlError::conflict("this node is leaving and takes no new epoch")
}

impl ControlError {
    fn bad(message: impl Into<String>) -> Self {
        Self::with_status(StatusCode::BAD_REQUEST, message)
    }

    fn conflict(message: impl Into<String>) -> Self {
        Self::with_status(StatusCode::CONFLICT, message)
    }

    fn internal(e: impl std::fmt::Display) -> Self {
        Self::with_status(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
    }
}

fn agent_router(agent: Arc<Agent>) -> Router {
    Router::new()
        .route("/agent/status", get(status))
        .route("/agent/prepare", post(prepare))
        .route("/agent/start", post(start))
        .route("/agent/stop", post(stop))
        .route("/agent/release", post(release))
        .route("/agent/ping", get(ping))
        .route("/agent/blob", get(blob))
        .route("/agent/measure", post(measure))
        .with_state(agent)
}

/// Bytes of the transfer that times a link.
const BLOB_BYTES: usize = 4 << 20;

async fn ping(
    State(agent): State<Arc<Agent>>,
    uri: Uri,
    headers: HeaderMap,
) -> Result<&'static str, ControlError> {
    authorize(&agent, &headers, &uri)?;
    Ok("pong")
}

async fn blob(
    State(agent): State<Arc<Agent>>,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Vec<u8>, ControlError> {
    authorize(&agent, &headers, &uri)?;
    Ok(vec![0u8; BLOB_BYTES])
}

/// Times 5 round trips and one 4 MiB transfer to each peer.
fn measure_links(agent: &Agent, peers: &[(String, String)]) -> Vec<LinkMeasurement> {
    let mut out = Vec::new();
    for (name, addr) in peers {
        let get = |path: &str| {
            let t = Instant::now();
            agent
                .http
                .get(format!("http://{addr}{path}"))
                .bearer_auth(&agent.config.token)
                .timeout(Duration::from_secs(10))
                .send()
                .and_then(|r| r.error_for_status())
                .and_then(|r| r.bytes())
                .map(|b| (t.elapsed().as_secs_f64(), b.len()))
        };
        let mut rtts: Vec<f64> = (0..5)
            .filter_map(|_| get("/agent/ping").ok().map(|(t, _)| t))
            .collect();
        if rtts.is_empty() {
            continue;
        }
        rtts.sort_by(f64::total_cmp);
        let rtt = rtts[rtts.len() / 2];
        let Ok((t, n)) = get("/agent/blob") else {
            continue;
        };
        let transfer = (t - rtt).max(1e-6);
        out.push(LinkMeasurement {
            peer: name.clone(),
            rtt_ms: rtt * 1e3,
            gbps: n as f64 * 8.0 / transfer / 1e9,
        });
    }
    out
}

async fn measure(
    State(agent): State<Arc<Agent>>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Result<axum::Json<Vec<LinkMeasurement>>, ControlError> {
    authorize(&agent, &headers, &uri)?;
    let Measure { peers } = parse_body(&body)?;
    if peers.len() > 1024 {
        return Err(ControlError::bad(format!(
            "{} peers to measure: at most 1024 at once",
            peers.len()
        )));
    }
    let a = Arc::clone(&agent);
    let links = tokio::task::spawn_blocking(move || measure_links(&a, &peers))
        .await
        .map_err(ControlError::internal)?;
    Ok(axum::Json(links))
}

fn authorize(agent: &Agent, headers: &HeaderMap, uri: &Uri) -> Result<(), ControlError> {
    let who = format!("node {}", agent.config.name);
    check_token(headers, &agent.config.token, uri, &who)?;
    *lock(&agent.last_contact) = Instant::now();
    Ok(())
}

async fn status(
    State(agent): State<Arc<Agent>>,
    uri: Uri,
    headers: HeaderMap,
) -> Result<axum::Json<AgentStatus>, ControlError> {
    authorize(&agent, &headers, &uri)?;
    Ok(axum::Json(agent.status()))
}

async fn prepare(
    State(agent): State<Arc<Agent>>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Result<axum::Json<Prepared>, ControlError> {
    authorize(&agent, &headers, &uri)?;
    let _: Prepare = parse_body(&body)?;
    if agent.leaving.load(Ordering::SeqCst) {
        return Err(leaving_error());
    }
    let host = agent.host();
    let port = std::net::TcpListener::bind((host.as_str(), 0))
        .and_then(|l| l.local_addr())
        .map_err(ControlError::internal)?
        .port();
    Ok(axum::Json(Prepared {
        address: format!("{host}:{port}"),
    }))
}

async fn start(
    State(agent): State<Arc<Agent>>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Result<axum::Json<serde_json::Value>, ControlError> {
    authorize(&agent, &headers, &uri)?;
    let spec: WorkerSpec = parse_body(&body)?;
    let epoch = spec.epoch;
    let a = Arc::clone(&agent);
    let pid = tokio::task::spawn_blocking(move || a.start(spec, &body))
        .await
        .map_err(ControlError::internal)??;
    eprintln!(
        "node {}: worker for epoch {epoch} started (pid {pid})",
        agent.config.name
    );
    Ok(axum::Json(json!({"epoch": epoch, "pid": pid})))
}

async fn stop(
    State(agent): State<Arc<Agent>>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Result<axum::Json<serde_json::Value>, ControlError> {
    authorize(&agent, &headers, &uri)?;
    let Stop { epoch, session } = parse_body(&body)?;
    let a = Arc::clone(&agent);
    tokio::task::spawn_blocking(move || a.stop_worker(session, epoch))
        .await
        .map_err(ControlError::internal)?;
    Ok(axum::Json(json!({"epoch": epoch, "stopped": true})))
}

async fn release(
    State(agent): State<Arc<Agent>>,
    uri: Uri,
    headers: HeaderMap,
) -> Result<axum::Json<serde_json::Value>, ControlError> {
    authorize(&agent, &headers, &uri)?;
    agent.released.store(true, Ordering::SeqCst);
    agent.stop.notify_one();
    Ok(axum::Json(json!({"released": true})))
}

/// Runs the agent on `listener` (its endpoint for the coordinator; workers
/// listen on the same host) until SIGTERM has drained it, SIGINT, or the
/// coordinator refuses it. `on_ready` gets the bound address.
pub fn run_agent(
    config: AgentConfig,
    listener: std::net::TcpListener,
    on_ready: impl FnOnce(SocketAddr),
) -> Result<(), AgentError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("tokenflow-agent")
        .enable_all()
        .build()?;
    let addr = listener.local_addr()?;
    listener.set_nonblocking(true)?;
    let incarnation = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
        ^ ((std::process::id() as u64) << 32);
    let http = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    let mut config = config;
    let partial = if config.fetch_model {
        let p = fetch_partial(&config, &http)?;
        config.model_fingerprint = p.fingerprint().to_string();
        eprintln!(
            "node {}: a partial copy of the coordinator's model ({} bytes) at {}; fetched {} bytes (header and tail)",
            config.name,
            p.file_len(),
            config.model_path.display(),
            p.fetched_bytes()
        );
        Some(p)
    } else {
        None
    };
    let agent = Arc::new(Agent {
        advertise: addr.to_string(),
        config,
        incarnation,
        workers: Mutex::new(Vec::new()),
        leaving: AtomicBool::new(false),
        released: AtomicBool::new(false),
        last_contact: Mutex::new(Instant::now()),
        refused: Mutex::new(None),
        stop: tokio::sync::Notify::new(),
        spawner: Spawner::new()?,
        partial,
        http: http.clone(),
    });
    // Registration and re-registration (a coordinator that restarted forgets
    // its nodes: silence for a few seconds means register again).
    {
        let (agent, http) = (Arc::clone(&agent), http.clone());
        std::thread::spawn(move || {
            loop {
                let silence = match agent.register(&http) {
                    Ok(silence) => silence,
                    Err(e) => {
                        *lock(&agent.refused) = Some(e);
                        agent.stop.notify_one();
                        return;
                    }
                };
                loop {
                    std::thread::sleep(Duration::from_millis(250));
                    if agent.leaving.load(Ordering::SeqCst) {
                        return;
                    }
                    if lock(&agent.last_contact).elapsed() > silence {
                        break;
                    }
                }
            }
        });
    }
    let served: std::io::Result<()> = runtime.block_on(async {
        let listener = tokio::net::TcpListener::from_std(listener)?;
        on_ready(addr);
        let app = agent_router(Arc::clone(&agent));
        let shutdown_agent = Arc::clone(&agent);
        let shutdown = async move {
            tokio::select! {
                () = termination() => {
                    if shutdown_agent.refused.lock().unwrap_or_else(PoisonError::into_inner).is_none() {
                        leave(&shutdown_agent, &http).await;
                    }
                }
                () = shutdown_agent.stop.notified() => {}
            }
        };
        axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await
    });
    agent.kill_all();
    if agent.partial.is_some() {
        let _ = std::fs::remove_file(&agent.config.model_path);
    }
    runtime.shutdown_timeout(Duration::from_secs(1));
    served?;
    if let Some(e) = lock(&agent.refused).take() {
        return Err(e);
    }
    Ok(())
}

/// Creates the partial model file, waiting (up to a minute) for a
/// coordinator that is not up yet.
fn fetch_partial(
    config: &AgentConfig,
    http: &reqwest::blocking::Client,
) -> Result<PartialModel, AgentError> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match PartialModel::create(&config.model_path, &config.join, &config.token, http) {
            Ok(p) => return Ok(p),
            Err(FetchError::Http(e)) if Instant::now() < deadline && !e.contains("401") => {
                std::thread::sleep(Duration::from_millis(250));
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Asks to leave and waits until released with no worker running (or the
/// leave timeout).
async fn leave(agent: &Arc<Agent>, http: &reqwest::blocking::Client) {
    agent.leaving.store(true, Ordering::SeqCst);
    let name = agent.config.name.clone();
    eprintln!("node {name}: leaving; waiting for the coordinator to move its stages");
    let url = format!("{}/control/leave", agent.config.join.trim_end_matches('/'));
    let body = Leave {
        name: name.clone(),
        incarnation: agent.incarnation,
    };
    let (http, token) = (http.clone(), agent.config.token.clone());
    let asked = tokio::task::spawn_blocking(move || {
        http.post(&url)
            .bearer_auth(&token)
            .json(&body)
            .send()
            .map(|r| r.status().is_success())
            .unwrap_or(false)
    })
    .await
    .unwrap_or(false);
    if !asked {
        eprintln!("node {name}: the coordinator did not take the leave; going now");
        return;
    }
    let deadline = Instant::now() + agent.config.leave_timeout;
    loop {
        let a = Arc::clone(agent);
        let running = tokio::task::spawn_blocking(move || a.running())
            .await
            .unwrap_or(0);
        if agent.released.load(Ordering::SeqCst) && running == 0 {
            eprintln!("node {name}: released; no worker running; bye");
            return;
        }
        if Instant::now() >= deadline {
            eprintln!(
                "node {name}: not released after {} s; going with {running} workers",
                agent.config.leave_timeout.as_secs()
            );
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
