//! One entry point to the LP/MILP solver: microlp (pure Rust) by default,
//! HiGHS with the `highs` feature.

use good_lp::{
    Constraint, Expression, ProblemVariables, Solution, SolutionStatus, SolverModel, Variable,
    WithInitialSolution, WithMipGap, WithTimeLimit,
};

/// Values of the requested variables and whether optimality was proven.
#[derive(Debug, Clone)]
pub struct LpOutcome {
    /// One value per requested variable, in order.
    pub values: Vec<f64>,
    /// True when the solver proved optimality (false: time limit or gap limit).
    pub optimal: bool,
}

/// Maximises `objective` under `constraints` within `time_limit_s`, starting
/// from `initial` values when given (a hint the solver may use).
pub fn maximise(
    vars: ProblemVariables,
    objective: Expression,
    constraints: Vec<Constraint>,
    wanted: &[Variable],
    time_limit_s: f64,
    initial: Vec<(Variable, f64)>,
) -> Result<LpOutcome, String> {
    let problem = vars.maximise(objective);
    #[cfg(feature = "highs")]
    let mut model = problem.using(good_lp::highs);
    #[cfg(not(feature = "highs"))]
    let mut model = problem.using(good_lp::microlp);
    for c in constraints {
        model.add_constraint(c);
    }
    let model = model
        .with_time_limit(time_limit_s.max(0.01))
        .with_mip_gap(1e-4)
        .map_err(|e| e.to_string())?;
    let model = if initial.is_empty() {
        model
    } else {
        model.with_initial_solution(initial)
    };
    let sol = model.solve().map_err(|e| e.to_string())?;
    let optimal = matches!(sol.status(), SolutionStatus::Optimal);
    Ok(LpOutcome {
        values: wanted.iter().map(|v| sol.value(*v)).collect(),
        optimal,
    })
}
