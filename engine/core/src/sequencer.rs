//! The sequencer as a state machine: the front end of every executor.
//!
//! It owns every sequence's token log (the source of truth), picks each new
//! sequence's path with the planner's router, reserves its KV room along the
//! path, cuts prompts into prefill chunks, appends sampled tokens, decides when
//! a sequence ends, watches nodes through heartbeats, restarts the sequences of
//! a failed node from their logs, and re-plans a stage that lost every replica.
//!
//! It does nothing itself: [`Sequencer::submit`], [`Sequencer::on_feedback`],
//! [`Sequencer::on_tick`] and [`Sequencer::cancel`] take what happened and the
//! time, and return the [`Command`]s an executor carries out (send this step,
//! release this path, ping this node, load this stage there, tell the client).
//! The timely engine runs it on wall-clock time; tests and the simulator run
//! it on a clock of their own.
//!
//! At most one step of a sequence is in flight. A step carries the whole route,
//! so a stage never needs to know about paths; re-routing a sequence is a new
//! `attempt` with a new route and a prefill of its log from position 0.
//!
//! Each sequence is in one [`SeqState`]: queued (waiting for a path with KV
//! room), running, recovering (re-routed after a failure, until its next
//! token), stalled (its path broke and no other has room yet) or releasing
//! (ended, its KV being freed along its path). It leaves the sequencer when its
//! release comes back.

use std::collections::{HashMap, VecDeque};

use serde::{Deserialize, Serialize};
use tokenflow_planner::Plan;
use tokenflow_planner::repair::{self, RepairCandidate};
use tokenflow_planner::router::{Router, RouterState, router_load};

use crate::config::{ConfigError, SchedulerConfig};
use crate::detector::{FailureDetector, NodeChange};
use crate::kv::{KvLedger, Reservation};
use crate::request::Request;
use crate::request::{
    FinishReason, NoPathReason, RequestError, RequestTiming, SeqId, StepFailure, Submission,
    TokenLog,
};
use crate::sampling::SamplingParams;
use crate::stop::{Detokenize, stop_reason};
use crate::topology::Topology;

/// One step of one sequence for the loop: a prefill chunk or a decode token.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Step {
    /// The sequence.
    pub seq: SeqId,
    /// Incremented each time the sequence is re-routed; stages drop steps of an
    /// older attempt (their path is gone).
    pub attempt: u32,
    /// Placement node serving each plan stage for this sequence.
    pub route: Vec<u32>,
    /// Position of the chunk's first token.
    pub start: u32,
    /// The chunk's token ids.
    pub tokens: Vec<u32>,
    /// Whether the chunk ends the known tokens (its last row yields a token).
    pub last_chunk: bool,
    /// Whether it prefills again tokens a failure took from the path's caches.
    pub replay: bool,
    /// How the sampler draws.
    pub sampling: SamplingParams,
    /// Known tokens, only when the sampler needs them (repetition penalty).
    pub history: Vec<u32>,
    /// Node the step comes from: the path's last node for a continuing
    /// sequence, `None` when it enters from the client (a new path).
    pub from_node: Option<u32>,
}

/// What came back to the sequencer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Feedback {
    /// A prefill chunk that was not the last is in every cache of the path, up to `end`.
    ChunkDone {
        /// The sequence.
        seq: SeqId,
        /// The attempt the step belonged to.
        attempt: u32,
        /// Tokens now cached.
        end: usize,
    },
    /// The sampler drew `token` after the first `end` tokens.
    Sampled {
        /// The sequence.
        seq: SeqId,
        /// The attempt the step belonged to.
        attempt: u32,
        /// Tokens now cached.
        end: usize,
        /// The token.
        token: u32,
    },
    /// A release went along the path and came back.
    Released {
        /// The sequence.
        seq: SeqId,
        /// The attempt whose path was released.
        attempt: u32,
    },
    /// A stage could not run the step: the sequence ends with this error.
    Failed {
        /// The sequence.
        seq: SeqId,
        /// The attempt the step belonged to.
        attempt: u32,
        /// What failed.
        failure: StepFailure,
    },
    /// A stage no longer holds the sequence's state (its node restarted): it
    /// restarts from its token log.
    Lost {
        /// The sequence.
        seq: SeqId,
        /// The attempt the step belonged to.
        attempt: u32,
    },
    /// A node answered a ping.
    Pong {
        /// Placement node.
        node: u32,
        /// Its restarts so far; a change means its memory was lost.
        incarnation: u32,
        /// When the ping it answers was sent (µs).
        pinged_us: u64,
    },
    /// A node answered a load order.
    Loaded {
        /// Placement node.
        node: u32,
        /// Plan stage.
        stage: usize,
        /// Why loading failed, if it did.
        error: Option<String>,
    },
}

