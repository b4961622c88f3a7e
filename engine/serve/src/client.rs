//! A load generator for any OpenAI-compatible endpoint (tokenflow's own,
//! llama.cpp's `llama-server`, vLLM): it sends streamed `/v1/completions`
//! requests on a schedule and measures, on the client side, time to first
//! token, the gaps between tokens and end-to-end latency from the chunks as
//! they arrive.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::{Value, json};
use thiserror::Error;
use tokio::sync::Semaphore;

use crate::openai::ErrorBody;

/// Why a request of the load failed.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum ClientError {
    /// The connection failed or broke.
    #[error("{url}: {message}")]
    Http {
        /// The URL asked.
        url: String,
        /// What failed.
        message: String,
    },
    /// The server answered with an error status (and, usually, OpenAI's error object).
    #[error("{url}: HTTP {status}: {message}")]
    Status {
        /// The URL asked.
        url: String,
        /// The status code.
        status: u16,
        /// The error's message, or the body.
        message: String,
    },
    /// The server sent an error event in the stream.
    #[error("error event in the stream: {0}")]
    Stream(String),
    /// Something that is not the OpenAI format.
    #[error("unexpected answer: {0}")]
    Protocol(String),
    /// The base URL is not usable.
    #[error("--url {0}: expected http://HOST:PORT")]
    BadUrl(String),
}

/// A client of one endpoint.
#[derive(Debug, Clone)]
pub struct OpenAiClient {
    http: reqwest::Client,
    base: String,
    api_key: Option<String>,
}

/// One request's client-side timeline and result.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StreamedAnswer {
    /// The text, concatenated.
    pub text: String,
    /// Token ids, when the server returns them (tokenflow's `return_token_ids`).
    pub token_ids: Vec<u32>,
    /// How it ended (`stop`, `length`).
    pub finish_reason: Option<String>,
    /// Tokens generated, from `usage` when sent, otherwise chunks with a token.
    pub completion_tokens: usize,
    /// Send to the first chunk with a token.
    pub ttft: Duration,
    /// Gaps between consecutive chunks with tokens.
    pub gaps: Vec<Duration>,
    /// Send to `[DONE]`.
    pub total: Duration,
}

fn http_error(url: &str, e: reqwest::Error) -> ClientError {
    ClientError::Http {
        url: url.to_string(),
        message: e.to_string(),
    }
}

/// Where `needle` first starts in `hay`.
fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The events' `data:` payloads complete in `buffer`, taken out of it (a
/// partial event, or a character cut between reads, stays for the next read).
fn take_events(buffer: &mut Vec<u8>) -> Vec<String> {
    let mut out = Vec::new();
    loop {
        let end = [(&b"\r\n\r\n"[..], 4), (&b"\n\n"[..], 2)]
            .iter()
            .filter_map(|(sep, n)| find(buffer, sep).map(|i| (i, *n)))
            .min();
        let Some((at, n)) = end else {
            return out;
        };
        let event = String::from_utf8_lossy(&buffer[..at]).into_owned();
        buffer.drain(..at + n);
        let data: Vec<&str> = event
            .lines()
            .filter_map(|l| l.strip_prefix("data:"))
            .map(|d| d.strip_prefix(' ').unwrap_or(d))
            .collect();
        if !data.is_empty() {
            out.push(data.join("\n"));
        }
    }
}

impl OpenAiClient {
    /// A client of `base` (`http://host:port`, with or without `/v1`).
    pub fn new(base: &str, api_key: Option<String>) -> Result<Self, ClientError> {
        let trimmed = base.trim_end_matches('/');
        let trimmed = trimmed.strip_suffix("/v1").unwrap_or(trimmed);
        if !trimmed.starts_with("http://") || trimmed.len() <= "http://".len() {
            return Err(ClientError::BadUrl(base.to_string()));
        }
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(1024)
            .build()
            .map_err(|e| http_error(base, e))?;
        Ok(Self {
            http,
            base: trimmed.to_string(),
            api_key,
        })
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let r = self.http.request(method, format!("{}{path}", self.base));
        match &self.api_key {
            Some(k) => r.bearer_auth(k),
            None => r,
        }
    }

