//! Runs a batch of requests through the engine, on threads or as one process
//! of a timely cluster, and brings every worker's measurements to worker 0.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use timely::communication::allocator::zero_copy::initialize::initialize_networking_from_sockets;
use timely::communication::allocator::{AllocatorBuilder, ProcessBuilder};
use timely::dataflow::operators::{Exchange, Input, Inspect, Probe};
use timely::dataflow::{InputHandle, ProbeHandle};
use timely::{CommunicationConfig, WorkerConfig};
use tokenflow_operators::{LlamaModel, SeqId};
use tokenflow_planner::{Cluster, Plan};

use super::builder::{EngineOptions, InferenceDataflow};
use super::durable_log::{DurableLogWriter, LogError, LogRecord};
use super::error::{EngineError, RequestError};
use super::live::{LiveIntake, MetricsBoard};
use super::mesh::{Fingerprint, answer_probes, connect_mesh, model_fingerprint_bytes};
use super::metrics::EngineMetrics;
use super::peer_stream::{PeerFaults, PeerStream, quiet_network_panics};
use super::sequencer::{ClientMsg, EngineEvent, RequestTiming, Submission};
use crate::request::{FinishReason, Request, TokenLog};

/// Where the workers run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Communication {
    /// This many worker threads in this process.
    Threads(usize),
    /// One process of a timely cluster (timely's own TCP networking).
    Cluster {
        /// Worker threads per process.
        workers: usize,
        /// This process's index.
        process: usize,
        /// `host:port` of every process, in order.
        hosts: Vec<String>,
    },
}

impl Communication {
    /// Workers in all processes.
    pub fn peers(&self) -> usize {
        match self {
            Communication::Threads(n) => *n,
            Communication::Cluster { workers, hosts, .. } => workers * hosts.len(),
        }
    }

    /// Whether this process hosts worker 0 (and so the results).
    pub fn is_first(&self) -> bool {
        match self {
            Communication::Threads(_) => true,
            Communication::Cluster { process, .. } => *process == 0,
        }
    }

    fn config(&self) -> Result<timely::Config, EngineError> {
        let communication = match self {
            Communication::Threads(0) => {
                return Err(EngineError::Option {
                    field: "workers".into(),
                    message: "must be positive".into(),
                });
            }
            Communication::Threads(1) => CommunicationConfig::Thread,
            Communication::Threads(n) => CommunicationConfig::Process(*n),
            Communication::Cluster {
                workers,
                process,
                hosts,
            } => {
                if *workers == 0 || *process >= hosts.len() {
                    return Err(EngineError::Option {
                        field: "process".into(),
                        message: format!(
                            "process {process} of {} hosts with {workers} workers each",
                            hosts.len()
                        ),
                    });
                }
                CommunicationConfig::Cluster {
                    threads: *workers,
                    process: *process,
                    addresses: hosts.clone(),
                    report: false,
                    zerocopy: false,
                }
            }
        };
        // Idle workers park at once: on a small machine their spinning would steal the stages' cores.
        let worker = WorkerConfig::default().idle_spin(Duration::ZERO);
        Ok(timely::Config {
            communication,
            worker,
        })
    }
}

/// What every process of a cluster must agree on before any token: the
/// binary, the model file, the plan, the cluster, the options that shape the
/// dataflow, the worker count and the host list. Options only process 0 uses
/// (its token log and what it resumes) are left out.
fn fingerprint(
    model_path: &std::path::Path,
    plan: &Plan,
    cluster: &Cluster,
    options: &EngineOptions,
    workers: usize,
    hosts: &[String],
) -> Result<Fingerprint, EngineError> {
    let model = model_fingerprint_bytes(model_path).map_err(|source| EngineError::ModelRead {
        path: model_path.to_path_buf(),
        source,
    })?;
    let plan = serde_json::to_vec(plan).map_err(|e| EngineError::Timely(e.to_string()))?;
    let mut shared = options.clone();
    shared.token_log = None;
    shared.resumed = Default::default();
    Ok(Fingerprint::default()
        .with("version", env!("CARGO_PKG_VERSION").as_bytes())
        .with("model", &model)
        .with("plan", &plan)
        .with("cluster", format!("{:?}", cluster.nodes).as_bytes())
        .with("options", format!("{shared:?}").as_bytes())
        .with("workers", &workers.to_le_bytes())
        .with("hosts", hosts.join("\n").as_bytes()))
}

