//! The library entry point: turn a model, a plan and options into a timely
//! dataflow inside the caller's own `timely::execute`.
//!
//! ```no_run
//! use std::sync::Arc;
//! use timely::dataflow::InputHandle;
//! use timely::dataflow::operators::{Input, Inspect};
//! use tokenflow_engine::dataflow::{EngineOptions, InferenceDataflow, Submission};
//! use tokenflow_engine::Request;
//! # fn plan_and_cluster() -> (tokenflow_planner::Plan, tokenflow_planner::Cluster) { unimplemented!() }
//!
//! let model = Arc::new(tokenflow_operators::LlamaModel::open("model.gguf").unwrap());
//! let (plan, cluster) = plan_and_cluster();
//! let engine = Arc::new(
//!     InferenceDataflow::new(model, &plan, &cluster, 1, EngineOptions::default()).unwrap(),
//! );
//! timely::execute(timely::Config::thread(), move |worker| {
//!     let mut input = InputHandle::new();
//!     worker.dataflow(|scope| {
//!         let requests = scope.input_from(&mut input);
//!         let streams = engine.build(requests).unwrap();
//!         // Any operator can follow: here, print each event.
//!         streams.events.inspect(|e| println!("{e:?}"));
//!     });
//!     input.send(Submission::now(Request::greedy(1, vec![1, 2, 3], 8)));
//! })
//! .unwrap();
//! ```

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::rc::Rc;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;
use tokenflow_operators::quant::Numerics;

use timely::dataflow::StreamVec;
use timely::dataflow::operators::{ConnectLoop, Feedback, OkErr};
use tokenflow_operators::device::default_device;
use tokenflow_operators::profile::static_profile;
use tokenflow_operators::{LlamaModel, SeqId};
use tokenflow_planner::cost::CostModel;
use tokenflow_planner::router::{InterleavedWrr, LeastLoaded, MinLatency, Router};
use tokenflow_planner::{Cluster, Plan, PlanOptions};

use super::clock::now_us;
use super::compute::ComputeThread;
use super::error::EngineError;
use super::faults::{FailureSchedule, FaultClock};
use super::kernel::{KernelLoader, StageKernel};
use super::message::StepMsg;
use super::metrics::EngineMetrics;
use super::placement::stage_weight_bytes;
use super::placement::{Placement, PlacementOptions};
use super::sampler_op::sampler_operator;
use super::sequencer::{EngineEvent, SequencerConfig, Submission, sequencer_operator};
use super::stage_op::{BatchLimits, StageContext, StageRole, stage_operator};

/// Which router picks new sequences' paths (the planner's routers).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RouterKind {
    /// Lowest predicted per-token latency over node × stage (Petals).
    #[default]
    MinLatency,
    /// Smooth weighted round robin on the plan's routing weights (Helix); uniform weights give round robin.
    RoundRobin,
    /// The replica with the fewest active sequences, stage by stage.
    LeastLoaded,
}

impl RouterKind {
    /// The name `--router` takes.
    pub fn name(&self) -> &'static str {
        match self {
            Self::MinLatency => "min-latency",
            Self::RoundRobin => "round-robin",
            Self::LeastLoaded => "least-loaded",
        }
    }
}

impl FromStr for RouterKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "min-latency" => Ok(Self::MinLatency),
            "round-robin" | "interleaved-wrr" | "wrr" => Ok(Self::RoundRobin),
            "least-loaded" => Ok(Self::LeastLoaded),
            other => Err(format!(
                "unknown router `{other}` (min-latency, round-robin, least-loaded)"
            )),
        }
    }
}

/// Scheduling and emulation options of the engine.
#[derive(Debug, Clone, PartialEq)]
pub struct EngineOptions {
    /// Most tokens in one stage call.
    pub token_budget: usize,
    /// Longest prefill chunk, so long prompts do not stall decodes.
    pub max_prefill_chunk: usize,
    /// Most sequences in one stage call.
    pub max_batch_sequences: usize,
    /// Most sequences running at once (the rest wait in order).
    pub max_running: usize,
    /// Path selection for new sequences.
    pub router: RouterKind,
    /// Worker mapping and emulation of speeds and links.
    pub placement: PlacementOptions,
    /// Injected node failures (none by default).
    pub failures: FailureSchedule,
    /// Start of the failure schedule (µs since the epoch); `None`: when the dataflow is built.
    pub failures_start_us: Option<u64>,
    /// How often the sequencer pings every node while work is in flight.
    pub heartbeat: Duration,
    /// A node silent for this long is declared down: the detection delay.
    pub suspect_after: Duration,
    /// A sequence left without any path for this long fails.
    pub stall_timeout: Duration,
    /// How long a process of a timely cluster waits for its peers to connect
    /// (and answer the handshake) before it gives up naming the missing one.
    pub connect_timeout: Duration,
    /// Where `run` appends its durable token log (none: no log).
    pub token_log: Option<PathBuf>,
    /// Tokens already logged per resumed request: their new tokens are logged
    /// after these, and their submissions are not logged again.
    pub resumed: BTreeMap<SeqId, usize>,
    /// Arithmetic of the linear layers when [`super::runner::run`] opens the model
    /// (a model given to [`InferenceDataflow`] keeps its own).
    pub numerics: Numerics,
}

