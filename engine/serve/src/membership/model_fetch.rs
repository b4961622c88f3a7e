//! A node without the model file fetches only what its stages need from the
//! coordinator: the GGUF header (metadata, tokenizer, tensor table) and the
//! file's last MiB (so its fingerprint is the coordinator's) once, then each
//! stage's tensors when an epoch gives it the stage, by HTTP range requests,
//! each checked against the hash in the coordinator's manifest. The rest of
//! the file stays a hole (the file is sparse), so the node's worker maps it
//! as if it were whole; it reads only its stages' tensors.

use std::collections::BTreeSet;
use std::io::{Read, Seek, SeekFrom, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use tokenflow_engine::dataflow::mesh::{content_hash, model_fingerprint};
use tokenflow_operators::gguf::GgufFile;
use tokenflow_planner::Plan;

/// Bytes at each end of the file the fingerprint reads.
const FINGERPRINT_SPAN: u64 = 1 << 20;

/// Largest range asked for in one request (the coordinator serves up to 256 MiB).
const CHUNK_BYTES: u64 = 64 << 20;

/// One tensor of the manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TensorEntry {
    /// GGUF name, e.g. `blk.3.attn_q.weight`.
    pub name: String,
    /// Absolute byte range in the file.
    pub start: u64,
    /// Bytes.
    pub len: u64,
    /// [`content_hash`] of the bytes.
    pub hash: String,
}

/// What the coordinator serves of its model file (`GET /control/model/manifest`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelManifest {
    /// The file's length.
    pub file_len: u64,
    /// Its fingerprint ([`model_fingerprint`]).
    pub fingerprint: String,
    /// Bytes before the first tensor (header, metadata, tensor table), at least 1 MiB.
    pub head_len: u64,
    /// [`content_hash`] of the head.
    pub head_hash: String,
    /// Where the last MiB begins.
    pub tail_start: u64,
    /// [`content_hash`] of the tail.
    pub tail_hash: String,
    /// Every tensor.
    pub tensors: Vec<TensorEntry>,
}

/// Why fetching the model failed.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The local file could not be written or read.
    #[error("model file {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// The coordinator could not be asked or answered badly.
    #[error("fetching the model from the coordinator: {0}")]
    Http(String),
    /// Bytes did not match the manifest's hash.
    #[error(
        "the coordinator's bytes for {what} do not match its manifest (hash {got}, expected {want})"
    )]
    Corrupt {
        /// What was fetched.
        what: String,
        /// The hash of what came.
        got: String,
        /// The manifest's.
        want: String,
    },
    /// The manifest is not a GGUF file's, or does not fit its own length.
    #[error("the coordinator's model manifest is malformed: {0}")]
    BadManifest(String),
}

fn read_range(file: &mut std::fs::File, range: Range<u64>) -> std::io::Result<Vec<u8>> {
    file.seek(SeekFrom::Start(range.start))?;
    let mut out = vec![0u8; (range.end - range.start) as usize];
    file.read_exact(&mut out)?;
    Ok(out)
}

impl ModelManifest {
    /// The manifest of the GGUF file at `path` (reads every tensor once, to hash it).
    pub fn of_file(path: &Path) -> Result<Self, FetchError> {
        let io = |source| FetchError::Io {
            path: path.to_path_buf(),
            source,
        };
        let gguf = GgufFile::open(path).map_err(|e| FetchError::BadManifest(e.to_string()))?;
        let bytes = gguf.data();
        let file_len = bytes.len() as u64;
        let mut tensors = Vec::new();
        let mut first = file_len;
        for t in gguf.tensors() {
            let r = gguf
                .tensor_range(&t.name)
                .map_err(|e| FetchError::BadManifest(e.to_string()))?;
            first = first.min(r.start as u64);
            tensors.push(TensorEntry {
                name: t.name.clone(),
                start: r.start as u64,
                len: (r.end - r.start) as u64,
                hash: content_hash(&bytes[r]),
            });
        }
        let head_len = first.max(FINGERPRINT_SPAN).min(file_len);
        let tail_start = file_len.saturating_sub(FINGERPRINT_SPAN);
        Ok(Self {
            file_len,
            fingerprint: model_fingerprint(path).map_err(io)?,
            head_len,
            head_hash: content_hash(&bytes[..head_len as usize]),
            tail_start,
            tail_hash: content_hash(&bytes[tail_start as usize..]),
            tensors,
        })
    }