/// What the client is told.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum SequencerEvent {
    /// A new token of `seq`.
    Token {
        /// The sequence.
        seq: SeqId,
        /// Index among its generated tokens.
        index: usize,
        /// The token id.
        token: u32,
        /// When it came back (µs).
        at_us: u64,
    },
    /// `seq` ended; `log` holds all its tokens.
    Finished {
        /// The sequence.
        seq: SeqId,
        /// Why it ended.
        reason: FinishReason,
        /// Prompt and generated tokens.
        log: TokenLog,
        /// Its timeline.
        timing: RequestTiming,
    },
    /// `seq` was refused, failed or was cancelled; nothing else is affected.
    Refused {
        /// The sequence.
        seq: SeqId,
        /// Why.
        error: RequestError,
    },
}

/// A latency the sequencer measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum LatencyMetric {
    /// Submission to start (time in the queue).
    Queue,
    /// Submission to first token.
    Ttft,
    /// Between two tokens of a sequence.
    InterToken,
    /// Submission to the last token.
    EndToEnd,
    /// Failure detected to the restarted sequence's next token.
    Recovery,
}

/// What an executor must do.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Command {
    /// Send a step into the loop, to its route's first node.
    Send(Step),
    /// Free the sequence's KV on every node of `route`, then answer
    /// [`Feedback::Released`] (a dead node does not stop it reaching the others).
    Release {
        /// The sequence.
        seq: SeqId,
        /// The attempt whose path it frees.
        attempt: u32,
        /// The path.
        route: Vec<u32>,
    },
    /// Ping a node; a live node answers [`Feedback::Pong`].
    Ping {
        /// Placement node.
        node: u32,
        /// The time now (µs), echoed back.
        sent_us: u64,
    },
    /// Load plan stage `stage` on `node` with `kv_bytes` of KV room; it answers
    /// [`Feedback::Loaded`].
    Load {
        /// Placement node.
        node: u32,
        /// Plan stage.
        stage: usize,
        /// KV room of the new replica.
        kv_bytes: u64,
    },
    /// Tell the client.
    Event(SequencerEvent),
    /// Record a latency (µs).
    Latency {
        /// Which.
        metric: LatencyMetric,
        /// Microseconds.
        us: u64,
    },
}

/// Counts the sequencer keeps (the engine's metrics hold them as they are).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct SequencerCounters {
    /// Sequences finished.
    pub completed: u64,
    /// Sequences refused or failed.
    pub failed: u64,
    /// Sequences the client cancelled.
    pub cancelled: u64,
    /// Tokens generated.
    pub tokens: u64,
    /// Sequences restarted on a new path.
    pub restarts: u64,
    /// Tokens prefilled again by restarts.
    pub recomputed_tokens: u64,
    /// Node failures detected (silence or a new incarnation).
    pub failures_detected: u64,
    /// Stages re-planned onto another node.
    pub replans: u64,
    /// First submission to the last completion (µs).
    pub span_us: u64,
}

impl SequencerCounters {
    /// Adds the counts of another sequencer (another run's, or another
    /// process's); the span is the longer of the two.
    pub fn merge(&mut self, other: &SequencerCounters) {
        self.completed += other.completed;
        self.failed += other.failed;
        self.cancelled += other.cancelled;
        self.tokens += other.tokens;
        self.restarts += other.restarts;
        self.recomputed_tokens += other.recomputed_tokens;
        self.failures_detected += other.failures_detected;
        self.replans += other.replans;
        self.span_us = self.span_us.max(other.span_us);
    }
}

/// Where a sequence is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SeqState {
    /// Waiting, in order, for a path with KV room.
    Queued,
    /// On its path.
    Running,
    /// On a new path after a failure, until its next token.
    Recovering,
    /// Its path broke; waiting for another.
    Stalled,
    /// Ended; its KV is being freed along its path.
    Releasing,
}

/// A replica being added to a stage that lost all of its own.
#[derive(Debug, Clone)]
struct Repair {
    node: u32,
    kv_bytes: u64,
    /// When the emulated download ends; set once the node has loaded the stage.
    ready_us: Option<u64>,
}

#[derive(Debug)]
struct Sequence {
    request: Request,
    log: TokenLog,
    state: SeqState,
    route: Vec<u32>,
    attempt: u32,
    timing: RequestTiming,
    last_token_us: u64,
    reserved: Reservation,
    /// When the failure that restarted it was detected (until its next token).
    recovering_since: Option<u64>,
    /// When it stalled.
    stalled_since: u64,
}

