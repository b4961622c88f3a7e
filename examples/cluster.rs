//! Several processes: this example starts two more copies of itself, and the
//! three form one timely cluster over TCP on 127.0.0.1, each process serving one
//! stage. Process 0 prints the answer and the bytes that crossed each link.
//!
//! `cargo run --release --example cluster`

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::Command;

use tokenflow_engine::Request;
use tokenflow_engine::dataflow::{Arrivals, Communication, EngineOptions, RunSpec, run};
use tokenflow_operators::LlamaModel;
use tokenflow_operators::tiny::{TinyModelSpec, write_tiny_model};
use tokenflow_planner::{Cluster, Plan};

const ROLE: &str = "TOKENFLOW_EXAMPLE_PROCESS";
const HOSTS: &str = "TOKENFLOW_EXAMPLE_HOSTS";

fn model_path() -> anyhow::Result<PathBuf> {
    let smollm2 =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/SmolLM2-135M-Instruct.Q4_1.gguf");
    if smollm2.exists() {
        return Ok(smollm2);
    }
    let tiny = std::env::temp_dir().join("tokenflow-example-cluster-tiny.gguf");
    if !tiny.exists() {
        write_tiny_model(&TinyModelSpec::default(), &tiny)?;
    }
    Ok(tiny)
}

fn main() -> anyhow::Result<()> {
    let (process, hosts, children) = match std::env::var(ROLE) {
        Ok(p) => (p.parse::<usize>()?, std::env::var(HOSTS)?, Vec::new()),
        Err(_) => {
            let ports: Vec<u16> = (0..3)
                .map(|_| TcpListener::bind("127.0.0.1:0").map(|l| l.local_addr().map(|a| a.port())))
                .collect::<Result<Result<_, _>, _>>()??;
            let hosts = ports
                .iter()
                .map(|p| format!("127.0.0.1:{p}"))
                .collect::<Vec<_>>()
                .join(",");
            let exe = std::env::current_exe()?;
            let children = (1..3)
                .map(|i| {
                    Command::new(&exe)
                        .env(ROLE, i.to_string())
                        .env(HOSTS, &hosts)
                        .spawn()
                })
                .collect::<Result<Vec<_>, _>>()?;
            (0, hosts, children)
        }
    };
    let path = model_path()?;
    let model = LlamaModel::open(&path)?;
    let n = model.config.n_layers;
    let cluster = Cluster::from_toml_str(
        "name = \"three-processes\"\n[link_defaults]\nintra_site = { latency_ms = 0.1, bandwidth_gbps = 10.0 }\n[[nodes]]\nid = \"proc\"\ngpu = \"RTX4090\"\ncount = 3\nsite = \"here\"\nregion = \"here\"\n",
    )?;
    // Node proc-i runs on worker i, which lives in process i.
    let plan = Plan::from_stages(
        "cluster",
        &cluster,
        n,
        model.name(),
        &[
            (0..n / 3, vec![0]),
            (n / 3..2 * n / 3, vec![1]),
            (2 * n / 3..n, vec![2]),
        ],
    );
    let prompt = model.tokenizer.encode("The capital of France is")?;
    let spec = RunSpec {
        model_path: path,
        plan,
        cluster,
        options: EngineOptions::default(),
        communication: Communication::Cluster {
            workers: 1,
            process,
            hosts: hosts.split(',').map(String::from).collect(),
        },
        requests: vec![Request::greedy(0, prompt, 12)],
        arrivals: Arrivals::Immediate,
    };
    if let Some(outcome) = run(spec, None)? {
        let f = &outcome.finished[0];
        println!("answer: {:?}", model.tokenizer.decode(&f.log.generated)?);
        println!("{}", outcome.placement);
        println!("{}", outcome.metrics.links_table());
    }
    for mut child in children {
        let status = child.wait()?;
        anyhow::ensure!(status.success(), "a process failed: {status}");
    }
    Ok(())
}
