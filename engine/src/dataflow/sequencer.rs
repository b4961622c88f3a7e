//! The sequencer: the front end of the loop, on worker 0. It owns every
//! sequence's token log (the source of truth), picks each new sequence's path
//! with the planner's router, reserves its KV room along the path, cuts prompts
//! into prefill chunks, appends sampled tokens, decides when a sequence ends,
//! and reports tokens as they come.
//!
//! At most one step of a sequence is in flight. A step carries the whole route,
//! so a stage never needs to know about paths; re-routing a sequence is a new
//! `attempt` with a new route and a prefill of its log from position 0.

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::rc::Rc;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use timely::dataflow::StreamVec;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::Capability;
use timely::dataflow::operators::generic::Operator;
use tokenflow_operators::{SeqId, TextTokenizer};
use tokenflow_planner::Plan;
use tokenflow_planner::cost::CostModel;
use tokenflow_planner::repair::{self, RepairCandidate};
use tokenflow_planner::router::{Router, RouterState};

use super::clock::now_us;
use super::error::RequestError;
use super::message::{CLIENT, Payload, StepMsg};
use super::metrics::{EngineMetrics, names};
use super::placement::Placement;
use crate::request::{FinishReason, Request, TokenLog};

/// A request as it enters the engine, with the time the client submitted it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Submission {
    /// The request.
    pub request: Request,
    /// When it was submitted (µs since the epoch), the start of its TTFT.
    pub submitted_us: u64,
}

impl Submission {
    /// A submission stamped now.
    pub fn now(request: Request) -> Self {
        Self {
            request,
            submitted_us: now_us(),
        }
    }
}

/// When things happened to a request (µs since the epoch).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestTiming {
    /// Submitted by the client.
    pub submitted_us: u64,
    /// Its first prefill chunk left the sequencer.
    pub started_us: u64,
    /// Its first token came back.
    pub first_token_us: u64,
    /// Its last token came back.
    pub finished_us: u64,
}

/// What the engine tells its client, on worker 0.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum EngineEvent {
    /// A new token of `seq`.
    Token {
        /// The sequence.
        seq: SeqId,
        /// Index among its generated tokens.
        index: usize,
        /// The token id.
        token: u32,
        /// When it came back (µs since the epoch).
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
    /// `seq` was refused or failed; nothing else is affected.
    Refused {
        /// The sequence.
        seq: SeqId,
        /// Why.
        error: RequestError,
    },
}

/// Builds a router over a plan (the live plan changes when a stage is re-planned).
pub type RouterFactory = Box<dyn Fn(&Plan) -> Box<dyn Router>>;

/// A route (node per stage) and the KV bytes it needs per stage.
type RouteFound = Option<(Vec<u32>, Vec<u64>)>;

/// How the sequencer schedules.
pub struct SequencerConfig {
    /// Longest prefill chunk.
    pub max_prefill_chunk: usize,
    /// Most sequences admitted at once.
    pub max_running: usize,
    /// The model's context length.
    pub context_length: usize,
    /// Tokens in the vocabulary.
    pub vocab_size: usize,
    /// Decodes output for stop strings (none: stop strings are not checked).
    pub tokenizer: Option<TextTokenizer>,
    /// Picks paths for new sequences.
    pub router: Box<dyn Router>,
    /// How often every node is pinged while work is in flight (µs).
    pub heartbeat_us: u64,
    /// A node that has not answered for this long is declared down (µs): the detection delay.
    pub suspect_after_us: u64,
    /// A sequence without any path for this long fails (µs).
    pub stall_timeout_us: u64,
    /// Rebuilds the router after a re-plan adds a replica.
    pub make_router: RouterFactory,
    /// Bytes of weights of each plan stage (blocks, plus embedding or head).
    pub stage_weight_bytes: Vec<u64>,
    /// Bytes per second at which each node downloads weights (emulated load time).
    pub load_bps: Vec<f64>,
    /// The planner's cost model, for re-planning a lost stage.
    pub cost: CostModel,
}

/// A replica being added to a stage that lost all of its own.
#[derive(Debug, Clone)]
struct Repair {
    node: u32,
    kv_bytes: u64,
    /// When the emulated download ends; set once the node has loaded the stage.
    ready_us: Option<u64>,
}

