//! Nodes that join and leave, as an operator meets them: a coordinator
//! (`tokenflow serve --coordinator`) and node agents (`tokenflow node`) as
//! separate processes on 127.0.0.1, streaming clients over real HTTP, a
//! worker process SIGKILLed mid-generation, a node joining, a node sent
//! SIGTERM, and registrations that must be refused.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokenflow_engine::{DirectGenerator, Request, SchedulerConfig, TokenEvent};
use tokenflow_operators::LlamaModel;
use tokenflow_operators::device::default_device;
use tokenflow_operators::tiny::{TinyModelSpec, write_tiny_model};

/// The greedy tokens of the plain loop (no dataflow, no cluster) for `prompt`,
/// ignoring end tokens as the streams do.
fn plain_loop(model: &Path, prompt: &[u32], max_tokens: usize) -> Vec<u32> {
    let model = LlamaModel::open(model).unwrap();
    let n = model.config.n_layers;
    #[allow(clippy::single_range_in_vec_init)]
    let pipeline = model
        .pipeline(&[0..n], u64::MAX / 4, &default_device(), &mut |_, _| {})
        .unwrap();
    let mut g = DirectGenerator::new(pipeline, SchedulerConfig::default());
    g.submit(Request::greedy(0, prompt.to_vec(), max_tokens))
        .unwrap();
    let mut out = Vec::new();
    while g.has_work() {
        for e in g.step().unwrap() {
            if let TokenEvent::Token { token, .. } = e {
                out.push(token);
            }
        }
    }
    out
}

const TOKEN: &str = "join-s3cret";

fn tiny_path() -> PathBuf {
    let path = std::env::temp_dir().join(format!(
        "tokenflow-membership-tiny-{}.gguf",
        std::process::id()
    ));
    if !path.exists() {
        write_tiny_model(&TinyModelSpec::default(), &path).unwrap();
    }
    path
}

fn temp_file(name: &str) -> PathBuf {
    let path = std::env::temp_dir().join(format!(
        "tokenflow-membership-{}-{name}",
        std::process::id()
    ));
    let _ = std::fs::remove_file(&path);
    path
}

/// A child process killed when dropped.
struct Proc {
    child: Child,
    addr: String,
}

impl Proc {
    /// Starts `tokenflow ARGS` and waits (bounded) for its `listening on` line.
    fn start(args: &[&str]) -> Proc {
        let (child, addr) = common::spawn_listening(
            Command::new(env!("CARGO_BIN_EXE_tokenflow"))
                .args(args)
                .stderr(Stdio::inherit()),
            Duration::from_secs(120),
        );
        Proc { child, addr }
    }

    fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe {
            libc::kill(self.pid(), sig);
        }
    }

    /// Waits up to `limit` for the process to exit.
    fn wait_for(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `cmd` to its end, killing it past `limit`; its status and stderr.
fn bounded(mut cmd: Command, limit: Duration) -> (ExitStatus, String) {
    let mut child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = std::io::Read::read_to_string(&mut stderr, &mut text);
        text
    });
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("{cmd:?} ran past {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    (status, reader.join().unwrap())
}

fn coordinator(model: &Path, history: &Path, extra: &[&str]) -> Proc {
    coordinator_at("127.0.0.1:0", model, history, extra)
}

fn coordinator_at(listen: &str, model: &Path, history: &Path, extra: &[&str]) -> Proc {
    let mut args = vec![
        "serve",
        "--coordinator",
        "--join-token",
        TOKEN,
        "--listen",
        listen,
        "--model-name",
        "m",
        "--model",
        model.to_str().unwrap(),
        "--history",
        history.to_str().unwrap(),
        "--node-suspect",
        "500ms",
    ];
    args.extend_from_slice(extra);
    Proc::start(&args)
}

/// An agent that measures its speed (`--profile`), as every node of a test
/// cluster does, so the planner compares like with like.
fn agent(coordinator: &Proc, name: &str, model: &Path) -> Proc {
    let join = format!("http://{}", coordinator.addr);
    Proc::start(&[
        "node",
        "--join",
        &join,
        "--token",
        TOKEN,
        "--name",
        name,
        "--profile",
        "--model",
        model.to_str().unwrap(),
    ])
}

fn http() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(120))
        .build()
        .unwrap()
}

