//! The sequencer operator, on worker 0: a thin adapter around the core's
//! [`Sequencer`] state machine. It holds a capability while anything is in
//! flight, turns submissions and the loop's feedback into calls on the
//! sequencer with the wall clock, and carries out the commands it returns:
//! steps and control messages into the loop, events to the client,
//! latencies into the metrics. It decides nothing itself.

use std::cell::RefCell;
use std::rc::Rc;

use timely::dataflow::StreamVec;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::Capability;
use timely::dataflow::operators::generic::Operator;
use tokenflow_core::sequencer::{Command, Feedback, LatencyMetric, Sequencer};

use super::clock::now_us;
use super::message::{CLIENT, Control, ControlMsg, LoopMsg, Payload, StepMsg};
use super::metrics::{EngineMetrics, names};

pub use tokenflow_core::{RequestTiming, Submission};
use tokenflow_core::{SeqId, StepFailure};

/// What a client sends into the running dataflow: a new request, or the
/// withdrawal of one it submitted (a closed connection, a deadline).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum ClientMsg {
    /// Start this request.
    Submit(Submission),
    /// End this sequence now and free its KV on every stage.
    Cancel(SeqId),
}

impl From<Submission> for ClientMsg {
    fn from(submission: Submission) -> Self {
        ClientMsg::Submit(submission)
    }
}

/// What the engine tells its client, on worker 0: the core's events.
pub type EngineEvent = tokenflow_core::SequencerEvent;

/// The feedback a message coming back around the loop carries, if any.
fn feedback_of(msg: LoopMsg) -> Option<Feedback> {
    let msg = match msg {
        LoopMsg::Control(c) => {
            return match c.control {
                Control::Pong {
                    node,
                    incarnation,
                    pinged_us,
                } => Some(Feedback::Pong {
                    node,
                    incarnation,
                    pinged_us,
                }),
                Control::Load {
                    node, stage, error, ..
                } => Some(Feedback::Loaded {
                    node,
                    stage: stage as usize,
                    error,
                }),
                Control::Release { seq, attempt } => Some(Feedback::Released { seq, attempt }),
                // A ping that came back unanswered went past a dead node.
                Control::Ping { .. } => None,
            };
        }
        LoopMsg::Step(m) => m,
    };
    let (seq, attempt) = (msg.seq, msg.attempt);
    let end = (msg.start + msg.len) as usize;
    Some(match msg.payload {
        Payload::Lost => Feedback::Lost { seq, attempt },
        Payload::ChunkDone => Feedback::ChunkDone { seq, attempt, end },
        Payload::Sampled(token) => Feedback::Sampled {
            seq,
            attempt,
            end,
            token,
        },
        Payload::Failed(failure) => Feedback::Failed {
            seq,
            attempt,
            failure,
        },
        Payload::Tokens(_) | Payload::Hidden(_) | Payload::Logits(_) => Feedback::Failed {
            seq,
            attempt,
            failure: StepFailure::Unfinished,
        },
    })
}

/// The message that carries out `command`, or the event for the client.
fn message_of(
    command: Command,
    stages: usize,
    metrics: &RefCell<EngineMetrics>,
) -> Option<Result<LoopMsg, EngineEvent>> {
    let now = now_us();
    let control = |control, route| Ok(LoopMsg::Control(ControlMsg::new(control, route)));
    Some(match command {
        Command::Send(step) => Ok(LoopMsg::Step(StepMsg {
            seq: step.seq,
            attempt: step.attempt,
            route: step.route,
            start: step.start,
            len: step.tokens.len() as u32,
            last_chunk: step.last_chunk,
            replay: step.replay,
            sampling: step.sampling,
            history: step.history,
            from_node: step.from_node.unwrap_or(CLIENT),
            sent_us: now,
            payload: Payload::Tokens(step.tokens),
        })),
        Command::Release {
            seq,
            attempt,
            route,
        } => control(Control::Release { seq, attempt }, route),
        Command::Ping { node, sent_us } => {
            control(Control::Ping { node, sent_us }, vec![node; stages])
        }
        Command::Load {
            node,
            stage,
            kv_bytes,
        } => control(
            Control::Load {
                node,
                stage: stage as u32,
                kv_bytes,
                error: None,
            },
            vec![node; stages],
        ),
        Command::Event(event) => Err(event),
        Command::Latency { metric, us } => {
            let name = match metric {
                LatencyMetric::Queue => names::QUEUE,
                LatencyMetric::Ttft => names::TTFT,
                LatencyMetric::InterToken => names::INTER_TOKEN,
                LatencyMetric::EndToEnd => names::E2E,
                LatencyMetric::Recovery => names::RECOVERY,
            };
            metrics.borrow_mut().record_latency(name, us);
            return None;
        }
    })
}

