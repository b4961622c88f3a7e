//! Requests that arrive while the dataflow runs: the channel from a client
//! (an HTTP server, a REPL) to worker 0, and the board where workers post their
//! measurements for a client to read while they run.
//!
//! ```
//! use tokenflow_engine::Request;
//! use tokenflow_engine::dataflow::live::live_channel;
//! use tokenflow_engine::dataflow::Submission;
//!
//! let (client, intake) = live_channel();
//! client.submit(Submission::now(Request::greedy(7, vec![1, 2, 3], 4))).unwrap();
//! client.cancel(7).unwrap();
//! assert_eq!(intake.pending(), 2);
//! drop(client); // the run ends once everything accepted has ended
//! ```

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::Thread;

use crossbeam_channel::{Receiver, Sender, TryRecvError};
use thiserror::Error;
use tokenflow_core::SeqId;

use super::metrics::EngineMetrics;
use super::sequencer::{ClientMsg, Submission};

/// The run this client fed has ended: nothing more is accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[error("the engine has stopped and accepts no more requests")]
pub struct EngineClosed;

/// Wakes worker 0 when a message is waiting, so a new request does not wait
/// out the worker's park timeout.
#[derive(Debug, Default)]
struct Waker {
    worker: Mutex<Option<Thread>>,
    aborted: AtomicBool,
}

impl Waker {
    fn wake(&self) {
        if let Some(thread) = self
            .worker
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
        {
            thread.unpark();
        }
    }
}

/// The client's end: submit and cancel from any thread. Cloning shares the
/// channel; the run ends when every clone is dropped and what was accepted has ended.
#[derive(Debug, Clone)]
pub struct LiveClient {
    tx: Sender<ClientMsg>,
    waker: Arc<Waker>,
}

impl LiveClient {
    /// Hands `submission` to the sequencer; its events come to the run's observer.
    pub fn submit(&self, submission: Submission) -> Result<(), EngineClosed> {
        self.send(ClientMsg::Submit(submission))
    }

    /// Withdraws `seq`: it ends with a cancelled refusal and its KV is released.
    pub fn cancel(&self, seq: SeqId) -> Result<(), EngineClosed> {
        self.send(ClientMsg::Cancel(seq))
    }

    /// A handle that can abort the run without keeping it open (the run ends
    /// once every client is dropped; a handle does not count).
    pub fn abort_handle(&self) -> AbortHandle {
        AbortHandle {
            waker: Arc::clone(&self.waker),
        }
    }

    /// Ends the run at once, with [`super::EngineError::Aborted`], whatever is
    /// in flight (nothing more is delivered). Meant for a timely cluster whose
    /// membership is being replaced: this process leaves, so every other
    /// process's run ends too.
    pub fn abort(&self) {
        self.waker.aborted.store(true, Ordering::SeqCst);
        self.waker.wake();
    }

    fn send(&self, msg: ClientMsg) -> Result<(), EngineClosed> {
        self.tx.send(msg).map_err(|_| EngineClosed)?;
        self.waker.wake();
        Ok(())
    }
}

/// Aborts a live run ([`LiveClient::abort`]) without being one of its clients.
#[derive(Debug, Clone)]
pub struct AbortHandle {
    waker: Arc<Waker>,
}

impl AbortHandle {
    /// Ends the run at once with [`super::EngineError::Aborted`].
    pub fn abort(&self) {
        self.waker.aborted.store(true, Ordering::SeqCst);
        self.waker.wake();
    }
}

/// Worker 0's end of the channel.
#[derive(Debug, Clone)]
pub struct LiveIntake {
    rx: Receiver<ClientMsg>,
    waker: Arc<Waker>,
}

/// What [`LiveIntake::drain`] found.
#[derive(Debug, Default, PartialEq)]
pub struct Drained {
    /// Messages, in the order they were sent.
    pub messages: Vec<ClientMsg>,
    /// Every client is gone: no more will come.
    pub closed: bool,
}

impl LiveIntake {
    /// Messages sent and not yet taken.
    pub fn pending(&self) -> usize {
        self.rx.len()
    }

