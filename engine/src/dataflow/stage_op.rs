//! The stage operator: every worker runs one per stage of the loop (embed, each
//! block stage, head), and it serves the replicas of that stage whose nodes the
//! placement puts on this worker.
//!
//! Steps arrive over emulated links (delayed, not slept), queue per node, and
//! run as one batch per node call: decode steps first, then prefill chunks, up
//! to a token budget. Calls run on the worker's compute thread
//! ([`super::compute`]), so heartbeats and control messages keep moving while a
//! node computes. A slower node's call is stretched by holding its outputs (and
//! the node) for `(speed factor − 1) ×` the measured time. Each output leaves
//! under its own input's capability.

use std::cell::RefCell;
use std::collections::{BTreeMap, VecDeque};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use timely::dataflow::StreamVec;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::Capability;
use timely::dataflow::operators::generic::Operator;
use tokenflow_operators::SeqId;

use super::clock::now_us;
use super::compute::{ComputeDone, ComputeJob, ComputeThread};
use super::faults::FaultClock;
use super::kernel::{KernelLoader, StageKernel};
use super::link::DelayedInbox;
use super::message::{Control, LoopMsg, Payload, StepMsg};
use super::metrics::EngineMetrics;
use super::placement::{NodeSlot, Placement};

use tokenflow_core::StepFailure;
pub use tokenflow_core::batch::BatchLimits;
use tokenflow_core::batch::{CallHold, HoldClock, StepQueue};

/// Which stage of the loop an operator runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StageRole {
    /// The token embedding, on the node of the path's first stage.
    Embed,
    /// Plan stage `k`'s blocks.
    Blocks(usize),
    /// The head, on the node of the path's last stage.
    Head,
}

impl StageRole {
    /// Index of the route entry naming this operator's node.
    pub fn route_index(&self, num_stages: usize) -> usize {
        match self {
            StageRole::Embed => 0,
            StageRole::Blocks(k) => *k,
            StageRole::Head => num_stages - 1,
        }
    }

    /// A short name for metrics.
    pub fn name(&self) -> String {
        match self {
            StageRole::Embed => "embed".into(),
            StageRole::Blocks(k) => format!("stage {k}"),
            StageRole::Head => "head".into(),
        }
    }
}

/// What every stage operator of a worker shares.
#[derive(Clone)]
pub struct StageContext {
    /// The checked placement.
    pub placement: Arc<Placement>,
    /// Limits of one stage call.
    pub limits: BatchLimits,
    /// How long a node may hold a call for its sequences on their way back.
    pub hold: CallHold,
    /// Width of the hidden state.
    pub hidden: usize,
    /// This worker's measurements.
    pub metrics: Rc<RefCell<EngineMetrics>>,
    /// When nodes fail.
    pub faults: Arc<FaultClock>,
    /// Builds kernels for replicas added by re-planning.
    pub loader: Arc<KernelLoader>,
    /// The worker's compute thread, where stage calls run.
    pub compute: Rc<ComputeThread>,
}

/// A stage call on the compute thread.
struct InFlight {
    caps: Vec<Capability<u64>>,
    tokens: usize,
    queued: usize,
}

struct NodeQueue {
    /// `None` while the kernel is on the compute thread.
    kernel: Option<StageKernel>,
    /// The call on the compute thread, if any.
    computing: Option<InFlight>,
    /// Releases that arrived during a call, applied when the kernel is back.
    pending_releases: Vec<SeqId>,
    /// The node failed during a call: drop its outputs and clear the kernel.
    lost_during_call: bool,
    incarnation: u32,
    speed_factor: f64,
    metrics_key: String,
    ready: VecDeque<(Capability<u64>, StepMsg)>,
    /// Steps with work, waiting for the node's next call (the core's batch policy).
    work: StepQueue<(Capability<u64>, StepMsg)>,
    outbox: Vec<(Capability<u64>, StepMsg)>,
    release_us: u64,
    /// The hold rule's clock (over emulated call times).
    hold_clock: HoldClock,
}

impl NodeQueue {
    fn new(kernel: StageKernel, slot: &NodeSlot, role: StageRole, incarnation: u32) -> Self {
        Self {
            kernel: Some(kernel),
            computing: None,
            pending_releases: Vec::new(),
            lost_during_call: false,
            incarnation,
            speed_factor: slot.speed_factor,
            metrics_key: format!("{} {}", slot.id, role.name()),
            ready: VecDeque::new(),
            work: StepQueue::default(),
            outbox: Vec::new(),
            release_us: 0,
            hold_clock: HoldClock::default(),
        }
    }
}

