//! Recovery of a coordinator and its node agents, as separate processes on
//! this machine, with SmolLM2 (`scripts/fetch-model.sh`). Run with `cargo
//! bench --bench membership`.
//!
//! - A coordinator (`serve --coordinator`, detection delay 500 ms) and three
//!   agents; 8 streams in flight; the worker process of one agent is
//!   SIGKILLed once the first stream has 24 tokens. For each stream: the
//!   time from the kill to its next token, and its longest wait between two
//!   tokens; the change's parts from `/control/epochs`.
//! - A fourth agent joins: the time from its start to the epoch that uses
//!   it, to its worker's stage weights loaded, and to its first stage call.
//! - The same death in the simulator (`--failover epoch:form=...` with the
//!   measured formation time, `--detection 500ms`): its predicted longest
//!   wait against the measured one, and the in-place failover's.
//!
//! Not a timed test: one run, figures printed as a table.

#[path = "../tests/common/mod.rs"]
mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime};

use serde_json::{Value, json};

const MODEL: &str = "models/SmolLM2-135M-Instruct.Q4_1.gguf";
const TOKEN: &str = "bench-token";
const STREAMS: usize = 8;
const MAX_TOKENS: usize = 96;
const KILL_AFTER: usize = 24;

struct Proc {
    child: Child,
    addr: String,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(args: &[&str], log: &Path) -> Proc {
    let err = std::fs::File::create(log).unwrap();
    let (child, addr) = common::spawn_listening(
        Command::new(env!("CARGO_BIN_EXE_tokenflow"))
            .args(args)
            .stderr(err),
        Duration::from_secs(120),
    );
    Proc { child, addr }
}

fn unix(t: SystemTime) -> f64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

fn control(c: &Proc, path: &str) -> Value {
    reqwest::blocking::Client::new()
        .get(format!("http://{}{path}", c.addr))
        .bearer_auth(TOKEN)
        .send()
        .unwrap()
        .json()
        .unwrap()
}

/// Streams one completion; returns the Unix time it was sent and of each token.
fn stream(c: &Proc, prompt: &str, ready: mpsc::Sender<()>) -> (f64, Vec<f64>) {
    let body = json!({"model": "m", "prompt": prompt, "max_tokens": MAX_TOKENS,
        "temperature": 0, "stream": true, "ignore_eos": true, "return_token_ids": true});
    let sent = unix(SystemTime::now());
    let response = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(300))
        .build()
        .unwrap()
        .post(format!("http://{}/v1/completions", c.addr))
        .json(&body)
        .send()
        .unwrap();
    let mut times = Vec::new();
    for line in BufReader::new(response).lines().map_while(Result::ok) {
        let Some(data) = line.strip_prefix("data: ") else {
            continue;
        };
        if data == "[DONE]" {
            break;
        }
        let v: Value = serde_json::from_str(data).unwrap();
        let n = v
            .pointer("/choices/0/token_ids")
            .and_then(Value::as_array)
            .map_or(0, Vec::len);
        for _ in 0..n {
            times.push(unix(SystemTime::now()));
        }
        if times.len() == KILL_AFTER {
            let _ = ready.send(());
        }
    }
    (sent, times)
}

fn percentile(v: &[f64], p: f64) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    s[((s.len() - 1) as f64 * p).round() as usize]
}

