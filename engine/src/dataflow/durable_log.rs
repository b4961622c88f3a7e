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
use std::io::{Read, Write};
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
    repaired: Option<TailRepair>,
}

/// A repair of the log's end made when a writer opened it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TailRepair {
    /// A torn last record was cut off.
    Truncated {
        /// Where the file now ends.
        offset: u64,
        /// How many bytes of the torn record were dropped.
        bytes: u64,
    },
    /// The last record was whole but its newline was missing; one was added.
    NewlineAdded,
}

impl std::fmt::Display for TailRepair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TailRepair::Truncated { offset, bytes } => write!(
                f,
                "dropped a torn last record ({bytes} bytes) and truncated the log to {offset} bytes"
            ),
            TailRepair::NewlineAdded => write!(f, "ended the last record with its missing newline"),
        }
    }
}

impl DurableLogWriter {
    /// Opens `path` for appending (creating it). A torn last record (a process
    /// killed mid-write) is cut off first, and a whole last record that lost
    /// only its newline gets one, so every later record starts on its own line;
    /// [`DurableLogWriter::repaired`] says what was done.
    pub fn open(path: &Path, sync_every: Duration) -> Result<Self, LogError> {
        let io = |source| LogError::Io {
            path: path.to_path_buf(),
            source,
        };
        let mut file = OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(path)
            .map_err(io)?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).map_err(io)?;
        let scan = scan(path, &bytes)?;
        let repaired = match scan.tail {
            Tail::Clean => None,
            Tail::Torn { offset } => {
                file.set_len(offset as u64).map_err(io)?;
                file.sync_data().map_err(io)?;
                Some(TailRepair::Truncated {
                    offset: offset as u64,
                    bytes: (bytes.len() - offset) as u64,
                })
            }
            Tail::MissingNewline => {
                file.write_all(b"\n").map_err(io)?;
                file.sync_data().map_err(io)?;
                Some(TailRepair::NewlineAdded)
            }
        };
        Ok(Self {
            path: path.to_path_buf(),
            file,
            last_sync: Instant::now(),
            sync_every,
            repaired,
        })
    }

    /// What opening the log repaired at its end, if anything.
    pub fn repaired(&self) -> Option<&TailRepair> {
        self.repaired.as_ref()
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
            self.sync()?;
        }
        Ok(())
    }
}

