//! The OpenAI wire format: requests and responses of `/v1/chat/completions`,
//! `/v1/completions` and `/v1/models`, as serde types. Fields tokenflow does
//! not use are accepted and ignored, as OpenAI's own server does for new ones.

use serde::{Deserialize, Serialize};

/// `stop`: one string or several.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum StopField {
    /// One stop string.
    One(String),
    /// Several.
    Many(Vec<String>),
}

impl StopField {
    /// The stop strings, empty ones left out.
    pub fn strings(&self) -> Vec<String> {
        match self {
            StopField::One(s) => vec![s.clone()],
            StopField::Many(v) => v.clone(),
        }
        .into_iter()
        .filter(|s| !s.is_empty())
        .collect()
    }
}

/// `stream_options`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct StreamOptions {
    /// Send a last chunk with `usage` before `[DONE]`.
    #[serde(default)]
    pub include_usage: bool,
}

/// What chat and completion requests share.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct CommonParams {
    /// The model asked for.
    pub model: String,
    /// Most tokens to generate.
    pub max_tokens: Option<u64>,
    /// The newer name of `max_tokens` (chat).
    pub max_completion_tokens: Option<u64>,
    /// Sampling temperature (OpenAI's default is 1; 0 is greedy).
    pub temperature: Option<f32>,
    /// Nucleus threshold.
    pub top_p: Option<f32>,
    /// Sampling seed (random when absent).
    pub seed: Option<i64>,
    /// Stop strings.
    pub stop: Option<StopField>,
    /// Choices per request: only 1 is served.
    pub n: Option<u64>,
    /// Stream one chunk per token as server-sent events.
    #[serde(default)]
    pub stream: bool,
    /// Streaming options.
    pub stream_options: Option<StreamOptions>,
    /// An extension (as vLLM's): also return the generated token ids.
    #[serde(default)]
    pub return_token_ids: bool,
    /// An extension: keep generating past the end-of-sequence token.
    #[serde(default)]
    pub ignore_eos: bool,
}

/// Message content: a string, or OpenAI's list of typed parts (text only here).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum MessageContent {
    /// Plain text.
    Text(String),
    /// `[{"type": "text", "text": "..."}]`.
    Parts(Vec<ContentPart>),
}

/// One part of a message's content.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct ContentPart {
    /// `text` is the only type served.
    #[serde(rename = "type")]
    pub kind: String,
    /// The text of a `text` part.
    #[serde(default)]
    pub text: Option<String>,
}

/// One chat message.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct ChatMessageIn {
    /// `system`, `user`, `assistant` (`developer` counts as `system`).
    pub role: String,
    /// What it says.
    pub content: MessageContent,
}

/// `POST /v1/chat/completions`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct ChatCompletionRequest {
    /// The conversation.
    pub messages: Vec<ChatMessageIn>,
    /// Everything else.
    #[serde(flatten)]
    pub params: CommonParams,
}

/// `prompt` of a completion: text, one text in a list, or token ids.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum PromptField {
    /// Text.
    Text(String),
    /// Token ids.
    Tokens(Vec<u32>),
    /// A batch of texts (only one is served).
    Texts(Vec<String>),
}

/// `POST /v1/completions`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct CompletionRequest {
    /// The prompt.
    pub prompt: PromptField,
    /// Everything else.
    #[serde(flatten)]
    pub params: CommonParams,
}

/// Token counts of an answer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// Tokens of the prompt.
    pub prompt_tokens: usize,
    /// Tokens generated.
    pub completion_tokens: usize,
    /// Their sum.
    pub total_tokens: usize,
}

impl Usage {
    /// Counts for a prompt and a completion.
    pub fn new(prompt_tokens: usize, completion_tokens: usize) -> Self {
        Self {
            prompt_tokens,
            completion_tokens,
            total_tokens: prompt_tokens + completion_tokens,
        }
    }
}

/// OpenAI's error object, the body of every 4xx and 5xx.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// What went wrong.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorDetail {
    /// For a person.
    pub message: String,
    /// `invalid_request_error`, `authentication_error`, `rate_limit_error`, `server_error`, ...
    #[serde(rename = "type")]
    pub kind: String,
    /// The request field at fault, if one is.
    pub param: Option<String>,
    /// A machine-readable code (`context_length_exceeded`, `model_not_found`, ...).
    pub code: Option<String>,
}

/// One entry of `GET /v1/models`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelCard {
    /// The name requests give as `model`.
    pub id: String,
    /// Always `model`.
    pub object: String,
    /// When the server started (seconds since the epoch).
    pub created: u64,
    /// Always `tokenflow`.
    pub owned_by: String,
}

/// `GET /v1/models`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelList {
    /// Always `list`.
    pub object: String,
    /// The models served.
    pub data: Vec<ModelCard>,
}
