//! [`serve`]: the engine on its own threads, the HTTP side on tokio, and the
//! shutdown that stops accepting, lets in-flight requests finish up to a
//! deadline, flushes the token log and returns.

use std::net::SocketAddr;
use std::sync::Arc;

use thiserror::Error;
use tokenflow_engine::dataflow::{
    Communication, EngineError, EngineEvent, MetricsBoard, RunOutcome, RunSpec, live_channel,
    run_live,
};
use tokenflow_operators::SeqId;
use tokio::sync::oneshot;

use crate::routes::router;
use crate::state::{AppState, EventRoutes, ModelInfo, ServeConfig};

/// Why the server stopped other than by a signal.
#[derive(Debug, Error)]
pub enum ServeError {
    /// Binding, accepting or the runtime failed.
    #[error("HTTP server: {0}")]
    Io(#[from] std::io::Error),
    /// The engine could not start or stopped with an error.
    #[error("engine: {0}")]
    Engine(#[from] EngineError),
    /// The engine thread panicked.
    #[error("the engine thread panicked")]
    EnginePanicked,
}

/// What a server needs.
pub struct ServeSpec {
    /// The engine's run; its `requests` are resumed ones (started at once, answered to nobody but the log).
    pub run: RunSpec,
    /// Tokenizer and limits of the model.
    pub model: ModelInfo,
    /// The HTTP side's settings.
    pub config: ServeConfig,
    /// The first id given to a new request (past every id in the token log).
    pub first_id: SeqId,
}

/// Runs the server on `listener` until SIGTERM or SIGINT (or the engine stops),
/// calling `on_ready` with the bound address once requests are accepted. On
/// a signal it stops accepting, lets requests in flight finish for
/// `config.drain_timeout`, cancels what is left, waits for the engine to end
/// (which flushes its token log) and returns the engine's outcome.
pub fn serve(
    spec: ServeSpec,
    listener: std::net::TcpListener,
    on_ready: impl FnOnce(SocketAddr),
) -> Result<Option<RunOutcome>, ServeError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("tokenflow-http")
        .enable_all()
        .build()?;
    let local_workers = match &spec.run.communication {
        Communication::Threads(n) => *n,
        Communication::Cluster { workers, .. } => *workers,
    };
    let resumed: Vec<SeqId> = spec.run.requests.iter().map(|r| r.id).collect();
    let (client, intake) = live_channel();
    let routes = Arc::new(EventRoutes::default());
    let board = Arc::new(MetricsBoard::default());
    let state = Arc::new(AppState::new(
        spec.config.clone(),
        spec.model,
        Arc::new(client),
        Arc::clone(&routes),
        Arc::clone(&board),
        local_workers,
        spec.first_id,
    ));
    let (engine_done, engine_stopped) = oneshot::channel::<()>();
    let observer_routes = Arc::clone(&routes);
    let run = spec.run;
    let engine = std::thread::Builder::new()
        .name("tokenflow-engine".into())
        .spawn(move || {
            let observer = Arc::new(move |e: &EngineEvent| observer_routes.deliver(e));
            let result = run_live(run, intake, Some(observer), Some(board));
            // Nothing more will come: every waiting handler must hear so.
            routes.close();
            let _ = engine_done.send(());
            result
        })?;
    let addr = listener.local_addr()?;
    listener.set_nonblocking(true)?;
    let drain_timeout = spec.config.drain_timeout;
    let served: std::io::Result<()> = runtime.block_on(async {
        let listener = tokio::net::TcpListener::from_std(listener)?;
        on_ready(addr);
        let app = router(Arc::clone(&state));
        let shutdown_state = Arc::clone(&state);
        let shutdown = async move {
            tokio::select! {
                () = termination() => {}
                _ = engine_stopped => {}
            }
            shutdown_state.begin_drain();
            // Past the deadline, what is still running is cancelled (each
            // client gets an error event; the log records each once).
            let deadline_state = Arc::clone(&shutdown_state);
            tokio::spawn(async move {
                tokio::time::sleep(drain_timeout).await;
                deadline_state.cancel_all(&resumed);
            });
        };
        axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await
    });
    state.release_engine();
    drop(state);
    let outcome = engine.join().map_err(|_| ServeError::EnginePanicked)?;
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    served?;
    Ok(outcome?)
}

/// SIGTERM or SIGINT.
pub(crate) async fn termination() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
            }
            _ => std::future::pending::<()>().await,
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
