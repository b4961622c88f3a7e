//! The strategy study: every placement strategy on the shipped scenarios
//! (Helix 24-node, a provider's rack of RTX 4090, the 64-GPU community cloud),
//! without churn and at two failure rates, simulated with the same requests
//! and the same failures for every strategy.
//!
//! ```sh
//! cargo run --release --example study -p tokenflow-planner            # tables on stdout
//! OUT=study cargo run --release --example study -p tokenflow-planner  # + files per case
//! ```
//!
//! Environment: `OUT` (folder: `<scenario>-<churn>/compare.{md,csv,json}`,
//! `latency.svg`, `throughput.svg`, `.hgrm` files), `DURATION` (arrival window
//! in seconds, default 300), `SEED` (default 1), `SCENARIOS` (comma-separated
//! subset of `helix-24,helix-24-1g,rack-4090,community-64`), `THREADS` (default 2).
//!
//! Requests: Poisson arrivals, prompts uniform in 128..896 tokens, outputs in
//! 32..224 (means 512 and 128, the planner's workload), at a rate each
//! scenario's stronger plans sustain; paths follow each plan's max-flow
//! routing (`interleaved-wrr`); SLOs per scenario (a data-centre TTFT and
//! inter-token bound, a looser one for the WAN community).
//!
//! Churn keeps each node's availability from the cluster file (MTBF and MTTR)
//! and compresses time so that the mean MTBF over the nodes is 60 minutes
//! (`low`) or 10 minutes (`high`): heterogeneity is kept, and a run of minutes
//! sees the failures of days.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use tokenflow_core::SchedulerConfig;
use tokenflow_planner::{PlanOptions, presets, strategy};
use tokenflow_sim::{
    ChurnSpec, RouterChoice, Scenario, SimCluster, SimComparison, SimConfig, Simulator, Slo,
    WorkloadSpec,
};

struct Case {
    file: &'static str,
    model: &'static str,
    load: &'static str,
    slo: &'static str,
}

const LENGTHS: &str = "prompt=uniform:128:896,output=uniform:32:224";

const CASES: [Case; 4] = [
    Case {
        file: "helix-24",
        model: "LLaMA-30B",
        load: "poisson:rate=4.5",
        slo: "ttft=5s,itl=400ms",
    },
    Case {
        file: "helix-24-1g",
        model: "LLaMA-30B",
        load: "poisson:rate=4.5",
        slo: "ttft=5s,itl=400ms",
    },
    Case {
        file: "rack-4090",
        model: "Llama-3-8B",
        load: "poisson:rate=40",
        slo: "ttft=2s,itl=100ms",
    },
    Case {
        file: "community-64",
        model: "Llama-2-70B",
        load: "poisson:rate=0.5",
        slo: "ttft=30s,itl=1.5s",
    },
];

/// Mean-MTBF targets of the two churn levels, seconds.
const CHURN: [(&str, Option<f64>); 3] =
    [("none", None), ("low", Some(3600.0)), ("high", Some(600.0))];

fn env<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn run_case(
    case: &Case,
    churn: &str,
    target: Option<f64>,
    dir: &Path,
) -> Result<SimComparison, String> {
    let cluster = SimCluster::from_path(dir.join(format!("{}.toml", case.file)))
        .map_err(|e| e.to_string())?;
    let model = presets::load_model(case.model).map_err(|e| e.to_string())?;
    let churn_spec = match target {
        None => ChurnSpec::None,
        Some(t) => ChurnSpec::compressed(&cluster.cluster, t),
    };
    let duration: f64 = env("DURATION", 300.0);
    let scenario = Scenario {
        workload: WorkloadSpec::parse(&format!("{},{LENGTHS}", case.load))
            .map_err(|e| e.to_string())?,
        churn: churn_spec,
        duration_s: duration,
        seed: env("SEED", 1u64),
        config: SimConfig {
            drain_s: Some(duration),
            scheduler: SchedulerConfig {
                router: RouterChoice::InterleavedWrr,
                ..SchedulerConfig::default()
            },
            slo: Slo::parse(case.slo).map_err(|e| e.to_string())?,
            ..SimConfig::default()
        },
        options: PlanOptions::default(),
    };
    let sim = Simulator::new(&cluster, &model, &scenario).map_err(|e| e.to_string())?;
    let names: Vec<String> = strategy::names().into_iter().map(String::from).collect();
    let t0 = std::time::Instant::now();
    let cmp = sim.compare(&names, &mut |_, _| {});
    eprintln!(
        "{} {churn}: {} strategies in {:.1} s",
        case.file,
        names.len(),
        t0.elapsed().as_secs_f64()
    );
    Ok(cmp)
}