impl DurableLogWriter {
    /// Forces everything appended so far to disk (at the end of a run, or
    /// before a server exits).
    pub fn sync(&mut self) -> Result<(), LogError> {
        self.file.sync_data().map_err(|source| LogError::Io {
            path: self.path.clone(),
            source,
        })?;
        self.last_sync = Instant::now();
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
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(LoggedRun::default()),
            Err(source) => {
                return Err(LogError::Io {
                    path: path.to_path_buf(),
                    source,
                });
            }
        };
        Ok(scan(path, &bytes)?.run)
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

/// How a log ends.
enum Tail {
    /// With a whole record and its newline (or empty).
    Clean,
    /// With a torn record starting at `offset`.
    Torn { offset: usize },
    /// With a whole record that lacks its newline.
    MissingNewline,
}

struct Scan {
    run: LoggedRun,
    tail: Tail,
}

/// Reads every record of `bytes`. Only the last line may be torn (each record
/// is one `write`): it is reported, not applied. Any other bad line is corrupt.
fn scan(path: &Path, bytes: &[u8]) -> Result<Scan, LogError> {
    let mut run = LoggedRun::default();
    let mut tail = Tail::Clean;
    let mut offset = 0;
    let mut line_no = 0;
    while offset < bytes.len() {
        line_no += 1;
        let (line, next, terminated) = match bytes[offset..].iter().position(|&b| b == b'\n') {
            Some(n) => (&bytes[offset..offset + n], offset + n + 1, true),
            None => (&bytes[offset..], bytes.len(), false),
        };
        let last = next == bytes.len();
        if line.iter().all(u8::is_ascii_whitespace) {
            if !terminated {
                // Trailing blanks of a torn write: drop them.
                tail = Tail::Torn { offset };
            }
            offset = next;
            continue;
        }
        let record: LogRecord = match serde_json::from_slice(line) {
            Ok(r) => r,
            // A process killed mid-write leaves a torn last line: it never happened.
            Err(_) if last => {
                tail = Tail::Torn { offset };
                break;
            }
            Err(e) => {
                return Err(LogError::Corrupt {
                    path: path.to_path_buf(),
                    line: line_no,
                    message: e.to_string(),
                });
            }
        };
        if !terminated {
            tail = Tail::MissingNewline;
        }
        run.apply(record).map_err(|message| LogError::Corrupt {
            path: path.to_path_buf(),
            line: line_no,
            message,
        })?;
        offset = next;
    }
    Ok(Scan { run, tail })
}

impl LoggedRun {
    fn apply(&mut self, record: LogRecord) -> Result<(), String> {
        match record {
            LogRecord::Submit(r) => {
                if !self.requests.iter().any(|q| q.id == r.id) {
                    self.tokens.entry(r.id).or_default();
                    self.requests.push(r);
                }
            }
            LogRecord::Token { seq, index, token } => {
                let t = self.tokens.entry(seq).or_default();
                // Records of a resumed run repeat nothing, but tolerate a replay.
                if index == t.len() {
                    t.push(token);
                } else if t.get(index) != Some(&token) {
                    return Err(format!(
                        "token {index} of sequence {seq} is {token}, but the log holds {:?} there ({} tokens)",
                        t.get(index),
                        t.len()
                    ));
                }
            }
            LogRecord::End { seq, reason, error } => {
                self.ended.insert(seq, (reason, error));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A run of `requests` as the runner logs it, from the tokens in `logged`
    /// onwards: what a resume appends. Requests run to `max_tokens`.
    fn finish(writer: &mut DurableLogWriter, logged: &LoggedRun, requests: &[Request]) {
        for r in requests {
            if !logged.requests.iter().any(|q| q.id == r.id) {
                writer.append(&LogRecord::Submit(r.clone())).unwrap();
            }
        }
        for r in requests {
            if logged.ended.contains_key(&r.id) {
                continue;
            }
            let have = logged.tokens.get(&r.id).map_or(0, Vec::len);
            for index in have..r.max_tokens {
                let token = expected_token(r.id, index);
                writer
                    .append(&LogRecord::Token {
                        seq: r.id,
                        index,
                        token,
                    })
                    .unwrap();
            }
            writer
                .append(&LogRecord::End {
                    seq: r.id,
                    reason: Some(FinishReason::Length),
                    error: None,
                })
                .unwrap();
        }
    }

    fn expected_token(seq: SeqId, index: usize) -> u32 {
        (seq as u32) * 1000 + index as u32
    }

    fn requests() -> Vec<Request> {
        (0..3)
            .map(|i| Request::greedy(i, vec![1, 2, 3], 4 + i as usize))
            .collect()
    }

    /// A log cut at any byte (a process killed mid-write, or a machine crash
    /// losing the end of the page cache) resumes to a complete log, twice over,
    /// with each token exactly once.
    #[test]
    fn cut_at_every_offset_resumes_to_a_whole_log() {
        let dir = std::env::temp_dir().join(format!("tokenflow-log-cut-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let full_path = dir.join("full.log");
        let _ = std::fs::remove_file(&full_path);
        let reqs = requests();
        {
            let mut w = DurableLogWriter::open(&full_path, Duration::ZERO).unwrap();
            finish(&mut w, &LoggedRun::default(), &reqs);
        }
        let full = std::fs::read(&full_path).unwrap();
        let whole = LoggedRun::read(&full_path).unwrap();
        assert_eq!(whole.ended.len(), reqs.len());
        let path = dir.join("cut.log");
        for cut in 0..=full.len() {
            std::fs::write(&path, &full[..cut]).unwrap();
            // Two resumes: the first is killed right after opening (it repairs
            // the tail and appends nothing), the second finishes the run.
            for attempt in 0..2 {
                let logged = LoggedRun::read(&path)
                    .unwrap_or_else(|e| panic!("cut at {cut}, attempt {attempt}: {e}"));
                let mut w = DurableLogWriter::open(&path, Duration::ZERO).unwrap();
                if attempt == 1 {
                    finish(&mut w, &logged, &reqs);
                }
            }
            let resumed = LoggedRun::read(&path).unwrap();
            assert_eq!(resumed.tokens, whole.tokens, "cut at {cut}");
            assert_eq!(resumed.ended, whole.ended, "cut at {cut}");
            // Each token record exactly once in the file.
            let text = std::fs::read_to_string(&path).unwrap();
            let tokens = text.lines().filter(|l| l.contains("\"Token\"")).count();
            let expected: usize = reqs.iter().map(|r| r.max_tokens).sum();
            assert_eq!(tokens, expected, "cut at {cut}: {text}");
            assert!(text.ends_with('\n'), "cut at {cut}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn repair_is_reported() {
        let dir = std::env::temp_dir().join(format!("tokenflow-log-repair-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("t.log");
        let record =
            serde_json::to_string(&LogRecord::Submit(Request::greedy(7, vec![1], 2))).unwrap();
        std::fs::write(&path, format!("{record}\n{}", &record[..10])).unwrap();
        let w = DurableLogWriter::open(&path, Duration::ZERO).unwrap();
        assert_eq!(
            w.repaired(),
            Some(&TailRepair::Truncated {
                offset: record.len() as u64 + 1,
                bytes: 10
            })
        );
        drop(w);
        std::fs::write(&path, &record).unwrap();
        let w = DurableLogWriter::open(&path, Duration::ZERO).unwrap();
        assert_eq!(w.repaired(), Some(&TailRepair::NewlineAdded));
        drop(w);
        let w = DurableLogWriter::open(&path, Duration::ZERO).unwrap();
        assert_eq!(w.repaired(), None);
        // A bad line that is not the last is corruption, named by line.
        std::fs::write(&path, format!("{}\n{record}\n", &record[..10])).unwrap();
        let e = LoggedRun::read(&path).unwrap_err().to_string();
        assert!(e.contains("line 1"), "{e}");
        assert!(DurableLogWriter::open(&path, Duration::ZERO).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