/// A route (node per stage) and the KV bytes it needs per stage.
type RouteFound = Option<(Vec<u32>, Vec<u64>)>;

/// The sequencer of one deployment.
pub struct Sequencer {
    config: SchedulerConfig,
    topology: Topology,
    detokenize: Option<Box<Detokenize>>,
    router: Box<dyn Router>,
    seqs: HashMap<SeqId, Sequence>,
    waiting: VecDeque<SeqId>,
    stalled: VecDeque<SeqId>,
    /// Reservations of abandoned paths, freed when their release comes back.
    pending_release: HashMap<(SeqId, u32), Reservation>,
    kv: KvLedger,
    detector: FailureDetector,
    counters: SequencerCounters,
    first_submitted_us: Option<u64>,
    /// Live plan: replicas added by re-planning included.
    plan: Plan,
    replicas: Vec<Vec<u32>>,
    node_stages: Vec<Vec<usize>>,
    repairs: HashMap<usize, Repair>,
    /// Why a stage could not be re-planned (e.g. memory missing).
    repair_errors: HashMap<usize, String>,
}

impl Sequencer {
    /// A sequencer over `topology`; `detokenize` decodes output for stop
    /// strings (none: stop strings are not checked).
    pub fn new(
        config: SchedulerConfig,
        topology: Topology,
        detokenize: Option<Box<Detokenize>>,
    ) -> Result<Self, ConfigError> {
        config.validate()?;
        let router = config
            .router
            .build(&topology.plan, &topology.cluster, &topology.cost);
        let n = topology.num_nodes();
        let node_stages = (0..n as u32).map(|i| topology.node_stages(i)).collect();
        Ok(Self {
            kv: KvLedger::new(topology.kv_capacity.clone()),
            detector: FailureDetector::new(n, config.heartbeat_us(), config.suspect_after_us()),
            plan: topology.plan.clone(),
            replicas: topology.stage_replicas.clone(),
            node_stages,
            config,
            topology,
            detokenize,
            router,
            seqs: HashMap::new(),
            waiting: VecDeque::new(),
            stalled: VecDeque::new(),
            pending_release: HashMap::new(),
            counters: SequencerCounters::default(),
            first_submitted_us: None,
            repairs: HashMap::new(),
            repair_errors: HashMap::new(),
        })
    }

    /// Its settings.
    pub fn config(&self) -> &SchedulerConfig {
        &self.config
    }

    /// What it has counted.
    pub fn counters(&self) -> SequencerCounters {
        self.counters
    }

    /// Where `seq` is (`None`: unknown, or done and released).
    pub fn state(&self, seq: SeqId) -> Option<SeqState> {
        self.seqs.get(&seq).map(|s| s.state)
    }

    /// The route of `seq`, while it has one.
    pub fn route(&self, seq: SeqId) -> Option<&[u32]> {
        self.seqs
            .get(&seq)
            .filter(|s| matches!(s.state, SeqState::Running | SeqState::Recovering))
            .map(|s| s.route.as_slice())
    }

    /// Sequences waiting to start.
    pub fn queued(&self) -> usize {
        self.waiting.len()
    }

    /// Sequences started and not yet released (running, recovering, stalled, releasing).
    pub fn in_flight(&self) -> usize {
        self.seqs.len() - self.waiting.len()
    }

    /// Stages none of whose replicas is believed up (0: every stage can
    /// serve, the deployment is healthy).
    pub fn stages_without_live_replica(&self) -> usize {
        self.replicas
            .iter()
            .filter(|nodes| nodes.iter().all(|&n| self.detector.is_down(n)))
            .count()
    }

    /// Whether `node` is believed down.
    pub fn node_down(&self, node: u32) -> bool {
        self.detector.is_down(node)
    }

    /// The KV ledger (free room per node and stage).
    pub fn kv(&self) -> &KvLedger {
        &self.kv
    }

    /// Whether anything is queued, in flight or being released: the executor
    /// keeps calling [`Sequencer::on_tick`] while it is.
    pub fn busy(&self) -> bool {
        !self.seqs.is_empty() || !self.pending_release.is_empty()
    }