struct Sequence {
    request: Request,
    log: TokenLog,
    route: Vec<u32>,
    attempt: u32,
    timing: RequestTiming,
    last_token_us: u64,
    reserved: Vec<(u32, usize, u64)>,
    released: bool,
}

struct Waiting {
    submission: Submission,
    cap: Capability<u64>,
}

type Emit = Vec<(Capability<u64>, Result<StepMsg, EngineEvent>)>;

/// What the sequencer believes about a node, from heartbeats alone.
#[derive(Debug, Clone, Copy, Default)]
struct NodeView {
    down: bool,
    incarnation: u32,
    last_pong_us: u64,
    /// A slowly decaying maximum of heartbeat round trips: a worker busy with a
    /// long stage call answers late without being dead.
    rtt_us: u64,
}

/// A reservation on (node, stage) of some bytes.
type Reservation = (u32, usize, u64);

struct SequencerState {
    config: SequencerConfig,
    placement: Arc<Placement>,
    seqs: HashMap<SeqId, Sequence>,
    waiting: VecDeque<Waiting>,
    /// Sequences whose path broke, waiting for a new one (with when they stalled).
    stalled: VecDeque<(SeqId, u64)>,
    /// Reservations of abandoned paths, freed when their release comes back.
    pending_release: HashMap<(SeqId, u32), Vec<Reservation>>,
    /// When the failure that restarted a sequence was detected.
    recovering: HashMap<SeqId, u64>,
    kv_free: Vec<Vec<u64>>,
    active: Vec<u32>,
    nodes: Vec<NodeView>,
    last_ping_us: u64,
    pinging: bool,
    /// A capability kept while anything is in flight, for heartbeats and restarts.
    held: Option<Capability<u64>>,
    metrics: Rc<RefCell<EngineMetrics>>,
    first_submitted_us: Option<u64>,
    /// Live plan: replicas added by re-planning included.
    plan: Plan,
    replicas: Vec<Vec<u32>>,
    repairs: HashMap<usize, Repair>,
    /// Why a stage could not be re-planned (e.g. memory missing).
    repair_errors: HashMap<usize, String>,
}

impl SequencerState {
    fn new(
        config: SequencerConfig,
        placement: Arc<Placement>,
        metrics: Rc<RefCell<EngineMetrics>>,
    ) -> Self {
        let kv_free = placement
            .nodes
            .iter()
            .map(|n| {
                (0..placement.num_stages())
                    .map(|s| n.kv_capacity(s))
                    .collect()
            })
            .collect();
        let active = vec![0; placement.nodes.len()];
        let nodes = vec![NodeView::default(); placement.nodes.len()];
        let (plan_copy, replicas_copy) = (placement.plan.clone(), placement.stage_replicas.clone());
        Self {
            config,
            placement,
            seqs: HashMap::new(),
            waiting: VecDeque::new(),
            stalled: VecDeque::new(),
            pending_release: HashMap::new(),
            recovering: HashMap::new(),
            kv_free,
            active,
            nodes,
            last_ping_us: 0,
            pinging: false,
            held: None,
            metrics,
            first_submitted_us: None,
            plan: plan_copy,
            replicas: replicas_copy,
            repairs: HashMap::new(),
            repair_errors: HashMap::new(),
        }
    }

    /// Tokens a sequence may reach: prompt plus every token it may generate, within the context.
    fn tokens_needed(&self, r: &Request) -> usize {
        (r.prompt.len() + r.max_tokens).min(self.config.context_length)
    }

