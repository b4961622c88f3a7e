//! A discrete-event simulator of the tokenflow system: requests arriving at a
//! cluster of heterogeneous, volatile GPUs served by a [`Plan`], with the
//! planner's own strategies, routers and cost model (nothing is copied).
//!
//! * [`simulate_plan`]: one given plan, router and request list, no churn —
//!   the call to compare against the real engine; it returns a
//!   [`LatencyReport`](tokenflow_planner::latency::LatencyReport) with the engine's metric names (`ttft`, `inter_token`,
//!   `e2e`, `queue`).
//! * [`Simulator`]: a [`Scenario`] (workload, churn, duration, seed, knobs) on
//!   a [`SimCluster`], run per strategy ([`Simulator::run`]) or for many
//!   ([`Simulator::compare`] → [`SimComparison`], with Markdown, CSV, JSON,
//!   `.hgrm` files and SVG plots).
//!
//! Runs are deterministic: events are ordered by (integer nanosecond time,
//! insertion number), every random draw comes from a seeded ChaCha stream per
//! purpose (and per node for churn), no hash-map order reaches the results, and
//! all strategies see the same requests and the same churn. Strategies with
//! wall-clock limits (`max-flow`'s MILP, `odp`, `local-search`) can return
//! different plans on a slower or busier machine when they hit their limit; the
//! simulation of a given plan is always the same.
//!
//! See [`engine`] for the model's semantics, [`workload`] and [`churn`] for the
//! spec syntaxes, and [`spec::RouteCache`] for how 10,000-node plans are routed.

pub mod churn;
pub mod elastic;
pub mod engine;
pub mod error;
pub mod random;
pub mod replan;
pub mod report;
pub mod spec;
pub mod synthetic;
pub mod workload;

use std::path::{Path, PathBuf};

pub use churn::{ChurnEvent, ChurnSpec};
pub use engine::{Progress, RequestOutcome, SimOutcome, SimStats, Timeline};
pub use error::SimError;
pub use report::{SimComparison, StrategyResult};
pub use spec::{Failover, ReplanPolicy, RouteCache, RouterChoice, SimConfig, Slo};
pub use workload::{Arrivals, Lengths, SimRequest, WorkloadSpec};

use engine::{RunInputs, Sim};
use tokenflow_planner::cluster::{Cluster, ClusterSpec};
use tokenflow_planner::error::PlanError;
use tokenflow_planner::gpu_catalog::GpuCatalog;
use tokenflow_planner::options::PlanOptions;
use tokenflow_planner::plan::Plan;
use tokenflow_planner::profile::ModelProfile;

/// Simulates `plan` on `cluster` for `model` serving `requests` (arrival
/// times and lengths, sorted by arrival), without churn and without
/// re-planning, with the router and scheduling knobs of `config`.
///
/// The outcome's [`SimOutcome::latency`] holds `ttft`, `inter_token`, `e2e`
/// and `queue` as the engine records them (arrival to first token, between
/// tokens, arrival to last token, arrival to admission), in microseconds.
/// Runs until every request completes (or is rejected) unless
/// `config.drain_s` bounds it.
pub fn simulate_plan(
    cluster: &Cluster,
    model: &ModelProfile,
    options: &PlanOptions,
    plan: &Plan,
    config: &SimConfig,
    requests: &[SimRequest],
) -> Result<SimOutcome, SimError> {
    check_requests(requests)?;
    tokenflow_planner::presets::check_model(model)?;
    let duration_s = requests.last().map_or(0.0, |r| r.arrival_s).max(1e-3);
    let inputs = RunInputs {
        cluster,
        spec: None,
        model,
        options,
        config,
        requests,
        churn: &[],
        strategy: None,
        duration_s,
        bound_tok_s: None,
    };
    Ok(Sim::new(inputs, plan.clone())?.run(&mut |_| {}))
}

