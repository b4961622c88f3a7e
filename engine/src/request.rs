//! Requests and the token log that is the source of truth of a sequence (the
//! scheduling core's types).

pub use tokenflow_core::request::{FinishReason, Request, TokenLog};