    fn check(&self, r: &Request) -> Result<(), RequestError> {
        let bad = |reason: String| RequestError::BadPrompt { seq: r.id, reason };
        if r.prompt.is_empty() {
            return Err(bad("the prompt is empty".into()));
        }
        r.sampling
            .validate()
            .map_err(|source| RequestError::BadSampling { seq: r.id, source })?;
        let vocab = self.topology.vocab_size;
        if let Some(&t) = r.prompt.iter().find(|&&t| t as usize >= vocab) {
            return Err(bad(format!(
                "token id {t} is outside the vocabulary of {vocab}"
            )));
        }
        let context = self.topology.context_length;
        if r.prompt.len() >= context {
            return Err(bad(format!(
                "{} prompt tokens leave no room in the context of {context}",
                r.prompt.len()
            )));
        }
        if self.seqs.contains_key(&r.id) {
            return Err(RequestError::DuplicateId { seq: r.id });
        }
        let tokens = r.tokens_needed(context);
        for (s, reps) in self.replicas.iter().enumerate() {
            let needed = self.topology.kv_bytes(s, tokens);
            let largest = reps
                .iter()
                .map(|&n| self.topology.kv_capacity(n, s))
                .max()
                .unwrap_or(0);
            if needed > largest {
                return Err(RequestError::PastCapacity {
                    seq: r.id,
                    stage: s,
                    needed,
                    largest,
                });
            }
        }
        Ok(())
    }

    /// A new request: it is checked at once (refused with a typed error that
    /// touches nothing else) and queued; it starts on a later
    /// [`Sequencer::on_tick`], in order, when a path has KV room for it.
    /// `_now_us`: checking and queueing take no time; it is kept so that every
    /// entry point reads the clock the same way.
    pub fn submit(&mut self, submission: Submission, _now_us: u64, out: &mut Vec<Command>) {
        self.first_submitted_us = Some(
            self.first_submitted_us
                .map_or(submission.submitted_us, |t| t.min(submission.submitted_us)),
        );
        let id = submission.request.id;
        match self.check(&submission.request) {
            Ok(()) => {
                let request = submission.request;
                let log = TokenLog {
                    prompt: request.prompt.clone(),
                    generated: Vec::new(),
                };
                self.seqs.insert(
                    id,
                    Sequence {
                        request,
                        log,
                        state: SeqState::Queued,
                        route: Vec::new(),
                        attempt: 0,
                        timing: RequestTiming {
                            submitted_us: submission.submitted_us,
                            ..RequestTiming::default()
                        },
                        last_token_us: 0,
                        reserved: Reservation::default(),
                        recovering_since: None,
                        stalled_since: 0,
                    },
                );
                self.waiting.push_back(id);
            }
            Err(error) => {
                self.counters.failed += 1;
                out.push(Command::Event(SequencerEvent::Refused { seq: id, error }));
            }
        }
    }

    /// The client withdrew `seq`: it ends now (a [`RequestError::Cancelled`]
    /// event), its KV is released along its path and its slot goes to the next
    /// request. Returns whether `seq` was live.
    pub fn cancel(&mut self, seq: SeqId, _now_us: u64, out: &mut Vec<Command>) -> bool {
        let Some(state) = self.state(seq) else {
            return false;
        };
        let cancelled = Command::Event(SequencerEvent::Refused {
            seq,
            error: RequestError::Cancelled { seq },
        });
        match state {
            SeqState::Releasing => return false,
            SeqState::Queued => {
                self.waiting.retain(|&s| s != seq);
                self.seqs.remove(&seq);
            }
            SeqState::Stalled => {
                // Nothing is reserved: its old path's release is already on its way.
                self.stalled.retain(|&s| s != seq);
                self.seqs.remove(&seq);
            }
            SeqState::Running | SeqState::Recovering => {
                let s = self.seqs.get_mut(&seq).expect("present");
                s.state = SeqState::Releasing;
                out.push(Self::release(s));
            }
        }
        self.counters.cancelled += 1;
        out.push(cancelled);
        true
    }

