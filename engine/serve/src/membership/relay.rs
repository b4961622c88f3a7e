//! [`Relay`]: the coordinator's sessions, which outlive the timely clusters
//! they run on. Each accepted request keeps its original form and the tokens
//! already streamed to its client (with the durable token log, the source of
//! truth); it runs in one membership epoch at a time. When an epoch fails its
//! sessions wait for the next one and continue there from their tokens (the
//! prompt extended by them, the budget reduced, so positions and seeded draws
//! are unchanged); when an epoch is retired its sessions finish where they
//! are while new requests go to the next epoch. Events of an epoch a session
//! has left are dropped, and a token is passed on only if it is the next one
//! the client lacks, so nothing is lost or repeated.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use tokenflow_engine::dataflow::durable_log::{DurableLogWriter, LogRecord};
use tokenflow_engine::dataflow::{
    EngineClosed, EngineEvent, LiveClient, RequestTiming, Submission,
};
use tokenflow_engine::{FinishReason, Request, TokenLog};
use tokenflow_operators::SeqId;

use crate::feed::EngineFeed;
use crate::state::EventRoutes;

/// A membership epoch: one timely cluster of the coordinator and its nodes.
pub type EpochId = u64;

/// Resumptions kept for `/control/epochs` (the newest).
const KEPT_RESUMPTIONS: usize = 4096;

/// One accepted request across epochs.
#[derive(Debug)]
struct Session {
    /// As the client sent it.
    request: Request,
    /// Tokens streamed to the client so far.
    delivered: Vec<u32>,
    /// Where it runs; `None` while it waits for an epoch.
    epoch: Option<EpochId>,
    /// Tokens it had when it entered its epoch (the epoch counts from there).
    base: usize,
    /// When its epoch failed under it (until its next token).
    stalled_since: Option<Instant>,
    /// Its client withdrew it: it ends instead of moving to another epoch.
    cancelled: bool,
}

impl Session {
    /// The request to run in a new epoch: the original, continued after what
    /// the client already has.
    fn continuation(&self) -> Request {
        let mut r = self.request.clone();
        r.prompt.extend_from_slice(&self.delivered);
        r.max_tokens = r.max_tokens.saturating_sub(self.delivered.len());
        r
    }

    /// Whether the tokens delivered already end it (its epoch failed between
    /// its last token and the end event). Stop tokens and the budget are
    /// checked; stop strings are not (the continuation runs on, and the HTTP
    /// side still cuts the text at the stop string).
    fn already_ended(&self) -> Option<FinishReason> {
        if self
            .delivered
            .last()
            .is_some_and(|t| self.request.stop_tokens.contains(t))
        {
            Some(FinishReason::Stop)
        } else if self.delivered.len() >= self.request.max_tokens {
            Some(FinishReason::Length)
        } else {
            None
        }
    }
}

/// An epoch as the relay feeds it.
#[derive(Debug)]
struct EpochFeed {
    /// Its live channel; dropped once a retired epoch has no session left
    /// (its run then ends on every process).
    client: Option<LiveClient>,
    /// Whether new requests go to it.
    accepting: bool,
}

/// A session that continued after its epoch failed: how long its client
/// waited for the next token.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Resumption {
    /// The epoch it continued in.
    pub epoch: EpochId,
    /// The sequence.
    pub seq: SeqId,
    /// Seconds from its epoch's end being noticed to its next token.
    pub stall_s: f64,
}

#[derive(Debug, Default)]
struct RelayState {
    sessions: HashMap<SeqId, Session>,
    epochs: BTreeMap<EpochId, EpochFeed>,
    /// Where new requests go.
    current: Option<EpochId>,
    closed: bool,
    resumptions: Vec<Resumption>,
    /// Sessions carried into another epoch, in all.
    moved: u64,
}