/// Keeps the earliest of the capabilities seen while work is in flight.
fn hold(held: &mut Option<Capability<u64>>, cap: Capability<u64>) {
    if held.as_ref().is_none_or(|h| cap.time() < h.time()) {
        *held = Some(cap);
    }
}

/// Adds the sequencer: clients' requests and cancellations and the loop's feedback in, steps and events out.
pub fn sequencer_operator<'s>(
    requests: StreamVec<'s, u64, ClientMsg>,
    feedback: StreamVec<'s, u64, LoopMsg>,
    sequencer: Sequencer,
    stages: usize,
    metrics: Rc<RefCell<EngineMetrics>>,
) -> StreamVec<'s, u64, Result<LoopMsg, EngineEvent>> {
    let scope = requests.scope();
    let heartbeat = sequencer.config().heartbeat;
    requests.binary(
        feedback,
        Exchange::new(|_: &ClientMsg| 0u64),
        Exchange::new(|_: &LoopMsg| 0u64),
        "Sequencer",
        move |_cap, info| {
            let activator = scope.activator_for(info.address);
            let mut sequencer = sequencer;
            // A capability kept while anything is in flight, for heartbeats and restarts.
            let mut held: Option<Capability<u64>> = None;
            let mut commands = Vec::new();
            move |requests, feedback, output| {
                let port = output.output_index();
                requests.for_each(|cap, data| {
                    let Some(cap) = cap.retain_least(port) else {
                        return;
                    };
                    hold(&mut held, cap);
                    for msg in data.drain(..) {
                        match msg {
                            ClientMsg::Submit(sub) => {
                                sequencer.submit(sub, now_us(), &mut commands)
                            }
                            ClientMsg::Cancel(seq) => {
                                sequencer.cancel(seq, now_us(), &mut commands);
                            }
                        }
                    }
                });
                feedback.for_each(|cap, data| {
                    let Some(cap) = cap.retain_least(port) else {
                        return;
                    };
                    hold(&mut held, cap);
                    for msg in data.drain(..) {
                        if let Some(f) = feedback_of(msg) {
                            sequencer.on_feedback(f, now_us(), &mut commands);
                        }
                    }
                });
                if held.is_some() {
                    sequencer.on_tick(now_us(), &mut commands);
                }
                if let Some(cap) = &held {
                    let mut session = output.session(cap);
                    for command in commands.drain(..) {
                        if let Some(item) = message_of(command, stages, &metrics) {
                            session.give(item);
                        }
                    }
                }
                {
                    let mut m = metrics.borrow_mut();
                    m.absorb_sequencer(&sequencer.counters());
                    m.set_gauges(
                        sequencer.queued(),
                        sequencer.in_flight(),
                        sequencer.stages_without_live_replica(),
                    );
                }
                if sequencer.busy() {
                    activator.activate_after(heartbeat.max(std::time::Duration::from_millis(1)));
                } else {
                    // Nothing in flight: let the dataflow's frontier move (and end).
                    held = None;
                }
            }
        },
    )
}
