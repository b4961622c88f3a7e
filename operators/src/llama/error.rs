//! Errors of running a stage.

use crate::gguf::GgufError;
use crate::kv_cache::KvError;

/// What can go wrong building or running a stage.
#[derive(Debug, thiserror::Error)]
pub enum StageError {
    /// Loading weights failed.
    #[error(transparent)]
    Gguf(#[from] GgufError),
    /// A request's sampling parameter is out of range.
    #[error(transparent)]
    Sampling(#[from] crate::sampler::SamplingError),
    /// A weight matrix cannot be computed from its blocks.
    #[error(transparent)]
    Quant(crate::quant::QuantError),
    /// KV admission failed; nothing of the batch was applied.
    #[error(transparent)]
    Kv(#[from] KvError),
    /// A token id past the vocabulary.
    #[error("token id {id} is outside the vocabulary of {vocab} tokens")]
    TokenOutOfVocab {
        /// The id.
        id: u32,
        /// Vocabulary size.
        vocab: usize,
    },
    /// A layer range that is empty or beyond the model.
    #[error("layer range {start}..{end} is not inside the model's {n_layers} blocks")]
    BadLayerRange {
        /// Start of the range.
        start: usize,
        /// End of the range.
        end: usize,
        /// Blocks in the model.
        n_layers: usize,
    },
    /// Input whose shape does not match the batch description.
    #[error("batch mismatch: {0}")]
    BatchMismatch(String),
    /// A position past the model's context length.
    #[error("sequence {seq} would reach position {position}, past the context length {context}")]
    ContextExceeded {
        /// The sequence.
        seq: u64,
        /// The position.
        position: usize,
        /// The model's context length.
        context: usize,
    },
    /// A request without prompt tokens.
    #[error("sequence {seq} has an empty prompt")]
    EmptyPrompt {
        /// The sequence.
        seq: u64,
    },
    /// The backend failed to return data.
    #[error("tensor data: {0}")]
    Data(String),
}

impl From<crate::quant::QuantError> for StageError {
    /// File errors stay file errors; the rest say why no kernel fits.
    fn from(e: crate::quant::QuantError) -> Self {
        match e {
            crate::quant::QuantError::Gguf(g) => StageError::Gguf(g),
            other => StageError::Quant(other),
        }
    }
}
