//! What flows around the loop: a [`LoopMsg`] is either one step of one
//! sequence ([`StepMsg`], carrying its path and its data) or a control message
//! of the sequencer ([`ControlMsg`]: a release, a heartbeat, a load order).
//! They travel the same operators and links, but a stage never mistakes one
//! for the other: no sentinel ids.

use serde::{Deserialize, Serialize};
use tokenflow_core::StepFailure;
use tokenflow_operators::{SamplingParams, SeqChunk, SeqId};

/// Node index meaning "no node": the client that submitted the request.
pub const CLIENT: u32 = u32::MAX;

/// The data a step carries between operators.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Payload {
    /// Token ids of the chunk, on the way to `Embed`.
    Tokens(Vec<u32>),
    /// Hidden states `[len, hidden]`, row-major, between block stages.
    Hidden(Vec<f32>),
    /// Logits of the chunk's last token, from `Head` to the sampler (same worker).
    Logits(Vec<f32>),
    /// A prefill chunk that was not the last: its KV is in place, no token yet.
    ChunkDone,
    /// The token the sampler drew.
    Sampled(u32),
    /// A stage could not run the step; the sequence ends with this error.
    Failed(StepFailure),
    /// A stage no longer holds the sequence's state (its node restarted): the
    /// sequence restarts from its token log.
    Lost,
}

/// One step of one sequence: a prefill chunk or a decode token.
///
/// At most one step of a sequence is in flight at a time, so stages see each
/// sequence's chunks in order without sequencing of their own.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepMsg {
    /// The sequence.
    pub seq: SeqId,
    /// Incremented each time the sequence is re-routed; a stage drops steps of an
    /// older attempt (their path is gone).
    pub attempt: u32,
    /// Node index serving each plan stage for this sequence.
    pub route: Vec<u32>,
    /// Position of the chunk's first token.
    pub start: u32,
    /// Tokens in the chunk.
    pub len: u32,
    /// Whether the chunk ends the known tokens (its last row yields a token).
    pub last_chunk: bool,
    /// Whether it prefills again tokens a failure took from the path's caches
    /// (counted as recovery cost).
    pub replay: bool,
    /// How the sampler draws.
    pub sampling: SamplingParams,
    /// Known tokens, only when the sampler needs them (repetition penalty).
    pub history: Vec<u32>,
    /// Node the message last left (`CLIENT` when it comes from the sequencer).
    pub from_node: u32,
    /// When it left that node (µs since the epoch), for link emulation.
    pub sent_us: u64,
    /// What it carries.
    pub payload: Payload,
}

impl StepMsg {
    /// The chunk this step covers.
    pub fn chunk(&self) -> SeqChunk {
        SeqChunk::new(self.seq, self.start as usize, self.len as usize)
    }

    /// Tokens of work this step puts on a stage (0 for control messages).
    pub fn work_tokens(&self) -> usize {
        match self.payload {
            Payload::Tokens(_) | Payload::Hidden(_) | Payload::Logits(_) => self.len as usize,
            _ => 0,
        }
    }

    /// Whether it is a decode step (one token, continuing a sequence).
    pub fn is_decode(&self) -> bool {
        self.len == 1 && self.start > 0
    }

    /// Bytes of the message as timely's serde path encodes it (bincode).
    pub fn wire_bytes(&self) -> u64 {
        bincode::serialized_size(self).unwrap_or(0)
    }
}

/// What a control message asks or answers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Control {
    /// The sequence is over on this path: free its KV on every stage of the
    /// path, then come back.
    Release {
        /// The sequence.
        seq: SeqId,
        /// The attempt whose path is freed.
        attempt: u32,
    },
    /// Load a replica of plan stage `stage` on `node` (a re-plan after the stage
    /// lost every replica); it comes back to the sequencer, with `error` set when
    /// loading failed.
    Load {
        /// Node index.
        node: u32,
        /// Plan stage.
        stage: u32,
        /// KV bytes the new replica may use.
        kv_bytes: u64,
        /// Why loading failed, if it did.
        error: Option<String>,
    },
    /// A heartbeat from the sequencer to a node.
    Ping {
        /// Node index.
        node: u32,
        /// When the sequencer sent it (µs since the epoch).
        sent_us: u64,
    },
    /// A node's answer: it is up, and how many times it has restarted.
    Pong {
        /// Node index.
        node: u32,
        /// Restarts so far; a change means its memory was lost.
        incarnation: u32,
        /// When the ping it answers was sent (µs since the epoch).
        pinged_us: u64,
    },
}

/// A control message of the sequencer, routed like a step: a release follows
/// the sequence's path, a ping or a load order visits one node at every stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ControlMsg {
    /// What it asks or answers.
    pub control: Control,
    /// Node index at each plan stage it visits.
    pub route: Vec<u32>,
    /// Node the message last left (`CLIENT` when it comes from the sequencer).
    pub from_node: u32,
    /// When it left that node (µs since the epoch), for link emulation.
    pub sent_us: u64,
}

impl ControlMsg {
    /// A control message leaving the sequencer now.
    pub fn new(control: Control, route: Vec<u32>) -> Self {
        Self {
            control,
            route,
            from_node: CLIENT,
            sent_us: super::clock::now_us(),
        }
    }
}

/// Anything on the loop.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum LoopMsg {
    /// One step of one sequence.
    Step(StepMsg),
    /// A control message.
    Control(ControlMsg),
}

impl LoopMsg {
    /// Node index at each plan stage.
    pub fn route(&self) -> &[u32] {
        match self {
            LoopMsg::Step(m) => &m.route,
            LoopMsg::Control(m) => &m.route,
        }
    }

    /// Node the message last left.
    pub fn from_node(&self) -> u32 {
        match self {
            LoopMsg::Step(m) => m.from_node,
            LoopMsg::Control(m) => m.from_node,
        }
    }

    /// When it left that node (µs since the epoch).
    pub fn sent_us(&self) -> u64 {
        match self {
            LoopMsg::Step(m) => m.sent_us,
            LoopMsg::Control(m) => m.sent_us,
        }
    }

    /// Stamps it as leaving `node` at `now_us`.
    pub fn leave(&mut self, node: u32, now_us: u64) {
        let (from, at) = match self {
            LoopMsg::Step(m) => (&mut m.from_node, &mut m.sent_us),
            LoopMsg::Control(m) => (&mut m.from_node, &mut m.sent_us),
        };
        *from = node;
        *at = now_us;
    }

    /// Bytes of the message as timely's serde path encodes it (bincode).
    pub fn wire_bytes(&self) -> u64 {
        bincode::serialized_size(self).unwrap_or(0)
    }
}
