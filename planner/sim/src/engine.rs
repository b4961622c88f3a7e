//! The discrete-event core: nodes with continuous batching, links with FIFO
//! serialisation, KV admission, the planner's routers, churn and re-planning.
//!
//! Semantics follow the dataflow engine (`engine/src/dataflow`):
//!
//! * A sequence's path is one hop per node, as the router returns it (a node
//!   holding several consecutive stages runs them in one call). Admission is
//!   FIFO (restarted sequences first): the router picks a path over serving
//!   nodes with KV room, the sequence reserves KV for prompt + output tokens on
//!   every hop, or the queue waits for room (head of line). A request larger
//!   than every replica of a stage is rejected, as the engine refuses it.
//! * Each sequence has one step in flight. A step is a prefill chunk of at most
//!   `max_prefill_chunk` tokens or one decode token; it runs the hops in order
//!   and returns from the last hop to the first over the feedback link. A
//!   chunk that completes the known tokens samples a token there.
//! * A node runs one batch at a time over everything queued: decode steps
//!   first, then prefill chunks in arrival order, within `token_budget` tokens
//!   and `max_batch_sequences` sequences (the first always fits). Its time is
//!   [`CostModel::step_time`] for the batch's decode count and prefill tokens
//!   over the hop's layers (summed over groups of different layer ranges), so
//!   calibrated profiles calibrate the simulator too.
//! * The outputs of a batch bound for one node travel as one message: latency
//!   plus bytes over bandwidth, queued FIFO behind earlier messages on that
//!   directed link. Hidden states cost the cost model's activation bytes per
//!   token at the boundary; the feedback carries 4-byte token ids; the client
//!   link is free. (The engine sends one message per step.)
//! * KV is released when a sequence finishes (the engine releases it after a
//!   release message has passed the stages).
//! * A failed node loses its batch, queues and KV; every sequence with the node
//!   on its path restarts: it re-enters admission first in line, takes a new
//!   path, and re-prefills its prompt and generated tokens (counted as
//!   recomputed tokens) before generating the next one. A node that comes back
//!   reloads its weights over its link before it serves again.
//! * A stage without a live replica re-plans with the same strategy over the
//!   live nodes (also on every change, or below a throughput threshold, by
//!   policy). Nodes whose layers change load them (weight bytes over
//!   `min(weight source, downlink)`) before serving; sequences through them
//!   restart; the others keep running.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::churn::ChurnEvent;
use super::error::SimError;
use super::spec::{Failover, ReplanPolicy, RouteCache, SimConfig};
use super::workload::SimRequest;
use tokenflow_core::batch::{HoldClock, StepQueue};
use tokenflow_planner::cluster::{Cluster, ClusterSpec};
use tokenflow_planner::cost::CostModel;
use tokenflow_planner::flow::max_flow;
use tokenflow_planner::latency::{LatencyReport, metric};
use tokenflow_planner::options::PlanOptions;
use tokenflow_planner::plan::Plan;
use tokenflow_planner::profile::ModelProfile;
use tokenflow_planner::router::{Router, RouterState, router_load};

/// Bytes of one token id on the feedback link.
pub const TOKEN_ID_BYTES: f64 = 4.0;

const NONE: u64 = u64::MAX;

use tokenflow_planner::fx_hash::FxBuild;

fn to_ns(s: f64) -> u64 {
    if s.is_nan() || s <= 0.0 {
        0
    } else if s >= 1.8e10 {
        u64::MAX / 4
    } else {
        (s * 1e9).round() as u64
    }
}

fn to_s(ns: u64) -> f64 {
    ns as f64 / 1e9
}

/// What happened to one request.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RequestOutcome {
    /// Arrival, seconds.
    pub arrival_s: f64,
    /// First admission, seconds (`None`: never admitted).
    pub admitted_s: Option<f64>,
    /// First generated token, seconds.
    pub first_token_s: Option<f64>,
    /// Last token, seconds (`None`: unfinished or rejected).
    pub finished_s: Option<f64>,
    /// Tokens generated.
    pub tokens: u32,
    /// Times it restarted after a failure or a re-plan.
    pub restarts: u32,
    /// Refused: larger than every replica of a stage can hold.
    pub rejected: bool,
    /// Longest wait between two of its tokens, seconds (a restart's stall).
    #[serde(default)]
    pub max_gap_s: f64,
    /// Finished within the SLO.
    pub met_slo: bool,
}

/// Counters and rates of one run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SimStats {
    /// Requests offered.
    pub requests: u64,
    /// Requests that generated all their tokens.
    pub completed: u64,
    /// Requests refused (larger than a stage's KV room).
    pub rejected: u64,
    /// Requests neither completed nor rejected when the run ended.
    pub unfinished: u64,
    /// Tokens generated (each once; re-prefill does not generate).
    pub tokens_generated: u64,
    /// End of the run, seconds (last completion, or the drain horizon).
    pub end_s: f64,
    /// Generated tokens per second over the run.
    pub throughput_tok_s: f64,
    /// Completed requests per second over the run.
    pub throughput_req_s: f64,
    /// Tokens per second of requests that met the SLO.
    pub goodput_tok_s: f64,
    /// Requests per second that met the SLO.
    pub goodput_req_s: f64,
    /// Share of offered requests that completed within the SLO.
    pub slo_attainment: f64,
    /// Sequence restarts (failures and re-plans).
    pub restarts: u64,
    /// Distinct requests that restarted at least once.
    pub requests_restarted: u64,
    /// Tokens whose KV was lost and had to be prefilled again.
    pub tokens_recomputed: u64,
    /// Seconds during which some stage of the plan had no serving replica.
    pub time_without_path_s: f64,
    /// Bytes sent between nodes (hidden states and token ids).
    pub network_bytes: f64,
    /// Bytes of weights loaded by nodes coming back or changing layers.
    pub weight_bytes_loaded: f64,
    /// Node failures.
    pub failures: u64,
    /// Node returns.
    pub returns: u64,
    /// Re-plans applied.
    pub replans: u64,
    /// Re-plans attempted that found no feasible plan.
    pub replan_failures: u64,
    /// GPU-seconds spent in batches.
    pub gpu_busy_s: f64,
    /// GPU-hours held: nodes that are up and hold layers of the plan,
    /// integrated over the run (what a provider bills, busy or not).
    pub gpu_hours: f64,
    /// Scaling steps of the load-aware policy that changed the plan.
    pub scalings: u64,
    /// Events processed.
    pub events: u64,
    /// Router calls made.
    pub router_calls: u64,
}

/// Generated tokens per second over time, with the churn and re-plans marked.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Timeline {
    /// Width of a bin, seconds.
    pub bin_s: f64,
    /// Tokens per second in each bin.
    pub tokens_per_s: Vec<f64>,
    /// Failure times, seconds.
    pub failures_s: Vec<f64>,
    /// Return times, seconds.
    pub returns_s: Vec<f64>,
    /// Re-plan times, seconds.
    pub replans_s: Vec<f64>,
}

/// Everything one run measured.
#[derive(Debug, Clone)]
pub struct SimOutcome {
    /// `ttft`, `inter_token`, `e2e` and `queue` histograms (the engine's names).
    pub latency: LatencyReport,
    /// One entry per request, in the order given.
    pub requests: Vec<RequestOutcome>,
    /// Counters and rates.
    pub stats: SimStats,
    /// Throughput over time.
    pub timeline: Timeline,
    /// The plan in force at the end.
    pub final_plan: Option<Plan>,
    /// Max-flow bound of the first plan, tokens/s.
    pub plan_bound_tok_s: f64,
}

/// Progress of a run, for a progress bar.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Progress {
    /// Simulated time, seconds.
    pub time_s: f64,
    /// Requests completed or rejected.
    pub done: u64,
    /// Requests offered.
    pub total: u64,
    /// Events so far.
    pub events: u64,
    /// Simulated time at which the run stops at the latest (arrival window
    /// plus drain); `None`: it runs until every request is done.
    pub horizon_s: Option<f64>,
    /// The strategy is planning; the run has not started.
    pub planning: bool,
}

