//! The `Head` stage: final norm and LM head, hidden states to logits.

use super::batch::{SeqChunk, total_rows};
use super::blocks::rms_norm;
use super::config::LlamaConfig;
use super::error::StageError;
use super::linear::Linear;
use super::weights::{LoadProgress, vector};
use crate::gguf::GgufFile;
use crate::quant::Numerics;
use burn::tensor::{Device, Int, Tensor, TensorData};

/// Final RMSNorm and the output projection (the embedding table when tied).
#[derive(Debug, Clone)]
pub struct Head {
    norm: Tensor<1>,
    /// `vocab` outputs of `hidden` inputs.
    output: Linear,
    eps: f32,
    hidden: usize,
}

impl Head {
    /// Loads `output_norm.weight` and `output.weight` (or `token_embd.weight` when
    /// tied: the same mapped bytes as the embedding's, not a second copy).
    pub fn load(
        file: &GgufFile,
        config: &LlamaConfig,
        numerics: Numerics,
        device: &Device,
        progress: LoadProgress,
    ) -> Result<Self, StageError> {
        let name = if config.tied_embeddings {
            "token_embd.weight"
        } else {
            "output.weight"
        };
        let output = Linear::load(
            file,
            &[(name, config.vocab_size)],
            config.hidden,
            numerics,
            device,
            progress,
        )?;
        Ok(Self {
            norm: vector(file, "output_norm.weight", config.hidden, device, progress)?,
            output,
            eps: config.rms_eps,
            hidden: config.hidden,
        })
    }

    /// Bytes of weights held (the output matrix as in the file, and the f32 norm).
    pub fn weight_bytes(&self) -> u64 {
        self.output.weight_bytes() + self.hidden as u64 * 4
    }

    /// The device the weights live on.
    pub fn device(&self) -> burn::tensor::Device {
        self.norm.device()
    }

    /// Logits `[chunks, vocab]` of the last token of each chunk.
    pub fn forward(&self, chunks: &[SeqChunk], hidden: Tensor<2>) -> Result<Tensor<2>, StageError> {
        let rows = total_rows(chunks);
        if hidden.dims() != [rows, self.hidden] {
            return Err(StageError::BatchMismatch(format!(
                "hidden {:?} for chunks of {rows} rows",
                hidden.dims()
            )));
        }
        let last = if chunks.iter().all(|c| c.len == 1) {
            hidden
        } else {
            let mut idx = Vec::with_capacity(chunks.len());
            let mut end = 0i64;
            for c in chunks {
                end += c.len as i64;
                idx.push(end - 1);
            }
            let n = idx.len();
            hidden.select(
                0,
                Tensor::<1, Int>::from_data(TensorData::new(idx, [n]), &self.norm.device()),
            )
        };
        // On a pool worker, as `Blocks::forward` does: the caller takes a share.
        Ok(rayon::scope(|_| {
            self.output.forward(rms_norm(last, &self.norm, self.eps))
        }))
    }

    /// Logits as rows of f32 on the host.
    pub fn to_rows(logits: Tensor<2>) -> Result<Vec<Vec<f32>>, StageError> {
        let [n, vocab] = logits.dims();
        let flat = logits
            .into_data()
            .try_into_vec::<f32>()
            .map_err(|e| StageError::Data(format!("{e:?}")))?;
        Ok((0..n)
            .map(|i| flat[i * vocab..(i + 1) * vocab].to_vec())
            .collect())
    }
}
