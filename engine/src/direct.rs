//! A plain loop over a [`StagePipeline`] on one device: continuous batching of
//! prefill chunks and decode steps under a token budget, no dataflow. Its calls
//! are formed by the scheduling core's batch policy and its sequences end by
//! the core's stop rules, as in the engine and the simulator.
//!
//! It is the baseline the dataflow engine is measured against and the
//! generator behind `tokenflow generate`.

use crate::request::{FinishReason, Request, TokenLog};
use std::collections::VecDeque;
use tokenflow_core::SchedulerConfig;
use tokenflow_core::batch::StepQueue;
use tokenflow_core::stop::stop_reason;
use tokenflow_operators::llama::Head;
use tokenflow_operators::sampler::sample;
use tokenflow_operators::{SeqChunk, SeqId, StageError, StagePipeline};

/// Something that happened to a sequence during a step.
#[derive(Debug, Clone, PartialEq)]
pub enum TokenEvent {
    /// A new token of sequence `seq` at `index` (0 = first generated token).
    Token {
        /// The sequence.
        seq: SeqId,
        /// Index among the generated tokens.
        index: usize,
        /// The token id.
        token: u32,
    },
    /// Sequence `seq` ended.
    Finished {
        /// The sequence.
        seq: SeqId,
        /// Why.
        reason: FinishReason,
        /// Its whole log.
        log: TokenLog,
    },
}

/// One step's work: chunks, their tokens stacked, and the index in `running` of each chunk's sequence.
type StepBatch = (Vec<SeqChunk>, Vec<u32>, Vec<usize>);

#[derive(Debug)]
struct Running {
    request: Request,
    log: TokenLog,
    /// Tokens already in every stage's KV cache.
    cached: usize,
}

/// Runs many sequences through a pipeline, one batched step at a time.
#[derive(Debug)]
pub struct DirectGenerator {
    pipeline: StagePipeline,
    config: SchedulerConfig,
    waiting: VecDeque<Running>,
    running: Vec<Running>,
    /// Set when a sequence was preempted for lack of KV room; no new sequence
    /// starts until one finishes, so the preempted one cannot be re-admitted into
    /// the same shortage over and over.
    admission_paused: bool,
}

impl DirectGenerator {
    /// A generator over `pipeline`.
    pub fn new(pipeline: StagePipeline, config: SchedulerConfig) -> Self {
        Self {
            pipeline,
            config,
            waiting: VecDeque::new(),
            running: Vec::new(),
            admission_paused: false,
        }
    }

    /// Queues `request`; it starts when there is room.
    ///
    /// A prompt that can never run (empty, unknown tokens, as long as the context)
    /// is refused here, before anything is queued.
    pub fn submit(&mut self, request: Request) -> Result<(), StageError> {
        self.pipeline.check_prompt(request.id, &request.prompt)?;
        request.sampling.validate()?;
        let log = TokenLog {
            prompt: request.prompt.clone(),
            generated: Vec::new(),
        };
        self.waiting.push_back(Running {
            request,
            log,
            cached: 0,
        });
        Ok(())
    }

    /// Whether any sequence is waiting or running.
    pub fn has_work(&self) -> bool {
        !self.waiting.is_empty() || !self.running.is_empty()
    }

    /// The pipeline (e.g. to inspect KV use).
    pub fn pipeline(&self) -> &StagePipeline {
        &self.pipeline
    }