/// When requests enter.
#[derive(Debug, Clone, PartialEq)]
pub enum Arrivals {
    /// All at the start.
    Immediate,
    /// Request `i` at `offsets_us[i]` after the start (open loop).
    At(Vec<u64>),
    /// `concurrency` in flight; each completion lets the next one in (closed loop).
    ClosedLoop {
        /// Requests in flight.
        concurrency: usize,
    },
}

/// Everything a run needs.
#[derive(Debug, Clone)]
pub struct RunSpec {
    /// The GGUF file.
    pub model_path: PathBuf,
    /// The plan to execute.
    pub plan: Plan,
    /// The (emulated) cluster.
    pub cluster: Cluster,
    /// Engine options.
    pub options: EngineOptions,
    /// Threads or a timely cluster.
    pub communication: Communication,
    /// The requests, submitted in order.
    pub requests: Vec<Request>,
    /// When they enter.
    pub arrivals: Arrivals,
}

/// A request that ran to its end.
#[derive(Debug, Clone, PartialEq)]
pub struct FinishedRequest {
    /// The sequence.
    pub seq: SeqId,
    /// Why it ended.
    pub reason: FinishReason,
    /// Its tokens.
    pub log: TokenLog,
    /// Its timeline.
    pub timing: RequestTiming,
}

/// What a run returns on process 0.
#[derive(Debug, Clone)]
pub struct RunOutcome {
    /// Finished requests, in completion order.
    pub finished: Vec<FinishedRequest>,
    /// Refused or failed requests.
    pub refused: Vec<(SeqId, RequestError)>,
    /// Measurements merged over every worker and process.
    pub metrics: EngineMetrics,
    /// The placement as a Markdown table.
    pub placement: String,
    /// Wall time from the first submission to the end.
    pub wall: Duration,
}

/// Called on worker 0 for every event as it happens (e.g. to stream text or tick a progress bar).
pub type EventObserver = Arc<dyn Fn(&EngineEvent) + Send + Sync>;

/// Runs `spec`; process 0 gets `Some(outcome)`, other processes `None`.
///
/// The plan is checked before any worker starts; a bad plan is an error here.
pub fn run(
    spec: RunSpec,
    observer: Option<EventObserver>,
) -> Result<Option<RunOutcome>, EngineError> {
    run_with(spec, None, observer, None)
}

/// Runs `spec` as a service: its `requests` (e.g. those resumed from a token
/// log) are submitted at the start, then whatever comes through `intake`, at
/// any time, until every [`super::live::LiveClient`] is dropped and everything
/// accepted has ended. `spec.arrivals` is not used. Every worker of this
/// process posts its measurements on `board` about every 250 ms.
pub fn run_live(
    spec: RunSpec,
    intake: LiveIntake,
    observer: Option<EventObserver>,
    board: Option<Arc<MetricsBoard>>,
) -> Result<Option<RunOutcome>, EngineError> {
    run_with(spec, Some(intake), observer, board)
}

/// How often a worker posts its measurements on the board.
const POST_EVERY: Duration = Duration::from_millis(250);

