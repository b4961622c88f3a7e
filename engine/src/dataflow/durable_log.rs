//! An append-only, durable log of what a run has produced, so a run killed at
//! any point resumes where it stopped: every request once, with all its tokens.
//!
//! One JSON object per line: a `Submit` for each request, a `Token` for each
//! generated token, an `End` when a request finishes or is refused. The writer
//! flushes every record to the OS at once and calls `fsync` on every `End` and
//! at most every `sync_every` otherwise: a machine crash loses at most that much
//! of token records (their requests then regenerate them identically, since
//! sampling depends only on the seed and position); a process crash loses
//! nothing that was written.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokenflow_operators::SeqId;

use crate::request::{FinishReason, Request};

/// One line of the log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum LogRecord {
    /// A request as the client submitted it.
    Submit(Request),
    /// Token `index` (0 = first generated) of `seq`.
    Token {
        /// The sequence.
        seq: SeqId,
        /// Index among its generated tokens.
        index: usize,
        /// The token id.
        token: u32,
    },
    /// `seq` is over: finished (with a reason) or refused (with an error text).
    End {
        /// The sequence.
        seq: SeqId,
        /// Why it finished, when it did.
        reason: Option<FinishReason>,
        /// Why it was refused, when it was.
        error: Option<String>,
    },
}

/// Errors of the durable log.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// Reading or writing the file failed.
    #[error("token log {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// A line that is not a record (other than a torn last line).
    #[error("token log {path}, line {line}: {message}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        message: String,
    },
}

/// Appends records durably.
pub struct DurableLogWriter {
    path: PathBuf,
    file: File,
    last_sync: Instant,
    sync_every: Duration,
}

impl DurableLogWriter {
    /// Opens `path` for appending (creating it).
    pub fn open(path: &Path, sync_every: Duration) -> Result<Self, LogError> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|source| LogError::Io {
                path: path.to_path_buf(),
                source,
            })?;
        Ok(Self {
            path: path.to_path_buf(),
            file,
            last_sync: Instant::now(),
            sync_every,
        })
    }

    /// Appends `record` (one `write` call, so a killed process leaves whole lines
    /// or a torn last line), and syncs as the policy says.
    pub fn append(&mut self, record: &LogRecord) -> Result<(), LogError> {
        let mut line = serde_json::to_vec(record).map_err(|e| LogError::Io {
            path: self.path.clone(),
            source: std::io::Error::other(e),
        })?;
        line.push(b'\n');
        let io = |source| LogError::Io {
            path: self.path.clone(),
            source,
        };
        self.file.write_all(&line).map_err(io)?;
        if matches!(record, LogRecord::End { .. }) || self.last_sync.elapsed() >= self.sync_every {
            self.file.sync_data().map_err(|source| LogError::Io {
                path: self.path.clone(),
                source,
            })?;
            self.last_sync = Instant::now();
        }
        Ok(())
    }
}

/// What a log says about each request.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LoggedRun {
    /// Requests in submission order.
    pub requests: Vec<Request>,
    /// Tokens generated so far per request (contiguous from index 0).
    pub tokens: BTreeMap<SeqId, Vec<u32>>,
    /// Requests that are over, with how.
    pub ended: BTreeMap<SeqId, (Option<FinishReason>, Option<String>)>,
}

impl LoggedRun {
    /// Reads `path`; a missing file is an empty run, a torn last line is ignored.
    pub fn read(path: &Path) -> Result<Self, LogError> {
        let mut run = LoggedRun::default();
        let file = match File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(run),
            Err(source) => {
                return Err(LogError::Io {
                    path: path.to_path_buf(),
                    source,
                });
            }
        };
        let lines: Vec<String> = BufReader::new(file)
            .lines()
            .collect::<Result<_, _>>()
            .map_err(|source| LogError::Io {
                path: path.to_path_buf(),
                source,
            })?;
        let last = lines.len();
        for (i, line) in lines.iter().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let record: LogRecord = match serde_json::from_str(line) {
                Ok(r) => r,
                // A process killed mid-write leaves a torn last line: it never happened.
                Err(_) if i + 1 == last => break,
                Err(e) => {
                    return Err(LogError::Corrupt {
                        path: path.to_path_buf(),
                        line: i + 1,
                        message: e.to_string(),
                    });
                }
            };
            match record {
                LogRecord::Submit(r) => {
                    if !run.requests.iter().any(|q| q.id == r.id) {
                        run.tokens.entry(r.id).or_default();
                        run.requests.push(r);
                    }
                }
                LogRecord::Token { seq, index, token } => {
                    let t = run.tokens.entry(seq).or_default();
                    // Records of a resumed run repeat nothing, but tolerate a replay.
                    if index == t.len() {
                        t.push(token);
                    } else if t.get(index) != Some(&token) {
                        return Err(LogError::Corrupt {
                            path: path.to_path_buf(),
                            line: i + 1,
                            message: format!(
                                "token {index} of sequence {seq} is {token}, but the log holds {:?} there ({} tokens)",
                                t.get(index),
                                t.len()
                            ),
                        });
                    }
                }
                LogRecord::End { seq, reason, error } => {
                    run.ended.insert(seq, (reason, error));
                }
            }
        }
        Ok(run)
    }

    /// The requests still to run, each continuing from its logged tokens: the
    /// prompt grows by them and the budget shrinks by them, so positions (and
    /// seeded draws) are those of the original run.
    pub fn unfinished(&self) -> Vec<Request> {
        self.requests
            .iter()
            .filter(|r| !self.ended.contains_key(&r.id))
            .map(|r| {
                let done = self.tokens.get(&r.id).map_or(&[][..], |t| &t[..]);
                let mut resumed = r.clone();
                resumed.prompt.extend_from_slice(done);
                resumed.max_tokens = r.max_tokens.saturating_sub(done.len());
                resumed
            })
            .collect()
    }
}