fn check_requests(requests: &[SimRequest]) -> Result<(), SimError> {
    let mut last = 0.0;
    for (k, r) in requests.iter().enumerate() {
        let field = format!("requests[{k}]");
        if !(r.arrival_s.is_finite() && r.arrival_s >= last) {
            return Err(SimError::InvalidNumber {
                field: format!("{field}.arrival_s"),
                requirement: format!("finite and at least the previous arrival ({last})"),
                value: r.arrival_s,
            });
        }
        last = r.arrival_s;
        if r.prompt_tokens == 0 || r.output_tokens == 0 {
            return Err(SimError::InvalidNumber {
                field: format!("{field}.prompt_tokens/output_tokens"),
                requirement: "at least 1".into(),
                value: 0.0,
            });
        }
    }
    Ok(())
}

/// A cluster and, when it came from a file or a generator, its spec (which
/// makes re-planning over a subset of its nodes cheap and exact).
#[derive(Debug, Clone)]
pub struct SimCluster {
    /// The resolved cluster.
    pub cluster: Cluster,
    /// The spec it was resolved from.
    pub spec: Option<ClusterSpec>,
    /// The folder that trace paths in the spec are relative to.
    pub base: Option<PathBuf>,
}

impl SimCluster {
    /// Reads a cluster file (TOML or JSON), keeping its spec.
    pub fn from_path(path: impl AsRef<Path>) -> Result<SimCluster, SimError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| {
            SimError::Plan(PlanError::Io {
                path: path.display().to_string(),
                message: e.to_string(),
            })
        })?;
        let spec = ClusterSpec::parse(&text, path)?;
        let base = path.parent().map(Path::to_path_buf);
        let cluster = spec.resolve(base.as_deref(), &GpuCatalog::builtin())?;
        Ok(SimCluster {
            cluster,
            spec: Some(spec),
            base,
        })
    }

    /// Resolves `spec` (trace paths relative to `base`).
    pub fn from_spec(spec: ClusterSpec, base: Option<PathBuf>) -> Result<SimCluster, SimError> {
        let cluster = spec.resolve(base.as_deref(), &GpuCatalog::builtin())?;
        Ok(SimCluster {
            cluster,
            spec: Some(spec),
            base,
        })
    }

    /// The spec and its base folder, as the engine's re-planning takes them.
    fn spec_and_base(&self) -> Option<(&ClusterSpec, Option<&Path>)> {
        self.spec.as_ref().map(|s| (s, self.base.as_deref()))
    }

    /// A resolved cluster without its spec (re-planning writes its links out pair by pair).
    pub fn from_cluster(cluster: Cluster) -> SimCluster {
        SimCluster {
            cluster,
            spec: None,
            base: None,
        }
    }
}

/// What to simulate: load, churn, time, seed and knobs.
#[derive(Debug, Clone, PartialEq)]
pub struct Scenario {
    /// Requests.
    pub workload: WorkloadSpec,
    /// Node failures and returns.
    pub churn: ChurnSpec,
    /// Arrival window, seconds.
    pub duration_s: f64,
    /// Seed of every random stream.
    pub seed: u64,
    /// Scheduling, routing, re-planning, SLO.
    pub config: SimConfig,
    /// Planning options (and the cost model's knobs).
    pub options: PlanOptions,
}

/// A scenario on a cluster and model, with its requests and churn drawn once
/// and shared by every strategy it runs.
pub struct Simulator<'a> {
    cluster: &'a SimCluster,
    model: &'a ModelProfile,
    scenario: &'a Scenario,
    /// The scenario's planning options with the service target filled in
    /// from the scenario (see [`Simulator::options`]).
    options: PlanOptions,
    requests: Vec<SimRequest>,
    churn: Vec<ChurnEvent>,
}

/// The result of one strategy: its plan and what the run measured.
#[derive(Debug, Clone)]
pub struct StrategyRun {
    /// The plan at the start.
    pub plan: Plan,
    /// The run.
    pub outcome: SimOutcome,
}