impl Default for EngineOptions {
    fn default() -> Self {
        Self {
            token_budget: 512,
            max_prefill_chunk: 256,
            max_batch_sequences: 64,
            max_running: 256,
            router: RouterKind::default(),
            placement: PlacementOptions::default(),
            failures: FailureSchedule::default(),
            failures_start_us: None,
            heartbeat: Duration::from_millis(50),
            suspect_after: Duration::from_millis(2000),
            stall_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(60),
            token_log: None,
            resumed: BTreeMap::new(),
            numerics: Numerics::default(),
        }
    }
}

impl EngineOptions {
    fn check(&self) -> Result<(), EngineError> {
        let positive = [
            ("token_budget", self.token_budget),
            ("max_prefill_chunk", self.max_prefill_chunk),
            ("max_batch_sequences", self.max_batch_sequences),
            ("max_running", self.max_running),
        ];
        for (field, v) in positive {
            if v == 0 {
                return Err(EngineError::Option {
                    field: field.into(),
                    message: "must be positive".into(),
                });
            }
        }
        if self.heartbeat.is_zero() || self.suspect_after < self.heartbeat {
            return Err(EngineError::Option {
                field: "suspect_after".into(),
                message: format!(
                    "the detection delay {:?} must be at least one heartbeat ({:?}, positive)",
                    self.suspect_after, self.heartbeat
                ),
            });
        }
        if self.max_prefill_chunk > self.token_budget {
            return Err(EngineError::Option {
                field: "max_prefill_chunk".into(),
                message: format!(
                    "{} is larger than the token budget {}",
                    self.max_prefill_chunk, self.token_budget
                ),
            });
        }
        Ok(())
    }
}

/// The streams a built engine hands back.
pub struct EngineStreams<'s> {
    /// Tokens, completions and refusals, on worker 0.
    pub events: StreamVec<'s, u64, EngineEvent>,
    /// What this worker measures.
    pub metrics: Rc<RefCell<EngineMetrics>>,
}

/// A model and a validated placement, ready to be built into dataflows.
pub struct InferenceDataflow {
    model: Arc<LlamaModel>,
    placement: Arc<Placement>,
    options: EngineOptions,
    cost: CostModel,
}

impl InferenceDataflow {
    /// Checks `plan` on `cluster` for `workers` workers (all processes together).
    pub fn new(
        model: Arc<LlamaModel>,
        plan: &Plan,
        cluster: &Cluster,
        workers: usize,
        options: EngineOptions,
    ) -> Result<Self, EngineError> {
        options.check()?;
        let placement = Placement::new(plan, cluster, &model.config, workers, &options.placement)?;
        let profile = static_profile(model.name(), &model.config);
        let cost = CostModel::new(&profile, &PlanOptions::default());
        Ok(Self {
            model,
            placement: Arc::new(placement),
            options,
            cost,
        })
    }

    /// The options it was made with.
    pub fn options(&self) -> &EngineOptions {
        &self.options
    }

    /// The checked placement.
    pub fn placement(&self) -> &Placement {
        &self.placement
    }

    /// The model.
    pub fn model(&self) -> &LlamaModel {
        &self.model
    }

    fn router(&self) -> Box<dyn Router> {
        make_router(
            self.options.router,
            &self.placement.plan,
            &self.placement.cluster,
            &self.cost,
        )
    }

