//! Stage operators of tokenflow: a Llama model read from GGUF and cut into
//! stages (`Embed`, `Blocks { layers }`, `Head`, `Sampler`) that can live on
//! different nodes, with per-sequence KV state and a tokenizer.

pub mod chat;
pub mod device;
pub mod gguf;
pub mod kv_cache;
pub mod llama;
pub mod profile;
pub mod quant;
pub mod sampler;
pub mod tiny;
pub mod tokenizer;

pub use burn::tensor::{Device, Tensor};
pub use kv_cache::SeqId;
pub use llama::{
    Blocks, Embed, Head, LlamaConfig, LlamaModel, ModelError, SeqChunk, StageError, StagePipeline,
};
pub use sampler::{SamplingError, SamplingField, SamplingParams};
pub use tokenizer::TextTokenizer;
