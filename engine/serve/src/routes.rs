//! The HTTP routes: OpenAI's `/v1/chat/completions`, `/v1/completions` and
//! `/v1/models`, and `/health` and `/metrics` for operators.

use std::convert::Infallible;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures_util::stream::{self, Stream, StreamExt};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use tokenflow_engine::Request;
use tokenflow_operators::SamplingParams;
use tokenflow_operators::chat::{ChatMessage, render_chat};

use crate::api_error::ApiError;
use crate::generation::{Generation, Piece, finish_reason_name};
use crate::openai::{
    ChatCompletionRequest, CommonParams, CompletionRequest, MessageContent, ModelCard, ModelList,
    PromptField, Usage,
};
use crate::prometheus;
use crate::state::AppState;

/// The server's routes over `state`.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/completions", post(completions))
        .route("/v1/models", get(models))
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .with_state(state)
}

async fn not_found(uri: Uri) -> ApiError {
    ApiError::NotFound(uri.path().to_string())
}

/// `Authorization: Bearer <key>` when the server has a key.
fn authorize(state: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    // A node's join token opens the control endpoint only.
    if let (Some(token), Some(g)) = (&state.config.join_token, given)
        && g.trim() == token
    {
        return Err(ApiError::Unauthorized);
    }
    let Some(key) = &state.config.api_key else {
        return Ok(());
    };
    match given {
        Some(g) if g.trim() == key => Ok(()),
        _ => Err(ApiError::Unauthorized),
    }
}

fn parse<T: DeserializeOwned>(body: &Bytes) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError::BadJson {
        message: format!("the body is not a valid request: {e}"),
    })
}

fn bad(param: &str, message: impl Into<String>) -> ApiError {
    ApiError::BadParam {
        param: param.into(),
        message: message.into(),
    }
}

/// What kind of answer: chat chunks or completion text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Chat,
    Text,
}

/// A request checked and tokenized, ready to admit.
struct Prepared {
    request: Request,
    stops: Vec<String>,
    stream: bool,
    include_usage: bool,
    token_ids: bool,
    kind: Kind,
}

/// Checks what chat and completions share, and builds the engine's request.
fn prepare(
    state: &AppState,
    params: &CommonParams,
    prompt: Vec<u32>,
    kind: Kind,
) -> Result<Prepared, ApiError> {
    if params.model != state.config.model_name {
        return Err(ApiError::UnknownModel {
            asked: params.model.clone(),
            served: state.config.model_name.clone(),
        });
    }
    if let Some(n) = params.n
        && n != 1
    {
        return Err(bad("n", format!("only n = 1 is served (got {n})")));
    }
    if prompt.is_empty() {
        return Err(bad(
            if kind == Kind::Chat {
                "messages"
            } else {
                "prompt"
            },
            "the prompt is empty",
        ));
    }
    let context = state.model.context_length;
    let asked = params.max_completion_tokens.or(params.max_tokens);
    if asked == Some(0) {
        return Err(bad("max_tokens", "must be at least 1"));
    }
    let room = context.saturating_sub(prompt.len());
    let max_tokens = match asked {
        Some(m) => usize::try_from(m).unwrap_or(usize::MAX),
        None => state.config.default_max_tokens.min(room).max(1),
    };
    if prompt.len() + max_tokens > context {
        return Err(ApiError::ContextLength {
            context,
            prompt: prompt.len(),
            max_tokens,
        });
    }
    let seed = match params.seed {
        Some(s) => s as u64,
        None => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64),
    };
    let sampling = SamplingParams::new(
        params.temperature.unwrap_or(1.0),
        0,
        params.top_p.unwrap_or(1.0),
        1.0,
        seed,
    )
    .map_err(|e| {
        bad(
            e.field.field(),
            format!("{} must be {}", e.value, e.requirement),
        )
    })?;
    let stops = params
        .stop
        .as_ref()
        .map(|s| s.strings())
        .unwrap_or_default();
    if stops.len() > 4 {
        return Err(bad("stop", "at most 4 stop strings"));
    }
    let stop_tokens = if params.ignore_eos {
        Vec::new()
    } else {
        state.model.stop_tokens.clone()
    };
    Ok(Prepared {
        request: Request {
            id: state.next_seq(),
            prompt,
            max_tokens,
            sampling,
            stop_tokens,
            stop_strings: stops.clone(),
        },
        stops,
        stream: params.stream,
        include_usage: params
            .stream_options
            .as_ref()
            .is_some_and(|o| o.include_usage),
        token_ids: params.return_token_ids,
        kind,
    })
}

