//! Pure planning logic shared by the tokenflow engine and simulator:
//! model profiles, cluster and cost models, placement strategies and routers.
//!
//! This crate depends on neither burn nor timely, so a strategy or a router
//! exists once and is used by both the real engine and the simulator.
//!
//! Entry points: [`Cluster::from_path`], [`presets::load_model`], [`plan_with`],
//! [`evaluate()`], [`compare_all`] and the [`strategy`] registry; the [`sim`]ulator
//! ([`simulate_plan`], [`Simulator`]) runs plans against requests and churn.

#![warn(missing_docs)]

pub mod availability;
pub mod cluster;
pub mod compare;
pub mod cost;
pub mod error;
pub mod evaluate;
pub mod flow;
pub mod fx_hash;
pub mod gpu_catalog;
pub mod latency;
pub mod lp;
pub mod options;
pub mod plan;
pub mod plot;
pub mod presets;
pub mod profile;
pub mod repair;
pub mod router;
pub mod service_model;
pub mod stage_ranges;
pub mod strategy;
pub mod units;

pub use cluster::Cluster;
pub use compare::{Comparison, compare_all};
pub use error::{PlanError, ValidationError};
pub use evaluate::{Evaluation, RecoveryEstimate, evaluate, expected_recovery};
pub use latency::{LatencyHistogram, LatencyReport, LatencySummary};
pub use options::PlanOptions;
pub use plan::Plan;
pub use profile::ModelProfile;

/// Plans with the strategy called `strategy_name` (see [`strategy::names`]).
pub fn plan_with(
    strategy_name: &str,
    cluster: &Cluster,
    model: &ModelProfile,
    options: &PlanOptions,
) -> Result<Plan, PlanError> {
    presets::check_model(model)?;
    options.validate()?;
    let s = strategy::by_name(strategy_name)?;
    let ctx = strategy::Context::new(cluster, model, options);
    s.plan(&ctx)
}

/// [`plan_with`], with a check of candidate plans (the simulator's short run)
/// for the strategies that search over candidates (`goodput`).
pub fn plan_checked(
    strategy_name: &str,
    cluster: &Cluster,
    model: &ModelProfile,
    options: &PlanOptions,
    check: &dyn strategy::goodput::PlanCheck,
) -> Result<Plan, PlanError> {
    presets::check_model(model)?;
    options.validate()?;
    let s = strategy::by_name(strategy_name)?;
    let ctx = strategy::Context::new(cluster, model, options).with_check(check);
    s.plan(&ctx)
}
