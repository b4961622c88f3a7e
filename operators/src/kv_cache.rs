//! Per-sequence key/value state of a range of blocks, with exact byte accounting.

use burn::tensor::Tensor;
use std::collections::HashMap;

/// Identifier of a sequence (request) across the whole system.
pub use tokenflow_core::SeqId;

/// Errors of KV admission and bookkeeping.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KvError {
    /// Holding the new tokens would pass the stage's KV capacity.
    #[error(
        "KV capacity exceeded: sequence {seq} needs {needed} more bytes, {available} of {capacity} are free"
    )]
    CapacityExceeded {
        /// The sequence asking.
        seq: SeqId,
        /// Bytes the new tokens need.
        needed: u64,
        /// Bytes still free.
        available: u64,
        /// The capacity.
        capacity: u64,
    },
    /// A chunk that does not continue the sequence's cache where it ends.
    #[error(
        "sequence {seq}: chunk starts at position {start}, but its KV cache holds {held} tokens"
    )]
    PositionMismatch {
        /// The sequence.
        seq: SeqId,
        /// Position the chunk starts at.
        start: usize,
        /// Tokens held.
        held: usize,
    },
}

/// Keys and values of one block for one sequence: `[kv_heads, tokens, head_dim]` each.
#[derive(Debug, Clone)]
pub struct LayerKv {
    /// Keys after RoPE.
    pub keys: Tensor<3>,
    /// Values.
    pub values: Tensor<3>,
}

/// Keys and values of one block for one sequence in host memory (the CPU path):
/// `[tokens, kv_heads, head_dim]` each, so a new token is appended in place.
#[derive(Debug, Clone, Default)]
pub struct HostLayerKv {
    /// Keys after RoPE.
    pub keys: Vec<f32>,
    /// Values.
    pub values: Vec<f32>,
}

/// Every block's KV of one sequence.
#[derive(Debug, Clone, Default)]
pub struct SequenceKv {
    /// One entry per block of the stage (empty until the first chunk), as burn tensors.
    pub layers: Vec<LayerKv>,
    /// The same on the CPU path, in host memory.
    pub host: Vec<HostLayerKv>,
    /// Tokens held.
    pub tokens: usize,
}

/// The KV state a stage holds for all its sequences, within a byte capacity.
#[derive(Debug)]
pub struct KvStore {
    sequences: HashMap<SeqId, SequenceKv>,
    bytes_per_token: u64,
    capacity_bytes: u64,
    used_bytes: u64,
}

impl KvStore {
    /// A store for blocks needing `bytes_per_token` per token of context, holding at most `capacity_bytes`.
    pub fn new(bytes_per_token: u64, capacity_bytes: u64) -> Self {
        Self {
            sequences: HashMap::new(),
            bytes_per_token,
            capacity_bytes,
            used_bytes: 0,
        }
    }

    /// Bytes held by all sequences.
    pub fn used_bytes(&self) -> u64 {
        self.used_bytes
    }

    /// The byte capacity.
    pub fn capacity_bytes(&self) -> u64 {
        self.capacity_bytes
    }

    /// Bytes per token of context for this stage's blocks.
    pub fn bytes_per_token(&self) -> u64 {
        self.bytes_per_token
    }

    /// Tokens held for `seq` (0 if unknown).
    pub fn tokens(&self, seq: SeqId) -> usize {
        self.sequences.get(&seq).map_or(0, |s| s.tokens)
    }

    /// Number of sequences held.
    pub fn len(&self) -> usize {
        self.sequences.len()
    }

    /// Whether no sequence is held.
    pub fn is_empty(&self) -> bool {
        self.sequences.is_empty()
    }

    /// Checks that `chunks` (sequence, start, new tokens) continue their caches and fit, all or nothing.
    ///
    /// A chunk starting at position 0 replaces whatever the sequence held (a restart).
    pub fn admit(&self, chunks: &[(SeqId, usize, usize)]) -> Result<(), KvError> {
        let mut freed = 0u64;
        let mut needed = 0u64;
        for &(seq, start, len) in chunks {
            let held = self.tokens(seq);
            if start == 0 {
                freed += held as u64 * self.bytes_per_token;
            } else if start != held {
                return Err(KvError::PositionMismatch { seq, start, held });
            }
            needed = needed.saturating_add(len as u64 * self.bytes_per_token);
            let available = self
                .capacity_bytes
                .saturating_add(freed)
                .saturating_sub(self.used_bytes);
            if needed > available {
                return Err(KvError::CapacityExceeded {
                    seq,
                    needed: len as u64 * self.bytes_per_token,
                    available: available.saturating_sub(needed - len as u64 * self.bytes_per_token),
                    capacity: self.capacity_bytes,
                });
            }
        }
        Ok(())
    }

    /// Takes the state of `seq` out for an update (empty when starting at position 0).
    pub fn take(&mut self, seq: SeqId, start: usize) -> SequenceKv {
        if start == 0 {
            self.free(seq);
            return SequenceKv::default();
        }
        let kv = self.sequences.remove(&seq).unwrap_or_default();
        self.used_bytes -= kv.tokens as u64 * self.bytes_per_token;
        kv
    }

    /// Puts back the state of `seq` after an update.
    pub fn put(&mut self, seq: SeqId, kv: SequenceKv) {
        self.used_bytes += kv.tokens as u64 * self.bytes_per_token;
        self.sequences.insert(seq, kv);
    }

    /// Drops the state of `seq`, returning the bytes freed.
    pub fn free(&mut self, seq: SeqId) -> u64 {
        let bytes = self
            .sequences
            .remove(&seq)
            .map_or(0, |s| s.tokens as u64 * self.bytes_per_token);
        self.used_bytes -= bytes;
        bytes
    }

    /// Drops every sequence (as when a node fails).
    pub fn clear(&mut self) {
        self.sequences.clear();
        self.used_bytes = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admission_counts_bytes_exactly() {
        let store = KvStore::new(100, 1000);
        assert!(store.admit(&[(1, 0, 10)]).is_ok());
        let err = store.admit(&[(1, 0, 6), (2, 0, 5)]).unwrap_err();
        assert!(matches!(
            err,
            KvError::CapacityExceeded {
                seq: 2,
                needed: 500,
                available: 400,
                capacity: 1000
            }
        ));
    }

    #[test]
    fn chunk_must_continue_the_cache() {
        let store = KvStore::new(100, 1000);
        assert_eq!(
            store.admit(&[(7, 3, 1)]),
            Err(KvError::PositionMismatch {
                seq: 7,
                start: 3,
                held: 0
            })
        );
    }
}