impl<'a> Simulator<'a> {
    /// Draws the requests and the churn of `scenario`.
    pub fn new(
        cluster: &'a SimCluster,
        model: &'a ModelProfile,
        scenario: &'a Scenario,
    ) -> Result<Simulator<'a>, SimError> {
        tokenflow_planner::presets::check_model(model)?;
        scenario.config.check()?;
        error::positive("duration", scenario.duration_s)?;
        let requests = scenario
            .workload
            .generate(scenario.duration_s, scenario.seed)?;
        let horizon =
            scenario.duration_s + scenario.config.drain_s.unwrap_or(3.0 * scenario.duration_s);
        let churn = scenario
            .churn
            .timeline(&cluster.cluster, horizon, scenario.seed)?;
        let options = planning_options(&cluster.cluster, scenario, &requests);
        options.validate()?;
        Ok(Simulator {
            cluster,
            model,
            scenario,
            options,
            requests,
            churn,
        })
    }

    /// The options every strategy plans with: the scenario's, with the
    /// service target ([`PlanOptions::target`]) taken from the scenario
    /// where the scenario left it unset (rate 0): the arrival rate of its
    /// load, its SLO, its arrival window, and how much faster than the
    /// cluster file's MTBF its churn fails nodes (0 without churn).
    pub fn options(&self) -> &PlanOptions {
        &self.options
    }

    /// When a run stops at the latest: the arrival window plus the drain
    /// (`None` without a drain bound: when every request is done).
    pub fn horizon_s(&self) -> Option<f64> {
        let s = self.scenario;
        s.config.drain_s.map(|d| s.duration_s + d)
    }

    /// The requests every strategy serves.
    pub fn requests(&self) -> &[SimRequest] {
        &self.requests
    }

    /// The failures and returns every strategy sees.
    pub fn churn(&self) -> &[ChurnEvent] {
        &self.churn
    }

    /// Plans with `strategy` and simulates the scenario; re-plans use it too.
    /// `progress` is called once before planning ([`Progress::planning`]),
    /// then as the run goes (see [`Progress::fraction`]).
    pub fn run(
        &self,
        strategy: &str,
        progress: &mut dyn FnMut(&Progress),
    ) -> Result<StrategyRun, SimError> {
        progress(&Progress::planning(
            self.requests.len() as u64,
            self.horizon_s(),
        ));
        let plan = if tokenflow_planner::strategy::by_name(strategy)?.uses_check() {
            let check = ShortRun::new(self, strategy)?;
            tokenflow_planner::plan_checked(
                strategy,
                &self.cluster.cluster,
                self.model,
                &self.options,
                &check,
            )?
        } else {
            tokenflow_planner::plan_with(
                strategy,
                &self.cluster.cluster,
                self.model,
                &self.options,
            )?
        };
        self.run_plan(strategy, plan, None, progress)
    }

    /// Simulates the scenario from `plan` (checked against the cluster);
    /// re-plans use `strategy`. `bound_tok_s`: the plan's max-flow bound when
    /// already known (computed otherwise; on 10,000 nodes that takes seconds).
    pub fn run_plan(
        &self,
        strategy: &str,
        plan: Plan,
        bound_tok_s: Option<f64>,
        progress: &mut dyn FnMut(&Progress),
    ) -> Result<StrategyRun, SimError> {
        tokenflow_planner::strategy::by_name(strategy)?;
        let inputs = RunInputs {
            cluster: &self.cluster.cluster,
            spec: self.cluster.spec_and_base(),
            model: self.model,
            options: &self.options,
            config: &self.scenario.config,
            requests: &self.requests,
            churn: &self.churn,
            strategy: Some(strategy),
            duration_s: self.scenario.duration_s,
            bound_tok_s,
        };
        let outcome = Sim::new(inputs, plan.clone())?.run(progress);
        Ok(StrategyRun { plan, outcome })
    }

    /// Runs every strategy of `strategies` in order; a strategy that cannot
    /// plan gets a row with its error. `progress` gets the strategy's name.
    pub fn compare(
        &self,
        strategies: &[String],
        progress: &mut dyn FnMut(&str, &Progress),
    ) -> SimComparison {
        let rows = strategies
            .iter()
            .map(|s| {
                let run = self.run(s, &mut |p| progress(s, p));
                let predicted = run.as_ref().ok().map(|r| {
                    let cm = tokenflow_planner::cost::CostModel::new(self.model, &self.options);
                    tokenflow_planner::service_model::predict(
                        &r.plan,
                        &self.cluster.cluster,
                        &cm,
                        &self.options,
                    )
                });
                let mut row = StrategyResult::new(s, run);
                row.predicted = predicted;
                row
            })
            .collect();
        SimComparison {
            cluster: self.cluster.cluster.name.clone(),
            model: self.model.name.clone(),
            load: load_label(&self.scenario.workload),
            churn: self.scenario.churn.label(),
            router: self.scenario.config.scheduler.router.name().to_string(),
            replan: self.scenario.config.replan.to_string(),
            duration_s: self.scenario.duration_s,
            seed: self.scenario.seed,
            slo: self.scenario.config.slo,
            requests: self.requests.len() as u64,
            failures: self.churn.iter().filter(|e| !e.up).count() as u64,
            rows,
        }
    }
}