fn chat_prompt(state: &AppState, request: &ChatCompletionRequest) -> Result<Vec<u32>, ApiError> {
    if request.messages.is_empty() {
        return Err(bad("messages", "at least one message is needed"));
    }
    let mut messages = Vec::with_capacity(request.messages.len());
    for (i, m) in request.messages.iter().enumerate() {
        let role = match m.role.as_str() {
            "developer" => "system",
            r @ ("system" | "user" | "assistant") => r,
            other => {
                return Err(bad(
                    &format!("messages[{i}].role"),
                    format!("`{other}` is not served (system, developer, user, assistant)"),
                ));
            }
        };
        let content = match &m.content {
            MessageContent::Text(t) => t.clone(),
            MessageContent::Parts(parts) => {
                let mut text = String::new();
                for p in parts {
                    match (p.kind.as_str(), &p.text) {
                        ("text", Some(t)) => text.push_str(t),
                        (kind, _) => {
                            return Err(bad(
                                &format!("messages[{i}].content"),
                                format!(
                                    "content parts of type `{kind}` are not served (text only)"
                                ),
                            ));
                        }
                    }
                }
                text
            }
        };
        messages.push(ChatMessage::new(role, content));
    }
    encode(state, &render_chat(&messages), "messages")
}

fn encode(state: &AppState, text: &str, param: &str) -> Result<Vec<u32>, ApiError> {
    state
        .model
        .tokenizer
        .encode(text)
        .map_err(|e| bad(param, format!("cannot be tokenized: {e}")))
}

fn completion_prompt(state: &AppState, request: &CompletionRequest) -> Result<Vec<u32>, ApiError> {
    match &request.prompt {
        PromptField::Text(t) => encode(state, t, "prompt"),
        PromptField::Texts(ts) if ts.len() == 1 => encode(state, &ts[0], "prompt"),
        PromptField::Texts(ts) => Err(bad(
            "prompt",
            format!("only one prompt per request is served (got {})", ts.len()),
        )),
        PromptField::Tokens(ids) => {
            let vocab = state.model.tokenizer.vocab_size();
            match ids.iter().find(|&&t| t as usize >= vocab) {
                Some(t) => Err(bad(
                    "prompt",
                    format!("token {t} is outside the vocabulary of {vocab}"),
                )),
                None => Ok(ids.clone()),
            }
        }
    }
}

async fn chat_completions(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let prepared = authorize(&state, &headers)
        .and_then(|()| parse::<ChatCompletionRequest>(&body))
        .and_then(|r| {
            let prompt = chat_prompt(&state, &r)?;
            prepare(&state, &r.params, prompt, Kind::Chat)
        });
    answer(state, prepared).await
}

async fn completions(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let prepared = authorize(&state, &headers)
        .and_then(|()| parse::<CompletionRequest>(&body))
        .and_then(|r| {
            let prompt = completion_prompt(&state, &r)?;
            prepare(&state, &r.params, prompt, Kind::Text)
        });
    answer(state, prepared).await
}