fn main() {
    let model = PathBuf::from(MODEL);
    assert!(
        model.exists(),
        "{MODEL} is missing: run scripts/fetch-model.sh"
    );
    let dir =
        std::env::temp_dir().join(format!("tokenflow-bench-membership-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let history = dir.join("nodes.jsonl");
    let m = model.to_str().unwrap();
    let c = start(
        &[
            "serve",
            "--coordinator",
            "--join-token",
            TOKEN,
            "--listen",
            "127.0.0.1:0",
            "--model-name",
            "m",
            "--model",
            m,
            "--min-nodes",
            "3",
            "--node-suspect",
            "500ms",
            "--history",
            history.to_str().unwrap(),
        ],
        &dir.join("coordinator.log"),
    );
    let join = format!("http://{}", c.addr);
    let agent = |name: &str| {
        start(
            &[
                "node", "--join", &join, "--token", TOKEN, "--name", name, "--model", m,
            ],
            &dir.join(format!("node-{name}.log")),
        )
    };
    let _agents: Vec<Proc> = ["a", "b", "c"].iter().map(|n| agent(n)).collect();
    while reqwest::blocking::get(format!("http://{}/health", c.addr))
        .map(|r| r.status() != 200)
        .unwrap_or(true)
    {
        std::thread::sleep(Duration::from_millis(50));
    }
    let first = control(&c, "/control/epochs");
    let plan = first["epochs"][0]["stages"].clone();
    println!("plan of epoch 0: {plan}");

    // Kill one worker with 8 streams in flight.
    let prompts: Vec<String> = (0..STREAMS)
        .map(|i| format!("Write a long story about a lighthouse keeper number {i}."))
        .collect();
    let cref = &c;
    let (kill_at, times) = std::thread::scope(|s| {
        let (tx, rx) = mpsc::channel();
        let handles: Vec<_> = prompts
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let tx = if i == 0 {
                    tx.clone()
                } else {
                    mpsc::channel().0
                };
                s.spawn(move || stream(cref, p, tx))
            })
            .collect();
        rx.recv_timeout(Duration::from_secs(300)).unwrap();
        let nodes = control(&c, "/control/nodes");
        let pid = nodes["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|n| n["registration"]["name"] == "b")
            .flat_map(|n| {
                n["status"]["workers"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
            })
            .filter(|w| w["exit"].is_null())
            .map(|w| w["pid"].as_i64().unwrap() as i32)
            .next_back()
            .unwrap();
        let kill_at = unix(SystemTime::now());
        // SAFETY: kill(2) of the worker process found through its agent.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
        }
        let runs: Vec<(f64, Vec<f64>)> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        (kill_at, runs)
    });
    let sent0 = times.iter().map(|(s, _)| *s).fold(f64::INFINITY, f64::min);
    let times: Vec<Vec<f64>> = times.into_iter().map(|(_, t)| t).collect();
    let next: Vec<f64> = times
        .iter()
        .filter_map(|t| t.iter().find(|&&x| x > kill_at).map(|x| x - kill_at))
        .collect();
    let gaps: Vec<f64> = times
        .iter()
        .map(|t| t.windows(2).map(|w| w[1] - w[0]).fold(0.0, f64::max))
        .collect();
    let e = control(&c, "/control/epochs");
    let record = e["epochs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["cause"].as_str().unwrap().starts_with("failure"))
        .cloned()
        .expect("an epoch formed after the failure");
    let trigger = record["trigger_unix"].as_f64().unwrap();
    println!(
        "\n## kill -9 of node b's worker, {STREAMS} streams in flight (SmolLM2, 3 agents, detection 500 ms)\n"
    );
    println!("| figure | seconds |\n|---|---:|");
    println!(
        "| kill to next token, p50 | {:.3} |",
        percentile(&next, 0.5)
    );
    println!(
        "| kill to next token, max | {:.3} |",
        percentile(&next, 1.0)
    );
    println!(
        "| longest wait between two tokens, p50 | {:.3} |",
        percentile(&gaps, 0.5)
    );
    println!(
        "| longest wait between two tokens, max | {:.3} |",
        percentile(&gaps, 1.0)
    );
    println!(
        "| kill to the run's end noticed (detection) | {:.3} |",
        trigger - kill_at
    );
    println!("| + planning | {:.3} |", record["plan_s"].as_f64().unwrap());
    println!(
        "| + every worker started | {:.3} |",
        record["started_s"].as_f64().unwrap()
    );
    for p in record["phases"].as_array().unwrap() {
        println!(
            "| + {} | {:.3} |",
            p[0].as_str().unwrap(),
            p[1].as_f64().unwrap()
        );
    }
    let resumed: Vec<f64> = record["resumed_s"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    if !resumed.is_empty() {
        println!(
            "| + next token of the sessions moved, p50 | {:.3} |",
            percentile(&resumed, 0.5)
        );
        println!(
            "| + next token of the sessions moved, max | {:.3} |",
            percentile(&resumed, 1.0)
        );
    }
    println!("\nsessions moved: {}", e["moved"]);
    let loaded = record["phases"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p[0].as_str().unwrap().ends_with("loaded"))
        .map(|p| p[1].as_f64().unwrap())
        .fold(0.0, f64::max);

    // A fourth node joins.
    let joined_at = unix(SystemTime::now());
    let _d = agent("d");
    let deadline = Instant::now() + Duration::from_secs(120);
    let with_d = loop {
        let e = control(&c, "/control/epochs");
        if let Some(r) = e["epochs"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["cause"] == "join d")
        {
            break r.clone();
        }
        assert!(Instant::now() < deadline, "no epoch used node d: {e:#}");
        std::thread::sleep(Duration::from_millis(20));
    };
    // Load until d has served a stage call.
    let first_call = std::thread::scope(|s| {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let handles: Vec<_> = prompts
                .iter()
                .map(|p| s.spawn(move || stream(cref, p, mpsc::channel().0)))
                .collect();
            for h in handles {
                h.join().unwrap();
            }
            let e = control(&c, "/control/epochs");
            let r = e["epochs"]
                .as_array()
                .unwrap()
                .iter()
                .find(|r| r["cause"] == "join d")
                .cloned()
                .unwrap();
            if let Some(p) = r["phases"]
                .as_array()
                .unwrap()
                .iter()
                .find(|p| p[0] == "d: first stage call")
            {
                break Some((
                    r["trigger_unix"].as_f64().unwrap(),
                    p[1].as_f64().unwrap(),
                    r,
                ));
            }
            if Instant::now() > deadline {
                break None;
            }
        }
    });
    println!("\n## node d joins\n");
    println!("| figure | seconds |\n|---|---:|");
    let trigger_d = with_d["trigger_unix"].as_f64().unwrap();
    println!(
        "| agent started to registered (epoch planned) | {:.3} |",
        trigger_d - joined_at
    );
    println!(
        "| planned tok/s before / with d | {} / {} |",
        first["epochs"][0]["planned_tok_s"], with_d["planned_tok_s"]
    );
    if let Some((t, call, r)) = &first_call {
        for p in r["phases"].as_array().unwrap() {
            if p[0].as_str().unwrap().starts_with("d:") {
                println!(
                    "| + {} | {:.3} |",
                    p[0].as_str().unwrap(),
                    p[1].as_f64().unwrap()
                );
            }
        }
        println!(
            "| agent started to d's first stage call (within 0.25 s) | {:.3} |",
            t + call - joined_at
        );
    } else {
        println!("| d served no stage call within 120 s | |");
    }

    // The same death in the simulator.
    let cluster = dir.join("cluster.toml");
    std::fs::write(
        &cluster,
        "name = \"bench\"\n[link_defaults]\nintra_site = { latency_ms = 0.0, bandwidth_gbps = 100.0 }\n\
         [[nodes]]\nid = \"a\"\ngpu = \"RTX4090\"\nsite = \"here\"\nregion = \"here\"\n\
         [[nodes]]\nid = \"b\"\ngpu = \"RTX4090\"\nsite = \"here\"\nregion = \"here\"\n\
         [[nodes]]\nid = \"c\"\ngpu = \"RTX4090\"\nsite = \"here\"\nregion = \"here\"\n",
    )
    .unwrap();
    let kill_rel = (kill_at - sent0).max(0.01);
    let detected = (trigger - kill_at).max(0.0);
    // Only b's worker died: its agent is back at once and serves again from
    // the next epoch.
    let back = kill_rel + detected + 1e-3;
    let churn = dir.join("churn.csv");
    std::fs::write(
        &churn,
        format!("node,start_s,end_s,state\nb,{kill_rel:.3},{back:.3},down\n"),
    )
    .unwrap();
    let load = dir.join("load.csv");
    let prompt_len = 16;
    let mut text = String::from("arrival_s,prompt_tokens,output_tokens\n");
    for _ in 0..STREAMS {
        text.push_str(&format!("0,{prompt_len},{MAX_TOKENS}\n"));
    }
    std::fs::write(&load, text).unwrap();
    let form = loaded.max(0.0);
    // The simulator's cost model timed as this host runs the stages: a
    // profile measured here, its device named as the nodes' GPU kind, and
    // stretched by 1.5 (three nodes share two cores).
    let profile = dir.join("profile.json");
    let status = Command::new(env!("CARGO_BIN_EXE_tokenflow"))
        .args(["profile", "--model", m, "--out", profile.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "tokenflow profile failed");
    let mut p: Value = serde_json::from_str(&std::fs::read_to_string(&profile).unwrap()).unwrap();
    for entry in p["measured"].as_array_mut().unwrap() {
        entry["device"] = json!("RTX4090");
        entry["seconds"] = json!(entry["seconds"].as_f64().unwrap() * 1.5);
    }
    std::fs::write(&profile, serde_json::to_string(&p).unwrap()).unwrap();
    let sim_model = profile.to_str().unwrap();
    println!("\n## the same death in the simulator\n");
    println!("| run | longest wait per stream, p50 (s) | longest wait, max (s) |\n|---|---:|---:|");
    println!(
        "| measured | {:.3} | {:.3} (sessions moved {}) |",
        percentile(&gaps, 0.5),
        percentile(&gaps, 1.0),
        e["moved"]
    );
    let runs = [
        (
            "500ms".to_string(),
            format!("epoch:form={:.0}ms", form * 1000.0),
        ),
        (
            format!("{:.0}ms", detected * 1000.0),
            format!("epoch:form={:.0}ms", form * 1000.0),
        ),
        ("500ms".to_string(), "in-place".to_string()),
    ];
    for (detection, failover) in runs {
        let out = dir.join(format!(
            "sim-{detection}-{}",
            failover.replace([':', '='], "-")
        ));
        let status = Command::new(env!("CARGO_BIN_EXE_tokenflow"))
            .args([
                "simulate",
                "--cluster",
                cluster.to_str().unwrap(),
                "--model",
                sim_model,
            ])
            .args(["--strategies", "availability", "--duration", "60s"])
            .args(["--load", &format!("trace:{}", load.display())])
            .args(["--churn", &format!("trace:{}", churn.display())])
            .args(["--detection", &detection, "--failover", &failover])
            .args(["--out", out.to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .status()
            .unwrap();
        if !status.success() {
            println!("| simulator, detection {detection}, {failover} | failed | |");
            continue;
        }
        let result: Value = serde_json::from_str(
            &std::fs::read_to_string(out.join("compare.json")).unwrap_or_else(|_| "null".into()),
        )
        .unwrap_or(Value::Null);
        let row = &result["rows"][0];
        let itl = row["latency_ms"]
            .as_array()
            .and_then(|l| l.iter().find(|e| e[0] == "inter_token"))
            .map(|e| e[1].clone())
            .unwrap_or(Value::Null);
        println!(
            "| simulator, detection {detection}, {failover} | p99 of all gaps {:.3} | {:.3} (restarts {}) |",
            itl["p99_ms"].as_f64().unwrap_or(f64::NAN) / 1000.0,
            itl["max_ms"].as_f64().unwrap_or(f64::NAN) / 1000.0,
            row["stats"]["restarts"]
        );
    }
    println!("\nlogs: {}", dir.display());
}