/// Adds the stage operator for `role` to the loop.
///
/// `kernels` holds this worker's copy of the stage for each node (by node index)
/// the placement puts here; steps are exchanged to the worker of their route's node.
pub fn stage_operator<'s>(
    steps: StreamVec<'s, u64, LoopMsg>,
    role: StageRole,
    kernels: BTreeMap<u32, StageKernel>,
    context: StageContext,
) -> StreamVec<'s, u64, LoopMsg> {
    let StageContext {
        placement,
        limits,
        hold,
        hidden,
        metrics,
        faults,
        loader,
        compute,
    } = context;
    let last_stage = placement.num_stages() - 1;
    let route_index = role.route_index(placement.num_stages());
    let route_placement = Arc::clone(&placement);
    let pact = Exchange::new(move |m: &LoopMsg| {
        m.route()
            .get(route_index)
            .map_or(0, |&n| route_placement.worker_of(n)) as u64
    });
    let scope = steps.scope();
    steps.unary(
        pact,
        &format!("Stage({})", role.name()),
        move |_cap, info| {
            let activator = scope.activator_for(Rc::clone(&info.address));
            let sync_activator = scope.worker().sync_activator_for(info.address.to_vec());
            let (done_tx, done_rx) = crossbeam_channel::unbounded::<ComputeDone>();
            let mut inbox: DelayedInbox<Capability<u64>> = DelayedInbox::default();
            let mut nodes: BTreeMap<u32, NodeQueue> = kernels
                .into_iter()
                .map(|(n, kernel)| {
                    let slot = &placement.nodes[n as usize];
                    (n, NodeQueue::new(kernel, slot, role, 0))
                })
                .collect();
            let mut reported_links: BTreeMap<(u32, u32), (u64, u64)> = BTreeMap::new();
            move |input, output| {
                input.for_each(|cap, data| {
                    let Some(cap) = cap.retain_least(output.output_index()) else {
                        return;
                    };
                    for msg in data.drain(..) {
                        let node = msg.route().get(route_index).copied().unwrap_or(u32::MAX);
                        inbox.push(&placement, node, cap.clone(), msg);
                    }
                });
                let now = now_us();
                // A node that failed since we last looked has lost its memory and its queue.
                for (&node, q) in nodes.iter_mut() {
                    let inc = faults.incarnation(node, now);
                    if inc != q.incarnation {
                        q.incarnation = inc;
                        match q.kernel.as_mut() {
                            Some(k) => k.clear(),
                            None => q.lost_during_call = true,
                        }
                        q.ready.clear();
                        q.work.clear();
                        q.hold_clock.reset();
                        q.outbox.clear();
                    }
                }
                let mut m = metrics.borrow_mut();
                // Calls the compute thread finished.
                for done in done_rx.try_iter() {
                    let Some(q) = nodes.get_mut(&done.node) else {
                        continue;
                    };
                    let Some(call) = q.computing.take() else {
                        continue;
                    };
                    let mut kernel = done.kernel;
                    for seq in q.pending_releases.drain(..) {
                        kernel.release(seq);
                    }
                    if std::mem::take(&mut q.lost_during_call) {
                        // The node died while computing: what it produced is gone.
                        kernel.clear();
                        q.kernel = Some(kernel);
                        continue;
                    }
                    q.kernel = Some(kernel);
                    let batch = done.batch;
                    let busy_us = (done.compute_us as f64 * q.speed_factor) as u64;
                    let decode_only = batch.iter().all(|m| m.len == 1 && m.start > 0);
                    // Chunks of a restarted sequence before its next token rebuild lost KV.
                    let replay: usize = batch
                        .iter()
                        .filter(|m| m.replay)
                        .map(|m| m.len as usize)
                        .sum();
                    let stats = m.stage(&q.metrics_key);
                    stats.batches += 1;
                    stats.tokens += call.tokens as u64;
                    stats.busy_us += busy_us;
                    stats.replay_tokens += replay as u64;
                    stats.replay_busy_us += (busy_us as u128 * replay as u128)
                        .checked_div(call.tokens as u128)
                        .unwrap_or(0) as u64;
                    stats.batch_tokens.record_us(call.tokens as u64);
                    stats.queue_len.record_us(call.queued as u64);
                    q.outbox = call.caps.into_iter().zip(batch).collect();
                    q.release_us = done.finished_us + busy_us.saturating_sub(done.compute_us);
                    q.hold_clock.record_call(busy_us, decode_only);
                }
                for (cap, msg) in inbox.ready(now) {
                    let node = msg.route().get(route_index).copied().unwrap_or(u32::MAX);
                    let down = faults.is_down(node, now);
                    let mut c = match msg {
                        // A dead node drops what reaches it, as on a real network.
                        LoopMsg::Step(_) if down => continue,
                        LoopMsg::Step(mut m) => {
                            match nodes.get_mut(&node) {
                                Some(q) => q.ready.push_back((cap, m)),
                                None => {
                                    // No replica here: the route is wrong; the sequence
                                    // fails, nothing else does.
                                    m.payload = Payload::Failed(StepFailure::NoReplica {
                                        stage: role.name(),
                                        node,
                                    });
                                    output.session(&cap).give(LoopMsg::Step(m));
                                }
                            }
                            continue;
                        }
                        LoopMsg::Control(c) => c,
                    };
                    match c.control {
                        Control::Ping { .. } | Control::Pong { .. } | Control::Load { .. }
                            if down => {}
                        Control::Ping {
                            node: target,
                            sent_us,
                        } => {
                            c.control = Control::Pong {
                                node: target,
                                incarnation: faults.incarnation(target, now),
                                pinged_us: sent_us,
                            };
                            c.from_node = node;
                            c.sent_us = now;
                            output.session(&cap).give(LoopMsg::Control(c));
                        }
                        Control::Pong { .. } => output.session(&cap).give(LoopMsg::Control(c)),
                        Control::Load {
                            node: target,
                            stage,
                            kv_bytes,
                            ref mut error,
                        } => {
                            let stage = stage as usize;
                            let mine = match role {
                                StageRole::Embed => stage == 0,
                                StageRole::Blocks(k) => k == stage,
                                StageRole::Head => stage == last_stage,
                            };
                            if mine && error.is_none() && !nodes.contains_key(&target) {
                                match loader.load(role, stage, kv_bytes) {
                                    Ok(kernel) => {
                                        let slot = &placement.nodes[target as usize];
                                        let inc = faults.incarnation(target, now);
                                        nodes.insert(
                                            target,
                                            NodeQueue::new(kernel, slot, role, inc),
                                        );
                                    }
                                    Err(e) => *error = Some(e.to_string()),
                                }
                            }
                            output.session(&cap).give(LoopMsg::Control(c));
                        }
                        // Releases stand for direct messages from the sequencer to each
                        // node of a path: a dead node does not stop them reaching the others.
                        Control::Release { seq, .. } => {
                            if !down && let Some(q) = nodes.get_mut(&node) {
                                match q.kernel.as_mut() {
                                    Some(k) => k.release(seq),
                                    None => q.pending_releases.push(seq),
                                }
                            }
                            output.session(&cap).give(LoopMsg::Control(c));
                        }
                    }
                }
                let mut wake: Option<u64> = inbox.next_delivery_us();
                for (&node, q) in nodes.iter_mut() {
                    // Outputs of a stretched call leave when the emulated call ends.
                    if !q.outbox.is_empty() {
                        if q.release_us <= now {
                            for (cap, mut msg) in q.outbox.drain(..) {
                                msg.from_node = node;
                                msg.sent_us = now;
                                output.session(&cap).give(LoopMsg::Step(msg));
                            }
                        } else {
                            wake = Some(wake.map_or(q.release_us, |w| w.min(q.release_us)));
                            continue;
                        }
                    }
                    // Steps with no work at this stage (a finished chunk, a token, a
                    // failure on the way back) pass at once.
                    for (cap, mut msg) in q.ready.drain(..) {
                        match msg.payload {
                            Payload::Failed(_)
                            | Payload::Lost
                            | Payload::ChunkDone
                            | Payload::Sampled(_) => {
                                msg.from_node = node;
                                msg.sent_us = now;
                                output.session(&cap).give(LoopMsg::Step(msg));
                            }
                            Payload::Tokens(_) | Payload::Hidden(_) | Payload::Logits(_) => {
                                let (tokens, decode) = (msg.work_tokens(), msg.is_decode());
                                q.work.push((cap, msg), tokens, decode);
                            }
                        }
                    }
                    // One call at a time per node; the compute thread wakes us when it ends.
                    if q.work.is_empty() || q.computing.is_some() {
                        continue;
                    }
                    let Some(held) = q.kernel.as_ref().map(StageKernel::sequences_held) else {
                        continue;
                    };
                    if let Some(rest) = q.hold_clock.hold_us(
                        &hold,
                        q.work.decode_len(),
                        q.work.prefill_len(),
                        held,
                        now,
                    ) {
                        let t = now + rest;
                        wake = Some(wake.map_or(t, |w| w.min(t)));
                        continue;
                    }
                    let Some(kernel) = q.kernel.take() else {
                        continue;
                    };
                    let call = q.work.take_batch(&limits, |_| true);
                    let (queued, tokens) = (call.queued, call.tokens);
                    let (caps, batch): (Vec<_>, Vec<_>) = call.items.into_iter().unzip();
                    q.computing = Some(InFlight {
                        caps,
                        tokens,
                        queued,
                    });
                    compute.submit(ComputeJob {
                        node,
                        kernel,
                        batch,
                        hidden,
                        done: done_tx.clone(),
                        activator: sync_activator.clone(),
                    });
                }
                for &node in nodes.keys() {
                    if let Some(t) = faults.next_change(node, now) {
                        wake = Some(wake.map_or(t, |w| w.min(t)));
                    }
                }
                for (&(from, to), traffic) in &inbox.traffic {
                    let last = reported_links.entry((from, to)).or_default();
                    if *last != (traffic.messages, traffic.bytes) {
                        let name = |n: u32| {
                            placement
                                .nodes
                                .get(n as usize)
                                .map_or("client".to_string(), |s| s.id.clone())
                        };
                        let e = m
                            .links
                            .entry(format!("{} -> {}", name(from), name(to)))
                            .or_default();
                        e.messages += traffic.messages - last.0;
                        e.bytes += traffic.bytes - last.1;
                        *last = (traffic.messages, traffic.bytes);
                    }
                }
                drop(m);
                if let Some(w) = wake {
                    let now = now_us();
                    if w <= now {
                        activator.activate();
                    } else {
                        activator.activate_after(Duration::from_micros(w - now));
                    }
                }
            }
        },
    )
}