    /// Something came back from the loop.
    pub fn on_feedback(&mut self, feedback: Feedback, now_us: u64, out: &mut Vec<Command>) {
        let (id, attempt) = match feedback {
            Feedback::Pong {
                node,
                incarnation,
                pinged_us,
            } => {
                if let Some(NodeChange::Restarted(n)) =
                    self.detector.on_pong(node, incarnation, pinged_us, now_us)
                {
                    // It restarted between two heartbeats: whatever it held is gone.
                    self.node_failed(n, now_us, out);
                }
                return;
            }
            Feedback::Loaded { node, stage, error } => {
                self.loaded(node, stage, error, now_us);
                return;
            }
            Feedback::Released { seq, attempt } => {
                if let Some(old) = self.pending_release.remove(&(seq, attempt)) {
                    self.kv.release(old);
                } else if self
                    .seqs
                    .get(&seq)
                    .is_some_and(|s| s.attempt == attempt && s.state == SeqState::Releasing)
                {
                    let s = self.seqs.remove(&seq).expect("present");
                    self.kv.release(s.reserved);
                }
                return;
            }
            Feedback::ChunkDone { seq, attempt, .. }
            | Feedback::Sampled { seq, attempt, .. }
            | Feedback::Failed { seq, attempt, .. }
            | Feedback::Lost { seq, attempt } => (seq, attempt),
        };
        let Some(seq) = self.seqs.get_mut(&id) else {
            return;
        };
        if attempt != seq.attempt || !matches!(seq.state, SeqState::Running | SeqState::Recovering)
        {
            return; // a step of a path the sequence has left, or of an ended sequence
        }
        let last_node = seq.route.last().copied();
        let max_chunk = self.config.max_prefill_chunk;
        match feedback {
            Feedback::Lost { .. } => self.restart(id, now_us, out),
            Feedback::ChunkDone { end, .. } => {
                let replay = seq.attempt > 0;
                out.push(Command::Send(next_chunk(
                    seq, end, last_node, max_chunk, replay,
                )));
            }
            Feedback::Sampled { end, token, .. } => {
                seq.log.generated.push(token);
                let index = seq.log.generated.len() - 1;
                self.counters.tokens += 1;
                if let Some(detected) = seq.recovering_since.take() {
                    out.push(Command::Latency {
                        metric: LatencyMetric::Recovery,
                        us: now_us.saturating_sub(detected),
                    });
                }
                if seq.state == SeqState::Recovering {
                    seq.state = SeqState::Running;
                }
                let (metric, since) = if index == 0 {
                    seq.timing.first_token_us = now_us;
                    (LatencyMetric::Ttft, seq.timing.submitted_us)
                } else {
                    (LatencyMetric::InterToken, seq.last_token_us)
                };
                out.push(Command::Latency {
                    metric,
                    us: now_us.saturating_sub(since),
                });
                seq.last_token_us = now_us;
                out.push(Command::Event(SequencerEvent::Token {
                    seq: id,
                    index,
                    token,
                    at_us: now_us,
                }));
                let detokenize = self.detokenize.as_deref();
                match stop_reason(
                    &seq.request,
                    &seq.log,
                    token,
                    self.topology.context_length,
                    detokenize,
                ) {
                    Some(reason) => self.finish(id, reason, now_us, out),
                    None => out.push(Command::Send(next_chunk(
                        seq, end, last_node, max_chunk, false,
                    ))),
                }
            }
            Feedback::Failed { failure, .. } => {
                seq.state = SeqState::Releasing;
                self.counters.failed += 1;
                out.push(Command::Event(SequencerEvent::Refused {
                    seq: id,
                    error: RequestError::StageFailed { seq: id, failure },
                }));
                out.push(Self::release(seq));
            }
            Feedback::Pong { .. } | Feedback::Loaded { .. } | Feedback::Released { .. } => {}
        }
    }

    /// Time passes: heartbeats, failure detection, repairs, restarts and
    /// admissions. Call it after the submissions and feedback of a moment,
    /// and at least every heartbeat while [`Sequencer::busy`].
    pub fn on_tick(&mut self, now_us: u64, out: &mut Vec<Command>) {
        if self.busy() {
            self.heartbeat(now_us, out);
            self.plan_repairs(out);
            self.finish_repairs(now_us);
            self.start_stalled(now_us, out);
        }
        self.start_waiting(now_us, out);
        if !self.busy() {
            self.detector.idle();
        }
    }

    fn release(seq: &Sequence) -> Command {
        Command::Release {
            seq: seq.request.id,
            attempt: seq.attempt,
            route: seq.route.clone(),
        }
    }

