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
    /// Fixed time per stage call (kernel launches, scheduling), seconds; not
    /// added for GPU kinds whose stage times were measured (they include it).
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

/// The service a plan must give, beyond the request mix: how many requests
/// arrive, the latency they must meet, and how much faster than the cluster
/// file says nodes fail. Only the `goodput` strategy and its model read it
/// (the other strategies optimise their own bounds).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ServiceTarget {
    /// Mean arrival rate, requests per second; 0: unknown (the model then
    /// plans for `load_fraction` of the best candidate's throughput bound).
    pub request_rate: f64,
    /// Time to first token a request must meet, seconds.
    pub ttft_slo_s: f64,
    /// Mean inter-token latency a request must meet, seconds.
    pub itl_slo_s: f64,
    /// How many times faster than their MTBF and MTTR nodes fail and return
    /// (a simulation that compresses time says so here; 1 in service, 0 when
    /// no failures are expected).
    pub failure_speedup: f64,
    /// How long the arrival rate lasts, seconds: an overloaded plan's queue
    /// grows over this window and then drains.
    pub window_s: f64,
}

impl Default for ServiceTarget {
    fn default() -> Self {
        ServiceTarget {
            request_rate: 0.0,
            ttft_slo_s: 5.0,
            itl_slo_s: 0.4,
            failure_speedup: 1.0,
            window_s: 300.0,
        }
    }
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
    /// Demand, SLO and failure speed the `goodput` strategy plans for.
    pub target: ServiceTarget,
    /// How many of the `goodput` strategy's best candidates a
    /// [`crate::strategy::PlanCheck`] (the simulator) checks, when one is given.
    pub check_candidates: usize,
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
            target: ServiceTarget::default(),
            check_candidates: 6,
        }
    }
}

impl PlanOptions {
    /// Checks every figure against its range, naming the field: time limits
    /// finite, non-negative and at most [`crate::units::MAX_DURATION`] (the
    /// solver turns them into `Duration`s), fractions in their intervals,
    /// efficiencies and batch sizes positive. Every strategy runs on checked
    /// options: [`crate::plan_with`] and [`crate::compare_all`] call this.
    pub fn validate(&self) -> Result<(), crate::PlanError> {
        let bad = |field: &str, requirement: &str, value: f64| {
            Err(crate::PlanError::InvalidNumber {
                field: field.into(),
                requirement: requirement.into(),
                value,
            })
        };
        for (field, v) in [
            ("time_limit_s", self.time_limit_s),
            ("milp_time_limit_s", self.milp_time_limit_s),
        ] {
            if let Err(e) = crate::units::duration_from_secs(field, v) {
                return Err(crate::PlanError::InvalidField {
                    field: field.into(),
                    message: e.to_string(),
                });
            }
        }
        let unit = |v: f64| v.is_finite() && v > 0.0 && v <= 1.0;
        if !unit(self.load_fraction) {
            return bad("load_fraction", "in (0, 1]", self.load_fraction);
        }
        if !(self.odp_latency_weight.is_finite() && (0.0..=1.0).contains(&self.odp_latency_weight))
        {
            return bad("odp_latency_weight", "in [0, 1]", self.odp_latency_weight);
        }
        let c = &self.cost;
        if !unit(c.compute_efficiency) {
            return bad("cost.compute_efficiency", "in (0, 1]", c.compute_efficiency);
        }
        if !unit(c.memory_efficiency) {
            return bad("cost.memory_efficiency", "in (0, 1]", c.memory_efficiency);
        }
        if !(c.memory_reserve.is_finite() && (0.0..1.0).contains(&c.memory_reserve)) {
            return bad("cost.memory_reserve", "in [0, 1)", c.memory_reserve);
        }
        if c.max_batch == 0 {
            return bad("cost.max_batch", "positive", 0.0);
        }
        if !(c.step_overhead_s.is_finite() && c.step_overhead_s >= 0.0) {
            return bad(
                "cost.step_overhead_s",
                "finite and non-negative",
                c.step_overhead_s,
            );
        }
        if self.workload.output_tokens == 0 {
            return bad("workload.output_tokens", "positive", 0.0);
        }
        let t = &self.target;
        if !(t.request_rate.is_finite() && t.request_rate >= 0.0) {
            return bad(
                "target.request_rate",
                "finite and non-negative",
                t.request_rate,
            );
        }
        for (field, v) in [
            ("target.ttft_slo_s", t.ttft_slo_s),
            ("target.itl_slo_s", t.itl_slo_s),
            ("target.window_s", t.window_s),
        ] {
            if !(v.is_finite() && v > 0.0 && v <= crate::units::MAX_DURATION.as_secs_f64()) {
                return bad(field, "positive and finite", v);
            }
        }
        if !(t.failure_speedup.is_finite() && t.failure_speedup >= 0.0 && t.failure_speedup <= 1e9)
        {
            return bad("target.failure_speedup", "in [0, 1e9]", t.failure_speedup);
        }
        Ok(())
    }
}

#[cfg(test)]
mod validation_tests {
    use super::*;

    type Setter = Box<dyn Fn(&mut PlanOptions)>;

    #[test]
    fn nonsense_figures_are_refused_by_name() {
        let cases: Vec<(&str, Setter)> = vec![
            (
                "milp_time_limit_s",
                Box::new(|o| o.milp_time_limit_s = 1e30),
            ),
            (
                "milp_time_limit_s",
                Box::new(|o| o.milp_time_limit_s = -1.0),
            ),
            ("time_limit_s", Box::new(|o| o.time_limit_s = f64::NAN)),
            ("load_fraction", Box::new(|o| o.load_fraction = 0.0)),
            (
                "odp_latency_weight",
                Box::new(|o| o.odp_latency_weight = f64::INFINITY),
            ),
            (
                "cost.memory_reserve",
                Box::new(|o| o.cost.memory_reserve = 1.0),
            ),
            ("cost.max_batch", Box::new(|o| o.cost.max_batch = 0)),
            (
                "target.request_rate",
                Box::new(|o| o.target.request_rate = -1.0),
            ),
            ("target.itl_slo_s", Box::new(|o| o.target.itl_slo_s = 0.0)),
            (
                "target.failure_speedup",
                Box::new(|o| o.target.failure_speedup = f64::NAN),
            ),
        ];
        assert!(PlanOptions::default().validate().is_ok());
        for (field, set) in cases {
            let mut o = PlanOptions::default();
            set(&mut o);
            let e = o.validate().unwrap_err().to_string();
            assert!(e.contains(field), "{field}: {e}");
        }
    }
}
