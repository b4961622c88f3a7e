//! What flows around the loop: one message per sequence step, carrying its path.

use serde::{Deserialize, Serialize};
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
    /// The sequence is over: free its KV on every stage of the path, then come back.
    Release,
    /// A stage could not run the step; the sequence ends with this error.
    Failed(String),
    /// A stage no longer holds the sequence's state (its node restarted): the
    /// sequence restarts from its token log.
    Lost(String),
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
    /// A message from the sequencer that carries no tokens (a release, a
    /// heartbeat, a load order): `seq` is `u64::MAX` when it is about no sequence.
    pub fn control(seq: SeqId, attempt: u32, route: Vec<u32>, payload: Payload) -> Self {
        StepMsg {
            seq,
            attempt,
            route,
            start: 0,
            len: 0,
            last_chunk: false,
            replay: false,
            sampling: SamplingParams::greedy(),
            history: Vec::new(),
            from_node: CLIENT,
            sent_us: super::clock::now_us(),
            payload,
        }
    }

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

    /// Whether it is a heartbeat or its answer (they pass every stage operator untouched).
    pub fn is_heartbeat(&self) -> bool {
        matches!(
            self.payload,
            Payload::Ping { .. } | Payload::Pong { .. } | Payload::Load { .. }
        )
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
