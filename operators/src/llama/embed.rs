//! The `Embed` stage: token ids to hidden states.

use super::batch::{SeqChunk, total_rows};
use super::config::LlamaConfig;
use super::error::StageError;
use super::weights::LoadProgress;
use crate::gguf::GgufFile;
use crate::quant::QMatrix;
use burn::tensor::{Device, Int, Tensor, TensorData};

/// Looks up the rows of the token embedding table.
///
/// On the CPU backend the table stays in the file's blocks and each looked-up
/// row is expanded on use; other devices hold it as a dense f32 tensor.
#[derive(Debug, Clone)]
pub struct Embed {
    blocks: QMatrix,
    dense: Option<Tensor<2>>,
    vocab: usize,
    device: Device,
}

impl Embed {
    /// Loads `token_embd.weight` from `file`.
    pub fn load(
        file: &GgufFile,
        config: &LlamaConfig,
        device: &Device,
        progress: LoadProgress,
    ) -> Result<Self, StageError> {
        let name = "token_embd.weight";
        let blocks = QMatrix::from_gguf(file, name, config.hidden, config.vocab_size)?;
        progress(name, blocks.byte_len());
        let dense = (*device != Device::flex()).then(|| {
            let values = file.tensor_f32(name).expect("a QMatrix's type dequantizes");
            Tensor::from_data(
                TensorData::new(values, [config.vocab_size, config.hidden]),
                device,
            )
        });
        Ok(Self {
            blocks,
            dense,
            vocab: config.vocab_size,
            device: device.clone(),
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
        if let Some(table) = &self.dense {
            let ids: Vec<i64> = tokens.iter().map(|&t| t as i64).collect();
            let ids =
                Tensor::<1, Int>::from_data(TensorData::new(ids, [tokens.len()]), &self.device);
            return Ok(table.clone().select(0, ids));
        }
        let hidden = self.blocks.cols();
        let mut values = vec![0f32; tokens.len() * hidden];
        for (&t, row) in tokens.iter().zip(values.chunks_exact_mut(hidden)) {
            self.blocks.dequantize_row(t as usize, row);
        }
        Ok(Tensor::from_data(
            TensorData::new(values, [tokens.len(), hidden]),
            &self.device,
        ))
    }

    /// Number of tokens in the vocabulary.
    pub fn vocab_size(&self) -> usize {
        self.vocab
    }

    /// Bytes of the table held (the file's block bytes on the CPU backend).
    pub fn weight_bytes(&self) -> u64 {
        match &self.dense {
            Some(_) => (self.vocab * self.blocks.cols() * 4) as u64,
            None => self.blocks.byte_len(),
        }
    }
}