fn main() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../data/scenarios");
    let only: Option<Vec<String>> = std::env::var("SCENARIOS")
        .ok()
        .map(|s| s.split(',').map(|x| x.trim().to_string()).collect());
    let jobs: Vec<(&Case, &str, Option<f64>)> = CASES
        .iter()
        .filter(|c| only.as_ref().is_none_or(|o| o.iter().any(|x| x == c.file)))
        // The 1 Gbit/s variant of helix-24 is one column, without churn.
        .flat_map(|c| {
            CHURN
                .iter()
                .filter(move |(n, _)| c.file != "helix-24-1g" || *n == "none")
                .map(move |&(n, t)| (c, n, t))
        })
        .collect();
    let results: Mutex<Vec<Option<Result<SimComparison, String>>>> =
        Mutex::new((0..jobs.len()).map(|_| None).collect());
    let next = Mutex::new(0usize);
    let t0 = std::time::Instant::now();
    std::thread::scope(|s| {
        for _ in 0..env("THREADS", 2usize).max(1) {
            s.spawn(|| {
                loop {
                    let k = {
                        let mut n = next.lock().unwrap_or_else(|e| e.into_inner());
                        let k = *n;
                        *n += 1;
                        k
                    };
                    let Some(&(case, churn, target)) = jobs.get(k) else {
                        return;
                    };
                    let r = run_case(case, churn, target, &dir);
                    results.lock().unwrap_or_else(|e| e.into_inner())[k] = Some(r);
                }
            });
        }
    });
    let out = std::env::var("OUT").ok().map(PathBuf::from);
    let results = results.into_inner().unwrap_or_else(|e| e.into_inner());
    let mut failed = false;
    let mut done: Vec<(&str, &str, &SimComparison)> = Vec::new();
    for ((case, churn, _), r) in jobs.iter().zip(&results) {
        if let Some(Ok(cmp)) = r {
            done.push((case.file, churn, cmp));
        }
    }
    let summary = summary(&done);
    println!("{summary}");
    if let Some(o) = &out {
        let path = o.join("summary.md");
        if let Err(e) = std::fs::create_dir_all(o).and_then(|_| std::fs::write(&path, &summary)) {
            eprintln!("{}: {e}", path.display());
            failed = true;
        }
    }
    for ((case, churn, _), r) in jobs.iter().zip(results) {
        match r {
            Some(Ok(cmp)) => {
                println!("{}", cmp.to_markdown());
                if let Some(o) = &out {
                    let d = o.join(format!("{}-{churn}", case.file));
                    if let Err(e) = cmp.write_dir(&d) {
                        eprintln!("{}: {e}", d.display());
                        failed = true;
                    }
                }
            }
            Some(Err(e)) => {
                eprintln!("{} {churn}: {e}", case.file);
                failed = true;
            }
            None => failed = true,
        }
    }
    eprintln!("study done in {:.1} s", t0.elapsed().as_secs_f64());
    if failed {
        std::process::exit(1);
    }
}

/// A table with a row per strategy and a column per (scenario, churn), each
/// cell from `cell` (`None`: the strategy has no figures there).
fn table(
    title: &str,
    done: &[(&str, &str, &SimComparison)],
    cell: &dyn Fn(&tokenflow_sim::StrategyResult) -> Option<String>,
) -> String {
    let mut s = format!("{title}\n\n| strategy |");
    for (file, churn, _) in done {
        s.push_str(&format!(" {file} {churn} |"));
    }
    s.push_str("\n|---|");
    s.push_str(&"---:|".repeat(done.len()));
    s.push('\n');
    for name in strategy::names() {
        s.push_str(&format!("| {name} |"));
        for (_, _, cmp) in done {
            let c = cmp
                .rows
                .iter()
                .find(|r| r.strategy == name && r.error.is_none())
                .and_then(cell);
            s.push_str(&format!(" {} |", c.as_deref().unwrap_or("-")));
        }
        s.push('\n');
    }
    s
}

/// Two tables: goodput in tokens/s and the share of requests within the
/// SLO; the service model's prediction for each first plan and its error.
fn summary(done: &[(&str, &str, &SimComparison)]) -> String {
    let measured = table(
        "Goodput (tokens/s of requests within the SLO) and share of requests within it",
        done,
        &|r| {
            Some(format!(
                "{:.0} ({:.0}%)",
                r.stats.goodput_tok_s,
                r.stats.slo_attainment * 100.0
            ))
        },
    );
    let predicted = table(
        "Goodput predicted by the planner's analytic model (service_model) for each first plan, and its error against the simulation above",
        done,
        &|r| {
            let p = r.predicted.as_ref()?;
            let sim = r.stats.goodput_tok_s;
            let err = if sim > 0.0 {
                format!("{:+.0}%", (p.goodput_tok_s - sim) / sim * 100.0)
            } else {
                format!("{:+.0}", p.goodput_tok_s - sim)
            };
            Some(format!("{:.0} ({err})", p.goodput_tok_s))
        },
    );
    format!("{measured}\n{predicted}")
}