    /// Builds the loop in `requests`' scope: sequencer → embed → block stages →
    /// head → sampler → back to the sequencer. This worker loads the weights of
    /// the stage replicas the placement puts on it, and nothing else.
    pub fn build<'s>(
        &self,
        requests: StreamVec<'s, u64, Submission>,
    ) -> Result<EngineStreams<'s>, EngineError> {
        let scope = requests.scope();
        let worker = scope.index();
        let placement = &self.placement;
        let stages = placement.num_stages();
        let device = default_device();
        let mut quiet = |_: &str, _: u64| {};
        let mut embed = BTreeMap::new();
        let mut head = BTreeMap::new();
        let mut blocks: Vec<BTreeMap<u32, StageKernel>> =
            (0..stages).map(|_| BTreeMap::new()).collect();
        for (i, node) in placement.nodes.iter().enumerate() {
            if node.worker != worker {
                continue;
            }
            let i = i as u32;
            for &(s, kv) in &node.stages {
                let layers = placement.stage_layers[s].clone();
                let b = self.model.blocks(layers, kv, &device, &mut quiet)?;
                blocks[s].insert(i, StageKernel::Blocks(Box::new(b)));
                if s == 0 {
                    embed.insert(
                        i,
                        StageKernel::Embed(Box::new(self.model.embed(&device, &mut quiet)?)),
                    );
                }
                if s == stages - 1 {
                    head.insert(
                        i,
                        StageKernel::Head(Box::new(self.model.head(&device, &mut quiet)?)),
                    );
                }
            }
        }
        let metrics = Rc::new(RefCell::new(EngineMetrics::default()));
        let limits = BatchLimits {
            token_budget: self.options.token_budget,
            max_sequences: self.options.max_batch_sequences,
        };
        let hidden = self.model.config.hidden;
        let config = SequencerConfig {
            max_prefill_chunk: self.options.max_prefill_chunk,
            max_running: self.options.max_running,
            context_length: self.model.config.context_length,
            vocab_size: self.model.config.vocab_size,
            tokenizer: Some(self.model.tokenizer.clone()),
            router: self.router(),
            heartbeat_us: self.options.heartbeat.as_micros() as u64,
            suspect_after_us: self.options.suspect_after.as_micros() as u64,
            stall_timeout_us: self.options.stall_timeout.as_micros() as u64,
            make_router: {
                let (kind, cluster, cost) = (
                    self.options.router,
                    placement.cluster.clone(),
                    self.cost.clone(),
                );
                Box::new(move |plan: &Plan| make_router(kind, plan, &cluster, &cost))
            },
            stage_weight_bytes: (0..stages)
                .map(|s| {
                    stage_weight_bytes(
                        &self.model.config,
                        &placement.stage_layers[s],
                        s == 0,
                        s == stages - 1,
                    )
                })
                .collect(),
            load_bps: placement
                .nodes
                .iter()
                .map(|n| {
                    if self.options.placement.emulate_links {
                        placement
                            .cluster
                            .node(&n.id)
                            .and_then(|c| c.downlink_bps)
                            .unwrap_or(DEFAULT_LOAD_BPS)
                    } else {
                        f64::INFINITY
                    }
                })
                .collect(),
            cost: self.cost.clone(),
        };
        let loader = Arc::new(KernelLoader {
            model: Arc::clone(&self.model),
            stage_layers: placement.stage_layers.clone(),
        });
        let ids: Vec<String> = placement.nodes.iter().map(|n| n.id.clone()).collect();
        let faults = Arc::new(FaultClock::new(
            &self.options.failures,
            &ids,
            self.options.failures_start_us.unwrap_or_else(now_us),
        ));
        let (handle, cycle) = scope.feedback::<Vec<StepMsg>>(1);
        let out = sequencer_operator(
            requests,
            cycle,
            config,
            Arc::clone(placement),
            Rc::clone(&metrics),
        );
        let (steps, events) = out.ok_err::<Vec<StepMsg>, _, Vec<EngineEvent>, _, _>(|x| x);
        let context =
            StageContext {
                placement: Arc::clone(placement),
                limits,
                hidden,
                metrics: Rc::clone(&metrics),
                faults,
                loader,
                compute: Rc::new(ComputeThread::start(worker).map_err(|e| {
                    EngineError::Timely(format!("cannot start a compute thread: {e}"))
                })?),
            };
        let mut x = stage_operator(steps, StageRole::Embed, embed, context.clone());
        for (s, kernels) in blocks.into_iter().enumerate() {
            x = stage_operator(x, StageRole::Blocks(s), kernels, context.clone());
        }
        let x = stage_operator(x, StageRole::Head, head, context);
        sampler_operator(x).connect_loop(handle);
        Ok(EngineStreams { events, metrics })
    }
}

/// Weights download at 1 Gbit/s when the cluster file gives a node no downlink.
const DEFAULT_LOAD_BPS: f64 = 125e6;

/// The planner's router of `kind` over `plan`.
fn make_router(
    kind: RouterKind,
    plan: &Plan,
    cluster: &Cluster,
    cost: &CostModel,
) -> Box<dyn Router> {
    match kind {
        RouterKind::MinLatency => Box::new(MinLatency::new(plan, cluster, cost)),
        RouterKind::RoundRobin => Box::new(InterleavedWrr::new(plan)),
        RouterKind::LeastLoaded => Box::new(LeastLoaded::new(plan)),
    }
}
