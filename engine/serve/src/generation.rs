//! [`Generation`]: one accepted request's events turned into what a response
//! shows: text pieces (stop strings cut out, special tokens hidden), token ids,
//! and how it ended.

use std::sync::Arc;

use tokenflow_engine::FinishReason;
use tokenflow_engine::dataflow::EngineEvent;
use tokenflow_operators::tokenizer::TokenTextStream;

use crate::api_error::ApiError;
use crate::state::{ModelInfo, Ticket};
use crate::stop_text::StopText;

/// What comes next in an answer.
#[derive(Debug, Clone, PartialEq)]
pub enum Piece {
    /// A sampled token and the text it adds (possibly empty: a partial
    /// character, a special token, text held back before a possible stop string).
    Token {
        /// The token id.
        id: u32,
        /// Text to show.
        text: String,
    },
    /// The end: any text held back until now, why it ended and how many tokens it made.
    End {
        /// Text released at the end.
        text: String,
        /// `stop` or `length`.
        reason: FinishReason,
        /// Tokens generated.
        completion_tokens: usize,
    },
}

/// OpenAI's name of a finish reason.
pub fn finish_reason_name(reason: FinishReason) -> &'static str {
    match reason {
        FinishReason::Stop => "stop",
        FinishReason::Length => "length",
    }
}

/// One request's answer as it comes.
#[derive(Debug)]
pub struct Generation {
    ticket: Ticket,
    model: Arc<ModelInfo>,
    text: TokenTextStream,
    stop: StopText,
    done: bool,
}

impl Generation {
    /// The answer of `ticket`, cutting `stops` out of its text.
    pub fn new(ticket: Ticket, model: Arc<ModelInfo>, stops: Vec<String>) -> Self {
        Self {
            ticket,
            model,
            text: TokenTextStream::new(),
            stop: StopText::new(stops),
            done: false,
        }
    }

    /// The sequence id.
    pub fn seq(&self) -> u64 {
        self.ticket.seq
    }

    /// The next piece; `None` once the end was returned.
    pub async fn next(&mut self) -> Option<Result<Piece, ApiError>> {
        if self.done {
            return None;
        }
        let Some(event) = self.ticket.events.recv().await else {
            self.done = true;
            self.ticket.mark_ended();
            return Some(Err(ApiError::Internal(
                "the engine stopped before this request ended".into(),
            )));
        };
        Some(match event {
            EngineEvent::Token { token, .. } => {
                let hidden = self.model.stop_tokens.contains(&token)
                    || self.model.tokenizer.is_special(token);
                let text = if hidden {
                    String::new()
                } else {
                    match self.text.push(&self.model.tokenizer, token) {
                        Ok(piece) => self.stop.push(&piece),
                        Err(e) => {
                            return Some(Err(ApiError::Internal(format!(
                                "token {token} cannot be decoded: {e}"
                            ))));
                        }
                    }
                };
                Ok(Piece::Token { id: token, text })
            }
            EngineEvent::Finished { reason, log, .. } => {
                self.done = true;
                self.ticket.mark_ended();
                let text = if self.stop.stopped() {
                    String::new()
                } else {
                    self.stop.finish()
                };
                let reason = if self.stop.stopped() {
                    FinishReason::Stop
                } else {
                    reason
                };
                Ok(Piece::End {
                    text,
                    reason,
                    completion_tokens: log.generated.len(),
                })
            }
            EngineEvent::Refused { error, .. } => {
                self.done = true;
                self.ticket.mark_ended();
                Err(ApiError::Engine(error))
            }
        })
    }
}
