//! Byte-level BPE tokenizer built from GGUF metadata with the `tokenizers` crate.

use crate::gguf::{GgufError, GgufFile};
use tokenizers::models::bpe::BPE;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::{AddedToken, Tokenizer};

/// GGUF token type of control (special) tokens.
const TOKEN_TYPE_CONTROL: i64 = 3;

/// Errors of building or using a tokenizer.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    /// The GGUF metadata is missing or malformed.
    #[error(transparent)]
    Gguf(#[from] GgufError),
    /// A tokenizer model or pre-tokenizer this crate does not implement.
    #[error("unsupported tokenizer {key} = {value:?} (supported: {supported})")]
    Unsupported {
        /// The metadata key.
        key: &'static str,
        /// Its value.
        value: String,
        /// What is supported.
        supported: &'static str,
    },
    /// A merge entry without a space separating its two parts.
    #[error(
        "tokenizer.ggml.merges entry {index} ({merge:?}) is not two tokens separated by a space"
    )]
    BadMerge {
        /// Index of the merge.
        index: usize,
        /// The entry.
        merge: String,
    },
    /// The `tokenizers` crate refused the vocabulary or failed to encode/decode.
    #[error("tokenizer: {0}")]
    Library(String),
    /// A token id past the vocabulary.
    #[error("token id {id} is outside the vocabulary of {vocab} tokens")]
    UnknownId {
        /// The id.
        id: u32,
        /// Vocabulary size.
        vocab: usize,
    },
}

/// A text tokenizer for a GGUF model (GPT-2 style byte-level BPE).
#[derive(Clone)]
pub struct TextTokenizer {
    inner: Tokenizer,
    vocab_size: usize,
    eos_id: u32,
    bos_id: Option<u32>,
    add_bos: bool,
    special_ids: Vec<u32>,
}

impl std::fmt::Debug for TextTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TextTokenizer")
            .field("vocab_size", &self.vocab_size)
            .field("eos_id", &self.eos_id)
            .finish()
    }
}

