//! The library entry point: turn a model, a plan and options into a timely
//! dataflow inside the caller's own `timely::execute`.
//!
//! ```no_run
//! use std::sync::Arc;
//! use timely::dataflow::InputHandle;
//! use timely::dataflow::operators::{Input, Inspect};
//! use tokenflow_engine::dataflow::{ClientMsg, EngineOptions, InferenceDataflow, Submission};
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
//!     input.send(ClientMsg::from(Submission::now(Request::greedy(1, vec![1, 2, 3], 8))));
//! })
//! .unwrap();
//! ```

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;
use tokenflow_operators::quant::Numerics;

use timely::dataflow::StreamVec;
use timely::dataflow::operators::{ConnectLoop, Feedback, OkErr};
use tokenflow_core::{SchedulerConfig, Sequencer, Topology};
use tokenflow_operators::device::default_device;
use tokenflow_operators::profile::static_profile;
use tokenflow_operators::{LlamaModel, SeqId};
use tokenflow_planner::cost::CostModel;
use tokenflow_planner::{Cluster, Plan, PlanOptions};

use super::clock::now_us;
use super::compute::ComputeThread;
use super::error::EngineError;
use super::faults::{FailureSchedule, FaultClock};
use super::kernel::{KernelLoader, StageKernel};
use super::message::LoopMsg;
use super::metrics::EngineMetrics;
use super::placement::stage_weight_bytes;
use super::placement::{Placement, PlacementOptions};
use super::sampler_op::sampler_operator;
use super::sequencer::{ClientMsg, EngineEvent, sequencer_operator};
use super::stage_op::{StageContext, StageRole, stage_operator};

/// Scheduling and emulation options of the engine.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct EngineOptions {
    /// Admission, batching, routing and failure detection: the scheduling
    /// core's settings, shared with the simulator and the plain loop.
    pub scheduler: SchedulerConfig,
    /// Worker mapping and emulation of speeds and links.
    pub placement: PlacementOptions,
    /// Injected node failures (none by default).
    pub failures: FailureSchedule,
    /// Start of the failure schedule (µs since the epoch); `None`: when the dataflow is built.
    pub failures_start_us: Option<u64>,
    /// How long a process of a timely cluster waits for its peers to connect
    /// (and answer the handshake) before it gives up naming the missing one;
    /// also how long a connected peer may stay silent during the run before
    /// it is taken for stopped or hung and the run ends naming it.
    pub connect_timeout: Duration,
    /// How long a process of a timely cluster whose run failed on a fault keeps
    /// answering its peers' probes before it returns, so that in a cluster of
    /// three or more the others learn which process failed first (a
    /// coordinator that forms the next cluster at once needs no such wait).
    #[serde(default = "default_fault_linger")]
    pub fault_linger: Duration,
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
            scheduler: SchedulerConfig::default(),
            placement: PlacementOptions::default(),
            failures: FailureSchedule::default(),
            failures_start_us: None,
            connect_timeout: Duration::from_secs(60),
            fault_linger: default_fault_linger(),
            token_log: None,
            resumed: BTreeMap::new(),
            numerics: Numerics::default(),
        }
    }
}

fn default_fault_linger() -> Duration {
    Duration::from_millis(1500)
}

impl EngineOptions {
    fn check(&self) -> Result<(), EngineError> {
        Ok(self.scheduler.validate()?)
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

    /// What the sequencer schedules on: the placement's nodes, their KV room,
    /// the weights a repair downloads and how fast each node fetches them.
    fn topology(&self) -> Topology {
        let placement = &self.placement;
        let stages = placement.num_stages();
        let kv_capacity = placement
            .nodes
            .iter()
            .map(|n| (0..stages).map(|s| n.kv_capacity(s)).collect())
            .collect();
        let stage_weight_bytes = (0..stages)
            .map(|s| {
                stage_weight_bytes(
                    &self.model.config,
                    &placement.stage_layers[s],
                    s == 0,
                    s == stages - 1,
                )
            })
            .collect();
        let load_bps = placement
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
            .collect();
        Topology::new(
            placement.plan.clone(),
            placement.cluster.clone(),
            self.cost.clone(),
            placement.nodes.iter().map(|n| n.id.clone()).collect(),
            placement.stage_replicas.clone(),
            kv_capacity,
            placement.kv_bytes_per_token.clone(),
            stage_weight_bytes,
            load_bps,
            self.model.config.context_length,
            self.model.config.vocab_size,
        )
    }

    /// Builds the loop in `requests`' scope (submissions and cancellations, see
    /// [`ClientMsg`]): sequencer → embed → block stages →
    /// head → sampler → back to the sequencer. This worker loads the weights of
    /// the stage replicas the placement puts on it, and nothing else.
    pub fn build<'s>(
        &self,
        requests: StreamVec<'s, u64, ClientMsg>,
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
        let limits = self.options.scheduler.batch_limits();
        let hidden = self.model.config.hidden;
        let sequencer = Sequencer::new(
            self.options.scheduler.clone(),
            self.topology(),
            Some(Box::new({
                let tokenizer = self.model.tokenizer.clone();
                move |tokens: &[u32]| tokenizer.decode(tokens).ok()
            })),
        )?;
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
        let (handle, cycle) = scope.feedback::<Vec<LoopMsg>>(1);
        let out = sequencer_operator(requests, cycle, sequencer, stages, Rc::clone(&metrics));
        let (steps, events) = out.ok_err::<Vec<LoopMsg>, _, Vec<EngineEvent>, _, _>(|x| x);
        let context =
            StageContext {
                placement: Arc::clone(placement),
                limits,
                hold: self.options.scheduler.call_hold(placement.num_stages()),
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
