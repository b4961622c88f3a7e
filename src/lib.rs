//! tokenflow: LLM inference as a stream-processing dataflow over heterogeneous,
//! volatile GPUs. This facade re-exports the workspace's crates.

pub use tokenflow_engine as engine;
pub use tokenflow_operators as operators;
pub use tokenflow_planner as planner;