    async fn check(
        url: &str,
        response: reqwest::Response,
    ) -> Result<reqwest::Response, ClientError> {
        if response.status().is_success() {
            return Ok(response);
        }
        let status = response.status().as_u16();
        let body = response.text().await.unwrap_or_default();
        let message = serde_json::from_str::<ErrorBody>(&body)
            .map(|e| e.error.message)
            .unwrap_or(body);
        Err(ClientError::Status {
            url: url.to_string(),
            status,
            message,
        })
    }

    /// The ids of `GET /v1/models`.
    pub async fn models(&self) -> Result<Vec<String>, ClientError> {
        let url = format!("{}/v1/models", self.base);
        let response = self
            .request(reqwest::Method::GET, "/v1/models")
            .send()
            .await
            .map_err(|e| http_error(&url, e))?;
        let text = Self::check(&url, response)
            .await?
            .text()
            .await
            .map_err(|e| http_error(&url, e))?;
        // Only the ids: servers differ in the other fields of a model card.
        let list: Value = serde_json::from_str(&text)
            .map_err(|e| ClientError::Protocol(format!("{url}: {e}: {text}")))?;
        let ids = list["data"].as_array().map(|models| {
            models
                .iter()
                .filter_map(|m| m["id"].as_str().map(str::to_string))
                .collect::<Vec<_>>()
        });
        ids.ok_or_else(|| ClientError::Protocol(format!("{url}: no `data` list of models: {text}")))
    }

    /// Streams `body` (a chat or completion request; `stream` and
    /// `stream_options.include_usage` are set here) to `path` and times it.
    pub async fn stream(&self, path: &str, mut body: Value) -> Result<StreamedAnswer, ClientError> {
        body["stream"] = json!(true);
        body["stream_options"] = json!({"include_usage": true});
        let url = format!("{}{path}", self.base);
        let start = Instant::now();
        let response = self
            .request(reqwest::Method::POST, path)
            .json(&body)
            .send()
            .await
            .map_err(|e| http_error(&url, e))?;
        let mut bytes = Self::check(&url, response).await?.bytes_stream();
        let mut answer = StreamedAnswer::default();
        let mut buffer = Vec::new();
        let mut last: Option<Instant> = None;
        let mut token_chunks = 0usize;
        let mut usage_tokens = None;
        while let Some(chunk) = bytes.next().await {
            buffer.extend_from_slice(&chunk.map_err(|e| http_error(&url, e))?);
            for data in take_events(&mut buffer) {
                if data.trim() == "[DONE]" {
                    answer.total = start.elapsed();
                    answer.completion_tokens = usage_tokens.unwrap_or(token_chunks);
                    return Ok(answer);
                }
                let v: Value = serde_json::from_str(&data)
                    .map_err(|e| ClientError::Protocol(format!("{e}: {data}")))?;
                if let Some(err) = v.get("error") {
                    return Err(ClientError::Stream(
                        err.get("message")
                            .and_then(Value::as_str)
                            .unwrap_or("?")
                            .to_string(),
                    ));
                }
                if let Some(n) = v
                    .pointer("/usage/completion_tokens")
                    .and_then(Value::as_u64)
                {
                    usage_tokens = Some(n as usize);
                }
                let Some(choice) = v.pointer("/choices/0") else {
                    continue;
                };
                let text = choice
                    .pointer("/delta/content")
                    .or_else(|| choice.get("text"))
                    .and_then(Value::as_str)
                    .unwrap_or("");
                let ids: Vec<u32> = choice
                    .get("token_ids")
                    .and_then(Value::as_array)
                    .map(|a| {
                        a.iter()
                            .filter_map(|t| t.as_u64().map(|t| t as u32))
                            .collect()
                    })
                    .unwrap_or_default();
                if let Some(reason) = choice.get("finish_reason").and_then(Value::as_str) {
                    answer.finish_reason = Some(reason.to_string());
                }
                if text.is_empty() && ids.is_empty() {
                    continue;
                }
                let now = Instant::now();
                match last {
                    None => answer.ttft = now - start,
                    Some(t) => answer.gaps.push(now - t),
                }
                last = Some(now);
                token_chunks += ids.len().max(1);
                answer.text.push_str(text);
                answer.token_ids.extend(ids);
            }
        }
        Err(ClientError::Protocol(
            "the stream ended without [DONE]".into(),
        ))
    }
}

