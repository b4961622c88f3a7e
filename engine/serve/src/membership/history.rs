//! The coordinator's record of each node's joins, leaves and deaths: an
//! append-only file of JSON lines (each record synced before the change it
//! records takes effect), read back when the coordinator restarts, and the
//! MTBF and MTTR estimated from it, which the availability-aware strategy
//! plans with instead of a cluster file's fixed figures.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

use serde::{Deserialize, Serialize};

/// What happened to a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeEvent {
    /// It registered (first time, or back after a leave or a death).
    Join,
    /// It left on purpose (drained first).
    Leave,
    /// It stopped answering, or came back with a new incarnation.
    Death,
}

/// One line of the history file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistoryRecord {
    /// Seconds since the Unix epoch.
    pub t: f64,
    /// The node's name.
    pub node: String,
    /// What happened.
    pub event: NodeEvent,
}

/// A history file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    /// Reading, writing or syncing failed.
    #[error("node history {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// A line other than a torn last one is not a record.
    #[error("node history {}, line {line}: not a record ({message})", path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// The parser's complaint.
        message: String,
    },
}

/// A node's availability as its history shows it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct NodeEstimate {
    /// Mean up time between a join and the next departure (leave or death), s.
    pub mtbf_s: f64,
    /// Mean time from a departure to the next join, s (0 when it never came back).
    pub mttr_s: f64,
    /// Departures seen.
    pub departures: usize,
    /// Deaths among them.
    pub deaths: usize,
}

/// The node history: records in memory and their file.
#[derive(Debug)]
pub struct NodeHistory {
    path: PathBuf,
    file: Mutex<std::fs::File>,
    records: Mutex<Vec<HistoryRecord>>,
}

/// Seconds since the Unix epoch, now.
pub fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

