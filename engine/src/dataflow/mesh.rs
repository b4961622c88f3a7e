//! The TCP mesh of a timely cluster, connected by tokenflow before timely
//! takes the sockets over, so that forming a cluster is bounded and checked.
//!
//! Timely's own `create_sockets` retries forever for a process that never
//! starts, panics its network thread on a peer that speaks another protocol,
//! and trusts that every process runs the same configuration. Here each
//! connection starts with a handshake: a magic string, the process index, and
//! a [`Fingerprint`] of everything that must agree (binary version, model file,
//! plan, cluster, options, workers, host list). A process that waits past the
//! deadline, reaches something that is not a tokenflow process, or meets a
//! peer whose configuration differs stops with a [`MeshError`] naming which
//! process, which address and which part of the configuration, before any
//! token is computed. The checked sockets then go to timely's
//! `initialize_networking_from_sockets`: the data transport stays timely's.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::Weak;
use std::time::{Duration, Instant};

use super::peer_stream::{PeerFault, PeerFaults};

use serde::{Deserialize, Serialize};

/// First bytes of every handshake: "tokenflow mesh, handshake version 1".
const MAGIC: &[u8; 16] = b"TOKENFLOW-MESH01";
/// First bytes of a liveness probe (see [`crate::dataflow::peer_stream`]): a
/// process answers [`PROBE_ANSWER`] on its mesh address for as long as its run
/// lasts, so that a peer can tell a live but quiet process from a stopped one.
pub const PROBE_MAGIC: &[u8; 16] = b"TOKENFLOW-PROBE1";
/// The answer to a liveness probe, followed by a little-endian `u32` length
/// and that many bytes of JSON: the answering process's own failure or the
/// first fault it saw on a link ([`PeerFault`]), or nothing when healthy.
pub const PROBE_ANSWER: &[u8; 2] = b"OK";
/// Longest fault report in a probe answer.
const MAX_PROBE_REPORT: u32 = 64 * 1024;

/// What a liveness probe found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeAnswer {
    /// Nothing answered in time (stopped, hung, gone).
    Silent,
    /// The process is running; `Some` when it has failed or seen a fault.
    Alive(Option<PeerFault>),
}
/// Largest handshake body accepted (a fingerprint is a few hundred bytes).
const MAX_HELLO: u32 = 64 * 1024;
/// How long a connected peer may take to send its handshake.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// Hashes of everything the processes of one cluster must agree on, by name
/// (`model`, `plan`, `cluster`, `options`, `workers`, `hosts`, `version`).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Fingerprint {
    /// Part name to a hash of its canonical bytes.
    pub parts: BTreeMap<String, String>,
}

impl Fingerprint {
    /// Adds part `name`, hashing `bytes`.
    pub fn with(mut self, name: &str, bytes: &[u8]) -> Self {
        self.parts.insert(name.to_string(), hash_hex(bytes));
        self
    }

    /// Parts whose hashes differ from `other`'s (or that one side lacks).
    pub fn differences(&self, other: &Fingerprint) -> Vec<String> {
        let mut names: Vec<&String> = self.parts.keys().chain(other.parts.keys()).collect();
        names.sort();
        names.dedup();
        names
            .into_iter()
            .filter(|n| self.parts.get(*n) != other.parts.get(*n))
            .cloned()
            .collect()
    }
}