/// A load request's prompt as sent in `/v1/completions`' `prompt` field.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(untagged)]
pub enum LoadPrompt {
    /// Token ids, exactly the tokens meant (tokenflow, vLLM and llama.cpp's
    /// `llama-server` take them).
    Tokens(Vec<u32>),
    /// Text, tokenized again by the server (for servers that take only text,
    /// such as llama-cpp-python's; the token count may differ a little).
    Text(String),
}

/// One request of a load, as the engine's own bench makes them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadRequest {
    /// The prompt.
    pub prompt: LoadPrompt,
    /// Tokens to generate (the end-of-sequence token is ignored).
    pub max_tokens: usize,
}

/// When the requests of a load are sent.
#[derive(Debug, Clone, PartialEq)]
pub enum LoadSchedule {
    /// Request `i` at `offsets_us[i]` after the start (open loop).
    At(Vec<u64>),
    /// This many in flight; each completion sends the next (closed loop).
    Closed(usize),
}

/// What a load measured.
#[derive(Debug, Clone)]
pub struct LoadOutcome {
    /// Per request, in order: its answer or why it failed.
    pub answers: Vec<Result<StreamedAnswer, ClientError>>,
    /// First send to the last answer.
    pub wall: Duration,
}

/// Sends `requests` to `client` on `schedule` as greedy streamed completions
/// of `model`, calling `progress` after each answer.
pub fn run_load(
    client: &OpenAiClient,
    model: &str,
    requests: &[LoadRequest],
    schedule: &LoadSchedule,
    progress: impl Fn(&Result<StreamedAnswer, ClientError>) + Send + Sync + 'static,
) -> Result<LoadOutcome, ClientError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| ClientError::Http {
            url: client.base.clone(),
            message: e.to_string(),
        })?;
    let progress = Arc::new(progress);
    runtime.block_on(async {
        let limit = match schedule {
            LoadSchedule::Closed(n) => (*n).max(1),
            LoadSchedule::At(_) => Semaphore::MAX_PERMITS,
        };
        let permits = Arc::new(Semaphore::new(limit));
        let start = Instant::now();
        let mut tasks = Vec::with_capacity(requests.len());
        for (i, r) in requests.iter().enumerate() {
            if let LoadSchedule::At(offsets) = schedule {
                let at = start + Duration::from_micros(offsets.get(i).copied().unwrap_or(0));
                tokio::time::sleep_until(at.into()).await;
            }
            let permit = Arc::clone(&permits)
                .acquire_owned()
                .await
                .map_err(|e| ClientError::Protocol(e.to_string()))?;
            let body = json!({
                "model": model, "prompt": r.prompt, "max_tokens": r.max_tokens,
                "temperature": 0, "ignore_eos": true, "return_token_ids": true,
            });
            let client = client.clone();
            let progress = Arc::clone(&progress);
            tasks.push(tokio::spawn(async move {
                let answer = client.stream("/v1/completions", body).await;
                drop(permit);
                progress(&answer);
                answer
            }));
        }
        let mut answers = Vec::with_capacity(tasks.len());
        for t in tasks {
            answers.push(t.await.map_err(|e| ClientError::Protocol(e.to_string()))?);
        }
        Ok(LoadOutcome {
            answers,
            wall: start.elapsed(),
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_cut_at_blank_lines_whatever_the_line_ends() {
        let mut b = b"data: {\"a\":1}\n\ndata: [DONE]\r\n\r\ndata: par".to_vec();
        assert_eq!(
            take_events(&mut b),
            vec!["{\"a\":1}".to_string(), "[DONE]".to_string()]
        );
        assert_eq!(b, b"data: par");
        b.extend_from_slice(b"tial\n\n: comment\n\n");
        assert_eq!(take_events(&mut b), vec!["partial".to_string()]);
        assert!(b.is_empty());
    }

    #[test]
    fn a_url_must_be_http() {
        assert!(OpenAiClient::new("ftp://x", None).is_err());
        assert!(OpenAiClient::new("http://", None).is_err());
        assert_eq!(
            OpenAiClient::new("http://h:1/v1/", None).unwrap().base,
            "http://h:1"
        );
    }
}
