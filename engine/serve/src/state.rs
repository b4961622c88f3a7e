//! What the HTTP handlers share: the engine's client end, where each
//! sequence's events go, the admission limit, the counters, the model's
//! tokenizer and limits.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use tokenflow_engine::Request;
use tokenflow_engine::dataflow::{EngineEvent, MetricsBoard};
use tokenflow_operators::SeqId;
use tokenflow_operators::tokenizer::TextTokenizer;
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};

use crate::api_error::ApiError;
use crate::feed::EngineFeed;
use crate::prometheus::HttpCounters;

/// The server's own settings (the engine's are in its run spec).
#[derive(Debug, Clone, PartialEq)]
pub struct ServeConfig {
    /// The name `/v1/models` lists and requests must give as `model`.
    pub model_name: String,
    /// Requests to `/v1/*` must carry `Authorization: Bearer <key>` when set.
    pub api_key: Option<String>,
    /// Most requests accepted and not yet ended; past it, 429.
    pub queue_limit: usize,
    /// After SIGTERM, how long in-flight requests may run before they are cancelled.
    pub drain_timeout: Duration,
    /// `max_tokens` of a request that gives none (capped by the context).
    pub default_max_tokens: usize,
    /// A coordinator's join token for nodes: refused on `/v1/*`, so a node
    /// cannot act as a client with it.
    pub join_token: Option<String>,
}

impl Default for ServeConfig {
    fn default() -> Self {
        Self {
            model_name: "tokenflow".into(),
            api_key: None,
            queue_limit: 256,
            drain_timeout: Duration::from_secs(30),
            default_max_tokens: 256,
            join_token: None,
        }
    }
}

/// The model as the HTTP side needs it.
#[derive(Debug, Clone)]
pub struct ModelInfo {
    /// Turns text into tokens and back.
    pub tokenizer: TextTokenizer,
    /// Tokens that end a sequence (end of sequence, end of turn).
    pub stop_tokens: Vec<u32>,
    /// Tokens of the model's context.
    pub context_length: usize,
}

impl ModelInfo {
    /// The model's tokenizer and context; its end tokens stop answers.
    pub fn new(tokenizer: TextTokenizer, context_length: usize) -> Self {
        Self {
            stop_tokens: tokenizer.end_tokens(),
            tokenizer,
            context_length,
        }
    }
}

/// Where each live sequence's events go: filled by handlers, read by the
/// engine's worker 0 through the run's observer.
#[derive(Debug, Default)]
pub struct EventRoutes {
    senders: Mutex<HashMap<SeqId, UnboundedSender<EngineEvent>>>,
    closed: AtomicBool,
}

impl EventRoutes {
    /// Hands `event` to its sequence's handler (dropped if the client is gone).
    pub fn deliver(&self, event: &EngineEvent) {
        let seq = match event {
            EngineEvent::Token { seq, .. }
            | EngineEvent::Finished { seq, .. }
            | EngineEvent::Refused { seq, .. } => *seq,
        };
        let mut senders = self.senders.lock().unwrap_or_else(PoisonError::into_inner);
        let last = !matches!(event, EngineEvent::Token { .. });
        if let Some(tx) = senders.get(&seq) {
            let _ = tx.send(event.clone());
        }
        if last {
            senders.remove(&seq);
        }
    }

    /// The engine has stopped: every waiting handler sees its channel end.
    pub fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        self.senders
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
    }

    pub(crate) fn open(&self, seq: SeqId) -> Option<UnboundedReceiver<EngineEvent>> {
        let mut senders = self.senders.lock().unwrap_or_else(PoisonError::into_inner);
        if self.closed.load(Ordering::SeqCst) {
            return None;
        }
        let (tx, rx) = unbounded_channel();
        senders.insert(seq, tx);
        Some(rx)
    }

    fn remove(&self, seq: SeqId) {
        self.senders
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&seq);
    }

    /// Sequences with a handler waiting.
    pub fn live(&self) -> Vec<SeqId> {
        self.senders
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .keys()
            .copied()
            .collect()
    }
}

/// Counters kept without a lock.
#[derive(Debug, Default)]
struct AtomicCounters {
    accepted: AtomicU64,
    overloaded: AtomicU64,
    rejected: AtomicU64,
    disconnected: AtomicU64,
}

/// Everything the handlers share.
#[derive(Debug)]
pub struct AppState {
    /// Settings.
    pub config: ServeConfig,
    /// Tokenizer and limits.
    pub model: Arc<ModelInfo>,
    /// Where workers post measurements (a coordinator swaps in each epoch's).
    board: RwLock<Arc<MetricsBoard>>,
    /// Workers of this process (ready once all have posted).
    pub local_workers: usize,
    /// When the server started (seconds since the epoch).
    pub created: u64,
    routes: Arc<EventRoutes>,
    client: RwLock<Option<Arc<dyn EngineFeed>>>,
    next_id: AtomicU64,
    pending: AtomicUsize,
    draining: AtomicBool,
    counters: AtomicCounters,
}