/// Seed offset of a [`ShortRun`]'s own requests and failures.
const CHECK_SEED: u64 = 0x9e37_79b9_7f4a_7c15;

/// Longest arrival window of a [`ShortRun`], seconds (a plan near its
/// saturation only shows its growing queue over minutes).
pub const CHECK_WINDOW_S: f64 = 600.0;

/// The simulator's check of a candidate plan for searching strategies
/// (`goodput`): the scenario's load, churn and knobs, over at most
/// [`CHECK_WINDOW_S`] of arrivals, with requests and failures drawn from
/// their own seeds (not those the strategy is then measured on): the worst of
/// [`CHECK_DRAWS`] draws, since one draw of a plan near saturation or under
/// heavy churn is noisy, and the best of several noisy figures favours the
/// luckiest plan rather than the soundest.
pub struct ShortRun<'s> {
    cluster: &'s SimCluster,
    model: &'s ModelProfile,
    options: &'s PlanOptions,
    config: SimConfig,
    strategy: String,
    draws: Vec<(Vec<SimRequest>, Vec<ChurnEvent>)>,
    duration_s: f64,
}

/// Independent draws of requests and failures a [`ShortRun`] takes the worst of.
pub const CHECK_DRAWS: u64 = 3;

impl<'s> ShortRun<'s> {
    /// Draws the check's requests and failures for `sim`'s scenario.
    pub fn new(sim: &'s Simulator<'_>, strategy: &str) -> Result<ShortRun<'s>, SimError> {
        let sc = sim.scenario;
        let duration_s = sc.duration_s.min(CHECK_WINDOW_S);
        let mut config = sc.config.clone();
        config.drain_s = Some(config.drain_s.unwrap_or(duration_s).min(duration_s));
        let horizon = duration_s + config.drain_s.unwrap_or(duration_s);
        let mut draws = Vec::new();
        for d in 0..CHECK_DRAWS {
            let seed = sc.seed ^ CHECK_SEED.wrapping_add(d);
            let requests = sc.workload.generate(duration_s, seed)?;
            let churn = sc.churn.timeline(&sim.cluster.cluster, horizon, seed)?;
            draws.push((requests, churn));
        }
        Ok(ShortRun {
            cluster: sim.cluster,
            model: sim.model,
            options: &sim.options,
            config,
            strategy: strategy.to_string(),
            draws,
            duration_s,
        })
    }
}

impl tokenflow_planner::strategy::goodput::PlanCheck for ShortRun<'_> {
    fn goodput(&self, plan: &Plan) -> Option<f64> {
        let mut worst = f64::INFINITY;
        for (requests, churn) in &self.draws {
            worst = worst.min(self.one(plan, requests, churn)?);
        }
        worst.is_finite().then_some(worst)
    }
}

impl ShortRun<'_> {
    fn one(&self, plan: &Plan, requests: &[SimRequest], churn: &[ChurnEvent]) -> Option<f64> {
        let inputs = RunInputs {
            cluster: &self.cluster.cluster,
            spec: self.cluster.spec_and_base(),
            model: self.model,
            options: self.options,
            config: &self.config,
            requests,
            churn,
            strategy: Some(&self.strategy),
            duration_s: self.duration_s,
            bound_tok_s: None,
        };
        let out = Sim::new(inputs, plan.clone()).ok()?.run(&mut |_| {});
        Some(out.stats.goodput_tok_s)
    }
}