/// Admits `prepared` and answers it, streamed or whole.
async fn answer(state: Arc<AppState>, prepared: Result<Prepared, ApiError>) -> Response {
    let prepared = match prepared {
        Ok(p) => p,
        Err(e) => {
            if e.status().is_client_error() && e.status() != StatusCode::TOO_MANY_REQUESTS {
                state.count_rejected();
            }
            return e.into_response();
        }
    };
    let prompt_tokens = prepared.request.prompt.len();
    let ticket = match state.admit(prepared.request.clone()) {
        Ok(t) => t,
        Err(e) => return e.into_response(),
    };
    let shape = Shape {
        kind: prepared.kind,
        id: match prepared.kind {
            Kind::Chat => format!("chatcmpl-{}", ticket.seq),
            Kind::Text => format!("cmpl-{}", ticket.seq),
        },
        created: now_s(),
        model: state.config.model_name.clone(),
        token_ids: prepared.token_ids,
    };
    let mut generation = Generation::new(ticket, Arc::clone(&state.model), prepared.stops);
    if prepared.stream {
        // The first event decides the status: a refusal is an error response, not a stream.
        let first = match generation.next().await {
            Some(Ok(p)) => p,
            Some(Err(e)) => return e.into_response(),
            None => return ApiError::Internal("no answer".into()).into_response(),
        };
        let events = stream_events(
            generation,
            shape,
            prompt_tokens,
            prepared.include_usage,
            first,
        );
        return Sse::new(events)
            .keep_alive(KeepAlive::default())
            .into_response();
    }
    let mut text = String::new();
    let mut ids = Vec::new();
    loop {
        match generation.next().await {
            Some(Ok(Piece::Token { id, text: t })) => {
                ids.push(id);
                text.push_str(&t);
            }
            Some(Ok(Piece::End {
                text: t,
                reason,
                completion_tokens,
            })) => {
                text.push_str(&t);
                let usage = Usage::new(prompt_tokens, completion_tokens);
                return axum::Json(shape.whole(&text, &ids, finish_reason_name(reason), usage))
                    .into_response();
            }
            Some(Err(e)) => return e.into_response(),
            None => return ApiError::Internal("no answer".into()).into_response(),
        }
    }
}

fn now_s() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// How an answer's JSON looks: chat or text completion, its id and model.
#[derive(Debug, Clone)]
struct Shape {
    kind: Kind,
    id: String,
    created: u64,
    model: String,
    token_ids: bool,
}

