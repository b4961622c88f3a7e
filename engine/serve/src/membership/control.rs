//! The coordinator's control endpoint for nodes, under `/control/`: every
//! call must carry the join token (`Authorization: Bearer TOKEN`); a client's
//! API key does not open it. `POST /control/join` registers a node,
//! `POST /control/leave` drains one, `GET /control/nodes`, `/control/epochs`
//! and `/control/history` show the registry, the membership epochs (with the
//! time each change took, phase by phase) and the availability history.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::de::DeserializeOwned;
use serde_json::json;

use super::coordinator::{Coordinator, JoinError};
use super::history::unix_now;
use super::protocol::{Leave, Registration, RegistrationError, Welcome, token_matches};

/// An error of the control endpoint: a status and a message naming the problem.
#[derive(Debug)]
pub struct ControlError {
    status: StatusCode,
    message: String,
}

impl ControlError {
    /// An error with `status`.
    pub fn with_status(status: StatusCode, message: impl Into<String>) -> Self {
        Self::new(status, message)
    }

    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }
}

impl IntoResponse for ControlError {
    fn into_response(self) -> Response {
        let kind = match self.status {
            StatusCode::UNAUTHORIZED => "authentication_error",
            s if s.is_client_error() => "invalid_request_error",
            _ => "server_error",
        };
        let mut response = (
            self.status,
            axum::Json(json!({"error": {"message": self.message, "type": kind}})),
        )
            .into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

/// The bearer token of `headers`, if any.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
}

/// Refuses a call without the join token, and logs it.
pub fn check_token(
    headers: &HeaderMap,
    token: &str,
    uri: &Uri,
    who: &str,
) -> Result<(), ControlError> {
    if token_matches(bearer(headers), token) {
        return Ok(());
    }
    let why = if bearer(headers).is_some() {
        "a wrong token"
    } else {
        "no token"
    };
    eprintln!("{who}: refused {} with {why} (401)", uri.path());
    Err(ControlError::new(
        StatusCode::UNAUTHORIZED,
        "this endpoint needs the cluster's join token (Authorization: Bearer TOKEN)",
    ))
}

/// Parses a JSON body, naming what is wrong with it.
pub fn parse_body<T: DeserializeOwned>(body: &Bytes) -> Result<T, ControlError> {
    serde_json::from_slice(body).map_err(|e| {
        ControlError::new(
            StatusCode::BAD_REQUEST,
            format!("the body is not a valid message: {e}"),
        )
    })
}

/// The control routes over `coordinator`.
pub fn control_router(coordinator: Arc<Coordinator>) -> Router {
    Router::new()
        .route("/control/join", post(join))
        .route("/control/leave", post(leave))
        .route("/control/nodes", get(nodes))
        .route("/control/epochs", get(epochs))
        .route("/control/history", get(history))
        .route("/control/links", get(links))
        .route("/control/model/manifest", get(manifest))
        .route("/control/model/bytes", get(model_bytes))
        .with_state(coordinator)
}

fn authorize(c: &Coordinator, headers: &HeaderMap, uri: &Uri) -> Result<(), ControlError> {
    check_token(headers, &c.config().join_token, uri, "coordinator")
}

async fn join(
    State(c): State<Arc<Coordinator>>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Result<axum::Json<Welcome>, ControlError> {
    authorize(&c, &headers, &uri)?;
    let reg: Registration = parse_body(&body)?;
    let name = reg.name.clone();
    let joined = {
        let c = Arc::clone(&c);
        tokio::task::spawn_blocking(move || c.join(reg))
            .await
            .map_err(|e| ControlError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
    };
    match joined {
        Ok(()) => Ok(axum::Json(Welcome {
            node: name,
            heartbeat_ms: c.config().heartbeat.as_millis() as u64,
        })),
        Err(e) => {
            let status = match &e {
                JoinError::Invalid(RegistrationError::OtherModel { .. }) => StatusCode::CONFLICT,
                JoinError::Invalid(_) => StatusCode::BAD_REQUEST,
                JoinError::Stopping => StatusCode::SERVICE_UNAVAILABLE,
                JoinError::History(_) | JoinError::Thread(_) => StatusCode::INTERNAL_SERVER_ERROR,
            };
            eprintln!("coordinator: refused node `{name}`: {e}");
            Err(ControlError::new(
                status,
                format!("registration refused: {e}"),
            ))
        }
    }
}

async fn leave(
    State(c): State<Arc<Coordinator>>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Result<axum::Json<serde_json::Value>, ControlError> {
    authorize(&c, &headers, &uri)?;
    let leave: Leave = parse_body(&body)?;
    if c.leave(&leave.name, leave.incarnation) {
        Ok(axum::Json(json!({"node": leave.name, "draining": true})))
    } else {
        Err(ControlError::new(
            StatusCode::NOT_FOUND,
            format!(
                "no node `{}` of incarnation {} is registered",
                leave.name, leave.incarnation
            ),
        ))
    }
}

async fn nodes(
    State(c): State<Arc<Coordinator>>,
    uri: Uri,
    headers: HeaderMap,
) -> Result<axum::Json<serde_json::Value>, ControlError> {
    authorize(&c, &headers, &uri)?;
    let estimates = c.history().estimates(unix_now());
    let nodes: Vec<serde_json::Value> = c
        .nodes()
        .into_iter()
        .map(|(reg, status, leaving)| {
            json!({
                "registration": reg,
                "status": status,
                "leaving": leaving,
                "estimate": estimates.get(&reg.name).copied().flatten(),
            })
        })
        .collect();
    Ok(axum::Json(json!({ "nodes": nodes })))
}

async fn epochs(
    State(c): State<Arc<Coordinator>>,
    uri: Uri,
    headers: HeaderMap,
) -> Result<axum::Json<serde_json::Value>, ControlError> {
    authorize(&c, &headers, &uri)?;
    let c2 = Arc::clone(&c);
    let records = tokio::task::spawn_blocking(move || c2.records())
        .await
        .map_err(|e| ControlError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    let (sessions, waiting) = c.relay().counts();
    Ok(axum::Json(json!({
        "epochs": records,
        "sessions": sessions,
        "waiting": waiting,
        "moved": c.relay().moved(),
    })))
}

async fn history(
    State(c): State<Arc<Coordinator>>,
    uri: Uri,
    headers: HeaderMap,
) -> Result<axum::Json<serde_json::Value>, ControlError> {
    authorize(&c, &headers, &uri)?;
    Ok(axum::Json(json!({
        "records": c.history().records(),
        "estimates": c.history().estimates(unix_now()),
    })))
}

async fn manifest(
    State(c): State<Arc<Coordinator>>,
    uri: Uri,
    headers: HeaderMap,
) -> Result<axum::Json<super::model_fetch::ModelManifest>, ControlError> {
    authorize(&c, &headers, &uri)?;
    let c2 = Arc::clone(&c);
    let manifest = tokio::task::spawn_blocking(move || c2.manifest().cloned())
        .await
        .map_err(|e| ControlError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
        .map_err(|e| ControlError::new(StatusCode::INTERNAL_SERVER_ERROR, e))?;
    Ok(axum::Json(manifest))
}

/// Parses `Range: bytes=A-B` (one range, both ends given, B inclusive).
fn parse_range(headers: &HeaderMap, len: u64) -> Result<std::ops::Range<u64>, ControlError> {
    let bad = |m: String| ControlError::new(StatusCode::RANGE_NOT_SATISFIABLE, m);
    let text = headers
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| bad("a Range: bytes=A-B header is required".into()))?;
    let spec = text
        .strip_prefix("bytes=")
        .ok_or_else(|| bad(format!("range `{text}`: expected bytes=A-B")))?;
    let (a, b) = spec
        .split_once('-')
        .ok_or_else(|| bad(format!("range `{text}`: expected bytes=A-B")))?;
    let (Ok(a), Ok(b)) = (a.trim().parse::<u64>(), b.trim().parse::<u64>()) else {
        return Err(bad(format!("range `{text}`: expected two byte offsets")));
    };
    // At most 256 MiB per call: a tensor, not the whole of a large file at once.
    if a > b || b >= len || b - a >= 256 << 20 {
        return Err(bad(format!(
            "range {a}-{b} is not within the model file's {len} bytes (or is over 256 MiB)"
        )));
    }
    Ok(a..b + 1)
}

async fn model_bytes(
    State(c): State<Arc<Coordinator>>,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Response, ControlError> {
    authorize(&c, &headers, &uri)?;
    let path = c.model_path().to_path_buf();
    let len = std::fs::metadata(&path)
        .map_err(|e| ControlError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
        .len();
    let range = parse_range(&headers, len)?;
    let r = range.clone();
    let bytes = tokio::task::spawn_blocking(move || super::model_fetch::serve_range(&path, r))
        .await
        .map_err(|e| ControlError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
        .map_err(|e| ControlError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    let mut response = (StatusCode::PARTIAL_CONTENT, bytes).into_response();
    let content_range = format!("bytes {}-{}/{len}", range.start, range.end - 1);
    if let Ok(v) = HeaderValue::from_str(&content_range) {
        response.headers_mut().insert(header::CONTENT_RANGE, v);
    }
    Ok(response)
}

async fn links(
    State(c): State<Arc<Coordinator>>,
    uri: Uri,
    headers: HeaderMap,
) -> Result<axum::Json<serde_json::Value>, ControlError> {
    authorize(&c, &headers, &uri)?;
    let links: Vec<serde_json::Value> = c
        .links()
        .into_iter()
        .map(|((a, b), m)| json!({"a": a, "b": b, "rtt_ms": m.rtt_ms, "gbps": m.gbps}))
        .collect();
    Ok(axum::Json(json!({ "links": links })))
}
