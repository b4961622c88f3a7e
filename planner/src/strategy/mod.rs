//! Placement and replication strategies behind one trait, each in its own module
//! with its citation, and a registry by name.

use crate::cluster::Cluster;
use crate::cost::CostModel;
use crate::error::{GIB, PlanError};
use crate::options::PlanOptions;
use crate::plan::Plan;
use crate::profile::ModelProfile;

pub mod availability;
pub mod chain_dp;
pub mod even;
pub mod goodput;
pub mod local_search;
pub mod max_flow;
pub mod memory_proportional;
pub mod moves;
pub mod odp;
pub mod parallax;
pub mod petals;
pub mod swarm;

/// Everything a strategy reads.
pub struct Context<'a> {
    /// The cluster.
    pub cluster: &'a Cluster,
    /// The model.
    pub model: &'a ModelProfile,
    /// Options.
    pub options: &'a PlanOptions,
    /// Cost model built from the model and options.
    pub cost: CostModel,
    /// A second opinion on candidate plans (the simulator's), for strategies
    /// that search over candidates (`goodput`); `None` plans by models alone.
    pub check: Option<&'a dyn goodput::PlanCheck>,
}

impl<'a> Context<'a> {
    /// Builds the context and its cost model.
    pub fn new(cluster: &'a Cluster, model: &'a ModelProfile, options: &'a PlanOptions) -> Self {
        Context {
            cluster,
            model,
            options,
            cost: CostModel::new(model, options),
            check: None,
        }
    }

    /// The same context with a plan check for searching strategies.
    pub fn with_check(mut self, check: &'a dyn goodput::PlanCheck) -> Self {
        self.check = Some(check);
        self
    }

    /// Number of layers.
    pub fn n(&self) -> usize {
        self.model.num_layers()
    }

    /// Fails with the missing memory when the whole cluster cannot hold the weights.
    pub fn check_total_memory(&self) -> Result<(), PlanError> {
        let n = self.n();
        let needed = self.cost.total_weight_bytes() + self.cost.kv_bytes_per_sequence(&(0..n));
        let avail: f64 = self
            .cluster
            .nodes
            .iter()
            .map(|x| self.cost.usable_memory(&x.gpu))
            .sum();
        if needed > avail {
            return Err(PlanError::DoesNotFit {
                model: self.model.name.clone(),
                needed_gib: needed / GIB,
                available_gib: avail / GIB,
                missing_gib: (needed - avail) / GIB,
            });
        }
        Ok(())
    }

    /// Sets routing from the max flow, validates, and returns the plan.
    pub fn finish(&self, mut plan: Plan) -> Result<Plan, PlanError> {
        crate::flow::assign_routing(&mut plan, self.cluster, &self.cost);
        plan.validate_with(self.cluster, self.model, self.options)?;
        Ok(plan)
    }

    /// Largest number of layers starting at `start` that fit on node `i` with room
    /// for `seqs` sequences of KV (0 if none).
    pub fn max_layers_from(&self, i: usize, start: usize, seqs: u32) -> usize {
        let gpu = &self.cluster.nodes[i].gpu;
        let mut k = 0;
        while start + k < self.n() {
            let r = start..start + k + 1;
            if self.cost.max_batch(gpu, &r) < seqs.max(1) {
                break;
            }
            k += 1;
        }
        k
    }
}

/// Stages as (layers, node indices), one entry per stage.
pub type Layout = Vec<(std::ops::Range<usize>, Vec<usize>)>;

/// A placement strategy.
pub trait Strategy: Send + Sync {
    /// Registry name, e.g. `max-flow`.
    fn name(&self) -> &'static str;
    /// The paper or system it follows.
    fn citation(&self) -> &'static str;
    /// Produces a validated plan.
    fn plan(&self, ctx: &Context) -> Result<Plan, PlanError>;
    /// Whether the strategy reads [`Context::check`] (an executor that can
    /// check plans, the simulator, builds one only for such strategies).
    fn uses_check(&self) -> bool {
        false
    }
}

/// Every strategy, in the order of the issue (SWARM, the Helix paper's baseline, beside Petals).
pub fn all() -> Vec<Box<dyn Strategy>> {
    vec![
        Box::new(even::EvenRoundRobin),
        Box::new(memory_proportional::MemoryProportional),
        Box::new(petals::PetalsGreedy),
        Box::new(swarm::SwarmStages),
        Box::new(chain_dp::ChainDp),
        Box::new(max_flow::MaxFlowMilp),
        Box::new(odp::OdpIlp),
        Box::new(availability::AvailabilityReplication),
        Box::new(local_search::LocalSearch),
        Box::new(parallax::ParallaxPipelines),
        Box::new(goodput::GoodputSearch),
    ]
}

/// Names of all strategies.
pub fn names() -> Vec<&'static str> {
    all().iter().map(|s| s.name()).collect()
}

/// The strategy with this name.
pub fn by_name(name: &str) -> Result<Box<dyn Strategy>, PlanError> {
    all()
        .into_iter()
        .find(|s| s.name() == name)
        .ok_or_else(|| PlanError::UnknownStrategy {
            name: name.to_string(),
            known: names().join(", "),
        })
}

/// Splits `n` layers into `parts` contiguous ranges of near-equal size.
pub fn even_ranges(n: usize, parts: usize) -> Vec<std::ops::Range<usize>> {
    let parts = parts.clamp(1, n.max(1));
    let (q, r) = (n / parts, n % parts);
    let mut out = Vec::with_capacity(parts);
    let mut start = 0;
    for k in 0..parts {
        let len = q + usize::from(k < r);
        out.push(start..start + len);
        start += len;
    }
    out
}