/// The scenario's planning options with its service target filled in where
/// unset: rate, SLO, window and failure speed-up of the scenario.
fn planning_options(
    cluster: &Cluster,
    scenario: &Scenario,
    requests: &[SimRequest],
) -> PlanOptions {
    let mut o = scenario.options.clone();
    if o.target.request_rate > 0.0 {
        return o;
    }
    let t = &mut o.target;
    t.request_rate = match &scenario.workload.arrivals {
        Arrivals::Poisson { rate }
        | Arrivals::Gamma { rate, .. }
        | Arrivals::Diurnal { rate, .. } => *rate,
        Arrivals::Trace { .. } => requests.len() as f64 / scenario.duration_s.max(1e-9),
    };
    t.ttft_slo_s = scenario.config.slo.ttft_s;
    t.itl_slo_s = scenario.config.slo.itl_s;
    t.window_s = scenario.duration_s;
    let mean_mtbf_s = churn::mean_mtbf_s(cluster);
    // How much more often than the cluster file says nodes fail (the mean
    // up time the churn draws against the file's mean MTBF); an MTTR
    // override is not modelled (the planner keeps the file's availability).
    let up_s = match &scenario.churn {
        ChurnSpec::None => f64::INFINITY,
        ChurnSpec::Exponential { mtbf_s, scale, .. } => mtbf_s.unwrap_or(mean_mtbf_s) / scale,
        ChurnSpec::Weibull {
            shape,
            scale_s,
            speedup,
            ..
        } => churn::weibull_mean(*shape, *scale_s) / speedup,
        ChurnSpec::Trace { .. } => mean_mtbf_s,
    };
    t.failure_speedup = if up_s.is_finite() && up_s > 0.0 && mean_mtbf_s > 0.0 {
        (mean_mtbf_s / up_s).clamp(0.0, 1e9)
    } else {
        0.0
    };
    o
}

/// Strategy names from `all` or a comma-separated list, each checked.
pub fn strategy_list(spec: &str) -> Result<Vec<String>, SimError> {
    if spec.trim() == "all" {
        return Ok(tokenflow_planner::strategy::names()
            .into_iter()
            .map(String::from)
            .collect());
    }
    let mut out = Vec::new();
    for name in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        tokenflow_planner::strategy::by_name(name)?;
        out.push(name.to_string());
    }
    if out.is_empty() {
        return Err(SimError::Spec {
            what: "strategies".into(),
            spec: spec.into(),
            message: "no strategy named; use all or a comma-separated list".into(),
        });
    }
    Ok(out)
}

fn load_label(w: &WorkloadSpec) -> String {
    let len = |l: &Lengths| match *l {
        Lengths::Fixed(n) => n.to_string(),
        Lengths::Uniform { min, max } => format!("uniform:{min}:{max}"),
        Lengths::LogNormal { median, sigma, max } => format!("lognormal:{median}:{sigma}:{max}"),
    };
    let lengths = format!("prompt={},output={}", len(&w.prompt), len(&w.output));
    let cap = w
        .max_requests
        .map(|n| format!(",requests={n}"))
        .unwrap_or_default();
    match &w.arrivals {
        Arrivals::Poisson { rate } => format!("poisson:rate={rate},{lengths}{cap}"),
        Arrivals::Gamma { rate, cv } => format!("gamma:rate={rate},cv={cv},{lengths}{cap}"),
        Arrivals::Diurnal {
            rate,
            amplitude,
            period_s,
        } => format!("diurnal:rate={rate},amplitude={amplitude},period={period_s}s,{lengths}{cap}"),
        Arrivals::Trace { path } => format!("trace:{}", path.display()),
    }
}

/// Every metric name a simulation records, in order (the engine's names).
pub fn metric_names() -> [&'static str; 4] {
    use tokenflow_planner::latency::metric;
    [
        metric::TTFT,
        metric::INTER_TOKEN,
        metric::E2E,
        metric::QUEUE,
    ]
}
