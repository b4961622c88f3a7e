//! The `Embed` stage: token ids to hidden states.

use super::batch::{SeqChunk, total_rows};
use super::config::LlamaConfig;
use super::error::StageError;
use super::weights::{LoadProgress, matrix};
use crate::gguf::GgufFile;
use burn::tensor::{Device, Int, Tensor, TensorData};

/// Looks up the rows of the token embedding table.
#[derive(Debug, Clone)]
pub struct Embed {
    table: Tensor<2>,
    vocab: usize,
}

impl Embed {
    /// Loads `token_embd.weight` from `file`.
    pub fn load(
        file: &GgufFile,
        config: &LlamaConfig,
        device: &Device,
        progress: LoadProgress,
    ) -> Result<Self, StageError> {
        let values = matrix(
            file,
            "token_embd.weight",
            config.hidden,
            config.vocab_size,
            progress,
        )?;
        Ok(Self {
            table: Tensor::from_data(
                TensorData::new(values, [config.vocab_size, config.hidden]),
                device,
            ),
            vocab: config.vocab_size,
        })
    }

    /// Hidden states `[rows, hidden]` of `tokens`, the tokens of `chunks` stacked in order.
    pub fn forward(&self, chunks: &[SeqChunk], tokens: &[u32]) -> Result<Tensor<2>, StageError> {
        if total_rows(chunks) != tokens.len() {
            return Err(StageError::BatchMismatch(format!(
                "{} tokens for chunks of {} rows",
                tokens.len(),
                total_rows(chunks)
            )));
        }
        if let Some(&id) = tokens.iter().find(|&&t| t as usize >= self.vocab) {
            return Err(StageError::TokenOutOfVocab {
                id,
                vocab: self.vocab,
            });
        }
        let ids: Vec<i64> = tokens.iter().map(|&t| t as i64).collect();
        let device = self.table.device();
        let ids = Tensor::<1, Int>::from_data(TensorData::new(ids, [tokens.len()]), &device);
        Ok(self.table.clone().select(0, ids))
    }

    /// Number of tokens in the vocabulary.
    pub fn vocab_size(&self) -> usize {
        self.vocab
    }

    /// The embedding table `[vocab, hidden]` (the LM head reuses it when tied).
    pub fn table(&self) -> &Tensor<2> {
        &self.table
    }
}
