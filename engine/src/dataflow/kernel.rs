//! The model stage a node runs inside a stage operator: embedding, a range of
//! blocks (with its KV cache) or the head. A batch of steps goes in; each step's
//! payload is replaced by the stage's output rows.

use burn::tensor::{Tensor, TensorData};
use tokenflow_operators::llama::{Blocks, Embed, Head};
use tokenflow_operators::{SeqChunk, SeqId, StageError};

use super::message::{Payload, StepMsg};
use super::stage_op::StageRole;
use std::ops::Range;
use std::sync::Arc;
use tokenflow_operators::LlamaModel;
use tokenflow_operators::device::default_device;

/// Builds a stage's kernel on a node while the engine runs (re-planning).
pub struct KernelLoader {
    /// The model file.
    pub model: Arc<LlamaModel>,
    /// Layers of each plan stage.
    pub stage_layers: Vec<Range<usize>>,
}

impl KernelLoader {
    /// The kernel `role` needs for plan stage `stage`, with `kv_bytes` of KV room.
    pub fn load(
        &self,
        role: StageRole,
        stage: usize,
        kv_bytes: u64,
    ) -> Result<StageKernel, StageError> {
        let device = default_device();
        let mut quiet = |_: &str, _: u64| {};
        Ok(match role {
            StageRole::Embed => {
                StageKernel::Embed(Box::new(self.model.embed(&device, &mut quiet)?))
            }
            StageRole::Head => StageKernel::Head(Box::new(self.model.head(&device, &mut quiet)?)),
            StageRole::Blocks(_) => {
                let layers =
                    self.stage_layers.get(stage).cloned().ok_or_else(|| {
                        StageError::BatchMismatch(format!("no plan stage {stage}"))
                    })?;
                StageKernel::Blocks(Box::new(
                    self.model.blocks(layers, kv_bytes, &device, &mut quiet)?,
                ))
            }
        })
    }
}

/// One node's copy of a stage.
#[derive(Debug)]
pub enum StageKernel {
    /// Token ids to hidden states.
    Embed(Box<Embed>),
    /// Blocks of a layer range, owning their KV cache.
    Blocks(Box<Blocks>),
    /// Final norm and LM head: hidden states to the last row's logits.
    Head(Box<Head>),
}

impl StageKernel {
    /// What the stage computes, for errors (`embed`, `blocks 0..10`, `head`).
    pub fn role_name(&self) -> String {
        match self {
            StageKernel::Embed(_) => "embed".into(),
            StageKernel::Blocks(b) => {
                let l = b.layers();
                format!("blocks {}..{}", l.start, l.end)
            }
            StageKernel::Head(_) => "head".into(),
        }
    }

    /// Runs `batch` through the stage as one call, replacing each payload.
    ///
    /// On error nothing of the batch was applied (KV admission is all-or-nothing).
    pub fn run(&mut self, batch: &mut [StepMsg], hidden: usize) -> Result<(), StageError> {
        let chunks: Vec<SeqChunk> = batch.iter().map(StepMsg::chunk).collect();
        match self {
            StageKernel::Embed(embed) => {
                let mut tokens = Vec::new();
                for m in batch.iter() {
                    match &m.payload {
                        Payload::Tokens(t) if t.len() == m.len as usize => {
                            tokens.extend_from_slice(t)
                        }
                        other => return Err(mismatch(m.seq, "tokens", other)),
                    }
                }
                let out = embed.forward(&chunks, &tokens)?;
                scatter_rows(batch, out, hidden)
            }
            StageKernel::Blocks(blocks) => {
                let x = gather_rows(batch, hidden, &blocks_device(blocks))?;
                let out = blocks.forward(&chunks, x)?;
                scatter_rows(batch, out, hidden)
            }
            StageKernel::Head(head) => {
                // Only a chunk that ends the known tokens yields a token.
                let (last, rest): (Vec<usize>, Vec<usize>) =
                    (0..batch.len()).partition(|&i| batch[i].last_chunk);
                for &i in &rest {
                    batch[i].payload = Payload::ChunkDone;
                }
                if last.is_empty() {
                    return Ok(());
                }
                let mut rows = Vec::new();
                let mut head_chunks = Vec::new();
                for &i in &last {
                    match &batch[i].payload {
                        Payload::Hidden(h) => rows.extend_from_slice(h),
                        other => return Err(mismatch(batch[i].seq, "hidden", other)),
                    }
                    head_chunks.push(chunks[i]);
                }
                let n_rows: usize = head_chunks.iter().map(|c| c.len).sum();
                if rows.len() != n_rows * hidden {
                    return Err(StageError::BatchMismatch(format!(
                        "{} values for {n_rows} rows of {hidden}",
                        rows.len()
                    )));
                }
                let device = head.device();
                let x = Tensor::<2>::from_data(TensorData::new(rows, [n_rows, hidden]), &device);
                let logits = Head::to_rows(head.forward(&head_chunks, x)?)?;
                for (&i, row) in last.iter().zip(logits) {
                    batch[i].payload = Payload::Logits(row);
                }
                Ok(())
            }
        }
    }