    fn check(&self) -> Result<(), FetchError> {
        let bad = |m: String| Err(FetchError::BadManifest(m));
        if self.head_len > self.file_len || self.tail_start > self.file_len {
            return bad(format!(
                "head {} or tail {} past the file's {} bytes",
                self.head_len, self.tail_start, self.file_len
            ));
        }
        for t in &self.tensors {
            if t.start
                .checked_add(t.len)
                .is_none_or(|end| end > self.file_len)
            {
                return bad(format!("tensor {} lies past the end of the file", t.name));
            }
        }
        Ok(())
    }
}

/// Reads `range` of the coordinator's model file (`GET /control/model/bytes`, `Range`).
pub fn serve_range(path: &Path, range: Range<u64>) -> std::io::Result<Vec<u8>> {
    let mut file = std::fs::File::open(path)?;
    read_range(&mut file, range)
}

/// The tensors a node needs for the stages `plan` gives it.
pub fn tensors_for(plan: &Plan, node: &str, manifest: &ModelManifest) -> BTreeSet<String> {
    let mut layers = BTreeSet::new();
    let (mut embed, mut head) = (false, false);
    for st in &plan.stages {
        if st.replicas.iter().any(|r| r.node == node) {
            layers.extend(st.start..st.end);
            embed |= st.embed;
            head |= st.head;
        }
    }
    let has_output = manifest.tensors.iter().any(|t| t.name == "output.weight");
    manifest
        .tensors
        .iter()
        .filter(|t| match t.name.strip_prefix("blk.") {
            Some(rest) => rest
                .split('.')
                .next()
                .and_then(|n| n.parse::<u32>().ok())
                .is_some_and(|n| layers.contains(&n)),
            None => match t.name.as_str() {
                "token_embd.weight" => embed || (head && !has_output),
                "output.weight" => head,
                // Norms and other small tensors: always.
                _ => true,
            },
        })
        .map(|t| t.name.clone())
        .collect()
}

/// A partial copy of the coordinator's model file, filled on demand.
#[derive(Debug)]
pub struct PartialModel {
    path: PathBuf,
    base: String,
    token: String,
    manifest: ModelManifest,
    state: Mutex<(BTreeSet<String>, u64)>,
    /// Held while tensors are fetched, so two epochs' starts do not fetch
    /// the same tensor twice.
    fetching: Mutex<()>,
}

impl PartialModel {
    /// Creates `path` as a sparse file of the coordinator's model with its
    /// head and tail filled (its fingerprint is then the coordinator's).
    pub fn create(
        path: &Path,
        coordinator: &str,
        token: &str,
        http: &reqwest::blocking::Client,
    ) -> Result<Self, FetchError> {
        let base = coordinator.trim_end_matches('/').to_string();
        let manifest: ModelManifest = http
            .get(format!("{base}/control/model/manifest"))
            .bearer_auth(token)
            .send()
            .and_then(|r| r.error_for_status())
            .and_then(|r| r.json())
            .map_err(|e| FetchError::Http(e.to_string()))?;
        manifest.check()?;
        let io = |source| FetchError::Io {
            path: path.to_path_buf(),
            source,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let file = std::fs::File::create(path).map_err(io)?;
        file.set_len(manifest.file_len).map_err(io)?;
        let me = Self {
            path: path.to_path_buf(),
            base,
            token: token.to_string(),
            manifest,
            state: Mutex::new((BTreeSet::new(), 0)),
            fetching: Mutex::new(()),
        };
        let (head, tail) = (me.manifest.head_len, me.manifest.tail_start);
        me.fetch(http, "the header", 0..head, &me.manifest.head_hash.clone())?;
        me.fetch(
            http,
            "the last MiB",
            tail..me.manifest.file_len,
            &me.manifest.tail_hash.clone(),
        )?;
        let local = model_fingerprint(path).map_err(io)?;
        if local != me.manifest.fingerprint {
            return Err(FetchError::Corrupt {
                what: "the file's fingerprint".into(),
                got: local,
                want: me.manifest.fingerprint.clone(),
            });
        }
        Ok(me)
    }

    /// The fingerprint to register with.
    pub fn fingerprint(&self) -> &str {
        &self.manifest.fingerprint
    }

    /// Bytes fetched so far.
    pub fn fetched_bytes(&self) -> u64 {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).1
    }

    /// The file's length.
    pub fn file_len(&self) -> u64 {
        self.manifest.file_len
    }