    fn check(&self, r: &Request) -> Result<(), RequestError> {
        let bad = |reason: String| RequestError::BadPrompt { seq: r.id, reason };
        if r.prompt.is_empty() {
            return Err(bad("the prompt is empty".into()));
        }
        r.sampling
            .validate()
            .map_err(|source| RequestError::BadSampling { seq: r.id, source })?;
        if let Some(&t) = r
            .prompt
            .iter()
            .find(|&&t| t as usize >= self.config.vocab_size)
        {
            return Err(bad(format!(
                "token id {t} is outside the vocabulary of {}",
                self.config.vocab_size
            )));
        }
        if r.prompt.len() >= self.config.context_length {
            return Err(bad(format!(
                "{} prompt tokens leave no room in the context of {}",
                r.prompt.len(),
                self.config.context_length
            )));
        }
        if self.seqs.contains_key(&r.id)
            || self.waiting.iter().any(|w| w.submission.request.id == r.id)
        {
            return Err(RequestError::DuplicateId { seq: r.id });
        }
        let tokens = self.tokens_needed(r);
        for (s, reps) in self.placement.stage_replicas.iter().enumerate() {
            let needed = self.placement.kv_bytes(s, tokens);
            let largest = reps
                .iter()
                .map(|&n| self.placement.nodes[n as usize].kv_capacity(s))
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

    fn submit(&mut self, submission: Submission, cap: Capability<u64>, emit: &mut Emit) {
        self.first_submitted_us = Some(
            self.first_submitted_us
                .map_or(submission.submitted_us, |t| t.min(submission.submitted_us)),
        );
        match self.check(&submission.request) {
            Ok(()) => self.waiting.push_back(Waiting { submission, cap }),
            Err(error) => {
                self.metrics.borrow_mut().failed += 1;
                emit.push((
                    cap,
                    Err(EngineEvent::Refused {
                        seq: submission.request.id,
                        error,
                    }),
                ));
            }
        }
    }

    /// A path with KV room for a sequence of `tokens` tokens over live nodes:
    /// `Ok(None)` when every path is full or down for now.
    fn find_route(&mut self, tokens: usize) -> Result<RouteFound, String> {
        let stages = self.placement.num_stages();
        let need: Vec<u64> = (0..stages)
            .map(|s| self.placement.kv_bytes(s, tokens))
            .collect();
        let mut state = RouterState::default();
        for (i, node) in self.placement.nodes.iter().enumerate() {
            if self.nodes[i].down {
                state.down.insert(node.id.clone());
            }
            let room = node
                .stages
                .iter()
                .map(|&(s, _)| {
                    self.kv_free[i][s]
                        .checked_div(need[s])
                        .map_or(u32::MAX, |k| k.min(u32::MAX as u64) as u32)
                })
                .min()
                .unwrap_or(0);
            state.kv_free_seqs.insert(node.id.clone(), room);
            state
                .load
                .insert(node.id.clone(), (self.active[i] as f64 / 64.0).min(0.95));
        }
        let hops = match self.config.router.route(&state) {
            Ok(hops) => hops,
            Err(e) => {
                // No path now; it is an error only when no replica of a stage is alive.
                return match self.dead_stage() {
                    Some(s) => {
                        let why = self
                            .repair_errors
                            .get(&s)
                            .map_or(String::new(), |r| format!("; re-planning failed: {r}"));
                        Err(format!("{e}; every replica of stage {s} is down{why}"))
                    }
                    None => Ok(None),
                };
            }
        };
        let mut route = vec![u32::MAX; stages];
        for h in hops {
            let Some(n) = self.placement.node_index(&h.node) else {
                continue;
            };
            for r in route.iter_mut().take(h.last + 1).skip(h.first) {
                *r = n;
            }
        }
        let usable = route.iter().enumerate().all(|(s, &n)| {
            (n as usize) < self.placement.nodes.len()
                && !self.nodes[n as usize].down
                && self.kv_free[n as usize][s] >= need[s]
        });
        Ok(usable.then_some((route, need)))
    }

    /// A stage none of whose replicas is alive.
    fn dead_stage(&self) -> Option<usize> {
        (0..self.replicas.len()).find(|&s| {
            self.replicas[s]
                .iter()
                .all(|&n| self.nodes[n as usize].down)
        })
    }

    /// Re-plans every stage that lost all its replicas. The planner picks the
    /// survivor (`planner::repair`): the one giving the repaired plan the most
    /// throughput among those with room for the weights and one full sequence of
    /// KV. It loads the stage, paying the download of its weights over its link.
    fn plan_repairs(&mut self, cap: &Capability<u64>, emit: &mut Emit) {
        let stages = self.replicas.len();
        // Runs on every activation: return before any work unless a stage needs a repair.
        let lost: Vec<usize> = (0..stages)
            .filter(|&s| {
                self.replicas[s]
                    .iter()
                    .all(|&n| self.nodes[n as usize].down)
                    && !self.repairs.contains_key(&s)
                    && !self.repair_errors.contains_key(&s)
            })
            .collect();
        if lost.is_empty() {
            return;
        }
        let live = {
            let nodes = &self.nodes;
            let placement = &self.placement;
            repair::live_plan(&self.plan, &|id| {
                placement
                    .node_index(id)
                    .is_some_and(|n| !nodes[n as usize].down)
            })
        };
        for s in lost {
            let kv_bytes = self.placement.kv_bytes(s, self.config.context_length);
            let need = self.config.stage_weight_bytes[s] + kv_bytes;
            // Free memory of a node: the KV room of its stages that no sequence holds.
            let candidates: Vec<RepairCandidate> = (0..self.placement.nodes.len())
                .filter(|&n| !self.nodes[n].down && !self.replicas[s].contains(&(n as u32)))
                .map(|n| RepairCandidate {
                    node: self.placement.nodes[n].id.clone(),
                    free_bytes: self.kv_free[n].iter().sum::<u64>() as f64,
                })
                .collect();
            let chosen = repair::place_lost_stage(
                &live,
                &self.placement.cluster,
                &self.config.cost,
                s,
                &candidates,
                need as f64,
            );
            let n = match chosen {
                Ok(c) => self
                    .placement
                    .node_index(&c.node)
                    .expect("candidates are placement nodes") as usize,
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
            // Take the room from the node's stages, largest free first.
            let mut left = need;
            let mut order: Vec<usize> = (0..stages).collect();
            order.sort_by_key(|&k| std::cmp::Reverse(self.kv_free[n][k]));
            for k in order {
                let take = left.min(self.kv_free[n][k]);
                self.kv_free[n][k] -= take;
                left -= take;
            }
            self.repairs.insert(
                s,
                Repair {
                    node: n as u32,
                    kv_bytes,
                    ready_us: None,
                },
            );
            self.metrics.borrow_mut().replans += 1;
            emit.push((
                cap.clone(),
                Ok(StepMsg::control(
                    u64::MAX,
                    0,
                    vec![n as u32; stages],
                    Payload::Load {
                        node: n as u32,
                        stage: s as u32,
                        kv_bytes,
                        error: None,
                    },
                )),
            ));
        }
    }

    /// A node answered a load order.
    fn loaded(&mut self, node: u32, stage: usize, error: Option<String>) {
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
                    .config
                    .load_bps
                    .get(node as usize)
                    .copied()
                    .unwrap_or(f64::INFINITY);
                let seconds = if bps.is_finite() && bps > 0.0 {
                    self.config.stage_weight_bytes[stage] as f64 / bps
                } else {
                    0.0
                };
                repair.ready_us = Some(now_us() + (seconds * 1e6) as u64);
            }
        }
    }

    /// Adds replicas whose weights have arrived to the live plan and the router.
    fn finish_repairs(&mut self) {
        let now = now_us();
        let done: Vec<usize> = self
            .repairs
            .iter()
            .filter(|(_, r)| r.ready_us.is_some_and(|t| t <= now))
            .map(|(&s, _)| s)
            .collect();
        for s in done {
            let r = self.repairs.remove(&s).expect("present");
            let n = r.node;
            self.replicas[s].push(n);
            self.kv_free[n as usize][s] += r.kv_bytes;
            let id = self.placement.nodes[n as usize].id.clone();
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
            self.config.router = (self.config.make_router)(&self.plan);
        }
    }

    fn reserve(&mut self, route: &[u32], need: &[u64]) -> Vec<Reservation> {
        let mut reserved = Vec::new();
        let mut seen = Vec::new();
        for (s, &n) in route.iter().enumerate() {
            self.kv_free[n as usize][s] -= need[s];
            reserved.push((n, s, need[s]));
            if !seen.contains(&n) {
                seen.push(n);
                self.active[n as usize] += 1;
            }
        }
        reserved
    }

    fn unreserve(&mut self, reserved: Vec<Reservation>) {
        let mut seen = Vec::new();
        for (n, s, bytes) in reserved {
            self.kv_free[n as usize][s] += bytes;
            if !seen.contains(&n) {
                seen.push(n);
                self.active[n as usize] = self.active[n as usize].saturating_sub(1);
            }
        }
    }

    /// Starts waiting requests, in order, while a path with KV room exists.
    fn start_waiting(&mut self, emit: &mut Emit) {
        while self.seqs.len() < self.config.max_running {
            let Some(front) = self.waiting.front() else {
                return;
            };
            let tokens = self.tokens_needed(&front.submission.request);
            let submitted_us = front.submission.submitted_us;
            let (route, need) = match self.find_route(tokens) {
                Ok(Some(found)) => found,
                // Room frees as running sequences end.
                Ok(None) if !self.seqs.is_empty() => return,
                // Nodes are down: they may come back within the stall timeout.
                Ok(None) | Err(_)
                    if self.nodes.iter().any(|v| v.down)
                        && now_us().saturating_sub(submitted_us) < self.config.stall_timeout_us =>
                {
                    return;
                }
                result => {
                    // Nothing in flight will free room or bring a node back: it can never start.
                    let reason = match result {
                        Err(e) => e,
                        _ => "no path has KV room".to_string(),
                    };
                    let w = self.waiting.pop_front().expect("front exists");
                    self.metrics.borrow_mut().failed += 1;
                    emit.push((
                        w.cap,
                        Err(EngineEvent::Refused {
                            seq: w.submission.request.id,
                            error: RequestError::NoPath {
                                seq: w.submission.request.id,
                                reason,
                            },
                        }),
                    ));
                    continue;
                }
            };
            let w = self.waiting.pop_front().expect("front exists");
            let now = now_us();
            let reserved = self.reserve(&route, &need);
            self.metrics
                .borrow_mut()
                .record_latency(names::QUEUE, now.saturating_sub(w.submission.submitted_us));
            let request = w.submission.request;
            let seq = Sequence {
                log: TokenLog {
                    prompt: request.prompt.clone(),
                    generated: Vec::new(),
                },
                request,
                route,
                attempt: 0,
                timing: RequestTiming {
                    submitted_us: w.submission.submitted_us,
                    started_us: now,
                    ..RequestTiming::default()
                },
                last_token_us: 0,
                reserved,
                released: false,
            };
            let id = seq.request.id;
            if seq.request.max_tokens == 0 {
                self.seqs.insert(id, seq);
                self.finish(id, FinishReason::Length, &w.cap, emit);
                continue;
            }
            let step = Self::next_chunk(&seq, 0, CLIENT, self.config.max_prefill_chunk, false);
            self.seqs.insert(id, seq);
            emit.push((w.cap, Ok(step)));
        }
    }

    /// Abandons `id`'s path: its reservations are released along the old path and
    /// the sequence waits for a new one, where its log is prefilled again.
    fn restart(&mut self, id: SeqId, cap: &Capability<u64>, detected_us: u64, emit: &mut Emit) {
        let Some(seq) = self.seqs.get_mut(&id) else {
            return;
        };
        if seq.released || self.stalled.iter().any(|&(s, _)| s == id) {
            return;
        }
        let old = std::mem::take(&mut seq.reserved);
        self.pending_release.insert((id, seq.attempt), old);
        emit.push((cap.clone(), Ok(Self::release_step(seq))));
        seq.attempt += 1;
        self.recovering.entry(id).or_insert(detected_us);
        self.stalled.push_back((id, detected_us));
    }

    /// Gives stalled sequences new paths, in order; fails those stalled too long.
    fn start_stalled(&mut self, cap: &Capability<u64>, emit: &mut Emit) {
        let now = now_us();
        let mut still = VecDeque::new();
        while let Some((id, since)) = self.stalled.pop_front() {
            let Some(seq) = self.seqs.get(&id) else {
                continue;
            };
            let tokens = self.tokens_needed(&seq.request);
            match self.find_route(tokens) {
                Ok(Some((route, need))) => {
                    let reserved = self.reserve(&route, &need);
                    let seq = self.seqs.get_mut(&id).expect("present");
                    seq.route = route;
                    seq.reserved = reserved;
                    let step =
                        Self::next_chunk(seq, 0, CLIENT, self.config.max_prefill_chunk, true);
                    let mut m = self.metrics.borrow_mut();
                    m.restarts += 1;
                    m.recomputed_tokens += seq.log.len() as u64;
                    drop(m);
                    emit.push((cap.clone(), Ok(step)));
                }
                result if now.saturating_sub(since) > self.config.stall_timeout_us => {
                    let reason = match result {
                        Err(e) => e,
                        _ => "no path with KV room".into(),
                    };
                    let seq = self.seqs.get_mut(&id).expect("present");
                    seq.released = true;
                    self.metrics.borrow_mut().failed += 1;
                    emit.push((
                        cap.clone(),
                        Err(EngineEvent::Refused {
                            seq: id,
                            error: RequestError::NoPath {
                                seq: id,
                                reason: format!(
                                    "{reason} (waited {:.1} s for a path)",
                                    (now - since) as f64 / 1e6
                                ),
                            },
                        }),
                    ));
                    // Nothing is reserved: the sequence is done.
                    self.seqs.remove(&id);
                }
                _ => still.push_back((id, since)),
            }
        }
        self.stalled = still;
    }

    /// A node is believed down (missed heartbeats) or restarted (new incarnation):
    /// every sequence whose path uses it restarts elsewhere.
    fn node_failed(&mut self, node: u32, cap: &Capability<u64>, emit: &mut Emit) {
        let now = now_us();
        self.metrics.borrow_mut().failures_detected += 1;
        let mut hit: Vec<SeqId> = self
            .seqs
            .iter()
            .filter(|(_, s)| !s.released && s.route.contains(&node))
            .map(|(&id, _)| id)
            .collect();
        hit.sort_unstable();
        for id in hit {
            self.restart(id, cap, now, emit);
        }
    }

    /// Pings every node; declares down those silent for longer than the detection delay.
    fn heartbeat(&mut self, cap: &Capability<u64>, emit: &mut Emit) {
        let now = now_us();
        if !self.pinging {
            // After an idle spell nobody was pinged: start the clocks afresh.
            self.pinging = true;
            for v in &mut self.nodes {
                v.last_pong_us = now;
            }
            self.last_ping_us = 0;
        }
        if now.saturating_sub(self.last_ping_us) >= self.config.heartbeat_us {
            self.last_ping_us = now;
            let stages = self.placement.num_stages();
            for n in 0..self.placement.nodes.len() as u32 {
                emit.push((
                    cap.clone(),
                    Ok(StepMsg::control(
                        u64::MAX,
                        0,
                        vec![n; stages],
                        Payload::Ping {
                            node: n,
                            sent_us: now,
                        },
                    )),
                ));
            }
        }
        for n in 0..self.nodes.len() {
            let v = self.nodes[n];
            // Silence is suspicious only when it is long next to the round trips seen lately
            // (an adaptive timeout, as phi-accrual detectors do).
            let limit = self.config.suspect_after_us.max(4 * v.rtt_us);
            if !v.down && now.saturating_sub(v.last_pong_us) > limit {
                self.nodes[n].down = true;
                self.node_failed(n as u32, cap, emit);
            }
        }
    }

    fn pong(
        &mut self,
        node: u32,
        incarnation: u32,
        pinged_us: u64,
        cap: &Capability<u64>,
        emit: &mut Emit,
    ) {
        let Some(v) = self.nodes.get(node as usize).copied() else {
            return;
        };
        let now = now_us();
        let rtt = now.saturating_sub(pinged_us);
        let view = &mut self.nodes[node as usize];
        view.rtt_us = rtt.max(view.rtt_us - view.rtt_us / 32);
        view.last_pong_us = now;
        self.nodes[node as usize].down = false;
        if incarnation != v.incarnation {
            self.nodes[node as usize].incarnation = incarnation;
            if !v.down {
                // It restarted between two heartbeats: whatever it held is gone.
                self.node_failed(node, cap, emit);
            }
        }
    }

    fn busy(&self) -> bool {
        !self.seqs.is_empty()
            || !self.waiting.is_empty()
            || !self.stalled.is_empty()
            || !self.pending_release.is_empty()
    }

    /// The step after `cached` known tokens are in the stages' caches.
    /// `replay`: the chunk rebuilds KV a failure took (a restarted sequence's prefill).
    fn next_chunk(
        seq: &Sequence,
        cached: usize,
        from_node: u32,
        max_chunk: usize,
        replay: bool,
    ) -> StepMsg {
        let known = seq.log.len();
        let len = (known - cached).clamp(1, max_chunk.max(1));
        let tokens: Vec<u32> = seq.log.tokens().skip(cached).take(len).collect();
        let history = if seq.request.sampling.repetition_penalty != 1.0 {
            seq.log.tokens().collect()
        } else {
            Vec::new()
        };
        StepMsg {
            seq: seq.request.id,
            attempt: seq.attempt,
            route: seq.route.clone(),
            start: cached as u32,
            len: tokens.len() as u32,
            last_chunk: cached + tokens.len() == known,
            replay,
            sampling: seq.request.sampling.clone(),
            history,
            from_node,
            sent_us: now_us(),
            payload: Payload::Tokens(tokens),
        }
    }

    fn release_step(seq: &Sequence) -> StepMsg {
        StepMsg::control(
            seq.request.id,
            seq.attempt,
            seq.route.clone(),
            Payload::Release,
        )
    }

    fn finish(&mut self, id: SeqId, reason: FinishReason, cap: &Capability<u64>, emit: &mut Emit) {
        let Some(seq) = self.seqs.get_mut(&id) else {
            return;
        };
        let now = now_us();
        seq.timing.finished_us = now;
        seq.released = true;
        let mut m = self.metrics.borrow_mut();
        m.completed += 1;
        m.record_latency(names::E2E, now.saturating_sub(seq.timing.submitted_us));
        if let Some(first) = self.first_submitted_us {
            m.span_us = m.span_us.max(now.saturating_sub(first));
        }
        drop(m);
        emit.push((
            cap.clone(),
            Err(EngineEvent::Finished {
                seq: id,
                reason,
                log: seq.log.clone(),
                timing: seq.timing,
            }),
        ));
        emit.push((cap.clone(), Ok(Self::release_step(seq))));
    }

    fn stop_reason(&self, seq: &Sequence, token: u32) -> Option<FinishReason> {
        if seq.request.stop_tokens.contains(&token) {
            return Some(FinishReason::Stop);
        }
        if !seq.request.stop_strings.is_empty()
            && let Some(tok) = &self.config.tokenizer
        {
            let longest = seq
                .request
                .stop_strings
                .iter()
                .map(|s| s.len())
                .max()
                .unwrap_or(0);
            // A token decodes to at least one byte: the last `longest + 1` tokens hold any match that ends here.
            let tail = &seq.log.generated[seq.log.generated.len().saturating_sub(longest + 1)..];
            if let Ok(text) = tok.decode(tail)
                && seq
                    .request
                    .stop_strings
                    .iter()
                    .any(|s| !s.is_empty() && text.contains(s.as_str()))
            {
                return Some(FinishReason::Stop);
            }
        }
        if seq.log.generated.len() >= seq.request.max_tokens
            || seq.log.len() >= self.config.context_length
        {
            return Some(FinishReason::Length);
        }
        None
    }

    fn feedback(&mut self, msg: StepMsg, cap: &Capability<u64>, emit: &mut Emit) {
        let id = msg.seq;
        let max_chunk = self.config.max_prefill_chunk;
        if let Payload::Release = msg.payload
            && let Some(old) = self.pending_release.remove(&(id, msg.attempt))
        {
            self.unreserve(old);
            return;
        }
        let Some(seq) = self.seqs.get_mut(&id) else {
            return;
        };
        if msg.attempt != seq.attempt {
            return; // a step of a route the sequence has left
        }
        let last_node = *seq.route.last().unwrap_or(&CLIENT);
        match msg.payload {
            Payload::Release => {
                let seq = self.seqs.remove(&id).expect("present");
                self.recovering.remove(&id);
                self.unreserve(seq.reserved);
            }
            Payload::Lost(_) => {
                self.restart(id, cap, now_us(), emit);
            }
            Payload::Ping { .. } | Payload::Pong { .. } | Payload::Load { .. } => {}
            _ if seq.released => {}
            Payload::ChunkDone => {
                let cached = (msg.start + msg.len) as usize;
                let step = Self::next_chunk(seq, cached, last_node, max_chunk, seq.attempt > 0);
                emit.push((cap.clone(), Ok(step)));
            }
            Payload::Sampled(token) => {
                let now = now_us();
                seq.log.generated.push(token);
                let index = seq.log.generated.len() - 1;
                {
                    let mut m = self.metrics.borrow_mut();
                    m.tokens += 1;
                    if let Some(detected) = self.recovering.remove(&id) {
                        m.record_latency(names::RECOVERY, now.saturating_sub(detected));
                    }
                    if index == 0 {
                        seq.timing.first_token_us = now;
                        m.record_latency(names::TTFT, now.saturating_sub(seq.timing.submitted_us));
                    } else {
                        m.record_latency(names::INTER_TOKEN, now.saturating_sub(seq.last_token_us));
                    }
                }
                seq.last_token_us = now;
                emit.push((
                    cap.clone(),
                    Err(EngineEvent::Token {
                        seq: id,
                        index,
                        token,
                        at_us: now,
                    }),
                ));
                let reason = self.stop_reason(&self.seqs[&id], token);
                match reason {
                    Some(reason) => self.finish(id, reason, cap, emit),
                    None => {
                        let cached = (msg.start + msg.len) as usize;
                        let step =
                            Self::next_chunk(&self.seqs[&id], cached, last_node, max_chunk, false);
                        emit.push((cap.clone(), Ok(step)));
                    }
                }
            }
            payload @ (Payload::Failed(_)
            | Payload::Tokens(_)
            | Payload::Hidden(_)
            | Payload::Logits(_)) => {
                let reason = match payload {
                    Payload::Failed(reason) => reason,
                    _ => "a step came back unfinished".into(),
                };
                seq.released = true;
                self.metrics.borrow_mut().failed += 1;
                emit.push((
                    cap.clone(),
                    Err(EngineEvent::Refused {
                        seq: id,
                        error: RequestError::StageFailed { seq: id, reason },
                    }),
                ));
                emit.push((cap.clone(), Ok(Self::release_step(seq))));
            }
        }
    }
}

/// Adds the sequencer: new requests and the loop's feedback in, steps and events out.
pub fn sequencer_operator<'s>(
    requests: StreamVec<'s, u64, Submission>,
    feedback: StreamVec<'s, u64, StepMsg>,
    config: SequencerConfig,
    placement: Arc<Placement>,
    metrics: Rc<RefCell<EngineMetrics>>,
) -> StreamVec<'s, u64, Result<StepMsg, EngineEvent>> {
    let scope = requests.scope();
    requests.binary(
        feedback,
        Exchange::new(|_: &Submission| 0u64),
        Exchange::new(|_: &StepMsg| 0u64),
        "Sequencer",
        move |_cap, info| {
            let activator = scope.activator_for(info.address);
            let mut state = SequencerState::new(config, placement, metrics);
            move |requests, feedback, output| {
                let port = output.output_index();
                let mut emit: Emit = Vec::new();
                requests.for_each(|cap, data| {
                    let Some(cap) = cap.retain_least(port) else {
                        return;
                    };
                    if state.held.is_none() {
                        state.held = Some(cap.clone());
                    }
                    for sub in data.drain(..) {
                        state.submit(sub, cap.clone(), &mut emit);
                    }
                });
                feedback.for_each(|cap, data| {
                    let Some(cap) = cap.retain_least(port) else {
                        return;
                    };
                    if state.held.is_none() {
                        state.held = Some(cap.clone());
                    }
                    for msg in data.drain(..) {
                        match msg.payload {
                            Payload::Pong {
                                node,
                                incarnation,
                                pinged_us,
                            } => state.pong(node, incarnation, pinged_us, &cap, &mut emit),
                            Payload::Load {
                                node, stage, error, ..
                            } => state.loaded(node, stage as usize, error),
                            _ => state.feedback(msg, &cap, &mut emit),
                        }
                    }
                });
                if let Some(cap) = state.held.clone()
                    && state.busy()
                {
                    state.heartbeat(&cap, &mut emit);
                    state.plan_repairs(&cap, &mut emit);
                    state.finish_repairs();
                    state.start_stalled(&cap, &mut emit);
                }
                state.start_waiting(&mut emit);
                for (cap, item) in emit {
                    output.session(&cap).give(item);
                }
                if state.busy() {
                    activator.activate_after(std::time::Duration::from_micros(
                        state.config.heartbeat_us.max(1_000),
                    ));
                } else {
                    // Nothing in flight: let the dataflow's frontier move (and end).
                    state.held = None;
                    state.pinging = false;
                }
            }
        },
    )
}
