//! The sockets timely's network threads read from the other processes of a
//! cluster, watched and checked, so that a peer that dies or misbehaves after
//! the handshake ends the run with an error that names it.
//!
//! Timely is fail-stop: on a broken connection its receive thread panics with
//! "timely communication error", the worker queues it fed are poisoned, and
//! the workers panic in turn ("MergeQueue poisoned"). That is the right outcome
//! (a timely cluster cannot lose a member), but the message names neither the
//! peer nor the cause, and a peer that sends malformed frames can make timely
//! index out of bounds or buffer without limit before anything fails. Each
//! [`PeerStream`] therefore follows timely's framing (a 48-byte big-endian
//! header of channel, source, target range, length and sequence number, then
//! `length` bytes; a zero-length header ends the stream) as the bytes pass,
//! and refuses a frame whose targets are not this process's workers, whose
//! source is not the peer's, whose length exceeds [`MAX_FRAME_BYTES`], or
//! that follows the end-of-stream header. The first fault of any link is kept
//! in [`PeerFaults`], which also shuts every link down, so that no network
//! thread of this process (and, through their own broken reads, of the other
//! processes) stays blocked on a peer that will never speak again.

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Once};
use std::time::{Duration, Instant};

use timely::communication::allocator::zero_copy::stream::Stream;

use super::mesh::{ProbeAnswer, probe};

/// Largest timely frame accepted from a peer (1 GiB): a batch of activations
/// is tens of MB; anything near this is a broken or hostile peer, and without
/// a bound timely would buffer whatever the peer sends under one header.
pub const MAX_FRAME_BYTES: u64 = 1 << 30;

/// Bytes of timely's frame header (six big-endian `u64`s).
const HEADER_BYTES: usize = 48;

/// What went wrong on one link, first fault only.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PeerFault {
    /// The peer's process index.
    pub process: usize,
    /// Its address from the host list.
    pub address: String,
    /// What happened, in words ("closed the connection", a malformed frame).
    pub cause: String,
}

/// What the watchdog knows of one link: when it last heard from it, and
/// whether the peer ended its stream cleanly.
#[derive(Debug)]
struct LinkWatch {
    process: usize,
    address: String,
    /// Milliseconds since [`PeerFaults::start`] when bytes last arrived.
    heard_ms: AtomicU64,
    ended: AtomicBool,
    socket: TcpStream,
}

/// The first link fault of this process, and a handle on every link so that
/// one fault can shut all of them down.
#[derive(Debug)]
pub struct PeerFaults {
    first: Mutex<Option<PeerFault>>,
    /// This process's own failure (a worker that failed or panicked), as the
    /// peers are told when they probe it.
    local: Mutex<Option<PeerFault>>,
    links: Mutex<Vec<Arc<LinkWatch>>>,
    start: Instant,
    /// Whether this run counts in [`FAULTED_RUNS`].
    counted: AtomicBool,
}

impl Default for PeerFaults {
    fn default() -> Self {
        PeerFaults {
            first: Mutex::new(None),
            local: Mutex::new(None),
            links: Mutex::new(Vec::new()),
            start: Instant::now(),
            counted: AtomicBool::new(false),
        }
    }
}