fn run_with(
    spec: RunSpec,
    intake: Option<LiveIntake>,
    observer: Option<EventObserver>,
    board: Option<Arc<MetricsBoard>>,
) -> Result<Option<RunOutcome>, EngineError> {
    let model = Arc::new(
        LlamaModel::open(&spec.model_path)
            .map_err(|source| EngineError::Model {
                path: spec.model_path.clone(),
                source,
            })?
            .with_numerics(spec.options.numerics),
    );
    if let Some(board) = &board {
        board.mark("model opened");
    }
    let peers = spec.communication.peers();
    let engine = Arc::new(InferenceDataflow::new(
        model,
        &spec.plan,
        &spec.cluster,
        peers,
        spec.options.clone(),
    )?);
    let placement_table = engine.placement().describe();
    let fault_linger = spec.options.fault_linger;
    let config = spec.communication.config()?;
    let source = Arc::new(Source {
        requests: spec.requests,
        arrivals: spec.arrivals,
        intake,
    });
    let phase_board = board.clone();
    let work = move |worker: &mut timely::worker::Worker| {
        drive_worker(
            worker,
            &engine,
            &source,
            observer.as_ref(),
            board.as_deref(),
        )
    };
    let peer_faults = Arc::new(PeerFaults::default());
    let guards = match &spec.communication {
        Communication::Cluster {
            workers,
            process,
            hosts,
        } => {
            let fingerprint = fingerprint(
                &spec.model_path,
                &spec.plan,
                &spec.cluster,
                &spec.options,
                *workers,
                hosts,
            )?;
            let mesh = connect_mesh(hosts, *process, &fingerprint, spec.options.connect_timeout)?;
            if let Some(board) = &phase_board {
                board.mark("mesh connected");
            }
            let sockets = watch_peers(mesh.streams, *process, hosts, *workers, &peer_faults)?;
            answer_probes(mesh.listener, Arc::downgrade(&peer_faults));
            peer_faults.watch_silence(spec.options.connect_timeout);
            let hooks = timely::communication::Hooks::default();
            let local = ProcessBuilder::new_typed_vector(
                *workers,
                hooks.refill.clone(),
                hooks.spill.clone(),
            );
            let (builders, guard) =
                initialize_networking_from_sockets(local, sockets, *process, *workers, hooks)
                    .map_err(|e| {
                        EngineError::Timely(format!("starting timely's network threads: {e}"))
                    })?;
            let builders = builders.into_iter().map(AllocatorBuilder::Tcp).collect();
            let (faults, me, address) =
                (Arc::clone(&peer_faults), *process, hosts[*process].clone());
            // A worker that fails takes its process out of the cluster: its
            // links are shut at once (the peers stop instead of waiting for
            // it, and learn why when they probe it).
            let work = move |worker: &mut timely::worker::Worker| {
                let result =
                    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| work(worker)));
                match &result {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => faults.fail_locally(me, &address, format!("failed: {e}")),
                    Err(panic) => {
                        let what = panic
                            .downcast_ref::<&str>()
                            .map(|s| s.to_string())
                            .or_else(|| panic.downcast_ref::<String>().cloned())
                            .unwrap_or_default();
                        faults.fail_locally(
                            me,
                            &address,
                            format!("failed: a worker panicked: {what}"),
                        )
                    }
                }
                result.unwrap_or_else(|panic| std::panic::resume_unwind(panic))
            };
            let guard = QuietCommsGuard(Some(guard));
            timely::execute::execute_from(builders, Box::new(guard), config.worker, work)
        }
        _ => timely::execute(config, work),
    }
    .map_err(EngineError::Timely)?;
    let mut first = None;
    let mut failure = None;
    for result in guards.join() {
        match result {
            Ok(Ok(Some(outcome))) => first = Some(outcome),
            Ok(Ok(None)) => {}
            // A worker's own error explains more than a panic it caused
            // in timely on the others.
            Ok(Err(e)) => {
                failure = match failure {
                    None | Some(EngineError::Timely(_)) => Some(e),
                    kept => kept,
                }
            }
            Err(e) => failure = failure.or(Some(EngineError::Timely(e))),
        }
    }
    // The peers that saw this process's links close ask it why: keep
    // answering a little before the process goes.
    if peer_faults.first().is_some() || peer_faults.local().is_some() {
        std::thread::sleep(fault_linger);
    }
    // A broken link poisons timely's queues and every worker fails after it:
    // the link's own fault is the cause worth reporting, unless this process
    // failed first (then its worker's error is).
    if let Some(fault) = peer_faults
        .first()
        .filter(|_| peer_faults.local().is_none())
    {
        return Err(EngineError::Peer {
            process: fault.process,
            address: fault.address,
            cause: fault.cause,
        });
    }
    if let Some(e) = failure {
        return Err(e);
    }
    Ok(first.map(|(finished, refused, metrics, wall)| RunOutcome {
        finished,
        refused,
        metrics,
        placement: placement_table,
        wall,
    }))
}

/// Timely's guard of its network threads, which joins them when dropped and
/// panics if one of them did (as they do, fail-stop, on a broken link). Here
/// that panic is caught, so the workers' own results survive and the run
/// reports the fault recorded in [`PeerFaults`].
struct QuietCommsGuard(Option<timely::communication::allocator::zero_copy::initialize::CommsGuard>);

impl Drop for QuietCommsGuard {
    fn drop(&mut self) {
        let guard = self.0.take();
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || drop(guard)));
    }
}

/// Wraps the mesh's checked sockets for timely's network threads (see
/// [`super::peer_stream`]), all sharing `faults`.
fn watch_peers(
    sockets: Vec<Option<std::net::TcpStream>>,
    process: usize,
    hosts: &[String],
    workers: usize,
    faults: &Arc<PeerFaults>,
) -> Result<Vec<Option<PeerStream>>, EngineError> {
    quiet_network_panics();
    sockets
        .into_iter()
        .enumerate()
        .map(|(peer, socket)| {
            socket
                .map(|s| PeerStream::new(s, process, peer, &hosts[peer], workers, faults))
                .transpose()
                .map_err(|e| {
                    EngineError::Timely(format!("watching the link to process {peer}: {e}"))
                })
        })
        .collect()
}

