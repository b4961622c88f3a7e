//! All stages of a model on one device, called in order: the plain loop the
//! dataflow engine is compared against, and the unsplit reference in tests.

use super::batch::SeqChunk;
use super::blocks::Blocks;
use super::embed::Embed;
use super::error::StageError;
use super::head::Head;
use crate::kv_cache::SeqId;
use burn::tensor::Tensor;

/// Embed, the block stages in order, and the head.
#[derive(Debug)]
pub struct StagePipeline {
    /// Token ids to hidden states.
    pub embed: Embed,
    /// Contiguous block ranges in order.
    pub blocks: Vec<Blocks>,
    /// Hidden states to logits.
    pub head: Head,
}

impl StagePipeline {
    /// Assembles stages built elsewhere.
    pub fn new(embed: Embed, blocks: Vec<Blocks>, head: Head) -> Self {
        Self {
            embed,
            blocks,
            head,
        }
    }

    /// Logits `[chunks, vocab]` of the last token of each chunk, updating every stage's KV cache.
    pub fn forward(
        &mut self,
        chunks: &[SeqChunk],
        tokens: &[u32],
    ) -> Result<Tensor<2>, StageError> {
        let mut hidden = self.embed.forward(chunks, tokens)?;
        for stage in &mut self.blocks {
            hidden = stage.forward(chunks, hidden)?;
        }
        self.head.forward(chunks, hidden)
    }

    /// Checks that every block stage can take `chunks` (positions and KV capacity).
    pub fn admit(&self, chunks: &[SeqChunk]) -> Result<(), StageError> {
        let plan: Vec<_> = chunks.iter().map(|c| (c.seq, c.start, c.len)).collect();
        for stage in &self.blocks {
            stage.kv().admit(&plan)?;
        }
        Ok(())
    }

    /// Longest sequence (prompt and generated tokens) the model can hold.
    pub fn context_length(&self) -> usize {
        self.blocks
            .first()
            .map_or(usize::MAX, |b| b.config().context_length)
    }

    /// Checks that a prompt can ever run: not empty, known tokens, room left to generate.
    pub fn check_prompt(&self, seq: SeqId, prompt: &[u32]) -> Result<(), StageError> {
        if prompt.is_empty() {
            return Err(StageError::EmptyPrompt { seq });
        }
        let vocab = self.embed.vocab_size();
        if let Some(&id) = prompt.iter().find(|&&t| t as usize >= vocab) {
            return Err(StageError::TokenOutOfVocab { id, vocab });
        }
        if prompt.len() >= self.context_length() {
            return Err(StageError::ContextExceeded {
                seq,
                position: prompt.len(),
                context: self.context_length(),
            });
        }
        Ok(())
    }

    /// Forgets `seq` in every stage.
    pub fn free(&mut self, seq: SeqId) {
        for stage in &mut self.blocks {
            stage.free(seq);
        }
    }
}