impl Progress {
    /// Progress before the first event, while the strategy plans.
    pub fn planning(total: u64, horizon_s: Option<f64>) -> Progress {
        Progress {
            time_s: 0.0,
            done: 0,
            total,
            events: 0,
            horizon_s,
            planning: true,
        }
    }

    /// Share of the run done, in [0, 1]: of the requests resolved, or of the
    /// simulated time to the horizon, whichever is further (the run ends at
    /// the first of the two).
    pub fn fraction(&self) -> f64 {
        let by_requests = if self.total > 0 {
            self.done as f64 / self.total as f64
        } else {
            1.0
        };
        let by_time = match self.horizon_s {
            Some(h) if h > 0.0 => self.time_s / h,
            _ => 0.0,
        };
        by_requests.max(by_time).clamp(0.0, 1.0)
    }
}

/// Inputs of one run.
pub(crate) struct RunInputs<'a> {
    pub cluster: &'a Cluster,
    pub spec: Option<(&'a ClusterSpec, Option<&'a Path>)>,
    pub model: &'a ModelProfile,
    pub options: &'a PlanOptions,
    pub config: &'a SimConfig,
    pub requests: &'a [SimRequest],
    pub churn: &'a [ChurnEvent],
    /// Strategy for re-planning (`None`: the plan never changes).
    pub strategy: Option<&'a str>,
    /// Arrival window, seconds (for the drain horizon and timeline bins).
    pub duration_s: f64,
    /// The plan's max-flow bound, when the caller knows it.
    pub bound_tok_s: Option<f64>,
}

#[derive(Debug, Clone, Copy)]
enum Ev {
    Arrival(u32),
    NodeDone {
        node: u32,
        epoch: u32,
    },
    Deliver {
        node: u32,
        msg: u32,
    },
    Kick(u32),
    Churn(u32),
    Loaded {
        node: u32,
        epoch: u32,
    },
    /// A scaling decision of the load-aware policy.
    Scale,
    /// A node released by the load-aware policy has drained: the smaller
    /// plan goes in if every released node has.
    Drained,
    /// A sequence whose node died is noticed (after the detection delay)
    /// and may restart, if nothing restarted it since (`incarnation`).
    Restart {
        seq: u32,
        incarnation: u32,
    },
}

struct Entry {
    time: u64,
    seq: u64,
    ev: Ev,
}