/// One accepted request: its events, and on drop (the handler finished or the
/// client went away) its slot freed and, if it had not ended, its cancellation.
#[derive(Debug)]
pub struct Ticket {
    /// The sequence.
    pub seq: SeqId,
    /// Its events, in order.
    pub events: UnboundedReceiver<EngineEvent>,
    state: Arc<AppState>,
    ended: bool,
}

impl Ticket {
    /// The engine ended this sequence (nothing to cancel).
    pub fn mark_ended(&mut self) {
        self.ended = true;
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.state.routes.remove(self.seq);
        if !self.ended {
            self.state
                .counters
                .disconnected
                .fetch_add(1, Ordering::Relaxed);
            if let Some(client) = self.state.client() {
                let _ = client.cancel(self.seq);
            }
        }
        self.state.pending.fetch_sub(1, Ordering::SeqCst);
    }
}

impl AppState {
    /// A state for a server whose engine is fed through `client`; ids start at `first_id`.
    pub fn new(
        config: ServeConfig,
        model: ModelInfo,
        client: Arc<dyn EngineFeed>,
        routes: Arc<EventRoutes>,
        board: Arc<MetricsBoard>,
        local_workers: usize,
        first_id: SeqId,
    ) -> Self {
        let created = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        Self {
            config,
            model: Arc::new(model),
            board: RwLock::new(board),
            local_workers,
            created,
            routes,
            client: RwLock::new(Some(client)),
            next_id: AtomicU64::new(first_id),
            pending: AtomicUsize::new(0),
            draining: AtomicBool::new(false),
            counters: AtomicCounters::default(),
        }
    }

    /// Where this process's workers post their measurements now.
    pub fn board(&self) -> Arc<MetricsBoard> {
        Arc::clone(&self.board.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// Reads measurements from `board` from now on (a new epoch's run).
    pub fn set_board(&self, board: Arc<MetricsBoard>) {
        *self.board.write().unwrap_or_else(PoisonError::into_inner) = board;
    }

    fn client(&self) -> Option<Arc<dyn EngineFeed>> {
        self.client
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// A fresh sequence id.
    pub fn next_seq(&self) -> SeqId {
        self.next_id.fetch_add(1, Ordering::SeqCst)
    }

    /// Accepts `request` into the engine, or says why not (full, shutting down).
    pub fn admit(self: &Arc<Self>, request: Request) -> Result<Ticket, ApiError> {
        if self.draining.load(Ordering::SeqCst) {
            return Err(ApiError::ShuttingDown);
        }
        let Some(client) = self.client() else {
            return Err(ApiError::ShuttingDown);
        };
        let pending = self.pending.fetch_add(1, Ordering::SeqCst);
        if pending >= self.config.queue_limit {
            self.pending.fetch_sub(1, Ordering::SeqCst);
            self.counters.overloaded.fetch_add(1, Ordering::Relaxed);
            return Err(ApiError::Overloaded {
                pending,
                limit: self.config.queue_limit,
            });
        }
        let seq = request.id;
        let Some(events) = self.routes.open(seq) else {
            self.pending.fetch_sub(1, Ordering::SeqCst);
            return Err(ApiError::ShuttingDown);
        };
        let ticket = Ticket {
            seq,
            events,
            state: Arc::clone(self),
            ended: false,
        };
        if client.submit(request).is_err() {
            let mut ticket = ticket;
            ticket.mark_ended();
            return Err(ApiError::ShuttingDown);
        }
        self.counters.accepted.fetch_add(1, Ordering::Relaxed);
        Ok(ticket)
    }

    /// Counts a request turned away with a 4xx other than 429.
    pub fn count_rejected(&self) {
        self.counters.rejected.fetch_add(1, Ordering::Relaxed);
    }

    /// The HTTP side's counts.
    pub fn http_counters(&self) -> HttpCounters {
        let c = &self.counters;
        HttpCounters {
            accepted: c.accepted.load(Ordering::Relaxed),
            overloaded: c.overloaded.load(Ordering::Relaxed),
            rejected: c.rejected.load(Ordering::Relaxed),
            disconnected: c.disconnected.load(Ordering::Relaxed),
        }
    }

    /// Requests accepted and not ended.
    pub fn pending(&self) -> usize {
        self.pending.load(Ordering::SeqCst)
    }

    /// Whether every local worker has loaded its stages, every stage has a
    /// live replica, and the server is not draining.
    pub fn ready(&self) -> bool {
        !self.draining.load(Ordering::SeqCst)
            && self.client().is_some_and(|c| c.serving())
            && self.board().workers_posted() >= self.local_workers
            && self.board().snapshot().stages_down == 0
    }

    /// Stops accepting new requests (in-flight ones go on).
    pub fn begin_drain(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    /// Cancels `seqs` and every request still waiting for its answer.
    pub fn cancel_all(&self, seqs: &[SeqId]) {
        if let Some(client) = self.client() {
            for seq in self.routes.live().into_iter().chain(seqs.iter().copied()) {
                let _ = client.cancel(seq);
            }
        }
    }

    /// Drops the engine's client end: once every ticket is gone the engine ends.
    pub fn release_engine(&self) {
        self.client
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
    }
}