impl Drop for PeerFaults {
    fn drop(&mut self) {
        if self.counted.load(Ordering::SeqCst) {
            FAULTED_RUNS.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

impl PeerFaults {
    /// The first fault recorded, if any.
    pub fn first(&self) -> Option<PeerFault> {
        self.first.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// This process's own failure, if one was recorded.
    pub fn local(&self) -> Option<PeerFault> {
        self.local.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// What a probe of this process answers: its own failure, else the
    /// first fault it saw on a link, else nothing (healthy).
    pub fn probe_answer(&self) -> Option<PeerFault> {
        self.local().or_else(|| self.first())
    }

    /// Records that this process itself failed (`cause`, e.g. a worker's
    /// error): every link is shut down, so the peers stop at once instead of
    /// waiting for it, and a peer that probes it learns why. Faults its own
    /// shut-down links raise afterwards are not recorded; a failure after a
    /// link fault is that fault's consequence and is not recorded either.
    pub fn fail_locally(&self, process: usize, address: &str, cause: String) {
        if self.first().is_some() {
            // The worker failed because a link did (timely's cascade).
            return;
        }
        {
            let mut local = self.local.lock().unwrap_or_else(|p| p.into_inner());
            if local.is_some() {
                return;
            }
            *local = Some(PeerFault {
                process,
                address: address.to_string(),
                cause,
            });
        }
        self.count_fault();
        self.shut_all();
    }

    fn count_fault(&self) {
        if !self.counted.swap(true, Ordering::SeqCst) {
            FAULTED_RUNS.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn shut_all(&self) {
        // A read on a shut-down socket returns at once, so timely's threads
        // end and the workers see the failure.
        for link in self.links.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            let _ = link.socket.shutdown(Shutdown::Both);
        }
    }

    /// Starts a thread that records a fault for the first peer not heard
    /// from for `limit` (a stopped or hung process: its socket stays open, so
    /// no read ever fails, and timely would wait for it forever). A link
    /// quiet for a while (an idle cluster sends nothing) is probed on the
    /// peer's mesh address ([`crate::dataflow::mesh::probe`]), which a live
    /// process answers at once. The thread ends with the run (when `self` is
    /// dropped) or at the first fault.
    pub fn watch_silence(self: &Arc<Self>, limit: Duration) {
        let faults = Arc::downgrade(self);
        let period = (limit / 4).clamp(Duration::from_millis(10), Duration::from_secs(1));
        // A probe may take longer than a period on a loaded host: its own
        // timeout is half the limit (at most 5 s).
        let probe_timeout = (limit / 2).clamp(Duration::from_millis(100), Duration::from_secs(5));
        let limit_ms = limit.as_millis().min(u64::MAX as u128) as u64;
        let _ = std::thread::Builder::new()
            .name("tokenflow:link-watch".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(period);
                    let Some(faults) = faults.upgrade() else {
                        return;
                    };
                    if faults.first().is_some() || faults.local().is_some() {
                        return;
                    }
                    let links = faults
                        .links
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .clone();
                    let mut silent = None;
                    for link in links.iter().filter(|l| !l.ended.load(Ordering::SeqCst)) {
                        let quiet_ms = |faults: &PeerFaults| {
                            (faults.start.elapsed().as_millis() as u64)
                                .saturating_sub(link.heard_ms.load(Ordering::SeqCst))
                        };
                        if quiet_ms(&faults) < period.as_millis() as u64 {
                            continue;
                        }
                        if let ProbeAnswer::Alive(_) = probe(&link.address, probe_timeout) {
                            let now_ms = faults.start.elapsed().as_millis() as u64;
                            link.heard_ms.fetch_max(now_ms, Ordering::SeqCst);
                        } else if quiet_ms(&faults) > limit_ms {
                            silent = Some((link.process, link.address.clone()));
                            break;
                        }
                    }
                    if let Some((process, address)) = silent {
                        faults.record(PeerFault {
                            process,
                            address,
                            cause: format!(
                                "neither sent anything nor answered a probe for {limit:?} (stopped or hung; the limit is --connect-timeout)"
                            ),
                        });
                        return;
                    }
                }
            });
    }

    fn record(&self, fault: PeerFault) {
        if self.local().is_some() {
            return; // our own shut-down links, after our own failure
        }
        {
            let mut first = self.first.lock().unwrap_or_else(|p| p.into_inner());
            if first.is_some() {
                return;
            }
            *first = Some(fault);
        }
        self.count_fault();
        self.shut_all();
    }
}

/// Runs of this process with a recorded fault that have not ended: while
/// any has, the panics of timely's fail-stop cascade are not printed.
static FAULTED_RUNS: AtomicUsize = AtomicUsize::new(0);

/// The messages of timely's fail-stop cascade (its network threads, the
/// worker queues they poison, the guard that joins them).
const CASCADE: &[&str] = &[
    "timely communication error",
    "MergeQueue poisoned",
    "Send thread panic",
    "Recv thread panic",
];

/// Installs (once per process) a panic hook that keeps the default report
/// for every panic except timely's fail-stop cascade ([`CASCADE`]) while a
/// run with a recorded fault is under way: the run reports the fault itself
/// ([`crate::dataflow::error::EngineError::Peer`], or the worker's own error).
pub fn quiet_network_panics() {
    static INSTALLED: Once = Once::new();
    INSTALLED.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let payload = info
                .payload()
                .downcast_ref::<&str>()
                .copied()
                .or_else(|| info.payload().downcast_ref::<String>().map(String::as_str))
                .unwrap_or("");
            let cascade = CASCADE.iter().any(|m| payload.contains(m));
            if cascade && FAULTED_RUNS.load(Ordering::SeqCst) > 0 {
                return;
            }
            previous(info);
        }));
    });
}