    /// A path with KV room for a sequence of `tokens` tokens over live nodes:
    /// `Ok(None)` when every path is full or down for now.
    fn find_route(&mut self, tokens: usize) -> Result<RouteFound, NoPathReason> {
        let stages = self.topology.num_stages();
        let need: Vec<u64> = (0..stages)
            .map(|s| self.topology.kv_bytes(s, tokens))
            .collect();
        let mut state = RouterState::default();
        for (i, id) in self.topology.node_ids.iter().enumerate() {
            let n = i as u32;
            if self.detector.is_down(n) {
                state.down.insert(id.clone());
            }
            let room = self.kv.room_in_sequences(n, &self.node_stages[i], &need);
            state.kv_free_seqs.insert(id.clone(), room);
            state.load.insert(
                id.clone(),
                router_load(self.kv.active(n), self.config.max_batch_sequences),
            );
        }
        let hops = match self.router.route(&state) {
            Ok(hops) => hops,
            Err(e) => {
                // No path now; it is an error only when no replica of a stage is alive.
                return match self.dead_stage() {
                    Some(s) => Err(NoPathReason::StageDown {
                        stage: s,
                        router: e.to_string(),
                        repair: self.repair_errors.get(&s).cloned(),
                    }),
                    None => Ok(None),
                };
            }
        };
        let mut route = vec![u32::MAX; stages];
        for h in hops {
            let Some(n) = self.topology.node_index(&h.node) else {
                continue;
            };
            for r in route.iter_mut().take(h.last + 1).skip(h.first) {
                *r = n;
            }
        }
        let nodes = self.topology.num_nodes();
        let usable = route
            .iter()
            .all(|&n| (n as usize) < nodes && !self.detector.is_down(n))
            && self.kv.fits(&route, &need);
        Ok(usable.then_some((route, need)))
    }

    /// A stage none of whose replicas is alive.
    fn dead_stage(&self) -> Option<usize> {
        (0..self.replicas.len())
            .find(|&s| self.replicas[s].iter().all(|&n| self.detector.is_down(n)))
    }

    /// Re-plans every stage that lost all its replicas. The planner picks the
    /// survivor (`planner::repair`): the one giving the repaired plan the most
    /// throughput among those with room for the weights and one full sequence of
    /// KV. It loads the stage, paying the download of its weights over its link.
    fn plan_repairs(&mut self, out: &mut Vec<Command>) {
        let lost: Vec<usize> = (0..self.replicas.len())
            .filter(|&s| {
                self.replicas[s].iter().all(|&n| self.detector.is_down(n))
                    && !self.repairs.contains_key(&s)
                    && !self.repair_errors.contains_key(&s)
            })
            .collect();
        if lost.is_empty() {
            return;
        }
        let live = {
            let (detector, topology) = (&self.detector, &self.topology);
            repair::live_plan(&self.plan, &|id| {
                topology
                    .node_index(id)
                    .is_some_and(|n| !detector.is_down(n))
            })
        };
        for s in lost {
            let kv_bytes = self.topology.kv_bytes(s, self.topology.context_length);
            let need = self.topology.stage_weight_bytes[s] + kv_bytes;
            // Free memory of a node: the KV room of its stages that no sequence holds.
            let candidates: Vec<RepairCandidate> = (0..self.topology.num_nodes() as u32)
                .filter(|&n| !self.detector.is_down(n) && !self.replicas[s].contains(&n))
                .map(|n| RepairCandidate {
                    node: self.topology.node_ids[n as usize].clone(),
                    free_bytes: self.kv.node_free(n) as f64,
                })
                .collect();
            let chosen = repair::place_lost_stage(
                &live,
                &self.topology.cluster,
                &self.topology.cost,
                s,
                &candidates,
                need as f64,
            );
            let n = match chosen.map(|c| self.topology.node_index(&c.node)) {
                Ok(Some(n)) => n,
                Ok(None) => continue,
                Err(e) => {
                    let (free, who) = e.best.as_ref().map_or((0.0, "none".to_string()), |b| {
                        (b.free_bytes, format!("`{}`", b.node))
                    });
                    self.repair_errors.insert(
                        s,
                        format!(
                            "stage {s} needs {need} bytes (weights and one sequence of KV); the best live node {who} has {free:.0} free ({:.1} MB missing)",
                            e.missing_bytes().max(0.0) / 1e6
                        ),
                    );
                    continue;
                }
            };
            self.kv.take_node_room(n, need);
            self.repairs.insert(
                s,
                Repair {
                    node: n,
                    kv_bytes,
                    ready_us: None,
                },
            );
            self.counters.replans += 1;
            out.push(Command::Load {
                node: n,
                stage: s,
                kv_bytes,
            });
        }
    }

    /// A node answered a load order.
    fn loaded(&mut self, node: u32, stage: usize, error: Option<String>, now_us: u64) {
        let Some(repair) = self.repairs.get_mut(&stage) else {
            return;
        };
        if repair.node != node {
            return;
        }
        match error {
            Some(e) => {
                self.repairs.remove(&stage);
                self.repair_errors
                    .insert(stage, format!("loading stage {stage} failed: {e}"));
            }
            None => {
                let bps = self
                    .topology
                    .load_bps
                    .get(node as usize)
                    .copied()
                    .unwrap_or(f64::INFINITY);
                let seconds = if bps.is_finite() && bps > 0.0 {
                    self.topology.stage_weight_bytes[stage] as f64 / bps
                } else {
                    0.0
                };
                repair.ready_us = Some(now_us + (seconds * 1e6) as u64);
            }
        }
    }

