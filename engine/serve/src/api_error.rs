//! [`ApiError`]: every way a request can fail, with its HTTP status and
//! OpenAI's error object.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use thiserror::Error;
use tokenflow_engine::dataflow::RequestError;

use crate::openai::{ErrorBody, ErrorDetail};

/// A request the server will not or could not answer.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum ApiError {
    /// The body is not JSON, or not the shape the endpoint takes.
    #[error("{message}")]
    BadJson {
        /// serde's words (they name the field and position).
        message: String,
    },
    /// A field has a value that is not served.
    #[error("{param}: {message}")]
    BadParam {
        /// The field.
        param: String,
        /// What is wrong with it.
        message: String,
    },
    /// The prompt and the tokens asked for do not fit the model's context.
    #[error(
        "this model's context is {context} tokens; the prompt has {prompt} and {max_tokens} more were asked for"
    )]
    ContextLength {
        /// The model's context length.
        context: usize,
        /// Tokens of the prompt.
        prompt: usize,
        /// Tokens asked for.
        max_tokens: usize,
    },
    /// `model` names a model this server does not serve.
    #[error("the model `{asked}` does not exist; this server serves `{served}`")]
    UnknownModel {
        /// What the request named.
        asked: String,
        /// What is served.
        served: String,
    },
    /// No or the wrong API key.
    #[error("missing or incorrect API key (send `Authorization: Bearer <key>`)")]
    Unauthorized,
    /// The queue of accepted requests is full.
    #[error(
        "{pending} requests are already waiting or running (the limit is {limit}); retry later"
    )]
    Overloaded {
        /// Requests accepted and not ended.
        pending: usize,
        /// The limit (`--queue-limit`).
        limit: usize,
    },
    /// The server is shutting down, or its engine stopped.
    #[error("the server is shutting down")]
    ShuttingDown,
    /// The engine refused or lost the request.
    #[error("{0}")]
    Engine(RequestError),
    /// Something unexpected on the server's side.
    #[error("{0}")]
    Internal(String),
    /// No such route.
    #[error("no route for {0}")]
    NotFound(String),
}

impl ApiError {
    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadJson { .. }
            | ApiError::BadParam { .. }
            | ApiError::ContextLength { .. } => StatusCode::BAD_REQUEST,
            ApiError::UnknownModel { .. } | ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::Overloaded { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Engine(e) => match e {
                RequestError::BadPrompt { .. }
                | RequestError::PastCapacity { .. }
                | RequestError::BadSampling { .. } => StatusCode::BAD_REQUEST,
                RequestError::DuplicateId { .. } | RequestError::StageFailed { .. } => {
                    StatusCode::INTERNAL_SERVER_ERROR
                }
                RequestError::NoPath { .. } | RequestError::Cancelled { .. } => {
                    StatusCode::SERVICE_UNAVAILABLE
                }
            },
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// OpenAI's error object for this error.
    pub fn body(&self) -> ErrorBody {
        let (kind, param, code): (&str, Option<&str>, Option<&str>) = match self {
            ApiError::BadJson { .. } => ("invalid_request_error", None, Some("invalid_json")),
            ApiError::BadParam { param, .. } => ("invalid_request_error", Some(param), None),
            ApiError::ContextLength { .. } => (
                "invalid_request_error",
                Some("messages"),
                Some("context_length_exceeded"),
            ),
            ApiError::UnknownModel { .. } => (
                "invalid_request_error",
                Some("model"),
                Some("model_not_found"),
            ),
            ApiError::Unauthorized => ("authentication_error", None, Some("invalid_api_key")),
            ApiError::Overloaded { .. } => ("rate_limit_error", None, Some("rate_limit_exceeded")),
            ApiError::ShuttingDown => ("server_error", None, Some("shutting_down")),
            ApiError::Engine(e) => match e {
                RequestError::BadPrompt { .. } => ("invalid_request_error", Some("prompt"), None),
                RequestError::PastCapacity { .. } => (
                    "invalid_request_error",
                    Some("max_tokens"),
                    Some("context_length_exceeded"),
                ),
                RequestError::BadSampling { .. } => ("invalid_request_error", None, None),
                RequestError::Cancelled { .. } => ("server_error", None, Some("cancelled")),
                RequestError::NoPath { .. } => ("server_error", None, Some("no_path")),
                _ => ("server_error", None, None),
            },
            ApiError::Internal(_) => ("server_error", None, None),
            ApiError::NotFound(_) => ("invalid_request_error", None, Some("not_found")),
        };
        ErrorBody {
            error: ErrorDetail {
                message: self.to_string(),
                kind: kind.into(),
                param: param.map(str::to_string),
                code: code.map(str::to_string),
            },
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status(), axum::Json(self.body())).into_response();
        if matches!(self, ApiError::Overloaded { .. } | ApiError::ShuttingDown) {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        if matches!(self, ApiError::Unauthorized) {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}
