//! tokenflow as a service: an OpenAI-compatible HTTP endpoint over the
//! running dataflow (`tokenflow serve`), and a client that load-tests any
//! OpenAI-compatible endpoint (`tokenflow bench --url`).
//!
//! Requests enter the engine at any time through its live channel
//! ([`tokenflow_engine::dataflow::live`]); each sampled token comes back
//! through the run's observer to the handler of its request and out as a
//! server-sent event. A client that goes away cancels its sequence, which
//! frees its KV on every stage.
//!
//! Endpoints: `POST /v1/chat/completions`, `POST /v1/completions`,
//! `GET /v1/models`, `GET /health`, `GET /metrics` (Prometheus text).

pub mod api_error;
pub mod client;
pub mod feed;
pub mod generation;
pub mod membership;
pub mod openai;
pub mod prometheus;
pub mod routes;
pub mod server;
pub mod state;
pub mod stop_text;

pub use api_error::ApiError;
pub use server::{ServeError, ServeSpec, serve};
pub use state::{ModelInfo, ServeConfig};
