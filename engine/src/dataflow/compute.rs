//! A worker's compute thread: stage calls run here, one at a time per worker
//! (as the emulation times them), while the timely worker's own thread keeps
//! moving messages. A node's heartbeat is then answered while its stage
//! computes, as a real node's network thread answers while its GPU works; a
//! long prefill batch no longer looks like a dead node.

use std::thread::JoinHandle;
use std::time::Instant;

use crossbeam_channel::{Receiver, Sender, unbounded};
use timely::scheduling::SyncActivator;
use tokenflow_operators::StageError;
use tokenflow_operators::kv_cache::KvError;

use super::clock::now_us;
use super::kernel::StageKernel;
use super::message::{Payload, StepMsg};
use tokenflow_core::StepFailure;

/// One stage call: a node's kernel and its batch, handed to the compute thread.
pub struct ComputeJob {
    /// Node index the call is for.
    pub node: u32,
    /// The node's copy of the stage (moves to the thread and back).
    pub kernel: StageKernel,
    /// The steps of the call.
    pub batch: Vec<StepMsg>,
    /// Width of the hidden state.
    pub hidden: usize,
    /// Where the finished call goes.
    pub done: Sender<ComputeDone>,
    /// Wakes the operator that submitted it.
    pub activator: SyncActivator,
}

/// A finished stage call.
pub struct ComputeDone {
    /// Node index the call was for.
    pub node: u32,
    /// The node's kernel, back from the thread.
    pub kernel: StageKernel,
    /// The steps, payloads replaced by the stage's outputs (or errors).
    pub batch: Vec<StepMsg>,
    /// Measured time of the call, µs.
    pub compute_us: u64,
    /// When it ended, µs since the epoch.
    pub finished_us: u64,
}

/// The compute thread of one timely worker, shared by its stage operators.
pub struct ComputeThread {
    jobs: Option<Sender<ComputeJob>>,
    handle: Option<JoinHandle<()>>,
}

impl ComputeThread {
    /// Starts the thread of worker `index`.
    pub fn start(index: usize) -> std::io::Result<Self> {
        let (jobs, queue): (Sender<ComputeJob>, Receiver<ComputeJob>) = unbounded();
        let handle = std::thread::Builder::new()
            .name(format!("tokenflow-compute-{index}"))
            .spawn(move || {
                for mut job in queue {
                    let started = Instant::now();
                    // A panic in a stage call fails that call's sequences, not the run:
                    // the thread must live on, or every later call would wait forever.
                    let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        run_batch(&mut job.kernel, &mut job.batch, job.hidden)
                    }));
                    if ran.is_err() {
                        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                            job.kernel.clear()
                        }));
                        fail_all(&mut job.batch, StepFailure::Panicked);
                    }
                    let done = ComputeDone {
                        node: job.node,
                        kernel: job.kernel,
                        batch: job.batch,
                        compute_us: started.elapsed().as_micros() as u64,
                        finished_us: now_us(),
                    };
                    // The operator is gone when the dataflow was dropped mid-call.
                    if job.done.send(done).is_ok() {
                        let _ = job.activator.activate();
                    }
                }
            })?;
        Ok(Self {
            jobs: Some(jobs),
            handle: Some(handle),
        })
    }

    /// Queues a call; it runs after those queued before it. Should the thread
    /// be gone (it only ends when its handle is dropped, but a bug must not
    /// hang or panic the worker), the call's sequences fail at once instead.
    pub fn submit(&self, job: ComputeJob) {
        let Some(jobs) = &self.jobs else {
            return;
        };
        if let Err(crossbeam_channel::SendError(mut job)) = jobs.send(job) {
            fail_all(&mut job.batch, StepFailure::ComputeGone);
            let done = ComputeDone {
                node: job.node,
                kernel: job.kernel,
                batch: job.batch,
                compute_us: 0,
                finished_us: now_us(),
            };
            if job.done.send(done).is_ok() {
                let _ = job.activator.activate();
            }
        }
    }
}

impl Drop for ComputeThread {
    fn drop(&mut self) {
        self.jobs.take();
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

fn fail_all(batch: &mut [StepMsg], why: StepFailure) {
    for msg in batch {
        msg.payload = Payload::Failed(why.clone());
    }
}

/// Runs a batch; if the batch as a whole fails, each step alone, so one bad
/// step fails only its own sequence. A failed call leaves the payloads as they
/// were (outputs are written only after the stage succeeds).
fn run_batch(kernel: &mut StageKernel, batch: &mut [StepMsg], hidden: usize) {
    if kernel.run(batch, hidden).is_ok() {
        return;
    }
    for msg in batch.iter_mut() {
        match kernel.run(std::slice::from_mut(msg), hidden) {
            Ok(()) => {}
            // The stage no longer holds the sequence (its node restarted): rebuild it.
            Err(StageError::Kv(KvError::PositionMismatch { .. })) => msg.payload = Payload::Lost,
            Err(e) => {
                msg.payload = Payload::Failed(StepFailure::Kernel {
                    stage: kernel.role_name(),
                    message: e.to_string(),
                })
            }
        }
    }
}