    /// Whether a client asked the run to end at once.
    pub fn aborted(&self) -> bool {
        self.waker.aborted.load(Ordering::SeqCst)
    }

    /// Makes the calling thread the one a new message wakes.
    pub(crate) fn register_current_thread(&self) {
        *self
            .waker
            .worker
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(std::thread::current());
    }

    /// Takes every waiting message without blocking.
    pub fn drain(&self) -> Drained {
        let mut out = Drained::default();
        loop {
            match self.rx.try_recv() {
                Ok(msg) => out.messages.push(msg),
                Err(TryRecvError::Empty) => return out,
                Err(TryRecvError::Disconnected) => {
                    out.closed = true;
                    return out;
                }
            }
        }
    }
}

/// A channel from clients to a live run ([`super::runner::run_live`]).
pub fn live_channel() -> (LiveClient, LiveIntake) {
    let (tx, rx) = crossbeam_channel::unbounded();
    let waker = Arc::new(Waker::default());
    (
        LiveClient {
            tx,
            waker: Arc::clone(&waker),
        },
        LiveIntake { rx, waker },
    )
}

/// Where the workers of this process post their measurements while a run goes
/// on (each replaces its own copy), so `/metrics` can be read at any time.
/// Workers of other processes of a cluster post on their own process's board.
#[derive(Debug, Default)]
pub struct MetricsBoard {
    workers: Mutex<Vec<Option<EngineMetrics>>>,
    phases: Mutex<Vec<(String, std::time::SystemTime)>>,
}

impl MetricsBoard {
    /// Replaces what `worker` posted before. A worker's first post (its
    /// stages are loaded) is also a phase, `worker W loaded`.
    pub fn post(&self, worker: usize, metrics: &EngineMetrics) {
        let mut slots = self.workers.lock().unwrap_or_else(PoisonError::into_inner);
        if slots.len() <= worker {
            slots.resize(worker + 1, None);
        }
        if slots[worker].is_none() {
            self.mark(&format!("worker {worker} loaded"));
        }
        slots[worker] = Some(metrics.clone());
    }

    /// Notes that the run reached `phase` now (`model opened`, `mesh
    /// connected`, `worker W loaded`), for a caller timing a start.
    pub fn mark(&self, phase: &str) {
        self.phases
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push((phase.to_string(), std::time::SystemTime::now()));
    }

    /// The phases reached so far, in order, with when.
    pub fn phases(&self) -> Vec<(String, std::time::SystemTime)> {
        self.phases
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// How many workers have posted (a worker posts once its stages are loaded).
    pub fn workers_posted(&self) -> usize {
        let slots = self.workers.lock().unwrap_or_else(PoisonError::into_inner);
        slots.iter().flatten().count()
    }

    /// Everything posted, merged over the workers.
    pub fn snapshot(&self) -> EngineMetrics {
        let slots = self.workers.lock().unwrap_or_else(PoisonError::into_inner);
        let mut merged = EngineMetrics::default();
        for m in slots.iter().flatten() {
            merged.merge(m);
        }
        merged
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokenflow_core::Request;

    #[test]
    fn drain_keeps_order_and_sees_the_end() {
        let (client, intake) = live_channel();
        client
            .submit(Submission::now(Request::greedy(1, vec![1], 2)))
            .unwrap();
        client.cancel(1).unwrap();
        let first = intake.drain();
        assert_eq!(first.messages.len(), 2);
        assert!(matches!(first.messages[1], ClientMsg::Cancel(1)));
        assert!(!first.closed);
        drop(client);
        assert_eq!(
            intake.drain(),
            Drained {
                messages: vec![],
                closed: true
            }
        );
    }

    #[test]
    fn board_merges_each_worker_once() {
        let board = MetricsBoard::default();
        let mut m = EngineMetrics::default();
        m.sequencer.tokens = 3;
        board.post(0, &m);
        board.post(0, &m);
        board.post(2, &m);
        assert_eq!(board.snapshot().sequencer.tokens, 6);
    }
}
