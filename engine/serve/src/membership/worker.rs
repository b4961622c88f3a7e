//! One process of one epoch (`tokenflow worker --spec FILE`, started by a
//! node agent): runs the stages the epoch's plan gives its node, as process
//! `spec.process` of the epoch's timely cluster, and prints each phase it
//! reaches as a JSON line on standard output (`{"phase": "mesh connected",
//! "t": UNIX}`; also `first stage call`, seen on the board its workers post
//! to every 250 ms), which its agent passes on to the coordinator.

use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokenflow_engine::dataflow::{
    Arrivals, Communication, EngineError, MetricsBoard, RunSpec, live_channel, run_live,
};
use tokenflow_planner::Cluster;

use super::protocol::WorkerSpec;

/// One phase line of a worker's output.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PhaseLine {
    /// What was reached.
    pub phase: String,
    /// Unix time, seconds.
    pub t: f64,
}

/// Why a worker stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// The spec's cluster does not parse.
    #[error("epoch {epoch}: cluster: {message}")]
    Cluster {
        /// The epoch.
        epoch: u64,
        /// The planner's complaint.
        message: String,
    },
    /// The run failed (a peer died, the mesh did not form, ...).
    #[error("epoch {epoch}: {source}")]
    Engine {
        /// The epoch.
        epoch: u64,
        /// The engine's error.
        source: EngineError,
    },
}

/// Runs `spec` with the model at `model_path`, printing phases to `out`.
pub fn run_worker(
    spec: WorkerSpec,
    model_path: &Path,
    out: impl Write + Send + 'static,
) -> Result<(), WorkerError> {
    let epoch = spec.epoch;
    let cluster = Cluster::from_toml_str(&spec.cluster_toml).map_err(|e| WorkerError::Cluster {
        epoch,
        message: e.to_string(),
    })?;
    let board = Arc::new(MetricsBoard::default());
    let done = Arc::new(AtomicBool::new(false));
    let printer = {
        let (board, done) = (Arc::clone(&board), Arc::clone(&done));
        std::thread::spawn(move || print_phases(&board, &done, out))
    };
    let run = RunSpec {
        model_path: model_path.to_path_buf(),
        plan: spec.plan,
        cluster,
        options: spec.options,
        communication: Communication::Cluster {
            workers: 1,
            process: spec.process,
            hosts: spec.hosts,
        },
        requests: Vec::new(),
        arrivals: Arrivals::Immediate,
    };
    // Only process 0 reads requests; this channel stays empty.
    let (_client, intake) = live_channel();
    let result = run_live(run, intake, None, Some(board));
    done.store(true, Ordering::SeqCst);
    let _ = printer.join();
    result
        .map(|_| ())
        .map_err(|source| WorkerError::Engine { epoch, source })
}

fn print_phases(board: &MetricsBoard, done: &AtomicBool, mut out: impl Write) {
    let mut printed = 0;
    let mut served = false;
    loop {
        let finished = done.load(Ordering::SeqCst);
        // The first stage call this process ran: a new node serving.
        if !served && board.snapshot().stages.values().any(|s| s.batches > 0) {
            served = true;
            board.mark("first stage call");
        }
        let phases = board.phases();
        for (phase, at) in &phases[printed..] {
            let t = at
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64());
            let line = PhaseLine {
                phase: phase.clone(),
                t,
            };
            if let Ok(text) = serde_json::to_string(&line) {
                let _ = writeln!(out, "{text}");
                let _ = out.flush();
            }
        }
        printed = phases.len();
        if finished {
            return;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}