/// The sessions and the epochs they run in; the HTTP side's [`EngineFeed`].
pub struct Relay {
    state: Mutex<RelayState>,
    /// Signalled when a session waits for an epoch or an epoch empties.
    changed: Condvar,
    routes: Arc<EventRoutes>,
    log: Option<Mutex<DurableLogWriter>>,
    log_failed: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for Relay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (sessions, waiting) = self.counts();
        f.debug_struct("Relay")
            .field("sessions", &sessions)
            .field("waiting", &waiting)
            .field("logged", &self.log.is_some())
            .finish()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Relay {
    /// A relay delivering to `routes`, appending to `log` if given.
    pub fn new(routes: Arc<EventRoutes>, log: Option<DurableLogWriter>) -> Self {
        Self {
            state: Mutex::new(RelayState::default()),
            changed: Condvar::new(),
            routes,
            log: log.map(Mutex::new),
            log_failed: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Appends `record` to the token log. After a failed write the log may
    /// end in a torn line and holds no more: new requests are refused (the
    /// server is not ready) rather than accepted without a record.
    fn append(&self, record: &LogRecord) {
        if let Some(log) = &self.log
            && !self.log_failed.load(std::sync::atomic::Ordering::SeqCst)
            && let Err(e) = lock(log).append(record)
        {
            eprintln!("coordinator: token log: {e}; refusing new requests");
            self.log_failed
                .store(true, std::sync::atomic::Ordering::SeqCst);
        }
    }

    /// Flushes the token log to disk.
    pub fn sync(&self) {
        if let Some(log) = &self.log
            && let Err(e) = lock(log).sync()
        {
            eprintln!("coordinator: token log: {e}");
        }
    }

    /// Takes a request left unfinished by an earlier coordinator (from its
    /// token log), with the tokens its client already had: it continues in
    /// the next epoch, answered to the log only.
    pub fn adopt(&self, request: Request, delivered: Vec<u32>) {
        let mut st = lock(&self.state);
        st.sessions.insert(
            request.id,
            Session {
                request,
                delivered,
                epoch: None,
                base: 0,
                stalled_since: None,
                cancelled: false,
            },
        );
        drop(st);
        self.changed.notify_all();
    }

    /// Sends `seq`'s continuation into `epoch` (or ends it, if its tokens already do).
    fn dispatch(&self, st: &mut RelayState, seq: SeqId, epoch: EpochId) {
        let Some(session) = st.sessions.get_mut(&seq) else {
            return;
        };
        if session.cancelled {
            st.sessions.remove(&seq);
            self.end_cancelled(seq);
            return;
        }
        if let Some(reason) = session.already_ended() {
            let session = st.sessions.remove(&seq).expect("just seen");
            self.finish(session, reason, RequestTiming::default());
            return;
        }
        let Some(client) = st.epochs.get(&epoch).and_then(|e| e.client.clone()) else {
            return;
        };
        session.epoch = Some(epoch);
        session.base = session.delivered.len();
        if client
            .submit(Submission::now(session.continuation()))
            .is_err()
        {
            // The epoch's run has already ended: the session waits for the next.
            session.epoch = None;
        }
    }

    /// Ends `seq` as cancelled (withdrawn, or the coordinator stopping with
    /// no epoch left to run it), logging and telling its client.
    fn end_cancelled(&self, seq: SeqId) {
        let error = tokenflow_engine::dataflow::RequestError::Cancelled { seq };
        self.append(&LogRecord::End {
            seq,
            reason: None,
            error: Some(error.to_string()),
        });
        self.routes.deliver(&EngineEvent::Refused { seq, error });
    }

    fn finish(&self, session: Session, reason: FinishReason, timing: RequestTiming) {
        let seq = session.request.id;
        self.append(&LogRecord::End {
            seq,
            reason: Some(reason),
            error: None,
        });
        self.routes.deliver(&EngineEvent::Finished {
            seq,
            reason,
            log: TokenLog {
                prompt: session.request.prompt,
                generated: session.delivered,
            },
            timing,
        });
    }

    /// Opens `epoch` fed through `client`: new requests go to it from now on,
    /// and every session waiting for an epoch continues in it.
    pub fn open_epoch(&self, epoch: EpochId, client: LiveClient) {
        let mut st = lock(&self.state);
        if let Some(old) = st.current
            && let Some(feed) = st.epochs.get_mut(&old)
        {
            feed.accepting = false;
        }
        st.epochs.insert(
            epoch,
            EpochFeed {
                client: Some(client),
                accepting: true,
            },
        );
        st.current = Some(epoch);
        let waiting: Vec<SeqId> = st
            .sessions
            .iter()
            .filter(|(_, s)| s.epoch.is_none())
            .map(|(&id, _)| id)
            .collect();
        for seq in waiting {
            self.dispatch(&mut st, seq, epoch);
        }
        Self::release_empty(&mut st);
    }

    /// Stops sending new requests to `epoch`; its sessions finish there, and
    /// its run ends once the last has.
    pub fn retire_epoch(&self, epoch: EpochId) {
        let mut st = lock(&self.state);
        if let Some(feed) = st.epochs.get_mut(&epoch) {
            feed.accepting = false;
        }
        if st.current == Some(epoch) {
            st.current = None;
        }
        Self::release_empty(&mut st);
    }

    /// Moves `epoch`'s sessions into the current epoch (a drain that ran out
    /// of time): each is withdrawn there and continues from its tokens here.
    /// Returns how many moved.
    pub fn move_sessions(&self, epoch: EpochId) -> usize {
        let mut st = lock(&self.state);
        let Some(target) = st.current.filter(|&c| c != epoch) else {
            return 0;
        };
        let old = st.epochs.get(&epoch).and_then(|e| e.client.clone());
        let seqs: Vec<SeqId> = st
            .sessions
            .iter()
            .filter(|(_, s)| s.epoch == Some(epoch))
            .map(|(&id, _)| id)
            .collect();
        for &seq in &seqs {
            if let Some(old) = &old {
                let _ = old.cancel(seq);
            }
            self.dispatch(&mut st, seq, target);
        }
        st.moved += seqs.len() as u64;
        Self::release_empty(&mut st);
        seqs.len()
    }

    /// `epoch`'s run has ended (failed, or finished after retiring): its
    /// sessions wait for the next epoch. Returns how many were left in it.
    pub fn epoch_ended(&self, epoch: EpochId) -> usize {
        let mut st = lock(&self.state);
        st.epochs.remove(&epoch);
        if st.current == Some(epoch) {
            st.current = None;
        }
        let now = Instant::now();
        let mut left = 0;
        for s in st.sessions.values_mut() {
            if s.epoch == Some(epoch) {
                s.epoch = None;
                s.stalled_since.get_or_insert(now);
                left += 1;
            }
        }
        if st.closed {
            // Stopping: no epoch will take them.
            self.end_waiting(&mut st);
        } else {
            st.moved += left as u64;
            let withdrawn: Vec<SeqId> = st
                .sessions
                .iter()
                .filter(|(_, s)| s.epoch.is_none() && s.cancelled)
                .map(|(&id, _)| id)
                .collect();
            for seq in withdrawn {
                st.sessions.remove(&seq);
                self.end_cancelled(seq);
            }
        }
        // Straight into the current epoch, if another is open.
        if let Some(current) = st.current {
            let waiting: Vec<SeqId> = st
                .sessions
                .iter()
                .filter(|(_, s)| s.epoch.is_none())
                .map(|(&id, _)| id)
                .collect();
            for seq in waiting {
                self.dispatch(&mut st, seq, current);
            }
        }
        drop(st);
        self.changed.notify_all();
        left
    }

    /// Drops the client of every retired epoch with no session left.
    fn release_empty(st: &mut RelayState) {
        let busy: Vec<EpochId> = st.sessions.values().filter_map(|s| s.epoch).collect();
        for (id, feed) in st.epochs.iter_mut() {
            if !feed.accepting && !busy.contains(id) {
                feed.client = None;
            }
        }
    }

    /// An event of `epoch`'s run (called on its worker 0).
    pub fn on_event(&self, epoch: EpochId, event: &EngineEvent) {
        let seq = match event {
            EngineEvent::Token { seq, .. }
            | EngineEvent::Finished { seq, .. }
            | EngineEvent::Refused { seq, .. } => *seq,
        };
        let mut st = lock(&self.state);
        let Some(session) = st.sessions.get_mut(&seq).filter(|s| s.epoch == Some(epoch)) else {
            return;
        };
        match event {
            EngineEvent::Token {
                index,
                token,
                at_us,
                ..
            } => {
                let global = session.base + index;
                if global != session.delivered.len() {
                    return;
                }
                session.delivered.push(*token);
                if let Some(since) = session.stalled_since.take() {
                    if st.resumptions.len() >= KEPT_RESUMPTIONS {
                        st.resumptions.remove(0);
                    }
                    st.resumptions.push(Resumption {
                        epoch,
                        seq,
                        stall_s: since.elapsed().as_secs_f64(),
                    });
                }
                self.append(&LogRecord::Token {
                    seq,
                    index: global,
                    token: *token,
                });
                self.routes.deliver(&EngineEvent::Token {
                    seq,
                    index: global,
                    token: *token,
                    at_us: *at_us,
                });
            }
            EngineEvent::Finished { reason, timing, .. } => {
                let session = st.sessions.remove(&seq).expect("just seen");
                self.finish(session, *reason, *timing);
                Self::release_empty(&mut st);
            }
            EngineEvent::Refused { error, .. } => {
                st.sessions.remove(&seq);
                self.append(&LogRecord::End {
                    seq,
                    reason: None,
                    error: Some(error.to_string()),
                });
                self.routes.deliver(event);
                Self::release_empty(&mut st);
            }
        }
        drop(st);
        self.changed.notify_all();
    }

    /// Sessions running in `epoch`.
    pub fn sessions_in(&self, epoch: EpochId) -> usize {
        lock(&self.state)
            .sessions
            .values()
            .filter(|s| s.epoch == Some(epoch))
            .count()
    }

    /// Sessions in all, and those waiting for an epoch.
    pub fn counts(&self) -> (usize, usize) {
        let st = lock(&self.state);
        let waiting = st.sessions.values().filter(|s| s.epoch.is_none()).count();
        (st.sessions.len(), waiting)
    }

    /// Sessions carried into another epoch so far.
    pub fn moved(&self) -> u64 {
        lock(&self.state).moved
    }

    /// Every resumption so far.
    pub fn resumptions(&self) -> Vec<Resumption> {
        lock(&self.state).resumptions.clone()
    }

    /// Waits up to `timeout` for a change (a session waiting, an epoch emptying).
    pub fn wait_change(&self, timeout: Duration) {
        let st = lock(&self.state);
        let _ = self
            .changed
            .wait_timeout(st, timeout)
            .unwrap_or_else(PoisonError::into_inner);
    }

    /// Accepts nothing more; sessions running in an epoch finish there (each
    /// epoch's client is dropped once its sessions end), and those waiting
    /// for an epoch end now, cancelled.
    pub fn close(&self) {
        let mut st = lock(&self.state);
        st.closed = true;
        st.current = None;
        for feed in st.epochs.values_mut() {
            feed.accepting = false;
        }
        self.end_waiting(&mut st);
        Self::release_empty(&mut st);
        drop(st);
        self.changed.notify_all();
    }

    fn end_waiting(&self, st: &mut RelayState) {
        let waiting: Vec<SeqId> = st
            .sessions
            .iter()
            .filter(|(_, s)| s.epoch.is_none())
            .map(|(&id, _)| id)
            .collect();
        for seq in waiting {
            st.sessions.remove(&seq);
            self.end_cancelled(seq);
        }
    }
}

impl EngineFeed for Relay {
    fn submit(&self, request: Request) -> Result<(), EngineClosed> {
        let mut st = lock(&self.state);
        if st.closed || self.log_failed.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(EngineClosed);
        }
        self.append(&LogRecord::Submit(request.clone()));
        let seq = request.id;
        st.sessions.insert(
            seq,
            Session {
                request,
                delivered: Vec::new(),
                epoch: None,
                base: 0,
                stalled_since: None,
                cancelled: false,
            },
        );
        if let Some(epoch) = st.current {
            self.dispatch(&mut st, seq, epoch);
        }
        drop(st);
        self.changed.notify_all();
        Ok(())
    }

    fn cancel(&self, seq: SeqId) -> Result<(), EngineClosed> {
        let mut st = lock(&self.state);
        let Some(session) = st.sessions.get(&seq) else {
            return Ok(());
        };
        match session
            .epoch
            .and_then(|e| st.epochs.get(&e)?.client.clone())
        {
            // The engine ends it and says so (and if its epoch ends first,
            // it is not carried into the next).
            Some(client) => {
                let _ = client.cancel(seq);
                if let Some(s) = st.sessions.get_mut(&seq) {
                    s.cancelled = true;
                }
            }
            None => {
                st.sessions.remove(&seq);
                self.end_cancelled(seq);
                Self::release_empty(&mut st);
            }
        }
        Ok(())
    }

    fn serving(&self) -> bool {
        lock(&self.state).current.is_some()
            && !self.log_failed.load(std::sync::atomic::Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokenflow_engine::dataflow::{ClientMsg, LiveIntake, live_channel};

    fn token(seq: SeqId, index: usize, token: u32) -> EngineEvent {
        EngineEvent::Token {
            seq,
            index,
            token,
            at_us: 0,
        }
    }

    fn finished(seq: SeqId) -> EngineEvent {
        EngineEvent::Finished {
            seq,
            reason: FinishReason::Length,
            log: TokenLog::default(),
            timing: RequestTiming::default(),
        }
    }

    /// Requests the epoch behind `intake` was sent.
    fn submitted(intake: &LiveIntake) -> Vec<Request> {
        intake
            .drain()
            .messages
            .into_iter()
            .filter_map(|m| match m {
                ClientMsg::Submit(s) => Some(s.request),
                _ => None,
            })
            .collect()
    }

    fn relay() -> (Relay, Arc<EventRoutes>) {
        let routes = Arc::new(EventRoutes::default());
        (Relay::new(Arc::clone(&routes), None), routes)
    }

    #[test]
    fn a_session_continues_in_the_next_epoch_from_its_tokens() {
        let (relay, _routes) = relay();
        let (c0, i0) = live_channel();
        relay.open_epoch(0, c0);
        relay.submit(Request::greedy(7, vec![1, 2, 3], 5)).unwrap();
        assert_eq!(submitted(&i0)[0].prompt, vec![1, 2, 3]);
        relay.on_event(0, &token(7, 0, 10));
        relay.on_event(0, &token(7, 1, 11));
        // A duplicate and a gap are not passed on.
        relay.on_event(0, &token(7, 1, 11));
        relay.on_event(0, &token(7, 3, 13));
        assert_eq!(relay.epoch_ended(0), 1);
        assert!(!relay.serving());
        assert_eq!(relay.counts(), (1, 1));
        // Late events of the ended epoch are dropped.
        relay.on_event(0, &token(7, 2, 99));
        let (c1, i1) = live_channel();
        relay.open_epoch(1, c1);
        let again = submitted(&i1);
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].prompt, vec![1, 2, 3, 10, 11]);
        assert_eq!(again[0].max_tokens, 3);
        // The new epoch counts from 0; the client sees indices 2, 3, 4.
        relay.on_event(1, &token(7, 0, 12));
        relay.on_event(1, &token(7, 1, 13));
        relay.on_event(1, &token(7, 2, 14));
        relay.on_event(1, &finished(7));
        assert_eq!(relay.counts(), (0, 0));
        assert_eq!(relay.moved(), 1);
        assert_eq!(relay.resumptions().len(), 1);
    }

    #[test]
    fn a_retired_epoch_finishes_its_sessions_while_new_ones_go_on() {
        let (relay, _routes) = relay();
        let (c0, i0) = live_channel();
        relay.open_epoch(0, c0);
        relay.submit(Request::greedy(1, vec![1], 4)).unwrap();
        let (c1, i1) = live_channel();
        relay.open_epoch(1, c1);
        relay.submit(Request::greedy(2, vec![2], 4)).unwrap();
        assert_eq!(submitted(&i0).len(), 1);
        assert_eq!(submitted(&i1)[0].id, 2);
        assert_eq!(relay.sessions_in(0), 1);
        // The old epoch keeps its client (the run goes on) until its last
        // session ends; then the client is dropped and the run may end.
        assert!(!i0.drain().closed);
        relay.on_event(0, &token(1, 0, 5));
        relay.on_event(0, &finished(1));
        assert!(
            i0.drain().closed,
            "the retired epoch's client was not released"
        );
        assert!(!i1.drain().closed);
        assert_eq!(relay.moved(), 0);
    }

    #[test]
    fn a_drain_past_its_deadline_moves_sessions_without_losing_tokens() {
        let (relay, _routes) = relay();
        let (c0, i0) = live_channel();
        relay.open_epoch(0, c0);
        relay.submit(Request::greedy(3, vec![9], 6)).unwrap();
        submitted(&i0);
        relay.on_event(0, &token(3, 0, 40));
        let (c1, i1) = live_channel();
        relay.open_epoch(1, c1);
        assert_eq!(relay.move_sessions(0), 1);
        // The old epoch is told to cancel; its cancellation is not passed on.
        let cancels = i0.drain().messages;
        assert!(matches!(cancels[..], [ClientMsg::Cancel(3)]), "{cancels:?}");
        relay.on_event(
            0,
            &EngineEvent::Refused {
                seq: 3,
                error: tokenflow_engine::dataflow::RequestError::Cancelled { seq: 3 },
            },
        );
        assert_eq!(relay.counts(), (1, 0));
        let moved = submitted(&i1);
        assert_eq!(moved[0].prompt, vec![9, 40]);
        assert_eq!(moved[0].max_tokens, 5);
    }

    #[test]
    fn a_withdrawn_session_is_not_carried_into_the_next_epoch() {
        let (relay, _routes) = relay();
        let (c0, i0) = live_channel();
        relay.open_epoch(0, c0);
        relay.submit(Request::greedy(9, vec![1], 8)).unwrap();
        relay.cancel(9).unwrap();
        // The epoch fails before the engine's refusal comes back.
        relay.epoch_ended(0);
        drop(i0);
        let (c1, i1) = live_channel();
        relay.open_epoch(1, c1);
        assert!(submitted(&i1).is_empty());
        assert_eq!(relay.counts(), (0, 0));
    }

    #[test]
    fn a_session_whose_tokens_already_end_it_is_finished_not_resubmitted() {
        let (relay, _routes) = relay();
        let (c0, i0) = live_channel();
        relay.open_epoch(0, c0);
        let mut r = Request::greedy(4, vec![1], 3);
        r.stop_tokens = vec![2];
        relay.submit(r).unwrap();
        submitted(&i0);
        relay.on_event(0, &token(4, 0, 2));
        relay.epoch_ended(0);
        let (c1, i1) = live_channel();
        relay.open_epoch(1, c1);
        assert!(submitted(&i1).is_empty());
        assert_eq!(relay.counts(), (0, 0));
    }

    #[test]
    fn requests_wait_for_the_first_epoch_and_a_cancel_there_ends_them() {
        let (relay, _routes) = relay();
        relay.submit(Request::greedy(5, vec![1], 3)).unwrap();
        relay.submit(Request::greedy(6, vec![1], 3)).unwrap();
        relay.cancel(6).unwrap();
        assert_eq!(relay.counts(), (1, 1));
        let (c0, i0) = live_channel();
        relay.open_epoch(0, c0);
        let sent = submitted(&i0);
        assert_eq!(sent.len(), 1);
        assert_eq!(sent[0].id, 5);
        relay.close();
        assert!(relay.submit(Request::greedy(8, vec![1], 3)).is_err());
        // Session 5 runs in epoch 0 and may finish; one that fails there
        // while stopping is ended, not left waiting.
        assert_eq!(relay.counts(), (1, 0));
        relay.epoch_ended(0);
        assert_eq!(relay.counts(), (0, 0));
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashSet;
    use tokenflow_engine::dataflow::{ClientMsg, LiveIntake, live_channel};

    /// The token a deterministic model gives at generated position `k`.
    fn truth(seq: SeqId, k: usize) -> u32 {
        (seq as u32 * 31 + k as u32 * 7) % 500
    }

    /// One epoch as the test drives it.
    struct FakeEpoch {
        intake: LiveIntake,
        /// Per sequence: tokens it had when given to this epoch, tokens emitted here.
        given: HashMap<SeqId, (usize, usize)>,
        /// Sequences the relay took away (their events here are stale).
        gone: HashSet<SeqId>,
        failed: bool,
    }

    impl FakeEpoch {
        fn take_submissions(&mut self) {
            for m in self.intake.drain().messages {
                if let ClientMsg::Submit(s) = m {
                    self.given
                        .insert(s.request.id, (s.request.prompt.len() - 2, 0));
                    self.gone.remove(&s.request.id);
                }
            }
        }

        /// Emits `seq`'s next token; a stale epoch's token is wrong on purpose.
        fn emit(&mut self, relay: &Relay, id: u64, seq: SeqId, repeat: bool) {
            let stale = self.failed || self.gone.contains(&seq);
            let Some((base, produced)) = self.given.get_mut(&seq) else {
                return;
            };
            let index = if repeat {
                if *produced == 0 {
                    return;
                }
                *produced - 1
            } else {
                *produced += 1;
                *produced - 1
            };
            let k = *base + index;
            let t = if stale {
                truth(seq, k) + 500
            } else {
                truth(seq, k)
            };
            relay.on_event(
                id,
                &EngineEvent::Token {
                    seq,
                    index,
                    token: t,
                    at_us: 0,
                },
            );
        }
    }

    proptest! {
        /// Whatever epochs fail, retire, move their sessions, repeat tokens
        /// or send stale ones, each client receives exactly the tokens of a
        /// run without failures, in order, each once.
        #[test]
        fn clients_get_every_token_once_in_order(
            steps in proptest::collection::vec((0u8..7, 0u64..3), 1..120),
        ) {
            let routes = Arc::new(EventRoutes::default());
            let relay = Relay::new(Arc::clone(&routes), None);
            let mut rx = Vec::new();
            for seq in 0..3u64 {
                rx.push(routes.open(seq).unwrap());
                relay.submit(Request::greedy(seq, vec![1, 2], 1000)).unwrap();
            }
            let mut epochs: Vec<FakeEpoch> = Vec::new();
            let open = |relay: &Relay, epochs: &mut Vec<FakeEpoch>| {
                let (c, intake) = live_channel();
                relay.open_epoch(epochs.len() as u64, c);
                epochs.push(FakeEpoch { intake, given: HashMap::new(), gone: HashSet::new(), failed: false });
            };
            open(&relay, &mut epochs);
            for (action, seq) in steps {
                for ep in epochs.iter_mut() {
                    ep.take_submissions();
                }
                let e = epochs.len() - 1;
                match action {
                    0 | 1 => epochs[e].emit(&relay, e as u64, seq, false),
                    2 => epochs[e].emit(&relay, e as u64, seq, true),
                    3 if e > 0 => epochs[e - 1].emit(&relay, (e - 1) as u64, seq, false),
                    4 => {
                        epochs[e].failed = true;
                        relay.epoch_ended(e as u64);
                        open(&relay, &mut epochs);
                    }
                    5 => open(&relay, &mut epochs),
                    6 if e > 0 => {
                        let ids: Vec<SeqId> = epochs[e - 1].given.keys().copied().collect();
                        relay.move_sessions((e - 1) as u64);
                        epochs[e - 1].gone.extend(ids);
                    }
                    _ => {}
                }
            }
            for (seq, r) in rx.iter_mut().enumerate() {
                let mut got = Vec::new();
                while let Ok(ev) = r.try_recv() {
                    if let EngineEvent::Token { index, token, .. } = ev {
                        prop_assert_eq!(index, got.len());
                        got.push(token);
                    }
                }
                let want: Vec<u32> = (0..got.len()).map(|k| truth(seq as u64, k)).collect();
                prop_assert_eq!(got, want);
            }
        }
    }
}