    fn fetch(
        &self,
        http: &reqwest::blocking::Client,
        what: &str,
        range: Range<u64>,
        hash: &str,
    ) -> Result<(), FetchError> {
        if range.is_empty() {
            return Ok(());
        }
        // In pieces the coordinator serves (at most 64 MiB each), checked whole.
        let mut bytes = Vec::with_capacity((range.end - range.start) as usize);
        let mut at = range.start;
        while at < range.end {
            let end = (at + CHUNK_BYTES).min(range.end);
            let piece = http
                .get(format!("{}/control/model/bytes", self.base))
                .bearer_auth(&self.token)
                .header("Range", format!("bytes={at}-{}", end - 1))
                .send()
                .and_then(|r| r.error_for_status())
                .and_then(|r| r.bytes())
                .map_err(|e| FetchError::Http(format!("{what}: {e}")))?;
            if piece.len() as u64 != end - at {
                return Err(FetchError::Http(format!(
                    "{what}: asked for {} bytes, got {}",
                    end - at,
                    piece.len()
                )));
            }
            bytes.extend_from_slice(&piece);
            at = end;
        }
        let got = content_hash(&bytes);
        if bytes.len() as u64 != range.end - range.start || got != hash {
            return Err(FetchError::Corrupt {
                what: what.to_string(),
                got,
                want: hash.to_string(),
            });
        }
        let io = |source| FetchError::Io {
            path: self.path.clone(),
            source,
        };
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .open(&self.path)
            .map_err(io)?;
        file.seek(SeekFrom::Start(range.start)).map_err(io)?;
        file.write_all(&bytes).map_err(io)?;
        file.sync_data().map_err(io)?;
        self.state.lock().unwrap_or_else(|p| p.into_inner()).1 += bytes.len() as u64;
        Ok(())
    }

    /// Fetches the tensors `plan` gives `node` that are not here yet;
    /// returns the bytes fetched now.
    pub fn ensure(
        &self,
        http: &reqwest::blocking::Client,
        plan: &Plan,
        node: &str,
    ) -> Result<u64, FetchError> {
        let _one_at_a_time = self.fetching.lock().unwrap_or_else(|p| p.into_inner());
        let wanted = tensors_for(plan, node, &self.manifest);
        let before = self.fetched_bytes();
        for t in &self.manifest.tensors {
            let have = self
                .state
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .0
                .contains(&t.name);
            if have || !wanted.contains(&t.name) {
                continue;
            }
            self.fetch(
                http,
                &format!("tensor {}", t.name),
                t.start..t.start + t.len,
                &t.hash,
            )?;
            self.state
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .0
                .insert(t.name.clone());
        }
        Ok(self.fetched_bytes() - before)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokenflow_operators::tiny::{TinyModelSpec, write_tiny_model};
    use tokenflow_planner::plan::{Replica, Stage};

    #[test]
    fn a_stage_needs_its_blocks_and_only_the_ends_it_runs() {
        let path =
            std::env::temp_dir().join(format!("tokenflow-fetch-{}.gguf", std::process::id()));
        write_tiny_model(&TinyModelSpec::default(), &path).unwrap();
        let manifest = ModelManifest::of_file(&path).unwrap();
        assert_eq!(manifest.file_len, std::fs::metadata(&path).unwrap().len());
        let stage = |start, end, node: &str, n| Stage {
            start,
            end,
            embed: start == 0,
            head: end == n,
            replicas: vec![Replica {
                node: node.into(),
                weight: 1.0,
                next: vec![],
            }],
        };
        let plan = Plan {
            strategy: "test".into(),
            model: "tiny".into(),
            num_layers: 6,
            nodes: vec!["a".into(), "b".into()],
            stages: vec![stage(0, 2, "a", 6), stage(2, 6, "b", 6)],
            notes: vec![],
        };
        let a = tensors_for(&plan, "a", &manifest);
        let b = tensors_for(&plan, "b", &manifest);
        assert!(a.iter().any(|t| t.starts_with("blk.1.")));
        assert!(!a.iter().any(|t| t.starts_with("blk.2.")));
        assert!(b.iter().any(|t| t.starts_with("blk.5.")));
        assert!(!b.iter().any(|t| t.starts_with("blk.0.")));
        assert!(a.contains("token_embd.weight"));
        let _ = std::fs::remove_file(&path);
    }
}