    /// Adds replicas whose weights have arrived to the live plan and the router.
    fn finish_repairs(&mut self, now_us: u64) {
        let mut done: Vec<usize> = self
            .repairs
            .iter()
            .filter(|(_, r)| r.ready_us.is_some_and(|t| t <= now_us))
            .map(|(&s, _)| s)
            .collect();
        if done.is_empty() {
            return;
        }
        done.sort_unstable();
        for s in done {
            let r = self.repairs.remove(&s).expect("present");
            let n = r.node;
            self.replicas[s].push(n);
            self.node_stages[n as usize].push(s);
            self.kv.add_room(n, s, r.kv_bytes);
            let id = self.topology.node_ids[n as usize].clone();
            let stage = &mut self.plan.stages[s];
            let k = stage.replicas.len() as f64 + 1.0;
            for rep in &mut stage.replicas {
                rep.weight = 1.0 / k;
            }
            stage.replicas.push(tokenflow_planner::plan::Replica {
                node: id,
                weight: 1.0 / k,
                next: Vec::new(),
            });
            // Routing weights of the neighbours name the old replicas only: clear them so
            // the routers fall back to every usable replica.
            for st in &mut self.plan.stages {
                for rep in &mut st.replicas {
                    rep.next.clear();
                }
            }
        }
        self.router =
            self.config
                .router
                .build(&self.plan, &self.topology.cluster, &self.topology.cost);
    }

    /// Starts queued requests, in order, while a path with KV room exists.
    fn start_waiting(&mut self, now_us: u64, out: &mut Vec<Command>) {
        while self.config.max_running.is_none_or(|m| self.in_flight() < m) {
            let Some(&id) = self.waiting.front() else {
                return;
            };
            let seq = &self.seqs[&id];
            let tokens = seq.request.tokens_needed(self.topology.context_length);
            let submitted_us = seq.timing.submitted_us;
            let (route, need) = match self.find_route(tokens) {
                Ok(Some(found)) => found,
                // Room frees as running sequences end.
                Ok(None) if self.in_flight() > 0 => return,
                // Nodes are down: they may come back within the stall timeout.
                Ok(None) | Err(_)
                    if self.detector.any_down()
                        && now_us.saturating_sub(submitted_us) < self.config.stall_timeout_us() =>
                {
                    return;
                }
                result => {
                    // Nothing in flight will free room or bring a node back: it can never start.
                    let reason = match result {
                        Err(e) => e,
                        _ => NoPathReason::NoKvRoom,
                    };
                    self.waiting.pop_front();
                    self.seqs.remove(&id);
                    self.counters.failed += 1;
                    out.push(Command::Event(SequencerEvent::Refused {
                        seq: id,
                        error: RequestError::NoPath {
                            seq: id,
                            reason,
                            waited_us: None,
                        },
                    }));
                    continue;
                }
            };
            self.waiting.pop_front();
            let reserved = self.kv.reserve(&route, &need);
            out.push(Command::Latency {
                metric: LatencyMetric::Queue,
                us: now_us.saturating_sub(submitted_us),
            });
            let seq = self.seqs.get_mut(&id).expect("queued sequences are known");
            seq.state = SeqState::Running;
            seq.route = route;
            seq.reserved = reserved;
            seq.timing.started_us = now_us;
            if seq.request.max_tokens == 0 {
                self.finish(id, FinishReason::Length, now_us, out);
                continue;
            }
            out.push(Command::Send(next_chunk(
                seq,
                0,
                None,
                self.config.max_prefill_chunk,
                false,
            )));
        }
    }

    /// Abandons `id`'s path: its reservations are released along the old path and
    /// the sequence waits for a new one, where its log is prefilled again.
    fn restart(&mut self, id: SeqId, detected_us: u64, out: &mut Vec<Command>) {
        let Some(seq) = self.seqs.get_mut(&id) else {
            return;
        };
        if !matches!(seq.state, SeqState::Running | SeqState::Recovering) {
            return;
        }
        let old = std::mem::take(&mut seq.reserved);
        self.pending_release.insert((id, seq.attempt), old);
        out.push(Self::release(seq));
        seq.attempt += 1;
        seq.recovering_since.get_or_insert(detected_us);
        seq.state = SeqState::Stalled;
        seq.stalled_since = detected_us;
        self.stalled.push_back(id);
    }