fn control(c: &Proc, path: &str) -> Value {
    http()
        .get(format!("http://{}{path}", c.addr))
        .bearer_auth(TOKEN)
        .send()
        .unwrap()
        .json()
        .unwrap()
}

/// Waits (bounded) until `/health` answers 200.
fn wait_ready(c: &Proc) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while http()
        .get(format!("http://{}/health", c.addr))
        .send()
        .map(|r| r.status() != 200)
        .unwrap_or(true)
    {
        assert!(
            Instant::now() < deadline,
            "the coordinator never became ready"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits (bounded) until `check` holds for `/control/epochs`.
fn wait_epochs(c: &Proc, what: &str, check: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let e = control(c, "/control/epochs");
        if check(&e) {
            return e;
        }
        assert!(Instant::now() < deadline, "never: {what}; last {e:#}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The pid of `node`'s running worker.
fn worker_pid(c: &Proc, node: &str) -> i32 {
    let nodes = control(c, "/control/nodes");
    nodes["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|n| n["registration"]["name"] == node)
        .flat_map(|n| {
            n["status"]["workers"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .filter(|w| w["exit"].is_null())
        .map(|w| w["pid"].as_i64().unwrap() as i32)
        .next_back()
        .unwrap_or_else(|| panic!("{node} has no running worker: {nodes:#}"))
}

/// One streamed completion: its token ids and finish reason. `first` gets
/// a message once `after` tokens have arrived.
fn stream(
    c: &Proc,
    prompt: Vec<u32>,
    max_tokens: usize,
    after: usize,
    first: mpsc::Sender<()>,
) -> (Vec<u32>, Option<String>) {
    let body = json!({
        "model": "m", "prompt": prompt, "max_tokens": max_tokens, "temperature": 0,
        "stream": true, "return_token_ids": true, "ignore_eos": true,
    });
    let response = http()
        .post(format!("http://{}/v1/completions", c.addr))
        .json(&body)
        .send()
        .unwrap();
    assert_eq!(response.status(), 200);
    let mut ids = Vec::new();
    let mut finish = None;
    for line in BufReader::new(response).lines() {
        let line = line.unwrap();
        let Some(data) = line.strip_prefix("data: ") else {
            continue;
        };
        if data == "[DONE]" {
            break;
        }
        let v: Value = serde_json::from_str(data).unwrap();
        assert!(v.get("error").is_none(), "the stream carried an error: {v}");
        if let Some(t) = v.pointer("/choices/0/token_ids") {
            ids.extend(serde_json::from_value::<Vec<u32>>(t.clone()).unwrap());
        }
        if let Some(r) = v
            .pointer("/choices/0/finish_reason")
            .and_then(Value::as_str)
        {
            finish = Some(r.to_string());
        }
        if ids.len() == after {
            let _ = first.send(());
        }
    }
    (ids, finish)
}

/// Streams `prompts` at once; `during` runs once the first stream has
/// `after` tokens. Returns each stream's tokens.
fn streams_with(
    c: &Proc,
    prompts: &[Vec<u32>],
    max_tokens: usize,
    after: usize,
    during: impl FnOnce(),
) -> Vec<Vec<u32>> {
    std::thread::scope(|s| {
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
                let p = p.clone();
                s.spawn(move || stream(c, p, max_tokens, after, tx))
            })
            .collect();
        drop(tx);
        rx.recv_timeout(Duration::from_secs(120))
            .expect("the first stream started");
        during();
        handles
            .into_iter()
            .map(|h| {
                let (ids, finish) = h.join().unwrap();
                assert_eq!(finish.as_deref(), Some("length"));
                assert_eq!(ids.len(), max_tokens, "a stream lost or repeated tokens");
                ids
            })
            .collect()
    })
}

fn prompts(n: usize) -> Vec<Vec<u32>> {
    (0..n as u32)
        .map(|i| vec![1, 2 + i, 7, 3 + 2 * i])
        .collect()
}

#[test]
fn streams_survive_a_killed_worker_a_join_and_a_drain() {
    let model = tiny_path();
    let history = temp_file("history.jsonl");
    let c = coordinator(&model, &history, &["--min-nodes", "3"]);
    let agents: Vec<Proc> = ["a", "b", "c"]
        .iter()
        .map(|n| agent(&c, n, &model))
        .collect();
    wait_ready(&c);
    let ps = prompts(8);
    let max_tokens = 160;
    // Each joining node timed its links to the nodes before it (in the
    // background: wait for the three pairs).
    let deadline = Instant::now() + Duration::from_secs(60);
    let links = loop {
        let links = control(&c, "/control/links");
        if links["links"].as_array().unwrap().len() == 3 || Instant::now() > deadline {
            break links;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let pairs: Vec<(String, String)> = links["links"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            assert!(
                l["rtt_ms"].as_f64().unwrap() > 0.0 && l["gbps"].as_f64().unwrap() > 0.0,
                "{l}"
            );
            (
                l["a"].as_str().unwrap().into(),
                l["b"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert_eq!(
        pairs,
        vec![
            ("a".into(), "b".into()),
            ("a".into(), "c".into()),
            ("b".into(), "c".into())
        ],
        "{links:#}"
    );

    // A failure-free pass gives the reference answers, which are the plain loop's.
    let reference = streams_with(&c, &ps, max_tokens, 1, || {});
    assert_eq!(reference[0], plain_loop(&model, &ps[0], max_tokens));
    let before = control(&c, "/control/epochs");
    assert_eq!(before["moved"], 0, "{before:#}");

    // SIGKILL one node's worker process mid-generation.
    let killed = streams_with(&c, &ps, max_tokens, 10, || {
        let pid = worker_pid(&c, "b");
        // SAFETY: kill(2) of a worker process the test found by its agent.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
        }
    });
    assert_eq!(
        killed, reference,
        "answers differ after a worker was killed"
    );
    let after = control(&c, "/control/epochs");
    assert!(
        after["moved"].as_u64().unwrap() > 0,
        "no session continued in a new epoch: {after:#}"
    );
    let epochs = after["epochs"].as_array().unwrap();
    assert!(
        epochs
            .iter()
            .any(|e| e["cause"].as_str().unwrap().starts_with("failure")
                && !e["resumed_s"].as_array().unwrap().is_empty()),
        "{after:#}"
    );

    // SIGSTOP a worker mid-generation: its connections stay open, so the
    // engine's own detection (heartbeats inside the epoch) routes its
    // sessions to the other replicas; answers are unchanged.
    let stopped = worker_pid(&c, "c");
    let paused = streams_with(&c, &ps, max_tokens, 10, || {
        // SAFETY: kill(2) of a worker process the test found by its agent.
        unsafe {
            libc::kill(stopped, libc::SIGSTOP);
        }
    });
    // SAFETY: as above; the worker goes on.
    unsafe {
        libc::kill(stopped, libc::SIGCONT);
    }
    assert_eq!(
        paused, reference,
        "answers differ while a worker was stopped"
    );

    // A fourth node joins, with its speed measured by a short profile: the
    // planner's plan with it is better, so the next epoch uses it.
    let join = format!("http://{}", c.addr);
    let d = Proc::start(&[
        "node",
        "--join",
        &join,
        "--token",
        TOKEN,
        "--name",
        "d",
        "--profile",
        "--model",
        model.to_str().unwrap(),
    ]);
    wait_epochs(&c, "an epoch with node d", |e| {
        e["epochs"]
            .as_array()
            .unwrap()
            .iter()
            .any(|x| x["nodes"].as_array().unwrap().iter().any(|n| n == "d"))
    });
    let with_d = streams_with(&c, &ps, max_tokens, 1, || {});
    assert_eq!(with_d, reference);

    // SIGTERM to an agent: it drains (its epoch's sessions finish where they
    // are, new ones go to the next epoch), nothing restarts, it exits 0.
    let moved = control(&c, "/control/epochs")["moved"].as_u64().unwrap();
    let mut agents = agents;
    let mut leaving = agents.remove(0);
    let drained = streams_with(&c, &ps, max_tokens, 10, || leaving.signal(libc::SIGTERM));
    assert_eq!(drained, reference, "answers differ across a drain");
    let status = leaving
        .wait_for(Duration::from_secs(60))
        .expect("the leaving agent exits");
    assert!(status.success(), "the leaving agent exited with {status}");
    let e = control(&c, "/control/epochs");
    assert_eq!(
        e["moved"].as_u64().unwrap(),
        moved,
        "a drain restarted sessions: {e:#}"
    );
    let last = e["epochs"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["cause"], "leave a", "{e:#}");
    assert!(
        !last["nodes"].as_array().unwrap().iter().any(|n| n == "a"),
        "{e:#}"
    );

    // The history holds the joins and the leave, and survives on disk.
    let h = control(&c, "/control/history");
    let events: Vec<(String, String)> = h["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["node"].as_str().unwrap().to_string(),
                r["event"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    for n in ["a", "b", "c", "d"] {
        assert!(events.contains(&(n.into(), "join".into())), "{events:?}");
    }
    assert!(events.contains(&("a".into(), "leave".into())), "{events:?}");
    assert!(
        h["estimates"]["a"]["mtbf_s"].as_f64().unwrap() > 0.0,
        "{h:#}"
    );
    let text = std::fs::read_to_string(&history).unwrap();
    assert_eq!(text.lines().count(), events.len());
    drop(d);
}

#[test]
fn wrong_tokens_and_bad_registrations_are_refused() {
    let model = tiny_path();
    let history = temp_file("history-refusals.jsonl");
    let c = coordinator(&model, &history, &["--api-key", "client-key"]);
    let url = format!("http://{}/control/join", c.addr);
    let good = json!({
        "name": "n1", "agent": "127.0.0.1:9", "gpu": "RTX4090", "memory_mb": 4096,
        "model": "whatever", "incarnation": 1,
    });
    let post = |token: Option<&str>, body: &Value| {
        let mut r = http().post(&url).json(body);
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        let r = r.send().unwrap();
        let status = r.status().as_u16();
        (status, r.json::<Value>().unwrap_or_default())
    };
    assert_eq!(post(None, &good).0, 401);
    assert_eq!(post(Some("wrong"), &good).0, 401);
    // A client's API key does not open the control endpoint...
    assert_eq!(post(Some("client-key"), &good).0, 401);
    // ...and the join token does not open the client API.
    let r = http()
        .get(format!("http://{}/v1/models", c.addr))
        .bearer_auth(TOKEN)
        .send()
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = http()
        .get(format!("http://{}/v1/models", c.addr))
        .bearer_auth("client-key")
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    let with = |field: &str, value: Value| {
        let mut b = good.clone();
        b[field] = value;
        b
    };
    for (body, status, says) in [
        (with("memory_mb", json!(-5)), 400, "memory_mb -5"),
        (with("gpu", json!("TPU9")), 400, "gpu `TPU9`"),
        (with("name", json!("no spaces")), 400, "name"),
        (with("agent", json!("nowhere")), 400, "agent address"),
        (good.clone(), 409, "another model file"),
    ] {
        let (got, answer) = post(Some(TOKEN), &body);
        assert_eq!(got, status, "{answer}");
        let message = answer["error"]["message"].as_str().unwrap();
        assert!(message.contains(says), "{message}");
    }
    let (got, _) = {
        let r = http()
            .post(&url)
            .bearer_auth(TOKEN)
            .body("{not json")
            .send()
            .unwrap();
        (r.status().as_u16(), ())
    };
    assert_eq!(got, 400);
    // The model's bytes: the join token and one range within the file.
    let bytes = |range: Option<&str>, token: &str| {
        let mut r = http()
            .get(format!("http://{}/control/model/bytes", c.addr))
            .bearer_auth(token);
        if let Some(range) = range {
            r = r.header("Range", range);
        }
        let r = r.send().unwrap();
        (r.status().as_u16(), r.bytes().unwrap().to_vec())
    };
    assert_eq!(bytes(Some("bytes=0-3"), TOKEN), (206, b"GGUF".to_vec()));
    assert_eq!(bytes(Some("bytes=0-3"), "client-key").0, 401);
    for bad in [
        None,
        Some("bytes=5-2"),
        Some("bytes=0-99999999999"),
        Some("items=0-3"),
        Some("bytes=-3"),
    ] {
        assert_eq!(bytes(bad, TOKEN).0, 416, "{bad:?}");
    }
    let manifest = control(&c, "/control/model/manifest");
    assert!(
        manifest["tensors"].as_array().unwrap().len() > 5,
        "{manifest:#}"
    );
    // Nothing refused was registered.
    let nodes = control(&c, "/control/nodes");
    assert_eq!(nodes["nodes"].as_array().unwrap().len(), 0, "{nodes:#}");
    // An agent with a wrong token stops at once, naming the refusal.
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tokenflow"));
    cmd.args([
        "node",
        "--join",
        &format!("http://{}", c.addr),
        "--token",
        "wrong",
    ])
    .args(["--model", model.to_str().unwrap()])
    .env("RUST_BACKTRACE", "0");
    let (status, err) = bounded(cmd, Duration::from_secs(60));
    assert!(!status.success());
    assert!(err.contains("refused") && err.contains("401"), "{err}");
}

/// The fetched bytes a node reports.
fn fetched_bytes(c: &Proc, node: &str) -> u64 {
    let nodes = control(c, "/control/nodes");
    nodes["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["registration"]["name"] == node)
        .and_then(|n| n["status"]["fetched_bytes"].as_u64())
        .unwrap_or(0)
}

#[test]
fn smollm2_streams_survive_a_killed_worker_on_a_node_that_fetched_its_stage() {
    let model = common::smollm2_path();
    let history = temp_file("history-smollm2.jsonl");
    let c = coordinator(&model, &history, &["--min-nodes", "3"]);
    let join = format!("http://{}", c.addr);
    let m = model.to_str().unwrap();
    // 80 MiB each, less than the model: the plan is a three-stage pipeline.
    let mut agents: Vec<Proc> = ["a", "b"]
        .iter()
        .map(|n| {
            Proc::start(&[
                "node", "--join", &join, "--token", TOKEN, "--name", n, "--model", m, "--memory",
                "80",
            ])
        })
        .collect();
    // Node c holds no model file: it fetches its stage's tensors.
    agents.push(Proc::start(&[
        "node",
        "--join",
        &join,
        "--token",
        TOKEN,
        "--name",
        "c",
        "--fetch-model",
        "--memory",
        "80",
    ]));
    wait_ready(&c);
    let epochs = control(&c, "/control/epochs");
    assert_eq!(
        epochs["epochs"][0]["stages"].as_array().unwrap().len(),
        3,
        "{epochs:#}"
    );
    let ps: Vec<Vec<u32>> = (0..3u32)
        .map(|i| vec![1, 504 + i, 2_000 + 17 * i, 30])
        .collect();
    let reference = streams_with(&c, &ps, 40, 1, || {});
    // Against the plain loop on the whole file: node c computes on the
    // tensors it fetched, not on the holes of its sparse file.
    for (p, r) in ps.iter().zip(&reference) {
        assert_eq!(r, &plain_loop(&model, p, 40));
    }
    let file_len = std::fs::metadata(&model).unwrap().len();
    let fetched = wait_fetched(&c, "c");
    // More than the header and tail (about 3 MB): a stage's blocks.
    assert!(
        fetched > 10 << 20 && fetched < file_len * 3 / 4,
        "node c fetched {fetched} of {file_len} bytes"
    );
    let killed = streams_with(&c, &ps, 40, 4, || {
        let pid = worker_pid(&c, "c");
        // SAFETY: kill(2) of a worker process the test found by its agent.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
        }
    });
    assert_eq!(
        killed, reference,
        "answers differ after a worker was killed"
    );
    let e = control(&c, "/control/epochs");
    assert!(e["moved"].as_u64().unwrap() > 0, "{e:#}");
    // Its next worker serves the same stage from what it already fetched.
    assert_eq!(fetched_bytes(&c, "c"), fetched);
}

/// Waits (bounded) for `node`'s status to report fetched bytes.
fn wait_fetched(c: &Proc, node: &str) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let f = fetched_bytes(c, node);
        if f > 0 || Instant::now() > deadline {
            return f;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_coordinator_killed_mid_stream_resumes_its_token_log() {
    let model = tiny_path();
    let history = temp_file("history-restart.jsonl");
    let log = temp_file("tokens-restart.log");
    let args = ["--min-nodes", "2", "--token-log", log.to_str().unwrap()];
    let c = coordinator(&model, &history, &args);
    let _agents: Vec<Proc> = ["a", "b"].iter().map(|n| agent(&c, n, &model)).collect();
    wait_ready(&c);
    let ps = prompts(3);
    let max_tokens = 200;
    let reference = streams_with(&c, &ps, max_tokens, 1, || {});
    // Three more requests, and the coordinator SIGKILLed while they stream.
    let mut c = c;
    std::thread::scope(|s| {
        let (tx, rx) = mpsc::channel();
        let cref = &c;
        for (i, p) in ps.iter().enumerate() {
            let tx = if i == 0 {
                tx.clone()
            } else {
                mpsc::channel().0
            };
            let p = p.clone();
            // The clients lose their connection: what they got is not checked here.
            s.spawn(move || std::panic::catch_unwind(|| stream(cref, p, max_tokens, 10, tx)));
        }
        rx.recv_timeout(Duration::from_secs(60)).unwrap();
        c.signal(libc::SIGKILL);
    });
    c.wait_for(Duration::from_secs(10))
        .expect("the coordinator died");
    let at_kill = tokenflow_engine::dataflow::durable_log::LoggedRun::read(&log).unwrap();
    assert!(
        at_kill.ended.len() < 6,
        "every request had ended before the kill: nothing to resume"
    );
    // A new coordinator on the same address and log: the agents join it
    // again, and the requests left unfinished run to their end, answered to the log.
    let c2 = coordinator_at(&c.addr, &model, &history, &args);
    let deadline = Instant::now() + Duration::from_secs(60);
    let logged = loop {
        let run = tokenflow_engine::dataflow::durable_log::LoggedRun::read(&log).unwrap();
        if run.requests.len() == 6 && run.ended.len() == 6 {
            break run;
        }
        assert!(
            Instant::now() < deadline,
            "the resumed requests never ended: {} of {} ended",
            run.ended.len(),
            run.requests.len()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    for r in &logged.requests {
        let k = ps.iter().position(|p| p == &r.prompt).unwrap();
        assert_eq!(
            logged.tokens[&r.id], reference[k],
            "request {} in the log",
            r.id
        );
    }
    drop(c2);
}

#[test]
fn nonsense_options_are_refused_naming_them() {
    let model = tiny_path();
    let m = model.to_str().unwrap();
    let run = |args: &[&str]| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_tokenflow"));
        cmd.args(args)
            .env_remove("TOKENFLOW_JOIN_TOKEN")
            .env("RUST_BACKTRACE", "0");
        let (status, err) = bounded(cmd, Duration::from_secs(60));
        assert!(!status.success(), "{args:?} was accepted");
        err
    };
    let base = [
        "serve",
        "--coordinator",
        "--listen",
        "127.0.0.1:0",
        "--model",
        m,
    ];
    let with = |extra: &[&'static str]| {
        let mut v: Vec<&str> = base.to_vec();
        v.extend_from_slice(extra);
        v
    };
    for (args, says) in [
        (with(&[]), "--join-token"),
        (
            with(&["--join-token", "t", "--api-key", "t"]),
            "must differ",
        ),
        (
            with(&["--join-token", "t", "--replan", "sometimes"]),
            "re-plan rule",
        ),
        (
            with(&["--join-token", "t", "--node-suspect", "50ms"]),
            "--node-suspect",
        ),
        (
            with(&["--join-token", "t", "--node-heartbeat", "0"]),
            "--node-suspect",
        ),
        (
            with(&["--join-token", "t", "--join-gain", "-1"]),
            "--join-gain",
        ),
        (
            with(&["--join-token", "t", "--stages", "0..6"]),
            "--stages does not apply",
        ),
        (
            with(&["--join-token", "t", "--strategy", "nonsense"]),
            "nonsense",
        ),
    ] {
        let err = run(&args);
        assert!(err.contains(says), "{args:?}: {err}");
    }
    for (args, says) in [
        (
            vec![
                "node",
                "--join",
                "127.0.0.1:8000",
                "--token",
                "t",
                "--model",
                m,
            ],
            "coordinator's URL",
        ),
        (
            vec!["node", "--join", "http://127.0.0.1:9", "--model", m],
            "--token",
        ),
        (
            vec![
                "node",
                "--join",
                "http://127.0.0.1:9",
                "--token",
                "t",
                "--listen",
                "0.0.0.0:0",
                "--model",
                m,
            ],
            "unspecified",
        ),
        (
            vec![
                "node",
                "--join",
                "http://127.0.0.1:9",
                "--token",
                "t",
                "--model",
                "/nonexistent.gguf",
            ],
            "not found",
        ),
        (
            vec![
                "node",
                "--join",
                "http://127.0.0.1:9",
                "--token",
                "t",
                "--leave-timeout",
                "500",
                "--model",
                m,
            ],
            "--leave-timeout",
        ),
    ] {
        let err = run(&args);
        assert!(err.contains(says), "{args:?}: {err}");
    }
}
