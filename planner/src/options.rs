//! Knobs shared by the cost model, the strategies and the evaluation.

use serde::{Deserialize, Serialize};

/// The request mix the plan is sized for.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Workload {
    /// Prompt tokens per request.
    pub prompt_tokens: u32,
    /// Generated tokens per request.
    pub output_tokens: u32,
}

impl Default for Workload {
    fn default() -> Self {
        // Close to the means of the Azure LLM inference conversation trace used by Helix.
        Workload {
            prompt_tokens: 512,
            output_tokens: 128,
        }
    }
}

impl Workload {
    /// Context length at the end of a request.
    pub fn max_context(&self) -> u32 {
        self.prompt_tokens + self.output_tokens
    }
    /// Mean context length during decoding.
    pub fn mean_decode_context(&self) -> f64 {
        self.prompt_tokens as f64 + self.output_tokens as f64 / 2.0
    }
}

/// Efficiency factors and limits of the cost model.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct CostOptions {
    /// Fraction of peak FLOP/s reached by real kernels (used when no measurement calibrates it).
    pub compute_efficiency: f64,
    /// Fraction of peak memory bandwidth reached (used when no measurement calibrates it).
    pub memory_efficiency: f64,
    /// Fraction of GPU memory kept free (runtime, activations, fragmentation).
    pub memory_reserve: f64,
    /// Largest decode batch a node runs.
    pub max_batch: u32,
    /// Fixed time per stage call (kernel launches, scheduling), seconds.
    pub step_overhead_s: f64,
    /// Charge each generated token its share of prefill compute in throughput figures.
    pub include_prefill: bool,
}

impl Default for CostOptions {
    fn default() -> Self {
        CostOptions {
            compute_efficiency: 0.5,
            memory_efficiency: 0.7,
            memory_reserve: 0.1,
            max_batch: 64,
            step_overhead_s: 0.002,
            include_prefill: true,
        }
    }
}

/// What local search (and comparisons) optimise.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Objective {
    /// Maximise the max-flow decode throughput bound.
    #[default]
    Throughput,
    /// Minimise predicted inter-token latency.
    Latency,
    /// Maximise pipeline availability, then throughput.
    Availability,
}

/// Options for planning.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct PlanOptions {
    /// Request mix.
    pub workload: Workload,
    /// Cost model knobs.
    pub cost: CostOptions,
    /// Load, as a fraction of the plan's throughput bound, at which latencies are predicted.
    pub load_fraction: f64,
    /// Wall-clock budget for local search and the ODP ILP, seconds.
    pub time_limit_s: f64,
    /// Wall-clock budget of the max-flow MILP, seconds.
    pub milp_time_limit_s: f64,
    /// Largest number of integer variables handed to the MILP before falling back.
    pub milp_max_integer_vars: usize,
    /// Objective of local search.
    pub objective: Objective,
    /// Strategy whose plan local search refines.
    pub local_search_base: String,
    /// Weight of response time in the ODP objective (availability gets 1 − this).
    pub odp_latency_weight: f64,
    /// Seed for randomised steps.
    pub seed: u64,
}

impl Default for PlanOptions {
    fn default() -> Self {
        PlanOptions {
            workload: Workload::default(),
            cost: CostOptions::default(),
            load_fraction: 0.5,
            time_limit_s: 2.0,
            milp_time_limit_s: 0.5,
            milp_max_integer_vars: 200,
            objective: Objective::Throughput,
            local_search_base: "chain-dp".into(),
            odp_latency_weight: 0.5,
            seed: 7,
        }
    }
}