    /// Gives stalled sequences new paths, in order; fails those stalled too long.
    fn start_stalled(&mut self, now_us: u64, out: &mut Vec<Command>) {
        let mut still = VecDeque::new();
        while let Some(id) = self.stalled.pop_front() {
            let Some(seq) = self.seqs.get(&id) else {
                continue;
            };
            let tokens = seq.request.tokens_needed(self.topology.context_length);
            let since = seq.stalled_since;
            match self.find_route(tokens) {
                Ok(Some((route, need))) => {
                    let reserved = self.kv.reserve(&route, &need);
                    let seq = self.seqs.get_mut(&id).expect("present");
                    seq.route = route;
                    seq.reserved = reserved;
                    seq.state = SeqState::Recovering;
                    self.counters.restarts += 1;
                    self.counters.recomputed_tokens += seq.log.len() as u64;
                    out.push(Command::Send(next_chunk(
                        seq,
                        0,
                        None,
                        self.config.max_prefill_chunk,
                        true,
                    )));
                }
                result if now_us.saturating_sub(since) > self.config.stall_timeout_us() => {
                    let reason = match result {
                        Err(e) => e,
                        _ => NoPathReason::NoKvRoom,
                    };
                    self.counters.failed += 1;
                    out.push(Command::Event(SequencerEvent::Refused {
                        seq: id,
                        error: RequestError::NoPath {
                            seq: id,
                            reason,
                            waited_us: Some(now_us - since),
                        },
                    }));
                    // Nothing is reserved: the sequence is done.
                    self.seqs.remove(&id);
                }
                _ => still.push_back(id),
            }
        }
        self.stalled = still;
    }

    /// A node is believed down (missed heartbeats) or restarted (new incarnation):
    /// every sequence whose path uses it restarts elsewhere.
    fn node_failed(&mut self, node: u32, now_us: u64, out: &mut Vec<Command>) {
        self.counters.failures_detected += 1;
        let mut hit: Vec<SeqId> = self
            .seqs
            .iter()
            .filter(|(_, s)| {
                matches!(s.state, SeqState::Running | SeqState::Recovering)
                    && s.route.contains(&node)
            })
            .map(|(&id, _)| id)
            .collect();
        hit.sort_unstable();
        for id in hit {
            self.restart(id, now_us, out);
        }
    }

    /// Pings every node each heartbeat; declares down those silent too long.
    fn heartbeat(&mut self, now_us: u64, out: &mut Vec<Command>) {
        let (ping, changes) = self.detector.tick(now_us);
        if ping {
            for n in 0..self.topology.num_nodes() as u32 {
                out.push(Command::Ping {
                    node: n,
                    sent_us: now_us,
                });
            }
        }
        for change in changes {
            if let NodeChange::Down(n) = change {
                self.node_failed(n, now_us, out);
            }
        }
    }

    fn finish(&mut self, id: SeqId, reason: FinishReason, now_us: u64, out: &mut Vec<Command>) {
        let Some(seq) = self.seqs.get_mut(&id) else {
            return;
        };
        seq.timing.finished_us = now_us;
        seq.state = SeqState::Releasing;
        self.counters.completed += 1;
        out.push(Command::Latency {
            metric: LatencyMetric::EndToEnd,
            us: now_us.saturating_sub(seq.timing.submitted_us),
        });
        if let Some(first) = self.first_submitted_us {
            self.counters.span_us = self.counters.span_us.max(now_us.saturating_sub(first));
        }
        out.push(Command::Event(SequencerEvent::Finished {
            seq: id,
            reason,
            log: seq.log.clone(),
            timing: seq.timing,
        }));
        out.push(Self::release(seq));
    }
}

/// The step after `cached` known tokens are in the path's caches.
/// `replay`: the chunk rebuilds KV a failure took (a restarted sequence's prefill).
fn next_chunk(
    seq: &Sequence,
    cached: usize,
    from_node: Option<u32>,
    max_chunk: usize,
    replay: bool,
) -> Step {
    let known = seq.log.len();
    let len = known.saturating_sub(cached).clamp(1, max_chunk.max(1));
    let tokens: Vec<u32> = seq.log.tokens().skip(cached).take(len).collect();
    let history = if seq.request.sampling.repetition_penalty != 1.0 {
        seq.log.tokens().collect()
    } else {
        Vec::new()
    };
    Step {
        seq: seq.request.id,
        attempt: seq.attempt,
        route: seq.route.clone(),
        start: cached as u32,
        last_chunk: cached + tokens.len() == known,
        tokens,
        replay,
        sampling: seq.request.sampling.clone(),
        history,
        from_node,
    }
}