impl PartialEq for Entry {
    fn eq(&self, o: &Self) -> bool {
        self.time == o.time && self.seq == o.seq
    }
}
impl Eq for Entry {}
impl PartialOrd for Entry {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Entry {
    fn cmp(&self, o: &Self) -> Ordering {
        // Reversed: BinaryHeap is a max-heap, the earliest (time, seq) comes first.
        (o.time, o.seq).cmp(&(self.time, self.seq))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Item {
    seq: u32,
    incarnation: u32,
}

/// One hop of a path: a node and the layers it runs (u16: checked in `Sim::new`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct PHop {
    node: u32,
    start: u16,
    end: u16,
}

/// A path's length and first hops, kept inline (most paths are short); the
/// rest are in [`Seq::more`].
#[derive(Default, Clone, Copy)]
#[repr(C)]
struct Hops {
    len: u32,
    inline: [PHop; 4],
}

impl Default for PHop {
    fn default() -> Self {
        PHop {
            node: u32::MAX,
            start: 0,
            end: 0,
        }
    }
}

/// A running (or waiting to restart) sequence. The fields every step reads
/// fill the first cache line.
#[derive(Default)]
#[repr(C, align(64))]
struct Seq {
    incarnation: u32,
    hop: u32,
    cached: u32,
    generated: u32,
    chunk: u32,
    prompt: u32,
    output: u32,
    path: Hops,
    decode: bool,
    live: bool,
    first_token: u64,
    last_token: u64,
    req: u32,
    restarts: u32,
    more: Vec<PHop>,
    reserved: Vec<f64>,
    pos: Vec<u32>,
}

impl Seq {
    fn hop_at(&self, h: usize) -> PHop {
        if h < 4 {
            self.path.inline[h]
        } else {
            self.more[h - 4]
        }
    }
    fn hops(&self) -> usize {
        self.path.len as usize
    }
    fn set_path(&mut self, path: &[PHop]) {
        self.path.len = path.len() as u32;
        self.more.clear();
        for (h, &p) in path.iter().enumerate() {
            if h < 4 {
                self.path.inline[h] = p;
            } else {
                self.more.push(p);
            }
        }
    }
}

#[derive(Default)]
struct NodeRt {
    up: bool,
    loaded: bool,
    span: Option<(u32, u32)>,
    kv_cap: f64,
    kv_free: f64,
    /// Steps waiting for the node's next batch (the core's batch policy).
    queue: StepQueue<Item>,
    busy: bool,
    kick: bool,
    batch: Vec<Item>,
    epoch: u32,
    seqs: Vec<u32>,
    /// The core's hold rule's clock (in µs of simulated time).
    hold_clock: HoldClock,
    /// When a hold ends (a kick is due then).
    hold_until: Option<u64>,
    /// Being released by the load-aware policy: no new sequences.
    draining: bool,
}

impl NodeRt {
    fn serving(&self) -> bool {
        self.up && self.loaded && self.span.is_some()
    }
}

struct PlanRt {
    plan: Plan,
    /// Cluster index of every plan node.
    nodes: Vec<u32>,
    /// Cluster indices serving each stage.
    stage_nodes: Vec<Vec<u32>>,
    router: Box<dyn Router>,
    state: RouterState,
    /// Per plan node: masked for lack of KV room (per-call mode).
    kv_masked: Vec<bool>,
    pool: Vec<Vec<PHop>>,
    pool_size: usize,
    cursor: usize,
    changes_since_fill: usize,
    /// Per cluster node: serving as last recorded (down set and stage counts).
    serving: Vec<bool>,
    /// Per cluster node: the plan stages it holds (`first..last`, empty if none).
    node_stages: Vec<(u32, u32)>,
    /// Serving replicas per stage.
    stage_serving: Vec<u32>,
    /// Stages without a serving replica.
    empty_stages: u32,
}

pub(crate) struct Sim<'a> {
    inp: RunInputs<'a>,
    cm: CostModel,
    kv_prefix: Vec<f64>,
    now: u64,
    next_seq: u64,
    heap: BinaryHeap<Entry>,
    nodes: Vec<NodeRt>,
    plan: Option<PlanRt>,
    needs_replan: bool,
    first_bound: f64,
    seqs: Vec<Seq>,
    free_seqs: Vec<u32>,
    waiting: VecDeque<u32>,
    restart_q: VecDeque<u32>,
    /// When the epoch forming after a death serves (epoch failover), ns.
    epoch_ready: u64,
    running: usize,
    msgs: Vec<Vec<Item>>,
    free_msgs: Vec<u32>,
    /// Per directed link used so far: (free from, latency ns, bytes/s).
    links: HashMap<u64, (u64, u64, f64), FxBuild>,
    step_memo: HashMap<(u32, u32, u32, u32, u32), f64, FxBuild>,
    /// Per node: index of its GPU kind (nodes with the same kind name share one).
    gpu_kind: Vec<u32>,
    groups: Vec<(u32, u32, u32, u32)>,
    sends: Vec<(u32, Item, f64)>,
    outcomes: Vec<RequestOutcome>,
    latency: LatencyReport,
    stats: SimStats,
    timeline_tokens: Vec<u64>,
    timeline: Timeline,
    bin_ns: u64,
    horizon: u64,
    no_path_since: Option<u64>,
    no_path_ns: u64,
    /// When the held-node count last changed, and the count.
    held_since: u64,
    held_nodes: u32,
    /// Requests arrived so far, and at the last scaling decision.
    arrived: u64,
    arrived_at_scale: u64,
    last_scale_rate: f64,
    /// A smaller plan waiting for its released nodes to drain.
    pending_shrink: Option<Plan>,
    /// The plan the run started from, which elastic scaling grows back to.
    elastic_base: Option<Plan>,
    resolved: u64,
    last_resolved: u64,
    /// Something changed that may let the head of the queue in.
    admit_dirty: bool,
    plan_cache: HashMap<Vec<u32>, Option<Plan>>,
}

impl<'a> Sim<'a> {
    pub(crate) fn new(inp: RunInputs<'a>, plan: Plan) -> Result<Sim<'a>, SimError> {
        inp.config.check()?;
        if inp.model.num_layers() > u16::MAX as usize {
            return Err(SimError::InvalidNumber {
                field: "model.layers".into(),
                requirement: format!("at most {}", u16::MAX),
                value: inp.model.num_layers() as f64,
            });
        }
        plan.validate_with(inp.cluster, inp.model, inp.options)
            .map_err(tokenflow_planner::error::PlanError::from)?;
        let cm = CostModel::new(inp.model, inp.options);
        let mut kv_prefix = vec![0.0];
        for l in &inp.model.layers {
            kv_prefix.push(kv_prefix.last().copied().unwrap_or(0.0) + l.kv_bytes_per_token as f64);
        }
        let n = inp.cluster.len();
        let mut kinds: Vec<&str> = Vec::new();
        let gpu_kind = inp
            .cluster
            .nodes
            .iter()
            .map(|nd| match kinds.iter().position(|k| *k == nd.gpu.name) {
                Some(k) => k as u32,
                None => {
                    kinds.push(&nd.gpu.name);
                    (kinds.len() - 1) as u32
                }
            })
            .collect();
        let nodes = (0..n)
            .map(|_| NodeRt {
                up: true,
                ..NodeRt::default()
            })
            .collect();
        let horizon = match inp.config.drain_s {
            Some(d) => to_ns(inp.duration_s + d),
            None => u64::MAX,
        };
        let bin_s = (inp.duration_s / inp.config.timeline_bins as f64).max(1e-3);
        let mut latency = LatencyReport::new();
        for m in [
            metric::TTFT,
            metric::INTER_TOKEN,
            metric::E2E,
            metric::QUEUE,
        ] {
            latency.metric_mut(m);
        }
        let outcomes = inp
            .requests
            .iter()
            .map(|r| RequestOutcome {
                arrival_s: r.arrival_s,
                admitted_s: None,
                first_token_s: None,
                finished_s: None,
                tokens: 0,
                restarts: 0,
                rejected: false,
                met_slo: false,
                max_gap_s: 0.0,
            })
            .collect();
        let mut sim = Sim {
            cm,
            kv_prefix,
            now: 0,
            next_seq: 0,
            heap: BinaryHeap::new(),
            nodes,
            plan: None,
            needs_replan: false,
            first_bound: 0.0,
            seqs: Vec::new(),
            free_seqs: Vec::new(),
            waiting: VecDeque::new(),
            restart_q: VecDeque::new(),
            epoch_ready: 0,
            running: 0,
            msgs: Vec::new(),
            free_msgs: Vec::new(),
            links: HashMap::default(),
            step_memo: HashMap::default(),
            gpu_kind,
            groups: Vec::new(),
            sends: Vec::new(),
            outcomes,
            latency,
            stats: SimStats {
                requests: inp.requests.len() as u64,
                ..SimStats::default()
            },
            timeline_tokens: Vec::new(),
            timeline: Timeline {
                bin_s,
                ..Timeline::default()
            },
            bin_ns: to_ns(bin_s).max(1),
            horizon,
            no_path_since: None,
            no_path_ns: 0,
            held_since: 0,
            held_nodes: 0,
            arrived: 0,
            arrived_at_scale: 0,
            last_scale_rate: 0.0,
            pending_shrink: None,
            elastic_base: None,
            resolved: 0,
            last_resolved: 0,
            admit_dirty: true,
            plan_cache: HashMap::new(),
            inp,
        };
        let bound = match sim.inp.bound_tok_s {
            Some(b) => b,
            None => max_flow(&plan, sim.inp.cluster, &sim.cm).throughput,
        };
        sim.first_bound = bound;
        if matches!(sim.inp.config.replan, ReplanPolicy::Elastic { .. }) {
            sim.elastic_base = Some(plan.clone());
        }
        sim.install(plan, true);
        Ok(sim)
    }

    fn push(&mut self, time: u64, ev: Ev) {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.heap.push(Entry { time, seq, ev });
    }

    fn kv_per_token(&self, start: usize, end: usize) -> f64 {
        self.kv_prefix[end] - self.kv_prefix[start]
    }

    fn load_bps(&self, i: usize) -> f64 {
        let src = self.inp.config.weight_source_gbps * 1e9 / 8.0;
        src.min(
            self.inp.cluster.nodes[i]
                .downlink_bps
                .unwrap_or(f64::INFINITY),
        )
    }

    /// Runs to the end; `progress` is called every 65,536 events and at the end.
    pub(crate) fn run(mut self, progress: &mut dyn FnMut(&Progress)) -> SimOutcome {
        if !self.inp.requests.is_empty() {
            let t = to_ns(self.inp.requests[0].arrival_s);
            self.push(t, Ev::Arrival(0));
        }
        if !self.inp.churn.is_empty() {
            let t = to_ns(self.inp.churn[0].time_s);
            self.push(t, Ev::Churn(0));
        }
        if let ReplanPolicy::Elastic { interval_s } = self.inp.config.replan
            && self.inp.strategy.is_some()
        {
            self.push(to_ns(interval_s), Ev::Scale);
        }
        self.hold_recount();
        let total = self.stats.requests;
        let horizon_s = (self.horizon != u64::MAX).then(|| to_s(self.horizon));
        while let Some(e) = self.heap.pop() {
            if e.time > self.horizon {
                self.now = self.horizon;
                break;
            }
            self.now = e.time;
            self.stats.events += 1;
            match e.ev {
                Ev::Arrival(i) => self.on_arrival(i),
                Ev::NodeDone { node, epoch } => self.on_node_done(node, epoch),
                Ev::Deliver { node, msg } => self.on_deliver(node, msg),
                Ev::Kick(node) => {
                    self.nodes[node as usize].kick = false;
                    self.start_batch(node);
                }
                Ev::Churn(k) => {
                    self.hold_account();
                    self.on_churn(k);
                    self.hold_recount();
                }
                Ev::Loaded { node, epoch } => self.on_loaded(node, epoch),
                Ev::Restart { seq, incarnation } => {
                    let q = &self.seqs[seq as usize];
                    if q.live && q.incarnation == incarnation {
                        self.restart_q.push_back(seq);
                        self.admit_dirty = true;
                    }
                }
                Ev::Scale => self.on_scale(),
                Ev::Drained => self.apply_drained_shrink(),
            }
            if self.admit_dirty {
                self.admit_dirty = false;
                self.try_admit();
            }
            if self.stats.events & 0xFFFF == 0 {
                progress(&Progress {
                    time_s: to_s(self.now),
                    done: self.resolved,
                    total,
                    events: self.stats.events,
                    horizon_s,
                    planning: false,
                });
            }
            if self.resolved == total {
                break;
            }
        }
        let end = if self.resolved == total {
            self.last_resolved
        } else {
            self.now
        };
        progress(&Progress {
            time_s: to_s(end),
            done: self.resolved,
            total,
            events: self.stats.events,
            horizon_s,
            planning: false,
        });
        self.finish(end)
    }

    /// Adds the GPU-hours held since the last change, at the count then.
    fn hold_account(&mut self) {
        let dt = self.now.saturating_sub(self.held_since);
        self.stats.gpu_hours += dt as f64 * self.held_nodes as f64 / 3.6e12;
        self.held_since = self.now;
    }

    /// Counts the nodes held from now on.
    fn hold_recount(&mut self) {
        self.held_nodes = self
            .nodes
            .iter()
            .filter(|n| n.up && n.span.is_some())
            .count() as u32;
    }

    /// A scaling decision: the arrival rate since the last one, and the plan
    /// grown or shrunk by whole replicas to sustain it (see
    /// [`ReplanPolicy::Elastic`]).
    fn on_scale(&mut self) {
        let ReplanPolicy::Elastic { interval_s } = self.inp.config.replan else {
            return;
        };
        let arrived = self.arrived.saturating_sub(self.arrived_at_scale);
        self.arrived_at_scale = self.arrived;
        let end = to_ns(self.inp.duration_s);
        if self.now + to_ns(interval_s).max(1) <= end {
            self.push(self.now + to_ns(interval_s).max(1), Ev::Scale);
        }
        // The rate of the last interval, extrapolated one interval ahead
        // along its trend (a plan sized for the past lags a rising demand);
        // the first decision has no trend yet.
        let last = arrived as f64 / interval_s;
        let rate = if self.last_scale_rate > 0.0 {
            (2.0 * last - self.last_scale_rate).max(last * 0.5)
        } else {
            last
        };
        self.last_scale_rate = last;
        self.apply_drained_shrink();
        let Some(p) = self.plan.as_ref() else {
            return;
        };
        let Some(plan) = super::elastic::rescale(
            &p.plan,
            self.elastic_base.as_ref().unwrap_or(&p.plan),
            self.inp.cluster,
            &self.cm,
            self.inp.options,
            rate,
            &|i| self.nodes[i].up && !self.nodes[i].draining,
        ) else {
            return;
        };
        let cluster = self.inp.cluster;
        let held = |pl: &Plan| -> Vec<usize> {
            pl.nodes
                .iter()
                .filter_map(|id| cluster.index_of(id))
                .collect()
        };
        let (before, after) = (held(&p.plan), held(&plan));
        let grows = after.iter().any(|i| !before.contains(i));
        if grows {
            self.pending_shrink = None;
            self.apply_scaling(plan);
        } else if self.pending_shrink.is_none() {
            for i in before.into_iter().filter(|i| !after.contains(i)) {
                self.nodes[i].draining = true;
            }
            self.pending_shrink = Some(plan);
        }
    }

    /// A release waits until the released nodes have drained (routers send
    /// them nothing new; their sequences finish), so none restarts; this puts
    /// the smaller plan in once they have.
    fn apply_drained_shrink(&mut self) {
        if let Some(pending) = self.pending_shrink.take() {
            if self.nodes.iter().all(|n| !n.draining || n.seqs.is_empty()) {
                self.apply_scaling(pending);
            } else {
                self.pending_shrink = Some(pending);
            }
        }
    }

    /// Installs a resized plan, counting it and the GPU-hours up to now;
    /// a plan with a stage no live node serves (a failure since it was made)
    /// is dropped.
    fn apply_scaling(&mut self, plan: Plan) {
        for n in &mut self.nodes {
            n.draining = false;
        }
        let cluster = self.inp.cluster;
        let served = plan.stages.iter().all(|st| {
            st.replicas
                .iter()
                .any(|r| cluster.index_of(&r.node).is_some_and(|i| self.nodes[i].up))
        });
        if !served {
            return;
        }
        self.hold_account();
        self.stats.scalings += 1;
        self.timeline.replans_s.push(to_s(self.now));
        self.install(plan, false);
        self.hold_recount();
        self.admit_dirty = true;
    }

    fn finish(mut self, end: u64) -> SimOutcome {
        let held = end.saturating_sub(self.held_since);
        self.stats.gpu_hours += held as f64 * self.held_nodes as f64 / 3.6e12;
        if let Some(s) = self.no_path_since.take() {
            self.no_path_ns += end.saturating_sub(s);
        }
        for q in self.seqs.iter().filter(|q| q.live) {
            self.outcomes[q.req as usize].tokens = q.generated;
        }
        let end_s = to_s(end).max(1e-9);
        let st = &mut self.stats;
        st.end_s = to_s(end);
        st.unfinished = st.requests - st.completed - st.rejected;
        st.time_without_path_s = to_s(self.no_path_ns);
        st.throughput_tok_s = st.tokens_generated as f64 / end_s;
        st.throughput_req_s = st.completed as f64 / end_s;
        let (mut good_req, mut good_tok) = (0u64, 0u64);
        for o in &self.outcomes {
            if o.met_slo {
                good_req += 1;
                good_tok += o.tokens as u64;
            }
            if o.restarts > 0 {
                st.requests_restarted += 1;
            }
        }
        st.goodput_req_s = good_req as f64 / end_s;
        st.goodput_tok_s = good_tok as f64 / end_s;
        st.slo_attainment = if st.requests > 0 {
            good_req as f64 / st.requests as f64
        } else {
            0.0
        };
        let bins = (end.div_ceil(self.bin_ns) as usize).max(1);
        self.timeline_tokens
            .resize(bins.max(self.timeline_tokens.len()), 0);
        self.timeline.tokens_per_s = self
            .timeline_tokens
            .iter()
            .take(bins)
            .map(|&t| t as f64 / self.timeline.bin_s)
            .collect();
        SimOutcome {
            latency: self.latency,
            requests: self.outcomes,
            stats: self.stats,
            timeline: self.timeline,
            final_plan: self.plan.map(|p| p.plan),
            plan_bound_tok_s: self.first_bound,
        }
    }

    // ----- plan installation and routing -------------------------------------------------

    /// Makes `plan` current. `initial`: nodes hold their weights already.
    fn install(&mut self, plan: Plan, initial: bool) {
        let cluster = self.inp.cluster;
        let mut span: Vec<Option<(u32, u32)>> = vec![None; cluster.len()];
        for (id, r) in plan.node_layers() {
            if let Some(i) = cluster.index_of(&id) {
                span[i] = Some((r.start as u32, r.end as u32));
            }
        }
        // Nodes whose layers change: restart their sequences and (re)load.
        let touched: Vec<usize> = (0..cluster.len())
            .filter(|&i| span[i] != self.nodes[i].span)
            .collect();
        for &i in &touched {
            self.reset_node(i);
            let nd = &mut self.nodes[i];
            nd.span = span[i];
            nd.loaded = false;
            if let Some((a, b)) = span[i] {
                let r = a as usize..b as usize;
                let gpu = &cluster.nodes[i].gpu;
                let cap = (self.cm.usable_memory(gpu) - self.cm.weight_bytes(&r)).max(0.0);
                nd.kv_cap = cap;
                nd.kv_free = cap;
                if nd.up {
                    if initial {
                        nd.loaded = true;
                    } else {
                        let bytes = self.cm.weight_bytes(&r);
                        let t = bytes / self.load_bps(i);
                        self.stats.weight_bytes_loaded += bytes;
                        let epoch = self.nodes[i].epoch;
                        self.push(
                            self.now + to_ns(t),
                            Ev::Loaded {
                                node: i as u32,
                                epoch,
                            },
                        );
                    }
                }
            } else {
                nd.kv_cap = 0.0;
                nd.kv_free = 0.0;
            }
        }
        let nodes: Vec<u32> = plan
            .nodes
            .iter()
            .filter_map(|id| cluster.index_of(id).map(|i| i as u32))
            .collect();
        let stage_nodes = plan
            .stages
            .iter()
            .map(|st| {
                st.replicas
                    .iter()
                    .filter_map(|r| cluster.index_of(&r.node).map(|i| i as u32))
                    .collect()
            })
            .collect::<Vec<Vec<u32>>>();
        let router: Box<dyn Router> = self
            .inp
            .config
            .scheduler
            .router
            .build(&plan, cluster, &self.cm);
        let replicas: usize = stage_nodes.iter().map(Vec::len).sum();
        let widest = stage_nodes.iter().map(Vec::len).max().unwrap_or(1);
        let pool_size = match self.inp.config.route_cache {
            RouteCache::Off => 0,
            RouteCache::Pool(k) => k,
            RouteCache::Auto if replicas > 512 => widest.clamp(512, 20_000),
            RouteCache::Auto => 0,
        };
        let mut state = RouterState::default();
        for &i in &nodes {
            let id = cluster.nodes[i as usize].id.clone();
            if !self.nodes[i as usize].serving() {
                state.down.insert(id.clone());
            }
            state.load.insert(id, 0.0);
        }
        let count = nodes.len();
        let mut node_stages = vec![(0u32, 0u32); cluster.len()];
        for (id, a, b) in plan.node_stage_spans() {
            if let Some(i) = cluster.index_of(&id) {
                node_stages[i] = (a as u32, b as u32 + 1);
            }
        }
        let stage_count = plan.stages.len();
        self.plan = Some(PlanRt {
            plan,
            nodes,
            stage_nodes,
            router,
            state,
            kv_masked: vec![false; count],
            pool: Vec::new(),
            pool_size,
            cursor: 0,
            changes_since_fill: 0,
            serving: vec![false; cluster.len()],
            node_stages,
            stage_serving: vec![0; stage_count],
            empty_stages: stage_count as u32,
        });
        self.refresh_loads();
        self.path_state();
    }

    /// Drops what a node holds: its batch, queues, KV and the sequences through it.
    fn reset_node(&mut self, i: usize) {
        self.reset_node_after(i, 0);
    }

    /// Drops node `i`'s KV and queues; its sequences restart `delay` ns from now.
    fn reset_node_after(&mut self, i: usize, delay: u64) {
        let list = std::mem::take(&mut self.nodes[i].seqs);
        // Restart in a stable order; each restart removes the sequence from every list.
        self.nodes[i].seqs = list.clone();
        for s in list {
            self.restart_after(s, delay);
        }
        let nd = &mut self.nodes[i];
        nd.epoch = nd.epoch.wrapping_add(1);
        nd.busy = false;
        nd.queue.clear();
        nd.hold_clock.reset();
        nd.batch.clear();
        nd.kv_free = nd.kv_cap;
    }

    /// Recomputes the down set and whether a full path exists.
    /// Recomputes the down set and the serving replicas of every stage.
    fn path_state(&mut self) {
        self.admit_dirty = true;
        let Some(p) = self.plan.as_mut() else {
            return;
        };
        let cluster = self.inp.cluster;
        p.stage_serving.iter_mut().for_each(|c| *c = 0);
        for &i in &p.nodes {
            let id = &cluster.nodes[i as usize].id;
            let serving = self.nodes[i as usize].serving();
            p.serving[i as usize] = serving;
            let down = p.state.down.contains(id);
            if serving && down {
                p.state.down.remove(id);
            } else if !serving && !down {
                p.state.down.insert(id.clone());
            }
            if serving {
                let (a, b) = p.node_stages[i as usize];
                for c in &mut p.stage_serving[a as usize..b as usize] {
                    *c += 1;
                }
            }
        }
        p.empty_stages = p.stage_serving.iter().filter(|&&c| c == 0).count() as u32;
        self.note_full_path();
    }

    /// Updates the down set and stage counts for node `i` alone.
    fn node_state(&mut self, i: usize) {
        self.admit_dirty = true;
        let Some(p) = self.plan.as_mut() else {
            return;
        };
        let serving = self.nodes[i].serving();
        let (a, b) = p.node_stages[i];
        if a == b || p.serving[i] == serving {
            return;
        }
        p.serving[i] = serving;
        let id = &self.inp.cluster.nodes[i].id;
        if serving {
            p.state.down.remove(id);
        } else {
            p.state.down.insert(id.clone());
        }
        for c in &mut p.stage_serving[a as usize..b as usize] {
            if serving {
                *c += 1;
                if *c == 1 {
                    p.empty_stages -= 1;
                }
            } else {
                *c -= 1;
                if *c == 0 {
                    p.empty_stages += 1;
                }
            }
        }
        self.note_full_path();
    }

    fn note_full_path(&mut self) {
        let full = self.plan.as_ref().is_some_and(|p| p.empty_stages == 0);
        match (full, self.no_path_since) {
            (true, Some(s)) => {
                self.no_path_ns += self.now.saturating_sub(s);
                self.no_path_since = None;
            }
            (false, None) => self.no_path_since = Some(self.now),
            _ => {}
        }
    }

    fn refresh_loads(&mut self) {
        let Some(p) = self.plan.as_mut() else {
            return;
        };
        let b = self.inp.config.scheduler.max_batch_sequences;
        for &i in &p.nodes {
            let id = &self.inp.cluster.nodes[i as usize].id;
            let v = router_load(self.nodes[i as usize].seqs.len(), b);
            if let Some(l) = p.state.load.get_mut(id) {
                *l = v;
            }
        }
    }

    fn set_load(&mut self, i: u32) {
        let Some(p) = self.plan.as_mut() else {
            return;
        };
        if p.pool_size > 0 {
            return; // loads are refreshed when the pool is filled
        }
        let id = &self.inp.cluster.nodes[i as usize].id;
        let v = router_load(
            self.nodes[i as usize].seqs.len(),
            self.inp.config.scheduler.max_batch_sequences,
        );
        if let Some(l) = p.state.load.get_mut(id) {
            *l = v;
        }
    }

    fn hops_to_path(
        &self,
        hops: &[tokenflow_planner::router::Hop],
        plan: &Plan,
    ) -> Option<Vec<PHop>> {
        let mut out = Vec::with_capacity(hops.len());
        for h in hops {
            let i = self.inp.cluster.index_of(&h.node)?;
            let a = plan.stages.get(h.first)?.start;
            let b = plan.stages.get(h.last)?.end;
            out.push(PHop {
                node: i as u32,
                start: a as u16,
                end: b as u16,
            });
        }
        Some(out)
    }

    fn path_fits(&self, path: &[PHop], tokens: f64) -> bool {
        path.iter().all(|h| {
            let nd = &self.nodes[h.node as usize];
            nd.serving()
                && !nd.draining
                && nd.kv_free >= self.kv_per_token(h.start as usize, h.end as usize) * tokens
        })
    }

    /// A path with KV room for `tokens` tokens, if the router finds one now.
    fn route(&mut self, tokens: f64) -> Option<Vec<PHop>> {
        let pooled = self.plan.as_ref()?.pool_size > 0;
        if pooled {
            return self.route_pooled(tokens);
        }
        let mut p = self.plan.take()?;
        let cluster = self.inp.cluster;
        for (k, &i) in p.nodes.iter().enumerate() {
            let nd = &self.nodes[i as usize];
            let (a, b) = nd.span.unwrap_or((0, 0));
            let masked =
                nd.draining || nd.kv_free < self.kv_per_token(a as usize, b as usize) * tokens;
            if masked != p.kv_masked[k] {
                p.kv_masked[k] = masked;
                let id = cluster.nodes[i as usize].id.clone();
                if masked {
                    p.state.kv_free_seqs.insert(id, 0);
                } else {
                    p.state.kv_free_seqs.remove(&id);
                }
            }
        }
        self.stats.router_calls += 1;
        let path = match p.router.route(&p.state) {
            Ok(hops) => self.hops_to_path(&hops, &p.plan),
            Err(_) => None,
        };
        self.plan = Some(p);
        path.filter(|path| self.path_fits(path, tokens))
    }

    fn fill_pool(&mut self, p: &mut PlanRt) {
        let b = self.inp.config.scheduler.max_batch_sequences;
        for &i in &p.nodes {
            let id = &self.inp.cluster.nodes[i as usize].id;
            let v = router_load(self.nodes[i as usize].seqs.len(), b);
            if let Some(l) = p.state.load.get_mut(id) {
                *l = v;
            }
        }
        p.pool.clear();
        p.cursor = 0;
        p.changes_since_fill = 0;
        for _ in 0..p.pool_size {
            self.stats.router_calls += 1;
            match p.router.route(&p.state) {
                Ok(hops) => {
                    if let Some(path) = self.hops_to_path(&hops, &p.plan) {
                        p.pool.push(path);
                    }
                }
                Err(_) => break,
            }
        }
    }

    /// Looks at most 64 pooled paths ahead: (usable index, paths skipped for a
    /// node that is not serving, paths looked at).
    fn scan_pool(&self, p: &PlanRt, tokens: f64) -> (Option<usize>, usize, usize) {
        let len = p.pool.len();
        let mut down = 0;
        for k in 0..len.min(64) {
            let j = (p.cursor + k) % len;
            let path = &p.pool[j];
            if !path.iter().all(|h| self.nodes[h.node as usize].serving()) {
                down += 1;
            } else if self.path_fits(path, tokens) {
                return (Some(j), down, k + 1);
            }
        }
        (None, down, len.min(64))
    }

    fn route_pooled(&mut self, tokens: f64) -> Option<Vec<PHop>> {
        let mut p = self.plan.take()?;
        if p.pool.is_empty() {
            self.fill_pool(&mut p);
        }
        let (mut found, down, seen) = self.scan_pool(&p, tokens);
        // Refill when paths through nodes that are not serving crowd the pool
        // and membership has changed enough since the last fill.
        let quarter = p.nodes.len().div_ceil(4).max(1);
        if found.is_none() && down * 2 > seen && p.changes_since_fill >= quarter {
            self.fill_pool(&mut p);
            found = self.scan_pool(&p, tokens).0;
        }
        let len = p.pool.len();
        let out = match found {
            Some(j) => {
                p.cursor = (j + 1) % len.max(1);
                Some(p.pool[j].clone())
            }
            None => {
                if len > 0 {
                    p.cursor = (p.cursor + 64) % len;
                }
                None
            }
        };
        self.plan = Some(p);
        out
    }

    // ----- admission ----------------------------------------------------------------------

    fn alloc_seq(&mut self, req: u32) -> u32 {
        let r = self.inp.requests[req as usize];
        let s = self.new_seq(req);
        let q = &mut self.seqs[s as usize];
        q.prompt = r.prompt_tokens;
        // Admission refused prompts that leave no room (see `try_admit`).
        q.output = self
            .inp
            .model
            .fit_to_context(r.prompt_tokens, r.output_tokens)
            .unwrap_or(0);
        q.live = true;
        s
    }

    fn new_seq(&mut self, req: u32) -> u32 {
        match self.free_seqs.pop() {
            Some(s) => {
                let q = &mut self.seqs[s as usize];
                q.req = req;
                q.cached = 0;
                q.generated = 0;
                q.hop = 0;
                q.first_token = NONE;
                q.last_token = NONE;
                q.restarts = 0;
                s
            }
            None => {
                self.seqs.push(Seq {
                    req,
                    first_token: NONE,
                    last_token: NONE,
                    ..Seq::default()
                });
                (self.seqs.len() - 1) as u32
            }
        }
    }

    fn too_large(&self, tokens: f64) -> bool {
        let Some(p) = self.plan.as_ref() else {
            return false;
        };
        p.plan.stages.iter().zip(&p.stage_nodes).any(|(st, ns)| {
            let need = self.kv_per_token(st.start as usize, st.end as usize) * tokens;
            !ns.iter().any(|&i| {
                let nd = &self.nodes[i as usize];
                let (a, b) = nd.span.unwrap_or((0, 0));
                // The node's KV room, scaled to this stage's share of its layers.
                let share = (st.end - st.start) as f64 / (b - a).max(1) as f64;
                nd.kv_cap * share >= need
            })
        })
    }

    fn try_admit(&mut self) {
        loop {
            if self.restart_q.is_empty() && self.waiting.is_empty() {
                return;
            }
            if self.plan.is_none() || self.no_path_since.is_some() {
                return;
            }
            if self
                .inp
                .config
                .scheduler
                .max_running
                .is_some_and(|m| self.running >= m)
            {
                return;
            }
            let (seq, req) = match self.restart_q.front() {
                Some(&s) => (Some(s), self.seqs[s as usize].req),
                None => (None, self.waiting[0]),
            };
            let r = self.inp.requests[req as usize];
            // KV for what the sequence can hold: the context ends it (the
            // engine's stop rule), and a prompt filling the context is refused.
            let output = self
                .inp
                .model
                .fit_to_context(r.prompt_tokens, r.output_tokens);
            let tokens = (r.prompt_tokens + output.unwrap_or(0)) as f64;
            if seq.is_none() && (output.is_none() || self.too_large(tokens)) {
                self.waiting.pop_front();
                self.stats.rejected += 1;
                self.outcomes[req as usize].rejected = true;
                self.resolve();
                continue;
            }
            let Some(path) = self.route(tokens) else {
                return;
            };
            let s = match seq {
                Some(s) => {
                    self.restart_q.pop_front();
                    s
                }
                None => {
                    self.waiting.pop_front();
                    let s = self.alloc_seq(req);
                    self.outcomes[req as usize].admitted_s = Some(to_s(self.now));
                    let q = self.now.saturating_sub(to_ns(r.arrival_s));
                    self.latency.record_us(metric::QUEUE, q / 1000);
                    s
                }
            };
            self.running += 1;
            self.start_seq(s, path, tokens);
        }
    }

    fn start_seq(&mut self, s: u32, path: Vec<PHop>, tokens: f64) {
        let mut reserved = std::mem::take(&mut self.seqs[s as usize].reserved);
        let mut pos = std::mem::take(&mut self.seqs[s as usize].pos);
        reserved.clear();
        pos.clear();
        for h in &path {
            let need = self.kv_per_token(h.start as usize, h.end as usize) * tokens;
            let nd = &mut self.nodes[h.node as usize];
            nd.kv_free -= need;
            reserved.push(need);
            pos.push(nd.seqs.len() as u32);
            nd.seqs.push(s);
        }
        for h in &path {
            self.set_load(h.node);
        }
        let first = path[0].node;
        let max_chunk = self.inp.config.scheduler.max_prefill_chunk as u32;
        let q = &mut self.seqs[s as usize];
        q.set_path(&path);
        q.reserved = reserved;
        q.pos = pos;
        q.hop = 0;
        q.cached = 0;
        let known = q.prompt + q.generated;
        q.chunk = known.clamp(1, max_chunk);
        q.decode = false;
        let item = Item {
            seq: s,
            incarnation: q.incarnation,
        };
        self.enqueue(first, item, true);
    }

    /// Gives back KV and leaves the nodes' lists.
    fn release(&mut self, s: u32) {
        let hops = self.seqs[s as usize].hops();
        for h in 0..hops {
            let (hop, need, pos) = {
                let q = &self.seqs[s as usize];
                (q.hop_at(h), q.reserved[h], q.pos[h] as usize)
            };
            let nd = &mut self.nodes[hop.node as usize];
            nd.kv_free = (nd.kv_free + need).min(nd.kv_cap);
            if pos < nd.seqs.len() && nd.seqs[pos] == s {
                let last = nd.seqs.len() - 1;
                nd.seqs.swap_remove(pos);
                if pos < last {
                    // The entry at `last` moved to `pos`: fix that sequence's record
                    // (a path may visit a node twice, so match the position too).
                    let moved = nd.seqs[pos];
                    let mq = &mut self.seqs[moved as usize];
                    if let Some(k) = (0..mq.hops())
                        .find(|&k| mq.hop_at(k).node == hop.node && mq.pos[k] as usize == last)
                    {
                        mq.pos[k] = pos as u32;
                    }
                }
            }
            self.set_load(hop.node);
            let nd = &self.nodes[hop.node as usize];
            if nd.draining && nd.seqs.is_empty() {
                self.push(self.now, Ev::Drained);
            }
        }
        let q = &mut self.seqs[s as usize];
        q.path.len = 0;
        q.incarnation = q.incarnation.wrapping_add(1);
        self.running -= 1;
        self.admit_dirty = true;
    }

    /// Restarts `s` from its tokens; it queues for a path `delay` ns from now.
    fn restart_after(&mut self, s: u32, delay: u64) {
        if self.seqs[s as usize].hops() == 0 {
            return;
        }
        let cached = self.seqs[s as usize].cached;
        self.stats.restarts += 1;
        self.stats.tokens_recomputed += cached as u64;
        self.release(s);
        let q = &mut self.seqs[s as usize];
        q.restarts += 1;
        q.cached = 0;
        q.hop = 0;
        let req = q.req as usize;
        let incarnation = q.incarnation;
        self.outcomes[req].restarts += 1;
        if delay == 0 {
            self.restart_q.push_back(s);
        } else {
            self.push(
                self.now + delay,
                Ev::Restart {
                    seq: s,
                    incarnation,
                },
            );
        }
    }

    fn resolve(&mut self) {
        self.resolved += 1;
        self.last_resolved = self.now;
    }

    // ----- events -----------------------------------------------------------------------

    fn on_arrival(&mut self, i: u32) {
        self.arrived += 1;
        self.waiting.push_back(i);
        if self.waiting.len() == 1 && self.restart_q.is_empty() {
            self.admit_dirty = true;
        }
        let next = i as usize + 1;
        if next < self.inp.requests.len() {
            let t = to_ns(self.inp.requests[next].arrival_s).max(self.now);
            self.push(t, Ev::Arrival(next as u32));
        }
    }

    /// Queues a step at a node; `wake`: start its batch at this instant, after
    /// the other events of this instant (so simultaneous admissions share it).
    fn enqueue(&mut self, node: u32, item: Item, wake: bool) {
        let q = &self.seqs[item.seq as usize];
        let (decode, tokens) = (q.decode, if q.decode { 1 } else { q.chunk as usize });
        let nd = &mut self.nodes[node as usize];
        nd.queue.push(item, tokens, decode);
        if wake && !nd.busy && !nd.kick {
            nd.kick = true;
            self.push(self.now, Ev::Kick(node));
        }
    }

    /// [`CostModel::step_time`], memoised per (GPU kind, layers, decode, prefill).
    fn step_time(&mut self, node: usize, kind: u32, a: u32, b: u32, d: u32, p: u32) -> f64 {
        let key = (kind, a, b, d, p);
        if let Some(&t) = self.step_memo.get(&key) {
            return t;
        }
        let gpu = &self.inp.cluster.nodes[node].gpu;
        let t = self
            .cm
            .step_time(gpu, &(a as usize..b as usize), d as f64, p as f64);
        self.step_memo.insert(key, t);
        t
    }

    fn stale(&self, it: Item) -> bool {
        self.seqs[it.seq as usize].incarnation != it.incarnation
    }

    /// The core's hold rule at an idle node with work queued: whether to wait
    /// for its sequences still on their way back (a kick is then due when the
    /// hold ends).
    fn hold(&mut self, node: u32) -> bool {
        let path_stages = self.plan.as_ref().map_or(1, |p| p.plan.stages.len());
        let hold = self.inp.config.scheduler.call_hold(path_stages);
        let now = self.now;
        let nd = &mut self.nodes[node as usize];
        let (decode, prefill) = (nd.queue.decode_len(), nd.queue.prefill_len());
        let Some(rest) = nd
            .hold_clock
            .hold_us(&hold, decode, prefill, nd.seqs.len(), now / 1000)
        else {
            return false;
        };
        let until = now + rest * 1000;
        if nd.hold_until != Some(until) {
            nd.hold_until = Some(until);
            self.push(until, Ev::Kick(node));
        }
        true
    }

    fn start_batch(&mut self, node: u32) {
        let i = node as usize;
        if self.nodes[i].busy || !self.nodes[i].serving() {
            return;
        }
        if self.hold(node) {
            return;
        }
        let limits = self.inp.config.scheduler.batch_limits();
        let mut batch = std::mem::take(&mut self.nodes[i].batch);
        let seqs = &self.seqs;
        self.nodes[i].queue.take_batch_into(
            &limits,
            |it| seqs[it.seq as usize].incarnation == it.incarnation,
            &mut batch,
        );
        if batch.is_empty() {
            self.nodes[i].batch = batch;
            return;
        }
        // Batch time: step_time per group of equal layer ranges.
        let mut groups = std::mem::take(&mut self.groups);
        groups.clear();
        for it in &batch {
            let q = &self.seqs[it.seq as usize];
            let h = q.hop_at(q.hop as usize);
            let (a, b) = (h.start as u32, h.end as u32);
            let g = match groups.iter().position(|g| g.0 == a && g.1 == b) {
                Some(g) => g,
                None => {
                    groups.push((a, b, 0, 0));
                    groups.len() - 1
                }
            };
            if q.decode {
                groups[g].2 += 1;
            } else {
                groups[g].3 += q.chunk;
            }
        }
        let kind = self.gpu_kind[i];
        let mut t = 0.0;
        let mut decode_only = true;
        for &(a, b, d, p) in &groups {
            t += self.step_time(i, kind, a, b, d, p);
            decode_only &= p == 0;
        }
        self.groups = groups;
        self.stats.gpu_busy_s += t;
        let nd = &mut self.nodes[i];
        nd.hold_clock.record_call(to_ns(t) / 1000, decode_only);
        nd.batch = batch;
        nd.busy = true;
        let epoch = nd.epoch;
        self.push(self.now + to_ns(t), Ev::NodeDone { node, epoch });
    }

    fn on_node_done(&mut self, node: u32, epoch: u32) {
        let i = node as usize;
        if self.nodes[i].epoch != epoch || !self.nodes[i].busy {
            return;
        }
        self.nodes[i].busy = false;
        let batch = std::mem::take(&mut self.nodes[i].batch);
        let mut sends = std::mem::take(&mut self.sends);
        sends.clear();
        for &it in &batch {
            if self.stale(it) {
                continue;
            }
            self.advance(it, &mut sends);
        }
        self.nodes[i].batch = batch;
        self.flush(node, &mut sends);
        self.sends = sends;
        self.start_batch(node);
    }

    /// Moves a finished step on: to the next hop, back to the first, or done.
    fn advance(&mut self, it: Item, sends: &mut Vec<(u32, Item, f64)>) {
        let s = it.seq;
        let max_chunk = self.inp.config.scheduler.max_prefill_chunk as u32;
        let q = &mut self.seqs[s as usize];
        let h = q.hop as usize;
        if h + 1 < q.hops() {
            let bytes = q.chunk as f64 * self.cm.activation_bytes(q.hop_at(h).end as usize);
            q.hop += 1;
            let to = q.hop_at(h + 1).node;
            sends.push((to, it, bytes));
            return;
        }
        q.cached += q.chunk;
        let known = q.prompt + q.generated;
        if q.cached < known {
            q.chunk = (known - q.cached).min(max_chunk);
            q.decode = false;
            q.hop = 0;
            let to = q.hop_at(0).node;
            sends.push((to, it, q.chunk as f64 * TOKEN_ID_BYTES));
            return;
        }
        // The last chunk of the known tokens samples one.
        q.generated += 1;
        let now = self.now;
        let req = q.req as usize;
        if q.first_token == NONE {
            q.first_token = now;
            let arrival = to_ns(self.inp.requests[req].arrival_s);
            let ttft = now.saturating_sub(arrival);
            self.latency.record_us(metric::TTFT, ttft / 1000);
            self.outcomes[req].first_token_s = Some(to_s(now));
        } else {
            let gap = now.saturating_sub(q.last_token);
            self.latency.record_us(metric::INTER_TOKEN, gap / 1000);
            let o = &mut self.outcomes[req];
            o.max_gap_s = o.max_gap_s.max(to_s(gap));
        }
        q.last_token = now;
        let (generated, output) = (q.generated, q.output);
        self.stats.tokens_generated += 1;
        let bin = (now / self.bin_ns) as usize;
        if bin >= self.timeline_tokens.len() {
            self.timeline_tokens.resize(bin + 1, 0);
        }
        self.timeline_tokens[bin] += 1;
        if generated >= output {
            self.complete(s);
            return;
        }
        let q = &mut self.seqs[s as usize];
        q.chunk = 1;
        q.decode = true;
        q.hop = 0;
        let to = q.hop_at(0).node;
        sends.push((to, it, TOKEN_ID_BYTES));
    }

    fn complete(&mut self, s: u32) {
        let (req, first, last) = {
            let q = &self.seqs[s as usize];
            (q.req as usize, q.first_token, q.last_token)
        };
        let r = self.inp.requests[req];
        let arrival = to_ns(r.arrival_s);
        let now = self.now;
        self.latency
            .record_us(metric::E2E, now.saturating_sub(arrival) / 1000);
        let slo = self.inp.config.slo;
        let ttft_ok = to_s(first.saturating_sub(arrival)) <= slo.ttft_s;
        let output = self.seqs[s as usize].output;
        let itl_ok =
            output <= 1 || to_s(last.saturating_sub(first)) / (output - 1) as f64 <= slo.itl_s;
        let o = &mut self.outcomes[req];
        o.tokens = self.seqs[s as usize].generated;
        o.finished_s = Some(to_s(now));
        o.met_slo = ttft_ok && itl_ok;
        self.stats.completed += 1;
        self.release(s);
        self.seqs[s as usize].live = false;
        self.free_seqs.push(s);
        self.resolve();
    }

    /// Sends the batch's outputs, one message per destination node.
    fn flush(&mut self, from: u32, sends: &mut [(u32, Item, f64)]) {
        if sends.is_empty() {
            return;
        }
        sends.sort_by_key(|x| x.0);
        let mut k = 0;
        while k < sends.len() {
            let to = sends[k].0;
            let mut j = k;
            let mut bytes = 0.0;
            while j < sends.len() && sends[j].0 == to {
                bytes += sends[j].2;
                j += 1;
            }
            if to == from {
                for x in &sends[k..j] {
                    self.enqueue(to, x.1, false);
                }
            } else {
                let key = ((from as u64) << 32) | to as u64;
                let cluster = self.inp.cluster;
                let link = self.links.entry(key).or_insert_with(|| {
                    let l = cluster.link(from as usize, to as usize);
                    (0, to_ns(l.latency_s), l.bandwidth_bps)
                });
                let transfer = if bytes > 0.0 {
                    to_ns(bytes / link.2)
                } else {
                    0
                };
                let start = link.0.max(self.now);
                link.0 = start + transfer;
                let ready = start + transfer + link.1;
                self.stats.network_bytes += bytes;
                let m = match self.free_msgs.pop() {
                    Some(m) => m,
                    None => {
                        self.msgs.push(Vec::new());
                        (self.msgs.len() - 1) as u32
                    }
                };
                let items = &mut self.msgs[m as usize];
                items.clear();
                items.extend(sends[k..j].iter().map(|x| x.1));
                self.push(ready, Ev::Deliver { node: to, msg: m });
            }
            k = j;
        }
    }

    fn on_deliver(&mut self, node: u32, msg: u32) {
        let items = std::mem::take(&mut self.msgs[msg as usize]);
        let serving = self.nodes[node as usize].serving();
        if serving {
            for &it in &items {
                if !self.stale(it) {
                    self.enqueue(node, it, false);
                }
            }
        }
        self.msgs[msg as usize] = items;
        self.free_msgs.push(msg);
        if serving {
            self.start_batch(node);
        }
    }

    // ----- churn and re-planning -------------------------------------------------------------

    fn on_churn(&mut self, k: u32) {
        let e = self.inp.churn[k as usize];
        let next = k as usize + 1;
        if next < self.inp.churn.len() {
            let t = to_ns(self.inp.churn[next].time_s).max(self.now);
            self.push(t, Ev::Churn(next as u32));
        }
        let i = e.node as usize;
        if e.up {
            if self.nodes[i].up {
                return;
            }
            self.stats.returns += 1;
            self.timeline.returns_s.push(to_s(self.now));
            self.nodes[i].up = true;
            if let Some((a, b)) = self.nodes[i].span {
                let r = a as usize..b as usize;
                let bytes = self.cm.weight_bytes(&r);
                self.stats.weight_bytes_loaded += bytes;
                let t = bytes / self.load_bps(i);
                let epoch = self.nodes[i].epoch;
                // A node back while an epoch forms serves with that epoch.
                self.push(
                    (self.now + to_ns(t)).max(self.epoch_ready),
                    Ev::Loaded {
                        node: e.node,
                        epoch,
                    },
                );
            }
        } else {
            if !self.nodes[i].up {
                return;
            }
            self.stats.failures += 1;
            self.timeline.failures_s.push(to_s(self.now));
            let detect = to_ns(self.inp.config.detection_s);
            let ready = match self.inp.config.failover {
                Failover::InPlace => detect,
                Failover::Epoch { form_s } => detect + to_ns(form_s),
            };
            // Restarts queue just after the nodes are ready, so the router
            // sees every node of the new epoch, not the first one loaded.
            self.reset_node_after(i, ready + 1_000);
            let nd = &mut self.nodes[i];
            nd.up = false;
            nd.loaded = false;
            if let Failover::Epoch { .. } = self.inp.config.failover {
                // The whole timely cluster ends: every node starts the next
                // epoch empty, once it has formed.
                self.epoch_ready = self.now + ready;
                for j in 0..self.nodes.len() {
                    if j == i || !self.nodes[j].up || self.nodes[j].span.is_none() {
                        continue;
                    }
                    self.reset_node_after(j, ready + 1_000);
                    self.nodes[j].loaded = false;
                    let epoch = self.nodes[j].epoch;
                    self.push(
                        self.now + ready,
                        Ev::Loaded {
                            node: j as u32,
                            epoch,
                        },
                    );
                    self.node_state(j);
                }
            }
        }
        self.membership_changed(i, e.up);
    }

    fn on_loaded(&mut self, node: u32, epoch: u32) {
        let i = node as usize;
        if self.nodes[i].epoch != epoch || !self.nodes[i].up || self.nodes[i].span.is_none() {
            return;
        }
        self.nodes[i].loaded = true;
        self.nodes[i].kv_free = self.nodes[i].kv_cap;
        if let Some(p) = self.plan.as_mut() {
            p.changes_since_fill += 1;
        }
        self.node_state(i);
    }

    /// Node `i` failed (`up` false) or came back.
    fn membership_changed(&mut self, i: usize, up: bool) {
        if let Some(p) = self.plan.as_mut() {
            p.changes_since_fill += 1;
        }
        self.node_state(i);
        let Some(strategy) = self.inp.strategy else {
            return;
        };
        // Only the failed node's stages can have lost their last live replica.
        let lost_stage = !up
            && self.plan.as_ref().is_some_and(|p| {
                let (a, b) = p.node_stages[i];
                p.stage_nodes[a as usize..b as usize]
                    .iter()
                    .any(|ns| !ns.iter().any(|&j| self.nodes[j as usize].up))
            });
        let replan = lost_stage
            || self.needs_replan
            || match self.inp.config.replan {
                ReplanPolicy::StageLoss | ReplanPolicy::Elastic { .. } => false,
                ReplanPolicy::OnChange => true,
                ReplanPolicy::Threshold(f) => self.live_bound() < f * self.first_bound,
            };
        if replan {
            self.replan(strategy);
        }
    }

    /// Max-flow bound of the current plan over nodes that are up.
    fn live_bound(&self) -> f64 {
        let Some(p) = self.plan.as_ref() else {
            return 0.0;
        };
        let mut live = p.plan.clone();
        for st in &mut live.stages {
            st.replicas.retain(|r| {
                self.inp
                    .cluster
                    .index_of(&r.node)
                    .is_some_and(|i| self.nodes[i].up)
            });
            if st.replicas.is_empty() {
                return 0.0;
            }
            for r in &mut st.replicas {
                r.next.clear();
            }
        }
        max_flow(&live, self.inp.cluster, &self.cm).throughput
    }

    fn replan(&mut self, strategy: &str) {
        // A re-plan supersedes a release waiting for its nodes to drain.
        self.pending_shrink = None;
        for n in &mut self.nodes {
            n.draining = false;
        }
        let live: Vec<u32> = (0..self.nodes.len() as u32)
            .filter(|&i| self.nodes[i as usize].up)
            .collect();
        let plan = match self.plan_cache.get(&live) {
            Some(p) => p.clone(),
            None => {
                let p = if live.is_empty() {
                    None
                } else {
                    super::replan::plan_subset(
                        self.inp.cluster,
                        self.inp.spec,
                        &live,
                        strategy,
                        self.inp.model,
                        self.inp.options,
                    )
                };
                self.plan_cache.insert(live, p.clone());
                p
            }
        };
        match plan {
            Some(plan) => {
                self.needs_replan = false;
                self.stats.replans += 1;
                self.timeline.replans_s.push(to_s(self.now));
                self.install(plan, false);
            }
            None => {
                self.needs_replan = true;
                self.stats.replan_failures += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_is_the_further_of_requests_and_time() {
        let mut p = Progress {
            time_s: 30.0,
            done: 10,
            total: 100,
            events: 1,
            horizon_s: Some(600.0),
            planning: false,
        };
        assert!((p.fraction() - 0.1).abs() < 1e-12);
        p.time_s = 300.0;
        assert!((p.fraction() - 0.5).abs() < 1e-12);
        p.horizon_s = None;
        assert!((p.fraction() - 0.1).abs() < 1e-12);
        p.time_s = 1e9;
        p.horizon_s = Some(600.0);
        assert_eq!(p.fraction(), 1.0);
        let q = Progress::planning(100, Some(600.0));
        assert!(q.planning && q.fraction() == 0.0);
    }
}