/// The workers a link's frames may name: the sender's as source, ours as
/// targets.
#[derive(Debug, Clone, Copy)]
struct FrameBounds {
    sources: (u64, u64),
    targets: (u64, u64),
}

/// Where the reader is in timely's framing.
#[derive(Debug, Clone)]
struct Framing {
    header: [u8; HEADER_BYTES],
    header_len: usize,
    body_left: u64,
    ended: bool,
}

impl Framing {
    fn new() -> Self {
        Framing {
            header: [0; HEADER_BYTES],
            header_len: 0,
            body_left: 0,
            ended: false,
        }
    }

    /// Follows `bytes` through the framing; `Err` says what is malformed.
    fn observe(&mut self, mut bytes: &[u8], bounds: FrameBounds) -> Result<(), String> {
        while !bytes.is_empty() {
            if self.ended {
                return Err(format!(
                    "sent {} bytes after its end-of-stream frame",
                    bytes.len()
                ));
            }
            if self.body_left > 0 {
                let take = (self.body_left.min(bytes.len() as u64)) as usize;
                self.body_left -= take as u64;
                bytes = &bytes[take..];
                continue;
            }
            let take = (HEADER_BYTES - self.header_len).min(bytes.len());
            self.header[self.header_len..self.header_len + take].copy_from_slice(&bytes[..take]);
            self.header_len += take;
            bytes = &bytes[take..];
            if self.header_len == HEADER_BYTES {
                self.header_len = 0;
                self.body_left = self.check_header(bounds)?;
                if self.body_left == 0 {
                    self.ended = true;
                }
            }
        }
        Ok(())
    }

    fn check_header(&self, bounds: FrameBounds) -> Result<u64, String> {
        let field = |i: usize| {
            let mut word = [0u8; 8];
            word.copy_from_slice(&self.header[i * 8..i * 8 + 8]);
            u64::from_be_bytes(word)
        };
        let (channel, source, lower, upper, length) =
            (field(0), field(1), field(2), field(3), field(4));
        if length == 0 {
            return Ok(0);
        }
        if length > MAX_FRAME_BYTES {
            return Err(format!(
                "sent a frame of {length} bytes on channel {channel} (at most {MAX_FRAME_BYTES})"
            ));
        }
        let (lo, hi) = bounds.targets;
        if lower >= upper || lower < lo || upper > hi {
            return Err(format!(
                "sent a frame for workers {lower}..{upper}, but this process holds workers {lo}..{hi}"
            ));
        }
        let (slo, shi) = bounds.sources;
        if source < slo || source >= shi {
            return Err(format!(
                "sent a frame from worker {source}, but it holds workers {slo}..{shi}"
            ));
        }
        Ok(length)
    }
}