impl Shape {
    /// One choice of a streamed chunk.
    fn chunk_choice(
        &self,
        text: Option<&str>,
        ids: &[u32],
        finish: Option<&str>,
        first: bool,
    ) -> Value {
        let mut choice = match self.kind {
            Kind::Chat => {
                let mut delta = serde_json::Map::new();
                if first {
                    delta.insert("role".into(), json!("assistant"));
                }
                if let Some(t) = text {
                    delta.insert("content".into(), json!(t));
                }
                json!({"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish})
            }
            Kind::Text => {
                json!({"index": 0, "text": text.unwrap_or(""), "logprobs": null, "finish_reason": finish})
            }
        };
        if self.token_ids && !ids.is_empty() {
            choice["token_ids"] = json!(ids);
        }
        choice
    }

    fn object(&self, streamed: bool) -> &'static str {
        match (self.kind, streamed) {
            (Kind::Chat, true) => "chat.completion.chunk",
            (Kind::Chat, false) => "chat.completion",
            (Kind::Text, _) => "text_completion",
        }
    }

    /// A streamed chunk holding `choices` (and `usage`, for the last one).
    fn chunk(&self, choices: Vec<Value>, usage: Option<Usage>) -> Value {
        let mut v = json!({
            "id": self.id, "object": self.object(true), "created": self.created,
            "model": self.model, "choices": choices,
        });
        if let Some(u) = usage {
            v["usage"] = json!(u);
        }
        v
    }

    /// A whole (non-streamed) answer.
    fn whole(&self, text: &str, ids: &[u32], finish: &str, usage: Usage) -> Value {
        let mut choice = match self.kind {
            Kind::Chat => json!({
                "index": 0, "message": {"role": "assistant", "content": text},
                "logprobs": null, "finish_reason": finish,
            }),
            Kind::Text => {
                json!({"index": 0, "text": text, "logprobs": null, "finish_reason": finish})
            }
        };
        if self.token_ids {
            choice["token_ids"] = json!(ids);
        }
        json!({
            "id": self.id, "object": self.object(false), "created": self.created,
            "model": self.model, "choices": [choice], "usage": usage,
        })
    }
}

/// Where a streamed answer is.
enum StreamStep {
    /// The opening chunk is yet to go out (chat's role), then `first`.
    Opening(Generation, Piece),
    /// Streaming pieces as they come.
    Running(Generation),
    /// Only `[DONE]` is left.
    Done,
    /// Everything went out.
    Over,
}

fn data(value: &Value) -> Event {
    Event::default().data(value.to_string())
}

/// The server-sent events of a streamed answer: one chunk per token, the
/// finish reason, usage if asked for, an error object if the engine failed the
/// request, then `[DONE]`. Dropping the stream (the client went away) drops
/// the ticket, which cancels the sequence.
fn stream_events(
    generation: Generation,
    shape: Shape,
    prompt_tokens: usize,
    include_usage: bool,
    first: Piece,
) -> impl Stream<Item = Result<Event, Infallible>> {
    let shape = Arc::new(shape);
    stream::unfold(StreamStep::Opening(generation, first), move |step| {
        let shape = Arc::clone(&shape);
        async move {
            let (piece, generation, first) = match step {
                StreamStep::Over => return None,
                StreamStep::Done => {
                    return Some((vec![Event::default().data("[DONE]")], StreamStep::Over));
                }
                StreamStep::Opening(g, p) => (Some(Ok(p)), g, true),
                StreamStep::Running(mut g) => (g.next().await, g, false),
            };
            Some(match piece {
                Some(Ok(Piece::Token { id, text })) => {
                    let choice = shape.chunk_choice(Some(&text), &[id], None, first);
                    (
                        vec![data(&shape.chunk(vec![choice], None))],
                        StreamStep::Running(generation),
                    )
                }
                Some(Ok(Piece::End {
                    text,
                    reason,
                    completion_tokens,
                })) => {
                    let text = (!text.is_empty()).then_some(text.as_str());
                    let choice =
                        shape.chunk_choice(text, &[], Some(finish_reason_name(reason)), first);
                    let mut events = vec![data(&shape.chunk(vec![choice], None))];
                    if include_usage {
                        let usage = Usage::new(prompt_tokens, completion_tokens);
                        events.push(data(&shape.chunk(vec![], Some(usage))));
                    }
                    (events, StreamStep::Done)
                }
                Some(Err(e)) => (vec![data(&json!(e.body()))], StreamStep::Done),
                None => (vec![], StreamStep::Done),
            })
        }
    })
    .flat_map(|events| stream::iter(events.into_iter().map(Ok)))
}

async fn models(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    if let Err(e) = authorize(&state, &headers) {
        return e.into_response();
    }
    axum::Json(ModelList {
        object: "list".into(),
        data: vec![ModelCard {
            id: state.config.model_name.clone(),
            object: "model".into(),
            created: state.created,
            owned_by: "tokenflow".into(),
        }],
    })
    .into_response()
}

/// 200 when ready to serve (every local worker has its stages loaded and every
/// stage a live replica), 503 otherwise.
async fn health(State(state): State<Arc<AppState>>) -> Response {
    let m = state.board().snapshot();
    let ready = state.ready();
    let body = json!({
        "ready": ready,
        "workers_loaded": state.board().workers_posted(),
        "workers": state.local_workers,
        "stages_without_replica": m.stages_down,
        "pending": state.pending(),
        "in_flight": m.in_flight,
        "queued": m.queued,
    });
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, axum::Json(body)).into_response()
}

async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    let text = prometheus::render(&state.board().snapshot(), &state.http_counters());
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response()
}