    /// Runs one batched step and returns what happened.
    ///
    /// A request whose prompt can never fit the KV capacity is refused with the
    /// error; requests that merely do not fit now keep waiting.
    pub fn step(&mut self) -> Result<Vec<TokenEvent>, StageError> {
        if self.running.is_empty() {
            self.admission_paused = false;
        }
        // Without a limit of its own, as many run as one call holds.
        let max_running = self
            .config
            .max_running
            .unwrap_or(self.config.max_batch_sequences);
        while !self.admission_paused && self.running.len() < max_running {
            let Some(run) = self.waiting.pop_front() else {
                break;
            };
            self.running.push(run);
        }
        // The stop rule of the engine's sequencer: a request for no tokens ends
        // before any compute (a resumed request whose tokens were all logged).
        let mut events = Vec::new();
        while let Some(idx) = self.running.iter().position(|r| r.request.max_tokens == 0) {
            let run = self.running.remove(idx);
            events.push(TokenEvent::Finished {
                seq: run.request.id,
                reason: FinishReason::Length,
                log: run.log,
            });
        }
        let (chunks, tokens, owners) = self.schedule()?;
        if chunks.is_empty() {
            return Ok(events);
        }
        let logits = Head::to_rows(self.pipeline.forward(&chunks, &tokens)?)?;
        let mut finished = Vec::new();
        for ((chunk, idx), row) in chunks.iter().zip(owners).zip(logits) {
            let run = &mut self.running[idx];
            run.cached = chunk.start + chunk.len;
            if run.cached < run.log.len() {
                continue; // a prefill chunk short of the prompt's end: no token yet
            }
            let history: Vec<u32> = run.log.tokens().collect();
            let token = sample(&run.request.sampling, &row, &history, run.log.len());
            run.log.generated.push(token);
            events.push(TokenEvent::Token {
                seq: chunk.seq,
                index: run.log.generated.len() - 1,
                token,
            });
            let context = self.pipeline.context_length();
            if let Some(reason) = stop_reason(&run.request, &run.log, token, context, None) {
                finished.push((idx, reason));
            }
        }
        finished.sort_by_key(|&(idx, _)| std::cmp::Reverse(idx));
        for (idx, reason) in finished {
            let run = self.running.remove(idx);
            self.pipeline.free(run.request.id);
            self.admission_paused = false;
            events.push(TokenEvent::Finished {
                seq: run.request.id,
                reason,
                log: run.log,
            });
        }
        Ok(events)
    }

    /// Picks this step's chunks with the core's batch policy (every decode
    /// first, then prefill chunks within the budget), each admitted if its KV fits.
    fn schedule(&mut self) -> Result<StepBatch, StageError> {
        let mut queue = StepQueue::default();
        for (i, run) in self.running.iter().enumerate() {
            let pending = run.log.len() - run.cached;
            if pending == 0 {
                continue;
            }
            let len = pending.min(self.config.max_prefill_chunk.max(1));
            queue.push((i, len), len, len == 1 && run.cached > 0);
        }
        let call = queue.take_batch(&self.config.batch_limits(), |_| true);
        let mut chunks = Vec::new();
        let mut tokens = Vec::new();
        let mut owners = Vec::new();
        let mut first_error = None;
        for (i, len) in call.items {
            let run = &self.running[i];
            chunks.push(SeqChunk::new(run.request.id, run.cached, len));
            if let Err(e) = self.pipeline.admit(&chunks) {
                chunks.pop();
                first_error.get_or_insert(e);
                continue;
            }
            tokens.extend(run.log.tokens().skip(run.cached).take(len));
            owners.push(i);
        }
        if chunks.is_empty()
            && let Some(e) = first_error
        {
            // Nothing can advance: every running sequence waits for KV room.
            let run = self.running.pop().expect("a sequence was refused");
            self.pipeline.free(run.request.id);
            if self.running.is_empty() {
                // Alone, with every cache empty, it still does not fit: refuse it.
                return Err(e);
            }
            // Preempt the youngest; it restarts later from its token log.
            self.waiting.push_front(Running { cached: 0, ..run });
            self.admission_paused = true;
        }
        Ok((chunks, tokens, owners))
    }

    /// Runs until every request has finished, returning the logs in completion order.
    pub fn run_to_completion(
        &mut self,
    ) -> Result<Vec<(SeqId, FinishReason, TokenLog)>, StageError> {
        let mut done = Vec::new();
        while self.has_work() {
            for event in self.step()? {
                if let TokenEvent::Finished { seq, reason, log } = event {
                    done.push((seq, reason, log));
                }
            }
        }
        Ok(done)
    }
}