/// One end of a link to another process, as timely's network threads use it.
pub struct PeerStream {
    stream: TcpStream,
    watch: Arc<LinkWatch>,
    bounds: FrameBounds,
    framing: Framing,
    faults: Arc<PeerFaults>,
}

impl PeerStream {
    /// Wraps the checked socket to process `peer` (at `address`) for process
    /// `me`, each process running `workers` workers.
    pub fn new(
        stream: TcpStream,
        me: usize,
        peer: usize,
        address: &str,
        workers: usize,
        faults: &Arc<PeerFaults>,
    ) -> io::Result<Self> {
        let watch = Arc::new(LinkWatch {
            process: peer,
            address: address.to_string(),
            heard_ms: AtomicU64::new(faults.start.elapsed().as_millis() as u64),
            ended: AtomicBool::new(false),
            socket: stream.try_clone()?,
        });
        faults
            .links
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Arc::clone(&watch));
        let w = workers as u64;
        Ok(PeerStream {
            stream,
            watch,
            bounds: FrameBounds {
                sources: (peer as u64 * w, (peer as u64 + 1) * w),
                targets: (me as u64 * w, (me as u64 + 1) * w),
            },
            framing: Framing::new(),
            faults: Arc::clone(faults),
        })
    }

    /// The link broke (end of stream, reset, broken pipe): in a cluster of
    /// three or more, a peer that shut its links because of a fault
    /// elsewhere looks the same, so the peer is asked first, and the fault it
    /// saw (or its own failure) is what is recorded, with who saw it.
    fn closed(&self, cause: String) -> io::Error {
        if self.faults.first().is_none()
            && self.faults.local().is_none()
            && let ProbeAnswer::Alive(Some(theirs)) =
                probe(&self.watch.address, Duration::from_secs(1))
        {
            let seen_by = format!(
                "{}, as process {} reported",
                theirs.cause, self.watch.process
            );
            self.faults.record(PeerFault {
                cause: seen_by,
                ..theirs
            });
            return io::Error::new(io::ErrorKind::InvalidData, cause);
        }
        self.fault(cause)
    }

    fn fault(&self, cause: String) -> io::Error {
        self.faults.record(PeerFault {
            process: self.watch.process,
            address: self.watch.address.clone(),
            cause: cause.clone(),
        });
        io::Error::new(io::ErrorKind::InvalidData, cause)
    }
}

impl Read for PeerStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.stream.read(buf) {
            Ok(0) if !self.framing.ended => {
                Err(self.closed("closed the connection in the middle of the run".into()))
            }
            Ok(n) => match self.framing.observe(&buf[..n], self.bounds) {
                Ok(()) => {
                    let now_ms = self.faults.start.elapsed().as_millis() as u64;
                    self.watch.heard_ms.fetch_max(now_ms, Ordering::SeqCst);
                    if self.framing.ended {
                        self.watch.ended.store(true, Ordering::SeqCst);
                    }
                    Ok(n)
                }
                Err(cause) => Err(self.fault(cause)),
            },
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Err(e),
            Err(e) => Err(self.closed(link_error("reading", &e))),
        }
    }
}

impl Write for PeerStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self.stream.write(buf) {
            Err(e) if e.kind() != io::ErrorKind::Interrupted => {
                Err(self.closed(link_error("sending", &e)))
            }
            other => other,
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        self.stream
            .flush()
            .map_err(|e| self.closed(link_error("sending", &e)))
    }
}

/// A failed read or write in words: a peer that died shows as a reset or a
/// broken pipe, whichever of timely's two threads meets it first.
fn link_error(doing: &str, e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::ConnectionReset
        | io::ErrorKind::ConnectionAborted
        | io::ErrorKind::BrokenPipe
        | io::ErrorKind::UnexpectedEof => {
            format!("closed the connection in the middle of the run ({doing}: {e})")
        }
        _ => format!("broke the connection ({doing}: {e})"),
    }
}

