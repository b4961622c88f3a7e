//! [`serve_coordinator`]: `tokenflow serve --coordinator`. The client API of
//! a plain server and the control endpoint for nodes on one listener, the
//! relay of sessions as the engine feed, and the epoch loop on its own thread.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokenflow_engine::Request;
use tokenflow_engine::dataflow::MetricsBoard;
use tokenflow_engine::dataflow::durable_log::DurableLogWriter;
use tokenflow_operators::SeqId;
use tokenflow_planner::ModelProfile;

use super::control::control_router;
use super::coordinator::{Coordinator, CoordinatorConfig, EpochLoop};
use super::relay::Relay;
use crate::routes::router;
use crate::server::{ServeError, termination};
use crate::state::{AppState, EventRoutes, ModelInfo, ServeConfig};

/// Requests a token log left unfinished, each with the tokens its client had.
pub type Unfinished = Vec<(Request, Vec<u32>)>;

/// What a coordinator needs.
pub struct CoordinatorSpec {
    /// The model file (tokenizer, and the fingerprint nodes must match).
    pub model_path: PathBuf,
    /// Its fingerprint ([`tokenflow_engine::dataflow::mesh::model_fingerprint`]).
    pub model_fingerprint: String,
    /// The planner's view of the model.
    pub profile: ModelProfile,
    /// Tokenizer and limits.
    pub model: ModelInfo,
    /// The HTTP side's settings.
    pub config: ServeConfig,
    /// Membership, planning and epochs.
    pub coordinator: CoordinatorConfig,
    /// The durable token log, if any, and the requests it left unfinished
    /// (each with the tokens its client had).
    pub token_log: Option<(PathBuf, Unfinished)>,
    /// The first id given to a new request.
    pub first_id: SeqId,
}

/// Runs the coordinator on `listener` until SIGTERM or SIGINT; `on_ready`
/// gets the bound address. On a signal it stops accepting, lets sessions
/// finish for the drain timeout, aborts what is left and flushes the log.
pub fn serve_coordinator(
    spec: CoordinatorSpec,
    listener: std::net::TcpListener,
    on_ready: impl FnOnce(SocketAddr),
) -> Result<(), ServeError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("tokenflow-http")
        .enable_all()
        .build()?;
    let routes = Arc::new(EventRoutes::default());
    let mut resumed = Vec::new();
    let log = match spec.token_log {
        Some((path, unfinished)) => {
            let writer = DurableLogWriter::open(&path, std::time::Duration::from_millis(100))
                .map_err(|e| ServeError::Engine(e.into()))?;
            resumed = unfinished;
            Some(writer)
        }
        None => None,
    };
    let relay = Arc::new(Relay::new(Arc::clone(&routes), log));
    for (request, delivered) in resumed {
        relay.adopt(request, delivered);
    }
    let drain_timeout = spec.config.drain_timeout;
    let state = Arc::new(AppState::new(
        spec.config.clone(),
        spec.model,
        Arc::clone(&relay) as Arc<dyn crate::feed::EngineFeed>,
        Arc::clone(&routes),
        Arc::new(MetricsBoard::default()),
        1,
        spec.first_id,
    ));
    let coordinator = Arc::new(
        Coordinator::new(
            spec.coordinator,
            spec.model_path,
            spec.model_fingerprint,
            spec.profile,
            Arc::clone(&relay),
        )
        .map_err(|e| ServeError::Io(std::io::Error::other(e.to_string())))?,
    );
    // The manifest of the model for nodes that fetch it: hashed now, in the
    // background, not while the first such node waits.
    {
        let c = Arc::clone(&coordinator);
        let _ = std::thread::Builder::new()
            .name("manifest".into())
            .spawn(move || {
                if let Err(e) = c.manifest() {
                    eprintln!("coordinator: model manifest: {e}");
                }
            });
    }
    let stop = Arc::new(AtomicBool::new(false));
    let epochs = {
        let (c, app, stop) = (
            Arc::clone(&coordinator),
            Arc::clone(&state),
            Arc::clone(&stop),
        );
        std::thread::Builder::new()
            .name("epochs".into())
            .spawn(move || EpochLoop::new(c, app).run(&stop, drain_timeout))?
    };
    let addr = listener.local_addr()?;
    listener.set_nonblocking(true)?;
    let served: std::io::Result<()> = runtime.block_on(async {
        let listener = tokio::net::TcpListener::from_std(listener)?;
        on_ready(addr);
        let app = router(Arc::clone(&state)).merge(control_router(Arc::clone(&coordinator)));
        let shutdown_state = Arc::clone(&state);
        let shutdown_relay = Arc::clone(&relay);
        let shutdown_stop = Arc::clone(&stop);
        let shutdown = async move {
            termination().await;
            shutdown_state.begin_drain();
            shutdown_relay.close();
            shutdown_stop.store(true, Ordering::SeqCst);
            // Past the deadline, what still runs is cancelled (each client
            // gets an error event; the log records each once).
            let deadline_state = Arc::clone(&shutdown_state);
            tokio::spawn(async move {
                tokio::time::sleep(drain_timeout).await;
                deadline_state.cancel_all(&[]);
            });
        };
        axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await
    });
    stop.store(true, Ordering::SeqCst);
    relay.close();
    let _ = epochs.join();
    relay.sync();
    state.release_engine();
    routes.close();
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    served?;
    Ok(())
}