/// A stable 64-bit FNV-1a hash, hex: the same bytes give the same hash in
/// every process and every build (std's hasher promises neither).
fn hash_hex(bytes: &[u8]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// A model file's fingerprint bytes: its length and its first and last MiB
/// (the GGUF header, metadata and tensor table, and the last weights), so a
/// 40 GB file is recognised without reading it all.
pub fn model_fingerprint_bytes(path: &std::path::Path) -> std::io::Result<Vec<u8>> {
    use std::io::{Seek, SeekFrom};
    const SPAN: u64 = 1 << 20;
    let mut file = std::fs::File::open(path)?;
    let len = file.metadata()?.len();
    let mut out = len.to_le_bytes().to_vec();
    let mut head = Vec::new();
    (&mut file).take(SPAN).read_to_end(&mut head)?;
    out.extend_from_slice(&head);
    if len > SPAN {
        file.seek(SeekFrom::Start(len.saturating_sub(SPAN).max(SPAN)))?;
        let mut tail = Vec::new();
        file.take(SPAN).read_to_end(&mut tail)?;
        out.extend_from_slice(&tail);
    }
    Ok(out)
}

/// The hash nodes compare bytes by (FNV-1a, 64 bits, hex): a tensor fetched
/// from the coordinator is checked against the hash it sent.
pub fn content_hash(bytes: &[u8]) -> String {
    hash_hex(bytes)
}

/// A model file's fingerprint as text: the hash of
/// [`model_fingerprint_bytes`], which nodes compare before they serve together.
pub fn model_fingerprint(path: &std::path::Path) -> std::io::Result<String> {
    Ok(hash_hex(&model_fingerprint_bytes(path)?))
}

/// Why the mesh could not be formed.
#[derive(Debug, thiserror::Error)]
pub enum MeshError {
    /// This process's own address cannot be listened on.
    #[error("process {process}: cannot listen on {address}: {source}")]
    Listen {
        /// This process.
        process: usize,
        /// Its address in the host file.
        address: String,
        /// Why.
        source: std::io::Error,
    },
    /// A process did not connect, or could not be reached, within the deadline.
    #[error(
        "process {peer} at {address} did not {what} within {waited:?}: is it running, with the same host file? (last error: {last_error})"
    )]
    Timeout {
        /// The peer.
        peer: usize,
        /// Its address.
        address: String,
        /// "accept our connection" or "connect to us".
        what: &'static str,
        /// How long this process waited.
        waited: Duration,
        /// The last connection error seen, if any.
        last_error: String,
    },
    /// Something answered at a peer's address, but not a tokenflow process.
    #[error("{address} (process {peer} in the host file) is not a tokenflow process: {detail}")]
    NotTokenflow {
        /// The peer.
        peer: usize,
        /// Its address.
        address: String,
        /// What went wrong in the handshake.
        detail: String,
    },
    /// A peer runs another configuration.
    #[error(
        "process {peer} at {address} runs another configuration than process {process}: {} differ{} (every process needs the same model file, plan or --stages, cluster file, options and --workers)",
        differing.join(", "),
        if differing.len() == 1 { "s" } else { "" }
    )]
    ConfigMismatch {
        /// This process.
        process: usize,
        /// The peer.
        peer: usize,
        /// Its address.
        address: String,
        /// Names of the parts that differ.
        differing: Vec<String>,
    },
    /// A peer's handshake claims another index or cluster size.
    #[error("process {peer} at {address}: {detail}")]
    WrongPeer {
        /// The peer expected.
        peer: usize,
        /// Its address.
        address: String,
        /// What it claimed.
        detail: String,
    },
}

#[derive(Debug, Serialize, Deserialize)]
struct Hello {
    process: usize,
    processes: usize,
    fingerprint: Fingerprint,
}

fn write_hello(stream: &mut TcpStream, hello: &Hello) -> std::io::Result<()> {
    let body = serde_json::to_vec(hello).map_err(std::io::Error::other)?;
    let mut msg = MAGIC.to_vec();
    msg.extend_from_slice(&(body.len() as u32).to_le_bytes());
    msg.extend_from_slice(&body);
    stream.write_all(&msg)?;
    stream.flush()
}

