//! Every strategy on every shipped scenario.

use std::path::PathBuf;

use tokenflow_planner::{Cluster, PlanOptions, compare_all, presets};

fn scenario(name: &str) -> Cluster {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("data/scenarios")
        .join(name);
    Cluster::from_path(&p).unwrap_or_else(|e| panic!("{name}: {e}"))
}

#[test]
fn print_comparisons() {
    for (file, model) in [
        ("helix-24.toml", "LLaMA-30B"),
        ("helix-42.toml", "Llama-2-70B"),
        ("rack-4090.toml", "Llama-3-8B"),
        ("community-64.toml", "Llama-2-70B"),
    ] {
        let c = scenario(file);
        let m = presets::model(model).unwrap();
        let t0 = std::time::Instant::now();
        let cmp = compare_all(&c, &m, &PlanOptions::default());
        println!(
            "{}\n(total {:.2} s)\n",
            cmp.to_markdown(),
            t0.elapsed().as_secs_f64()
        );
    }
}