impl Stream for PeerStream {
    fn try_clone(&self) -> io::Result<Self> {
        Ok(PeerStream {
            stream: self.stream.try_clone()?,
            watch: Arc::clone(&self.watch),
            bounds: self.bounds,
            // Timely clones once for its sender and once for its receiver;
            // only the receiver reads, from the first byte after the handshake.
            framing: Framing::new(),
            faults: Arc::clone(&self.faults),
        })
    }

    fn set_nonblocking(&self, nonblocking: bool) -> io::Result<()> {
        self.stream.set_nonblocking(nonblocking)
    }

    fn shutdown(&self, how: Shutdown) -> io::Result<()> {
        self.stream.shutdown(how)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(channel: u64, source: u64, lower: u64, upper: u64, length: u64) -> Vec<u8> {
        [channel, source, lower, upper, length, 0]
            .iter()
            .flat_map(|f| f.to_be_bytes())
            .collect()
    }

    /// Process 1 of 3 with 2 workers each, reading from process 0.
    const BOUNDS: FrameBounds = FrameBounds {
        sources: (0, 2),
        targets: (2, 4),
    };

    #[test]
    fn well_formed_frames_pass_in_any_cut() {
        let mut bytes = header(3, 1, 2, 4, 5);
        bytes.extend_from_slice(b"hello");
        bytes.extend(header(7, 0, 3, 4, 2));
        bytes.extend_from_slice(b"ok");
        bytes.extend(header(0, 0, 0, 0, 0));
        for cut in 0..=bytes.len() {
            for second in cut..=bytes.len() {
                let mut f = Framing::new();
                f.observe(&bytes[..cut], BOUNDS).unwrap();
                f.observe(&bytes[cut..second], BOUNDS).unwrap();
                f.observe(&bytes[second..], BOUNDS).unwrap();
                assert!(f.ended);
            }
        }
    }

    #[test]
    fn malformed_frames_are_named() {
        let cases = [
            (header(1, 0, 0, 1, 4), "this process holds workers 2..4"),
            (header(1, 0, 2, 9, 4), "workers 2..9"),
            (header(1, 0, 3, 3, 4), "workers 3..3"),
            (header(1, 5, 2, 3, 4), "from worker 5"),
            (header(1, 0, 2, 3, MAX_FRAME_BYTES + 1), "at most"),
        ];
        for (bytes, expected) in cases {
            let err = Framing::new().observe(&bytes, BOUNDS).unwrap_err();
            assert!(err.contains(expected), "{err}");
        }
        let mut after_end = header(0, 0, 0, 0, 0);
        after_end.push(1);
        let err = Framing::new().observe(&after_end, BOUNDS).unwrap_err();
        assert!(err.contains("after its end-of-stream"), "{err}");
    }

    #[test]
    fn the_first_fault_is_kept_and_shuts_every_link() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let client = TcpStream::connect(addr).unwrap();
        let (server, _) = listener.accept().unwrap();
        let faults = Arc::new(PeerFaults::default());
        let mut ours = PeerStream::new(server, 1, 0, &addr.to_string(), 2, &faults).unwrap();
        let mut theirs = client;
        theirs.write_all(&header(1, 0, 0, 1, 4)).unwrap();
        let mut buf = [0u8; 64];
        let err = ours.read(&mut buf).unwrap_err();
        assert!(err.to_string().contains("holds workers 2..4"), "{err}");
        let first = faults.first().unwrap();
        assert_eq!(first.process, 0);
        // The link was shut down: the peer reads end of stream.
        assert_eq!(theirs.read(&mut buf).unwrap(), 0);
        // A second fault does not replace the first.
        faults.record(PeerFault {
            process: 2,
            address: "x".into(),
            cause: "later".into(),
        });
        assert_eq!(faults.first().unwrap().process, 0);
    }
}