/// Reads a handshake; `Err` carries a description of what arrived instead.
fn read_hello(stream: &mut TcpStream) -> Result<Hello, String> {
    let mut magic = [0u8; 16];
    let mut got = 0;
    while got < magic.len() {
        match stream.read(&mut magic[got..]) {
            Ok(0) => {
                return Err(if got == 0 {
                    "it closed the connection without a handshake".into()
                } else {
                    format!(
                        "it sent {:?} and closed",
                        String::from_utf8_lossy(&magic[..got])
                    )
                });
            }
            Ok(n) => got += n,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return Err("it sent no handshake in time".into());
            }
            Err(e) => return Err(format!("reading its handshake failed: {e}")),
        }
    }
    if &magic != MAGIC {
        return Err(format!(
            "it answered {:?} instead of a tokenflow handshake",
            String::from_utf8_lossy(&magic)
        ));
    }
    let mut len = [0u8; 4];
    stream
        .read_exact(&mut len)
        .map_err(|e| format!("its handshake was cut: {e}"))?;
    let len = u32::from_le_bytes(len);
    if len > MAX_HELLO {
        return Err(format!(
            "its handshake claims {len} bytes (at most {MAX_HELLO})"
        ));
    }
    let mut body = vec![0u8; len as usize];
    stream
        .read_exact(&mut body)
        .map_err(|e| format!("its handshake was cut: {e}"))?;
    serde_json::from_slice(&body).map_err(|e| format!("its handshake is not readable: {e}"))
}

/// A formed mesh: the checked streams and this process's listener (kept, to
/// answer liveness probes during the run).
#[derive(Debug)]
pub struct ConnectedMesh {
    /// One stream per process in host order (`None` at this process), ready
    /// for timely.
    pub streams: Vec<Option<TcpStream>>,
    /// The listener on this process's host-file address.
    pub listener: TcpListener,
}

/// Answers a liveness probe if that is what `stream` carries (reporting
/// `fault`); `true` if it did. Waits for the first 16 bytes up to the
/// stream's read timeout, without consuming anything else.
fn answered_probe(stream: &mut TcpStream, fault: Option<&PeerFault>) -> bool {
    let mut head = [0u8; 16];
    let deadline = Instant::now() + HELLO_TIMEOUT;
    loop {
        match stream.peek(&mut head) {
            Ok(16) => break,
            Ok(n) if n > 0 && head[..n] == PROBE_MAGIC[..n] && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(1));
            }
            _ => return false,
        }
    }
    if &head != PROBE_MAGIC {
        return false;
    }
    let _ = stream.read_exact(&mut head);
    let report = fault
        .and_then(|f| serde_json::to_vec(f).ok())
        .unwrap_or_default();
    let mut answer = PROBE_ANSWER.to_vec();
    answer.extend_from_slice(&(report.len() as u32).to_le_bytes());
    answer.extend_from_slice(&report);
    let _ = stream.write_all(&answer);
    true
}