impl NodeHistory {
    /// Opens (or creates) the history at `path`. A torn last line (the
    /// coordinator died mid-write) is cut off; any other bad line is an error.
    pub fn open(path: &Path) -> Result<Self, HistoryError> {
        let io = |source| HistoryError::Io {
            path: path.to_path_buf(),
            source,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let text = match std::fs::read(path) {
            Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(io(e)),
        };
        let mut records = Vec::new();
        let mut whole = 0usize;
        let lines: Vec<&str> = text.split_inclusive('\n').collect();
        for (i, line) in lines.iter().enumerate() {
            let complete = line.ends_with('\n');
            match serde_json::from_str::<HistoryRecord>(line.trim_end()) {
                Ok(r) if complete => {
                    records.push(r);
                    whole += line.len();
                }
                // Only the last line can be torn (or lack its newline).
                Ok(_) => break,
                Err(_) if i + 1 == lines.len() => break,
                Err(e) => {
                    return Err(HistoryError::Corrupt {
                        path: path.to_path_buf(),
                        line: i + 1,
                        message: e.to_string(),
                    });
                }
            }
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(io)?;
        if whole < text.len() {
            file.set_len(whole as u64).map_err(io)?;
        }
        Ok(Self {
            path: path.to_path_buf(),
            file: Mutex::new(file),
            records: Mutex::new(records),
        })
    }

    /// Appends `event` for `node` at `t` and syncs it.
    pub fn record_at(&self, node: &str, event: NodeEvent, t: f64) -> Result<(), HistoryError> {
        let record = HistoryRecord {
            t,
            node: node.to_string(),
            event,
        };
        let mut line = serde_json::to_string(&record).expect("a record serialises");
        line.push('\n');
        let mut file = self.file.lock().unwrap_or_else(PoisonError::into_inner);
        file.write_all(line.as_bytes())
            .and_then(|()| file.sync_data())
            .map_err(|source| HistoryError::Io {
                path: self.path.clone(),
                source,
            })?;
        self.records
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(record);
        Ok(())
    }

    /// Appends `event` for `node` now.
    pub fn record(&self, node: &str, event: NodeEvent) -> Result<(), HistoryError> {
        self.record_at(node, event, unix_now())
    }

    /// Every record so far, oldest first.
    pub fn records(&self) -> Vec<HistoryRecord> {
        self.records
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Each node's estimate at time `now` (a node still up counts its
    /// current up time); `None` for a node that never departed.
    pub fn estimates(&self, now: f64) -> BTreeMap<String, Option<NodeEstimate>> {
        estimate(&self.records(), now)
    }
}

/// MTBF and MTTR per node from `records` (in time order per node).
pub fn estimate(records: &[HistoryRecord], now: f64) -> BTreeMap<String, Option<NodeEstimate>> {
    #[derive(Default)]
    struct Acc {
        up_since: Option<f64>,
        down_since: Option<f64>,
        up_s: f64,
        down_s: f64,
        departures: usize,
        deaths: usize,
        returns: usize,
    }
    let mut by_node: BTreeMap<String, Acc> = BTreeMap::new();
    for r in records {
        let a = by_node.entry(r.node.clone()).or_default();
        match r.event {
            NodeEvent::Join => {
                if let Some(d) = a.down_since.take() {
                    a.down_s += (r.t - d).max(0.0);
                    a.returns += 1;
                }
                // A second join without a departure between (the coordinator
                // restarted): the node is taken to have stayed up.
                a.up_since.get_or_insert(r.t);
            }
            NodeEvent::Leave | NodeEvent::Death => {
                if let Some(u) = a.up_since.take() {
                    a.up_s += (r.t - u).max(0.0);
                    a.departures += 1;
                    if r.event == NodeEvent::Death {
                        a.deaths += 1;
                    }
                    a.down_since = Some(r.t);
                }
            }
        }
    }
    by_node
        .into_iter()
        .map(|(node, mut a)| {
            if let Some(u) = a.up_since {
                a.up_s += (now - u).max(0.0);
            }
            let est = (a.departures > 0).then(|| NodeEstimate {
                mtbf_s: a.up_s / a.departures as f64,
                mttr_s: if a.returns > 0 {
                    a.down_s / a.returns as f64
                } else {
                    0.0
                },
                departures: a.departures,
                deaths: a.deaths,
            });
            (node, est)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(name: &str) -> PathBuf {
        std::env::temp_dir().join(format!("tokenflow-history-{}-{name}", std::process::id()))
    }

    #[test]
    fn estimates_follow_the_history() {
        let rec = |t, node: &str, event| HistoryRecord {
            t,
            node: node.into(),
            event,
        };
        let records = vec![
            rec(0.0, "a", NodeEvent::Join),
            rec(0.0, "b", NodeEvent::Join),
            rec(100.0, "a", NodeEvent::Death),
            rec(110.0, "a", NodeEvent::Join),
            rec(310.0, "a", NodeEvent::Leave),
            rec(340.0, "a", NodeEvent::Join),
        ];
        let est = estimate(&records, 400.0);
        let a = est["a"].unwrap();
        // Up 100 + 200 + 60 (still up) over two departures; down 10 and 30.
        assert_eq!(a.departures, 2);
        assert_eq!(a.deaths, 1);
        assert!((a.mtbf_s - 180.0).abs() < 1e-9, "{a:?}");
        assert!((a.mttr_s - 20.0).abs() < 1e-9, "{a:?}");
        assert_eq!(est["b"], None);
    }

    #[test]
    fn survives_a_restart_and_a_torn_line_at_every_offset() {
        let path = temp("torn");
        let _ = std::fs::remove_file(&path);
        {
            let h = NodeHistory::open(&path).unwrap();
            h.record_at("a", NodeEvent::Join, 1.0).unwrap();
            h.record_at("a", NodeEvent::Death, 2.0).unwrap();
        }
        let whole = std::fs::read(&path).unwrap();
        let first_line = whole.iter().position(|&b| b == b'\n').unwrap() + 1;
        for cut in 0..=whole.len() {
            std::fs::write(&path, &whole[..cut]).unwrap();
            let h = NodeHistory::open(&path).unwrap();
            let expected = if cut == whole.len() {
                2
            } else if cut >= first_line {
                1
            } else {
                0
            };
            assert_eq!(h.records().len(), expected, "cut at {cut}");
            h.record_at("b", NodeEvent::Join, 3.0).unwrap();
            drop(h);
            let again = NodeHistory::open(&path).unwrap();
            assert_eq!(again.records().len(), expected + 1, "cut at {cut}");
        }
        std::fs::write(
            &path,
            b"{\"t\":1,\"node\":\"a\",\"event\":\"join\"}\nnot json\n{}\n",
        )
        .unwrap();
        let e = NodeHistory::open(&path).unwrap_err().to_string();
        assert!(e.contains("line 2"), "{e}");
        let _ = std::fs::remove_file(&path);
    }
}