type WorkerResult = (
    Vec<FinishedRequest>,
    Vec<(SeqId, RequestError)>,
    EngineMetrics,
    Duration,
);

/// Where worker 0's requests come from: a fixed list on a schedule, and in a
/// live run the client channel after it.
struct Source {
    requests: Vec<Request>,
    arrivals: Arrivals,
    intake: Option<LiveIntake>,
}

fn drive_worker(
    worker: &mut timely::worker::Worker,
    engine: &InferenceDataflow,
    source: &Source,
    observer: Option<&EventObserver>,
    board: Option<&MetricsBoard>,
) -> Result<Option<WorkerResult>, EngineError> {
    let index = worker.index();
    let (requests, arrivals) = match &source.intake {
        // A live run submits its list at once, then listens.
        Some(_) => (&source.requests[..], &Arrivals::Immediate),
        None => (&source.requests[..], &source.arrivals),
    };
    let mut posted: Option<Instant> = None;
    let mut post = |metrics: &RefCell<EngineMetrics>, force: bool| {
        if let Some(board) = board
            && (force || posted.is_none_or(|t| t.elapsed() >= POST_EVERY))
        {
            board.post(index, &metrics.borrow());
            posted = Some(Instant::now());
        }
    };
    let mut input: ClientInput = InputHandle::new();
    let probe = ProbeHandle::new();
    let seen: Rc<RefCell<Vec<EngineEvent>>> = Rc::new(RefCell::new(Vec::new()));
    let sink = Rc::clone(&seen);
    let built = worker.dataflow::<u64, _, _>(|scope| {
        let submissions = scope.input_from(&mut input);
        let streams = engine.build(submissions)?;
        streams
            .events
            .inspect(move |e| sink.borrow_mut().push(e.clone()))
            .probe_with(&probe);
        Ok::<_, EngineError>(streams.metrics)
    });
    let mut metrics_in: InputHandle<u64, timely::container::CapacityContainerBuilder<Vec<String>>> =
        InputHandle::new();
    let gathered: Rc<RefCell<Vec<String>>> = Rc::new(RefCell::new(Vec::new()));
    let gather = Rc::clone(&gathered);
    worker.dataflow::<u64, _, _>(|scope| {
        scope
            .input_from(&mut metrics_in)
            .exchange(|_: &String| 0)
            .inspect(move |m: &String| gather.borrow_mut().push(m.clone()));
    });
    let metrics = built?;

    let mut finished = Vec::new();
    let mut refused = Vec::new();
    let start = Instant::now();
    let options = engine.options();
    let mut log = match (&options.token_log, index) {
        (Some(path), 0) => {
            let writer = DurableLogWriter::open(path, Duration::from_millis(100))?;
            if let Some(repair) = writer.repaired() {
                eprintln!("token log {}: {repair}", path.display());
            }
            Some(DurableLog {
                writer,
                resumed: options.resumed.clone(),
            })
        }
        _ => None,
    };
    let mut input = Some(input);
    if index == 0 {
        if let Some(intake) = &source.intake {
            intake.register_current_thread();
        }
        let total = requests.len();
        let mut next = 0usize;
        let mut done = 0usize;
        let mut epoch = 0u64;
        let mut listening = source.intake.is_some();
        loop {
            done += drain_events(&seen, observer, &mut finished, &mut refused, log.as_mut())?;
            if source.intake.as_ref().is_some_and(LiveIntake::aborted) {
                return Err(EngineError::Aborted);
            }
            post(&metrics, false);
            let elapsed = start.elapsed().as_micros() as u64;
            let mut wait = Duration::from_millis(20);
            if let Some(handle) = input.as_mut() {
                let due = match arrivals {
                    Arrivals::Immediate => total,
                    Arrivals::At(offsets) => {
                        let due = offsets
                            .iter()
                            .take_while(|&&t| t <= elapsed)
                            .count()
                            .min(total);
                        if let Some(&t) = offsets.get(due) {
                            wait = wait.min(Duration::from_micros(t.saturating_sub(elapsed)));
                        }
                        due.max(next)
                    }
                    Arrivals::ClosedLoop { concurrency } => (done + concurrency).min(total),
                };
                let mut sent = false;
                if due > next {
                    for r in &requests[next..due] {
                        submit(handle, log.as_mut(), Submission::now(r.clone()))?;
                    }
                    next = due;
                    sent = true;
                }
                if let Some(intake) = source.intake.as_ref().filter(|_| listening) {
                    let drained = intake.drain();
                    for msg in drained.messages {
                        match msg {
                            ClientMsg::Submit(sub) => submit(handle, log.as_mut(), sub)?,
                            cancel @ ClientMsg::Cancel(_) => handle.send(cancel),
                        }
                        sent = true;
                    }
                    listening = !drained.closed;
                }
                if sent {
                    epoch += 1;
                    handle.advance_to(epoch);
                }
                let list_done = next >= total
                    && matches!(arrivals, Arrivals::Immediate | Arrivals::At(_))
                    || done >= total;
                if list_done && !listening {
                    input = None;
                }
            }
            if input.is_none() && probe.done() {
                drain_events(&seen, observer, &mut finished, &mut refused, log.as_mut())?;
                break;
            }
            worker.step_or_park(Some(wait));
        }
        if let Some(log) = log.as_mut() {
            log.writer.sync()?;
        }
    } else {
        input = None;
        while !probe.done() {
            post(&metrics, false);
            worker.step_or_park(Some(Duration::from_millis(20)));
        }
    }
    post(&metrics, true);
    drop(input);
    let wall = start.elapsed();
    let json = serde_json::to_string(&*metrics.borrow())
        .map_err(|e| EngineError::Timely(e.to_string()))?;
    metrics_in.send(json);
    drop(metrics_in);
    while worker.step_or_park(Some(Duration::from_millis(20))) {}
    if index != 0 {
        return Ok(None);
    }
    let mut merged = EngineMetrics::default();
    for m in gathered.borrow().iter() {
        let part: EngineMetrics =
            serde_json::from_str(m).map_err(|e| EngineError::Timely(e.to_string()))?;
        merged.merge(&part);
    }
    Ok(Some((finished, refused, merged, wall)))
}