/// Connects process `process` of `hosts` to every other, checking each peer's
/// handshake against `fingerprint`, within `deadline`.
pub fn connect_mesh(
    hosts: &[String],
    process: usize,
    fingerprint: &Fingerprint,
    deadline: Duration,
) -> Result<ConnectedMesh, MeshError> {
    let start = Instant::now();
    let hello = Hello {
        process,
        processes: hosts.len(),
        fingerprint: fingerprint.clone(),
    };
    let listener =
        TcpListener::bind(hosts[process].as_str()).map_err(|source| MeshError::Listen {
            process,
            address: hosts[process].clone(),
            source,
        })?;
    listener
        .set_nonblocking(true)
        .map_err(|source| MeshError::Listen {
            process,
            address: hosts[process].clone(),
            source,
        })?;
    let mut streams: Vec<Option<TcpStream>> = (0..hosts.len()).map(|_| None).collect();

    // Lower indices listen for us; we connect to each, retrying until the deadline.
    for (peer, address) in hosts.iter().enumerate().take(process) {
        let mut last_error = String::from("none");
        let stream = loop {
            let left = deadline.saturating_sub(start.elapsed());
            if left.is_zero() {
                return Err(MeshError::Timeout {
                    peer,
                    address: address.clone(),
                    what: "accept our connection",
                    waited: deadline,
                    last_error,
                });
            }
            match connect_once(address, left.min(Duration::from_secs(2))) {
                Ok(s) => break s,
                Err(e) => {
                    last_error = e.to_string();
                    std::thread::sleep(Duration::from_millis(50).min(left));
                }
            }
        };
        let mut stream = stream;
        let not_tokenflow = |detail: String| MeshError::NotTokenflow {
            peer,
            address: address.clone(),
            detail,
        };
        // The peer answers once it is done connecting to its own lower peers,
        // which may take up to the whole deadline.
        let answer_within = deadline.saturating_sub(start.elapsed()).max(HELLO_TIMEOUT);
        stream
            .set_read_timeout(Some(answer_within))
            .map_err(|e| not_tokenflow(e.to_string()))?;
        write_hello(&mut stream, &hello)
            .map_err(|e| not_tokenflow(format!("sending our handshake failed: {e}")))?;
        let theirs = read_hello(&mut stream).map_err(not_tokenflow)?;
        check_peer(&hello, &theirs, peer, address)?;
        streams[peer] = Some(stream);
    }

    // Higher indices connect to us.
    while streams
        .iter()
        .enumerate()
        .any(|(i, s)| i > process && s.is_none())
    {
        match listener.accept() {
            Ok((mut stream, from)) => {
                let _ = stream.set_nonblocking(false);
                let _ = stream.set_read_timeout(Some(HELLO_TIMEOUT));
                // A peer whose mesh is complete already probes our liveness.
                if answered_probe(&mut stream, None) {
                    continue;
                }
                // A stranger (a port scan, a stale client) is not a peer: drop it
                // and keep waiting; the deadline bounds the wait.
                let theirs = match read_hello(&mut stream) {
                    Ok(h) => h,
                    Err(detail) => {
                        eprintln!("process {process}: ignoring a connection from {from}: {detail}");
                        continue;
                    }
                };
                let peer = theirs.process;
                let address = hosts.get(peer).cloned().unwrap_or_else(|| from.to_string());
                if peer <= process || peer >= hosts.len() || streams[peer].is_some() {
                    return Err(MeshError::WrongPeer {
                        peer,
                        address,
                        detail: format!(
                            "a connection from {from} claims to be process {peer}, which process {process} does not expect"
                        ),
                    });
                }
                // Answer first, so the peer can report a mismatch too.
                let _ = write_hello(&mut stream, &hello);
                check_peer(&hello, &theirs, peer, &address)?;
                streams[peer] = Some(stream);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if start.elapsed() >= deadline {
                    let peer = (process + 1..hosts.len())
                        .find(|&i| streams[i].is_none())
                        .expect("a missing peer");
                    return Err(MeshError::Timeout {
                        peer,
                        address: hosts[peer].clone(),
                        what: "connect to us",
                        waited: deadline,
                        last_error: "none".into(),
                    });
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(source) => {
                return Err(MeshError::Listen {
                    process,
                    address: hosts[process].clone(),
                    source,
                });
            }
        }
    }
    for stream in streams.iter().flatten() {
        // Timely's threads block on reads; nothing may time out under them.
        let _ = stream.set_read_timeout(None);
        let _ = stream.set_nodelay(true);
    }
    Ok(ConnectedMesh { streams, listener })
}

/// Answers liveness probes on `listener` for as long as the run's
/// `faults` exist (then the listener is dropped and its port freed), each
/// with what `faults` has recorded. Each connection is answered on its own
/// short-lived thread, so one that connects and sends nothing delays no
/// probe; anything that is not a probe is closed.
pub fn answer_probes(listener: TcpListener, faults: Weak<PeerFaults>) {
    let _ = listener.set_nonblocking(true);
    let _ = std::thread::Builder::new()
        .name("tokenflow:probe-answer".into())
        .spawn(move || {
            while faults.strong_count() > 0 {
                match listener.accept() {
                    Ok((mut stream, _)) => {
                        let fault = faults.upgrade().and_then(|f| f.probe_answer());
                        let _ = std::thread::Builder::new()
                            .name("tokenflow:probe-reply".into())
                            .spawn(move || {
                                let _ = stream.set_nonblocking(false);
                                let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
                                answered_probe(&mut stream, fault.as_ref());
                            });
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
}

/// Probes the process listening at `address`, waiting at most `timeout`.
pub fn probe(address: &str, timeout: Duration) -> ProbeAnswer {
    let Ok(mut stream) = connect_once(address, timeout) else {
        return ProbeAnswer::Silent;
    };
    let _ = stream.set_read_timeout(Some(timeout));
    let _ = stream.set_write_timeout(Some(timeout));
    let mut head = [0u8; 6];
    if stream.write_all(PROBE_MAGIC).is_err()
        || stream.read_exact(&mut head).is_err()
        || &head[..2] != PROBE_ANSWER
    {
        return ProbeAnswer::Silent;
    }
    let len = u32::from_le_bytes([head[2], head[3], head[4], head[5]]);
    if len == 0 || len > MAX_PROBE_REPORT {
        return ProbeAnswer::Alive(None);
    }
    let mut body = vec![0u8; len as usize];
    if stream.read_exact(&mut body).is_err() {
        return ProbeAnswer::Alive(None);
    }
    ProbeAnswer::Alive(serde_json::from_slice(&body).ok())
}

fn connect_once(address: &str, timeout: Duration) -> std::io::Result<TcpStream> {
    let addrs: Vec<SocketAddr> = address.to_socket_addrs()?.collect();
    let mut last = std::io::Error::new(
        std::io::ErrorKind::NotFound,
        "the address resolves to nothing",
    );
    for a in addrs {
        match TcpStream::connect_timeout(&a, timeout.max(Duration::from_millis(1))) {
            Ok(s) => return Ok(s),
            Err(e) => last = e,
        }
    }
    Err(last)
}

fn check_peer(ours: &Hello, theirs: &Hello, peer: usize, address: &str) -> Result<(), MeshError> {
    if theirs.process != peer || theirs.processes != ours.processes {
        return Err(MeshError::WrongPeer {
            peer,
            address: address.to_string(),
            detail: format!(
                "it says it is process {} of {}, but this host file makes it process {peer} of {}",
                theirs.process, theirs.processes, ours.processes
            ),
        });
    }
    let differing = ours.fingerprint.differences(&theirs.fingerprint);
    if !differing.is_empty() {
        return Err(MeshError::ConfigMismatch {
            process: ours.process,
            peer,
            address: address.to_string(),
            differing,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn free_hosts(n: usize) -> Vec<String> {
        (0..n)
            .map(|_| {
                let l = TcpListener::bind("127.0.0.1:0").unwrap();
                format!("127.0.0.1:{}", l.local_addr().unwrap().port())
            })
            .collect()
    }

    fn print(options: &str) -> Fingerprint {
        Fingerprint::default()
            .with("model", b"m")
            .with("options", options.as_bytes())
    }

    #[test]
    fn three_processes_connect_and_agree() {
        let hosts = free_hosts(3);
        let handles: Vec<_> = (0..3)
            .map(|p| {
                let hosts = hosts.clone();
                std::thread::spawn(move || {
                    connect_mesh(&hosts, p, &print("a"), Duration::from_secs(10))
                })
            })
            .collect();
        for (p, h) in handles.into_iter().enumerate() {
            let streams = h.join().unwrap().unwrap().streams;
            assert_eq!(streams.iter().filter(|s| s.is_some()).count(), 2);
            assert!(streams[p].is_none());
        }
    }

    #[test]
    fn a_different_configuration_is_named() {
        let hosts = free_hosts(2);
        let h2 = hosts.clone();
        let other =
            std::thread::spawn(move || connect_mesh(&h2, 1, &print("b"), Duration::from_secs(10)));
        let e = connect_mesh(&hosts, 0, &print("a"), Duration::from_secs(10)).unwrap_err();
        assert!(
            matches!(&e, MeshError::ConfigMismatch { differing, .. } if differing == &["options"]),
            "{e}"
        );
        let e1 = other.join().unwrap().unwrap_err();
        assert!(e1.to_string().contains("options differs"), "{e1}");
    }

    #[test]
    fn a_missing_process_is_a_bounded_wait() {
        let hosts = free_hosts(2);
        let t = Instant::now();
        let e = connect_mesh(&hosts, 0, &print("a"), Duration::from_millis(300)).unwrap_err();
        assert!(matches!(e, MeshError::Timeout { peer: 1, .. }), "{e}");
        let e = connect_mesh(&hosts, 1, &print("a"), Duration::from_millis(300)).unwrap_err();
        assert!(matches!(e, MeshError::Timeout { peer: 0, .. }), "{e}");
        assert!(t.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn another_protocol_is_named() {
        // A server that answers like HTTP.
        let server = TcpListener::bind("127.0.0.1:0").unwrap();
        let address = format!("127.0.0.1:{}", server.local_addr().unwrap().port());
        std::thread::spawn(move || {
            if let Ok((mut s, _)) = server.accept() {
                let _ = s.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n");
            }
        });
        let mut hosts = vec![address];
        hosts.extend(free_hosts(1));
        let e = connect_mesh(&hosts, 1, &print("a"), Duration::from_secs(5)).unwrap_err();
        assert!(matches!(e, MeshError::NotTokenflow { peer: 0, .. }), "{e}");
        assert!(e.to_string().contains("HTTP/1.1"), "{e}");
    }

    #[test]
    fn strangers_are_ignored_while_waiting() {
        let hosts = free_hosts(2);
        let h2 = hosts.clone();
        let waiting =
            std::thread::spawn(move || connect_mesh(&h2, 0, &print("a"), Duration::from_secs(10)));
        std::thread::sleep(Duration::from_millis(100));
        let mut stranger = TcpStream::connect(&hosts[0]).unwrap();
        stranger.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
        drop(stranger);
        connect_mesh(&hosts, 1, &print("a"), Duration::from_secs(10)).unwrap();
        waiting.join().unwrap().unwrap();
    }

    #[test]
    fn a_probe_is_answered_while_the_run_lasts_with_its_fault() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let faults = std::sync::Arc::new(PeerFaults::default());
        answer_probes(listener, std::sync::Arc::downgrade(&faults));
        assert_eq!(
            probe(&address, Duration::from_secs(5)),
            ProbeAnswer::Alive(None)
        );
        // A stranger that connects and sends nothing delays no probe.
        let _silent = TcpStream::connect(&address).unwrap();
        let mut stranger = TcpStream::connect(&address).unwrap();
        stranger.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
        assert_eq!(
            probe(&address, Duration::from_millis(500)),
            ProbeAnswer::Alive(None)
        );
        // A failed process says why.
        faults.fail_locally(3, "127.0.0.1:1", "a worker failed: boom".into());
        match probe(&address, Duration::from_secs(5)) {
            ProbeAnswer::Alive(Some(f)) => {
                assert_eq!((f.process, f.cause.as_str()), (3, "a worker failed: boom"))
            }
            other => panic!("{other:?}"),
        }
        // The run is over: no more answers, and the port is freed.
        drop(faults);
        let start = Instant::now();
        while probe(&address, Duration::from_millis(200)) != ProbeAnswer::Silent {
            assert!(start.elapsed() < Duration::from_secs(5), "still answering");
        }
        // A listener that accepts but never answers is silent too.
        let mute = TcpListener::bind("127.0.0.1:0").unwrap();
        assert_eq!(
            probe(
                &mute.local_addr().unwrap().to_string(),
                Duration::from_millis(200)
            ),
            ProbeAnswer::Silent
        );
    }
}
