//! The Llama architecture in burn, cut into stage operators: [`Embed`], [`Blocks`], [`Head`].

pub mod batch;
pub mod blocks;
pub mod config;
pub mod embed;
pub mod error;
pub mod head;
pub mod host_block;
pub mod linear;
pub mod pipeline;
pub mod rope;
pub mod weights;

pub use batch::SeqChunk;
pub use blocks::Blocks;
pub use config::{LlamaConfig, WeightSizes};
pub use embed::Embed;
pub use error::StageError;
pub use head::Head;
pub use pipeline::StagePipeline;

use crate::gguf::GgufFile;
use crate::quant::Numerics;
use crate::tokenizer::{TextTokenizer, TokenizerError};
use burn::tensor::Device;
use std::ops::Range;
use std::path::Path;

/// Errors of opening a model file.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// The file is not a usable GGUF Llama model.
    #[error(transparent)]
    Gguf(#[from] crate::gguf::GgufError),
    /// Its tokenizer could not be built.
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
    /// A stage could not be built.
    #[error(transparent)]
    Stage(#[from] StageError),
}

/// An open Llama GGUF file: config and tokenizer read, weights still on disk.
///
/// Stages are built from it for any layer range, loading only their own tensors.
#[derive(Debug, Clone)]
pub struct LlamaModel {
    /// The mapped file.
    pub file: GgufFile,
    /// Hyper-parameters.
    pub config: LlamaConfig,
    /// The tokenizer from the file's metadata.
    pub tokenizer: TextTokenizer,
    /// The arithmetic of the linear layers of every stage built from now on.
    pub numerics: Numerics,
}

impl LlamaModel {
    /// Opens `path` and reads its config and tokenizer.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, ModelError> {
        let file = GgufFile::open(path)?;
        let config = LlamaConfig::from_gguf(&file)?;
        let tokenizer = TextTokenizer::from_gguf(&file)?;
        Ok(Self {
            file,
            config,
            tokenizer,
            numerics: Numerics::default(),
        })
    }

    /// The same model, building its stages under `numerics`.
    pub fn with_numerics(mut self, numerics: Numerics) -> Self {
        self.numerics = numerics;
        self
    }

    /// The model's name from `general.name` (or `model`).
    pub fn name(&self) -> &str {
        self.file.metadata.str("general.name").unwrap_or("model")
    }

    /// Builds the embedding stage.
    pub fn embed(
        &self,
        device: &Device,
        progress: weights::LoadProgress,
    ) -> Result<Embed, StageError> {
        Embed::load(&self.file, &self.config, device, progress)
    }

    /// Builds a stage of blocks `layers` whose KV cache may hold `kv_capacity_bytes`.
    pub fn blocks(
        &self,
        layers: Range<usize>,
        kv_capacity_bytes: u64,
        device: &Device,
        progress: weights::LoadProgress,
    ) -> Result<Blocks, StageError> {
        Blocks::load(
            &self.file,
            &self.config,
            layers,
            kv_capacity_bytes,
            self.numerics,
            device,
            progress,
        )
    }

    /// Builds the head stage.
    pub fn head(
        &self,
        device: &Device,
        progress: weights::LoadProgress,
    ) -> Result<Head, StageError> {
        Head::load(&self.file, &self.config, self.numerics, device, progress)
    }

    /// Builds embed, one `Blocks` stage per range of `splits` and the head, all on `device`.
    pub fn pipeline(
        &self,
        splits: &[Range<usize>],
        kv_capacity_bytes: u64,
        device: &Device,
        progress: weights::LoadProgress,
    ) -> Result<StagePipeline, StageError> {
        check_splits(splits, self.config.n_layers)?;
        let embed = self.embed(device, progress)?;
        let blocks = splits
            .iter()
            .map(|r| self.blocks(r.clone(), kv_capacity_bytes, device, progress))
            .collect::<Result<Vec<_>, _>>()?;
        let head = self.head(device, progress)?;
        Ok(StagePipeline::new(embed, blocks, head))
    }

    /// Bytes of weights a full pipeline holds: the tensors' bytes in the file
    /// (the tied embedding once), for progress bars and memory checks.
    pub fn weight_bytes(&self) -> u64 {
        self.config.weights.total()
    }
}

/// Checks that `splits` are contiguous, non-empty and cover `0..n_layers` exactly once.
pub fn check_splits(splits: &[Range<usize>], n_layers: usize) -> Result<(), StageError> {
    let mut next = 0;
    for r in splits {
        if r.start != next || r.end <= r.start || r.end > n_layers {
            return Err(StageError::BadLayerRange {
                start: r.start,
                end: r.end,
                n_layers,
            });
        }
        next = r.end;
    }
    if next != n_layers {
        return Err(StageError::BadLayerRange {
            start: next,
            end: n_layers,
            n_layers,
        });
    }
    Ok(())
}

/// `n` contiguous ranges splitting `0..n_layers` as evenly as possible: the
/// planner's [`tokenflow_planner::strategy::even_ranges`], so a split named
/// by count means the same layers to every tool.
pub fn even_splits(n_layers: usize, n: usize) -> Vec<Range<usize>> {
    tokenflow_planner::strategy::even_ranges(n_layers, n)
}