/// Worker 0's input of client messages.
type ClientInput = InputHandle<u64, timely::container::CapacityContainerBuilder<Vec<ClientMsg>>>;

/// Logs a submission (unless it is being resumed) and sends it in.
fn submit(
    handle: &mut ClientInput,
    log: Option<&mut DurableLog>,
    submission: Submission,
) -> Result<(), EngineError> {
    if let Some(log) = log
        && !log.resumed.contains_key(&submission.request.id)
    {
        log.writer
            .append(&LogRecord::Submit(submission.request.clone()))?;
    }
    handle.send(ClientMsg::Submit(submission));
    Ok(())
}

/// The durable log of worker 0, and where resumed requests' tokens continue.
struct DurableLog {
    writer: DurableLogWriter,
    resumed: BTreeMap<SeqId, usize>,
}

impl DurableLog {
    fn record(&mut self, event: &EngineEvent) -> Result<(), LogError> {
        let record = match event {
            EngineEvent::Token {
                seq, index, token, ..
            } => LogRecord::Token {
                seq: *seq,
                index: index + self.resumed.get(seq).copied().unwrap_or(0),
                token: *token,
            },
            EngineEvent::Finished { seq, reason, .. } => LogRecord::End {
                seq: *seq,
                reason: Some(*reason),
                error: None,
            },
            EngineEvent::Refused { seq, error } => LogRecord::End {
                seq: *seq,
                reason: None,
                error: Some(error.to_string()),
            },
        };
        self.writer.append(&record)
    }
}

/// Logs each new event durably, hands it to the observer and files completions;
/// returns how many requests ended.
fn drain_events(
    seen: &RefCell<Vec<EngineEvent>>,
    observer: Option<&EventObserver>,
    finished: &mut Vec<FinishedRequest>,
    refused: &mut Vec<(SeqId, RequestError)>,
    mut log: Option<&mut DurableLog>,
) -> Result<usize, EngineError> {
    let mut ended = 0;
    for event in seen.borrow_mut().drain(..) {
        if let Some(log) = log.as_deref_mut() {
            log.record(&event)?;
        }
        if let Some(obs) = observer {
            obs(&event);
        }
        match event {
            EngineEvent::Finished {
                seq,
                reason,
                log,
                timing,
            } => {
                ended += 1;
                finished.push(FinishedRequest {
                    seq,
                    reason,
                    log,
                    timing,
                });
            }
            EngineEvent::Refused { seq, error } => {
                ended += 1;
                refused.push((seq, error));
            }
            EngineEvent::Token { .. } => {}
        }
    }
    Ok(ended)
}
