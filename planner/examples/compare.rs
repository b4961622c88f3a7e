//! Compares strategies on one scenario without the CLI:
//! `cargo run -p tokenflow-planner --release --example compare -- CLUSTER MODEL [STRATEGY...]`
//! Environment: `MILP_TIME_S` (max-flow MILP time limit), `MILP_VARS` (integer limit),
//! `OUT` (folder for compare.csv, compare.json, compare.svg).

use tokenflow_planner::{Cluster, PlanOptions, compare, presets, strategy};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 2 {
        eprintln!("usage: compare CLUSTER_FILE MODEL_FILE_OR_PRESET [STRATEGY...]");
        std::process::exit(2);
    }
    let cluster = Cluster::from_path(&args[0]).unwrap_or_else(|e| {
        eprintln!("{e}");
        std::process::exit(1)
    });
    let model = presets::load_model(&args[1]).unwrap_or_else(|e| {
        eprintln!("{e}");
        std::process::exit(1)
    });
    let mut opts = PlanOptions::default();
    if let Some(t) = std::env::var("MILP_TIME_S")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        opts.milp_time_limit_s = t;
    }
    if let Some(v) = std::env::var("MILP_VARS").ok().and_then(|v| v.parse().ok()) {
        opts.milp_max_integer_vars = v;
    }
    let names: Vec<&str> = if args.len() > 2 {
        args[2..].iter().map(String::as_str).collect()
    } else {
        strategy::names()
    };
    let t0 = std::time::Instant::now();
    let cmp = compare::compare(&cluster, &model, &opts, &names);
    println!("{}", cmp.to_markdown());
    println!("compared in {:.2} s", t0.elapsed().as_secs_f64());
    if let Ok(out) = std::env::var("OUT") {
        let dir = std::path::Path::new(&out);
        let write = |name: &str, text: String| {
            if let Err(e) = std::fs::write(dir.join(name), text) {
                eprintln!("{name}: {e}");
            }
        };
        write("compare.csv", cmp.to_csv());
        write("compare.json", cmp.to_json());
        write("compare.md", cmp.to_markdown());
        if let Err(e) = cmp.write_svg(dir.join("compare.svg")) {
            eprintln!("{e}");
        }
    }
}
