//! Requests, the token log that is the source of truth of a sequence, and why a
//! request ends or is refused.

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::sampling::{SamplingError, SamplingParams};

/// Identifier of a sequence (one request).
pub type SeqId = u64;

/// A generation request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Request {
    /// Unique id of the sequence.
    pub id: SeqId,
    /// Prompt token ids.
    pub prompt: Vec<u32>,
    /// Most tokens to generate.
    pub max_tokens: usize,
    /// How tokens are chosen.
    pub sampling: SamplingParams,
    /// Token ids that end the sequence (e.g. EOS, `<|im_end|>`); empty to always run to `max_tokens`.
    pub stop_tokens: Vec<u32>,
    /// Texts that end the sequence once the decoded output contains one (checked
    /// when the executor has a tokenizer; the token that completes the text is
    /// part of the output).
    #[serde(default)]
    pub stop_strings: Vec<String>,
}

impl Request {
    /// A greedy request for `max_tokens` tokens after `prompt`, with no stop condition.
    pub fn greedy(id: SeqId, prompt: Vec<u32>, max_tokens: usize) -> Self {
        Self {
            id,
            prompt,
            max_tokens,
            sampling: SamplingParams::greedy(),
            stop_tokens: Vec::new(),
            stop_strings: Vec::new(),
        }
    }

    /// Tokens the sequence may reach: prompt plus every token it may generate,
    /// within the context. KV is reserved for this many tokens.
    pub fn tokens_needed(&self, context_length: usize) -> usize {
        (self.prompt.len() + self.max_tokens).min(context_length)
    }
}

/// Why a sequence ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum FinishReason {
    /// A stop token or stop string was generated (it is part of the output).
    Stop,
    /// `max_tokens` were generated, or the context is full.
    Length,
}

/// Everything needed to rebuild a sequence anywhere: its prompt and the tokens generated so far.
///
/// KV caches are derived state; re-running these tokens through the stages (a
/// prefill) rebuilds them, and the sampler draws from the seed and position alone.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct TokenLog {
    /// Prompt token ids.
    pub prompt: Vec<u32>,
    /// Generated token ids, in order.
    pub generated: Vec<u32>,
}

impl TokenLog {
    /// All known tokens: prompt then generated.
    pub fn tokens(&self) -> impl Iterator<Item = u32> + '_ {
        self.prompt.iter().chain(self.generated.iter()).copied()
    }

    /// Number of known tokens.
    pub fn len(&self) -> usize {
        self.prompt.len() + self.generated.len()
    }

    /// Whether no token is known.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A request as it enters an executor, with the time the client submitted it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Submission {
    /// The request.
    pub request: Request,
    /// When it was submitted (µs on the executor's clock), the start of its TTFT.
    pub submitted_us: u64,
}

impl Submission {
    /// A submission stamped with the wall clock (µs since the Unix epoch), the
    /// clock the timely engine runs the sequencer on.
    pub fn now(request: Request) -> Self {
        let submitted_us = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as u64);
        Self {
            request,
            submitted_us,
        }
    }
}

/// When things happened to a request (µs on the executor's clock).
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

/// Why a request was refused or failed; the other requests are unaffected.
#[derive(Debug, Error, Clone, PartialEq, Serialize, Deserialize)]
pub enum RequestError {
    /// The prompt can never run (empty, unknown tokens, as long as the context).
    #[error("request {seq} refused: {reason}")]
    BadPrompt {
        /// The sequence.
        seq: SeqId,
        /// Why.
        reason: String,
    },
    /// The sequence needs more KV room than any replica of a stage has, even empty.
    #[error(
        "request {seq} refused: it needs {needed} bytes of KV on stage {stage}, but the largest replica holds {largest}"
    )]
    PastCapacity {
        /// The sequence.
        seq: SeqId,
        /// Stage index.
        stage: usize,
        /// Bytes needed.
        needed: u64,
        /// Largest KV capacity among the stage's replicas.
        largest: u64,
    },
    /// A sampling parameter out of its range.
    #[error("request {seq} refused: {source}")]
    BadSampling {
        /// The sequence.
        seq: SeqId,
        /// Which parameter, and its range.
        source: SamplingError,
    },
    /// Another request already uses the id.
    #[error("request {seq} refused: the id is already in use")]
    DuplicateId {
        /// The sequence.
        seq: SeqId,
    },
    /// No path through the plan exists (every replica of a stage down), or
    /// none had KV room while nothing in flight could free some.
    #[error("request {seq}: no path: {reason}{}", waited_us.map_or(String::new(), |w| format!(" (waited {:.1} s for a path)", w as f64 / 1e6)))]
    NoPath {
        /// The sequence.
        seq: SeqId,
        /// Why.
        reason: NoPathReason,
        /// How long the sequence waited for a path (a restart waits up to the
        /// stall timeout), if it did.
        waited_us: Option<u64>,
    },
    /// A stage failed running the sequence.
    #[error("request {seq} failed on a stage: {failure}")]
    StageFailed {
        /// The sequence.
        seq: SeqId,
        /// What failed.
        failure: StepFailure,
    },
    /// The client withdrew the request before it finished.
    #[error("request {seq} cancelled")]
    Cancelled {
        /// The sequence.
        seq: SeqId,
    },
}

impl RequestError {
    /// The sequence it is about.
    pub fn seq(&self) -> SeqId {
        match self {
            RequestError::BadPrompt { seq, .. }
            | RequestError::PastCapacity { seq, .. }
            | RequestError::BadSampling { seq, .. }
            | RequestError::DuplicateId { seq }
            | RequestError::NoPath { seq, .. }
            | RequestError::StageFailed { seq, .. }
            | RequestError::Cancelled { seq } => *seq,
        }
    }
}

/// Why a stage could not run a step: the sequence ends with it (the other
/// sequences of the batch go on; each step is retried alone first).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum StepFailure {
    /// The stage's kernel refused the step (its error, in words: the kernel's
    /// error types live below the core and do not cross processes).
    #[error("{stage}: {message}")]
    Kernel {
        /// The stage's role (`embed`, `blocks 0..10`, `head`, `sampler`).
        stage: String,
        /// The kernel's error.
        message: String,
    },
    /// The stage call panicked; the worker caught it.
    #[error("the stage call panicked")]
    Panicked,
    /// The worker's compute thread is gone.
    #[error("the compute thread of the worker is gone")]
    ComputeGone,
    /// The step reached a worker that holds no replica of the node its route
    /// names (a route built from a stale plan).
    #[error("{stage}: no replica of node {node} on this worker")]
    NoReplica {
        /// The stage's role.
        stage: String,
        /// The node of the route.
        node: u32,
    },
    /// A step came back to the sequencer without a token or a chunk done.
    #[error("a step came back unfinished")]
    Unfinished,
}

/// Why no path could take a sequence.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum NoPathReason {
    /// Every replica of a stage is down (and re-planning it, if tried, failed).
    #[error("every replica of stage {stage} is down ({router}){}", repair.as_ref().map_or(String::new(), |r| format!("; re-planning failed: {r}")))]
    StageDown {
        /// The stage.
        stage: usize,
        /// What the router said.
        router: String,
        /// Why the stage could not be re-planned onto another node.
        repair: Option<String>,
    },
    /// Every path is alive but none has KV room for the sequence, and nothing
    /// in flight will free any.
    #[error("no path has KV room")]
    NoKvRoom,
}
