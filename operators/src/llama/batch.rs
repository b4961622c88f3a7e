//! How the rows of a stage batch map to sequences.

use crate::kv_cache::SeqId;
use serde::{Deserialize, Serialize};

/// A run of consecutive tokens of one sequence inside a stage batch.
///
/// A batch is a list of chunks whose tokens are stacked row after row: a
/// prefill chunk has many tokens, a decode step has one, and both mix freely.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SeqChunk {
    /// The sequence.
    pub seq: SeqId,
    /// Position (in the sequence) of the chunk's first token.
    pub start: usize,
    /// Number of tokens.
    pub len: usize,
}

impl SeqChunk {
    /// A chunk of `len` tokens of `seq` starting at `start`.
    pub fn new(seq: SeqId, start: usize, len: usize) -> Self {
        Self { seq, start, len }
    }
}

/// Total rows of a batch of `chunks`.
pub fn total_rows(chunks: &[SeqChunk]) -> usize {
    chunks.iter().map(|c| c.len).sum()
}