    /// Frees what the stage holds for `seq` (its KV cache).
    pub fn release(&mut self, seq: SeqId) {
        if let StageKernel::Blocks(b) = self {
            b.free(seq);
        }
    }

    /// Drops everything the stage holds for every sequence (its node restarted).
    pub fn clear(&mut self) {
        if let StageKernel::Blocks(b) = self {
            b.clear();
        }
    }

    /// Sequences whose KV the stage keeps (blocks only; 0 for the others).
    pub fn sequences_held(&self) -> usize {
        match self {
            StageKernel::Blocks(b) => b.kv().len(),
            _ => 0,
        }
    }

    /// KV bytes in use (blocks only).
    pub fn kv_used(&self) -> u64 {
        match self {
            StageKernel::Blocks(b) => b.kv().used_bytes(),
            _ => 0,
        }
    }
}

fn blocks_device(blocks: &Blocks) -> burn::tensor::Device {
    blocks.device()
}

fn mismatch(seq: SeqId, want: &str, got: &Payload) -> StageError {
    let got = match got {
        Payload::Tokens(_) => "tokens",
        Payload::Hidden(_) => "hidden states",
        Payload::Logits(_) => "logits",
        Payload::ChunkDone => "a finished chunk",
        Payload::Sampled(_) => "a sampled token",
        Payload::Failed(_) => "a failure",
        Payload::Lost => "a lost sequence",
    };
    StageError::BatchMismatch(format!("sequence {seq}: expected {want}, got {got}"))
}

fn gather_rows(
    batch: &[StepMsg],
    hidden: usize,
    device: &burn::tensor::Device,
) -> Result<Tensor<2>, StageError> {
    let rows: usize = batch.iter().map(|m| m.len as usize).sum();
    let mut data = Vec::with_capacity(rows * hidden);
    for m in batch {
        match &m.payload {
            Payload::Hidden(h) if h.len() == m.len as usize * hidden => data.extend_from_slice(h),
            other => return Err(mismatch(m.seq, "hidden", other)),
        }
    }
    Ok(Tensor::from_data(
        TensorData::new(data, [rows, hidden]),
        device,
    ))
}

fn scatter_rows(batch: &mut [StepMsg], out: Tensor<2>, hidden: usize) -> Result<(), StageError> {
    let flat = out
        .into_data()
        .try_into_vec::<f32>()
        .map_err(|e| StageError::Data(format!("{e:?}")))?;
    let mut offset = 0;
    for m in batch.iter_mut() {
        let n = m.len as usize * hidden;
        let rows = flat.get(offset..offset + n).ok_or_else(|| {
            StageError::BatchMismatch(format!("stage returned {} values", flat.len()))
        })?;
        m.payload = Payload::Hidden(rows.to_vec());
        offset += n;
    }
    Ok(())
}