impl TextTokenizer {
    /// Builds the tokenizer described by the `tokenizer.ggml.*` metadata of `file`.
    pub fn from_gguf(file: &GgufFile) -> Result<Self, TokenizerError> {
        let md = &file.metadata;
        let model = md.str("tokenizer.ggml.model")?;
        if model != "gpt2" {
            return Err(TokenizerError::Unsupported {
                key: "tokenizer.ggml.model",
                value: model.to_string(),
                supported: "gpt2 (byte-level BPE)",
            });
        }
        let pre = md.str("tokenizer.ggml.pre").unwrap_or("gpt2");
        // `smollm` splits every digit alone before the GPT-2 regex (llama.cpp's
        // LLAMA_VOCAB_PRE_TYPE_SMOLLM, HF's Digits(individual) + ByteLevel).
        let split_digits = match pre {
            "smollm" | "starcoder" | "refact" => true,
            "gpt2" | "default" => false,
            other => {
                return Err(TokenizerError::Unsupported {
                    key: "tokenizer.ggml.pre",
                    value: other.to_string(),
                    supported: "smollm, starcoder, refact, gpt2",
                });
            }
        };
        let tokens = md.strings("tokenizer.ggml.tokens")?;
        let types = match md.get("tokenizer.ggml.token_type") {
            Some(_) => md.integers("tokenizer.ggml.token_type")?,
            None => vec![1; tokens.len()],
        };
        let merges = md
            .strings("tokenizer.ggml.merges")?
            .into_iter()
            .enumerate()
            .map(|(index, m)| {
                m.split_once(' ')
                    .map(|(a, b)| (a.to_string(), b.to_string()))
                    .ok_or_else(|| TokenizerError::BadMerge {
                        index,
                        merge: m.to_string(),
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let vocab: tokenizers::models::bpe::Vocab = tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (t.to_string(), i as u32))
            .collect();
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, merges)
            .build()
            .map_err(|e| TokenizerError::Library(e.to_string()))?;
        let mut inner = Tokenizer::new(bpe);
        let byte_level = ByteLevel::new(false, true, true);
        if split_digits {
            inner.with_pre_tokenizer(Some(Sequence::new(vec![
                Digits::new(true).into(),
                byte_level.into(),
            ])));
        } else {
            inner.with_pre_tokenizer(Some(byte_level));
        }
        inner.with_decoder(Some(ByteLevel::default()));
        let mut special_ids = Vec::new();
        let specials: Vec<AddedToken> = tokens
            .iter()
            .zip(types.iter())
            .enumerate()
            .filter(|(_, (_, ty))| **ty == TOKEN_TYPE_CONTROL)
            .map(|(i, (t, _))| {
                special_ids.push(i as u32);
                AddedToken::from(t.to_string(), true)
            })
            .collect();
        inner.add_special_tokens(&specials);
        let eos_id = md.u64("tokenizer.ggml.eos_token_id")? as u32;
        let bos_id = md
            .get("tokenizer.ggml.bos_token_id")
            .and_then(|v| v.as_u64())
            .map(|v| v as u32);
        let add_bos = md.bool_or("tokenizer.ggml.add_bos_token", false)?;
        Ok(TextTokenizer {
            inner,
            vocab_size: tokens.len(),
            eos_id,
            bos_id,
            add_bos,
            special_ids,
        })
    }

    /// Token ids of `text`; special tokens written in the text are recognised.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, TokenizerError> {
        let enc = self
            .inner
            .encode_fast(text, false)
            .map_err(|e| TokenizerError::Library(e.to_string()))?;
        let mut ids = Vec::with_capacity(enc.get_ids().len() + 1);
        if self.add_bos
            && let Some(bos) = self.bos_id
        {
            ids.push(bos);
        }
        ids.extend_from_slice(enc.get_ids());
        Ok(ids)
    }

    /// The text of `ids`, special tokens included.
    pub fn decode(&self, ids: &[u32]) -> Result<String, TokenizerError> {
        if let Some(&id) = ids.iter().find(|&&id| id as usize >= self.vocab_size) {
            return Err(TokenizerError::UnknownId {
                id,
                vocab: self.vocab_size,
            });
        }
        self.inner
            .decode(ids, false)
            .map_err(|e| TokenizerError::Library(e.to_string()))
    }

    /// Id of the end-of-sequence token.
    pub fn eos_id(&self) -> u32 {
        self.eos_id
    }

    /// Tokens that end an answer: end of sequence and, where the vocabulary
    /// has it as one token, ChatML's end of turn `<|im_end|>`.
    pub fn end_tokens(&self) -> Vec<u32> {
        let mut ends = vec![self.eos_id];
        if let Ok(ids) = self.encode("<|im_end|>")
            && let [id] = ids[..]
            && id != self.eos_id
        {
            ends.push(id);
        }
        ends
    }

    /// Number of tokens in the vocabulary.
    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    /// Whether `id` is a control token (e.g. `<|im_end|>`).
    pub fn is_special(&self, id: u32) -> bool {
        self.special_ids.contains(&id)
    }
}

/// Turns a growing list of token ids into text pieces as soon as they are whole UTF-8.
///
/// Byte-level BPE splits multi-byte characters across tokens, so a token's text
/// alone may be an incomplete character; this holds such bytes back. Each
/// token decodes only a short window (the tokens since the last piece and the
/// one piece before them, for tokenizers that treat a leading space
/// differently), as text-generation-inference and vLLM do, so a long answer
/// costs time linear in its length rather than quadratic.
#[derive(Debug, Default, Clone)]
pub struct TokenTextStream {
    ids: Vec<u32>,
    /// Where the window decoded for context starts.
    prefix_offset: usize,
    /// Tokens up to here have been emitted as text.
    read_offset: usize,
}

impl TokenTextStream {
    /// An empty stream.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `id` and returns the newly completed text, if any.
    pub fn push(&mut self, tokenizer: &TextTokenizer, id: u32) -> Result<String, TokenizerError> {
        self.ids.push(id);
        let before = tokenizer.decode(&self.ids[self.prefix_offset..self.read_offset])?;
        let after = tokenizer.decode(&self.ids[self.prefix_offset..])?;
        if after.ends_with('\u{FFFD}') {
            return Ok(String::new());
        }
        // A decoder that rewrites across the window's start: emit what follows
        // the common prefix, and move on (never stall on the same window).
        let common = if after.starts_with(&before) {
            before.len()
        } else {
            before
                .char_indices()
                .zip(after.chars())
                .find(|((_, a), b)| a != b)
                .map_or(before.len().min(after.len()), |((i, _), _)| i)
        };
        let piece = after.get(common..).unwrap_or_default().to_string();
        self.prefix_offset = self.read_offset;
        self.read_offset = self.ids.len();
        Ok(piece)
    }
}
