//! `tokenflow serve` as its users meet it: the binary started on 127.0.0.1
//! with the tiny model, a real HTTP client, streams read chunk by chunk,
//! clients that vanish mid-stream, bad requests, overload, SIGTERM.

// One stage is a list of one layer range.
#![allow(clippy::single_range_in_vec_init)]

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokenflow_engine::dataflow::durable_log::LoggedRun;
use tokenflow_engine::{DirectGenerator, Request, SchedulerConfig, TokenEvent};
use tokenflow_operators::LlamaModel;
use tokenflow_operators::device::default_device;
use tokenflow_operators::tiny::{TinyModelSpec, write_tiny_model};
use tokenflow_serve::client::{LoadPrompt, LoadRequest, LoadSchedule, OpenAiClient, run_load};

const TINY: &str = "tiny";

fn tiny_path() -> PathBuf {
    let path =
        std::env::temp_dir().join(format!("tokenflow-serve-tiny-{}.gguf", std::process::id()));
    if !path.exists() {
        write_tiny_model(&TinyModelSpec::default(), &path).unwrap();
    }
    path
}

/// Two nodes 20 ms apart: every token takes at least two hops of 20 ms, so a
/// long answer lasts seconds (time for a client to go away mid-stream).
fn slow_cluster() -> PathBuf {
    let path =
        std::env::temp_dir().join(format!("tokenflow-serve-slow-{}.toml", std::process::id()));
    std::fs::write(
        &path,
        "name = \"slow\"\n[link_defaults]\nintra_site = { latency_ms = 0.0, bandwidth_gbps = 10.0 }\n\
         inter_site = { latency_ms = 20.0, bandwidth_gbps = 1.0 }\n\
         [[nodes]]\nid = \"a\"\ngpu = \"RTX4090\"\nsite = \"s1\"\nregion = \"r\"\n\
         [[nodes]]\nid = \"b\"\ngpu = \"RTX4090\"\nsite = \"s2\"\nregion = \"r\"\n",
    )
    .unwrap();
    path
}

/// A running `tokenflow serve`, killed when dropped.
struct Server {
    child: Child,
    base: String,
    addr: String,
}

impl Server {
    fn start(model: &Path, extra: &[&str]) -> Server {
        let (child, addr) = common::spawn_listening(
            Command::new(env!("CARGO_BIN_EXE_tokenflow"))
                .args([
                    "serve",
                    "--listen",
                    "127.0.0.1:0",
                    "--model-name",
                    TINY,
                    "--model",
                ])
                .arg(model)
                .args(extra)
                .stderr(Stdio::inherit()),
            Duration::from_secs(120),
        );
        let deadline = Instant::now() + Duration::from_secs(120);
        let server = Server {
            child,
            base: format!("http://{addr}"),
            addr,
        };
        while reqwest::blocking::get(format!("{}/health", server.base))
            .map(|r| r.status() != 200)
            .unwrap_or(true)
        {
            assert!(Instant::now() < deadline, "the server never became ready");
            std::thread::sleep(Duration::from_millis(50));
        }
        server
    }

    fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        self.post_with(path, body, None)
    }

    fn post_with(&self, path: &str, body: &Value, key: Option<&str>) -> (u16, Value) {
        let client = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(120))
            .build()
            .unwrap();
        let mut r = client.post(format!("{}{path}", self.base)).json(body);
        if let Some(k) = key {
            r = r.bearer_auth(k);
        }
        let response = r.send().expect("the server answers");
        let status = response.status().as_u16();
        (status, response.json().expect("a JSON body"))
    }

    /// The `data:` payloads of a streamed answer, in order, up to and with `[DONE]`.
    fn stream(&self, path: &str, body: &Value) -> Vec<String> {
        let response = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(120))
            .build()
            .unwrap()
            .post(format!("{}{path}", self.base))
            .json(body)
            .send()
            .unwrap();
        assert_eq!(response.status(), 200);
        assert!(
            response.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/event-stream")
        );
        let text = response.text().unwrap();
        text.split("\n\n")
            .filter_map(|e| e.lines().find_map(|l| l.strip_prefix("data: ")))
            .map(str::to_string)
            .collect()
    }

    fn metric(&self, name: &str) -> f64 {
        let text = reqwest::blocking::get(format!("{}/metrics", self.base))
            .unwrap()
            .text()
            .unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .unwrap_or_else(|| panic!("{name} missing from /metrics:\n{text}"))
            .parse()
            .unwrap()
    }

    /// `name` once it reads `expected` (workers post every 250 ms), failing
    /// after ten seconds.
    fn settled_metric(&self, name: &str, expected: f64) -> f64 {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let v = self.metric(name);
            if v == expected || Instant::now() > deadline {
                return v;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn sigterm(&mut self) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
    }

    fn wait(&mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "the server did not exit");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The greedy tokens of the plain loop for `prompt`.
fn plain_loop(model: &Path, prompt: &[u32], max_tokens: usize) -> Vec<u32> {
    let model = LlamaModel::open(model).unwrap();
    let n = model.config.n_layers;
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

fn chunk_ids(chunks: &[String]) -> Vec<u32> {
    chunks
        .iter()
        .filter(|c| *c != "[DONE]")
        .filter_map(|c| serde_json::from_str::<Value>(c).ok())
        .filter_map(|v| v.pointer("/choices/0/token_ids").cloned())
        .flat_map(|ids| serde_json::from_value::<Vec<u32>>(ids).unwrap())
        .collect()
}

#[test]
fn chat_and_completions_answer_in_openai_format_streamed_and_whole() {
    let server = Server::start(&tiny_path(), &[]);
    let models: Value = reqwest::blocking::get(format!("{}/v1/models", server.base))
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(models["data"][0]["id"], TINY);

    let chat = json!({"model": TINY, "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 6, "temperature": 0, "ignore_eos": true});
    let (status, whole) = server.post("/v1/chat/completions", &chat);
    assert_eq!(status, 200, "{whole}");
    assert_eq!(whole["object"], "chat.completion");
    assert_eq!(whole["choices"][0]["message"]["role"], "assistant");
    assert!(whole["choices"][0]["message"]["content"].is_string());
    assert_eq!(whole["choices"][0]["finish_reason"], "length");
    assert_eq!(whole["usage"]["completion_tokens"], 6);
    let prompt_tokens = whole["usage"]["prompt_tokens"].as_u64().unwrap();
    assert!(prompt_tokens > 0);

    let mut streamed = chat.clone();
    streamed["stream"] = json!(true);
    streamed["stream_options"] = json!({"include_usage": true});
    let chunks = server.stream("/v1/chat/completions", &streamed);
    assert_eq!(chunks.last().unwrap(), "[DONE]");
    let parsed: Vec<Value> = chunks[..chunks.len() - 1]
        .iter()
        .map(|c| serde_json::from_str(c).unwrap())
        .collect();
    // One chunk per token, then the finish reason, then usage.
    assert_eq!(parsed.len(), 6 + 2, "{chunks:?}");
    assert!(
        parsed
            .iter()
            .all(|c| c["object"] == "chat.completion.chunk")
    );
    assert_eq!(parsed[0]["choices"][0]["delta"]["role"], "assistant");
    assert_eq!(parsed[6]["choices"][0]["finish_reason"], "length");
    assert_eq!(parsed[7]["usage"]["completion_tokens"], 6);
    assert_eq!(parsed[7]["usage"]["prompt_tokens"], prompt_tokens);
    let text: String = parsed
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(
        text,
        whole["choices"][0]["message"]["content"].as_str().unwrap()
    );

    let completion = json!({"model": TINY, "prompt": "the cat", "max_tokens": 4,
        "temperature": 0, "ignore_eos": true, "stream": true});
    let chunks = server.stream("/v1/completions", &completion);
    assert_eq!(chunks.len(), 4 + 1 + 1, "{chunks:?}");
    let first: Value = serde_json::from_str(&chunks[0]).unwrap();
    assert_eq!(first["object"], "text_completion");
    let mut whole_completion = completion.clone();
    whole_completion["stream"] = json!(false);
    let (status, body) = server.post("/v1/completions", &whole_completion);
    assert_eq!(status, 200);
    assert_eq!(body["choices"][0]["finish_reason"], "length");
    assert_eq!(body["usage"]["completion_tokens"], 4);
}

#[test]
fn greedy_token_ids_in_the_stream_equal_the_plain_loop() {
    let model = tiny_path();
    let server = Server::start(&model, &["--stages", "0..2,2..6"]);
    for (prompt, max) in [(vec![5u32, 9, 13, 2], 12usize), (vec![40, 41], 20)] {
        let body = json!({"model": TINY, "prompt": prompt, "max_tokens": max, "temperature": 0,
            "ignore_eos": true, "stream": true, "return_token_ids": true});
        let chunks = server.stream("/v1/completions", &body);
        assert_eq!(chunk_ids(&chunks), plain_loop(&model, &prompt, max));
    }
}

#[test]
fn sixty_four_concurrent_streams_all_complete() {
    let model = tiny_path();
    let server = Server::start(&model, &["--workers", "2"]);
    let requests: Vec<LoadRequest> = (0..64u32)
        .map(|i| LoadRequest {
            prompt: LoadPrompt::Tokens(vec![3 + i % 50, 7 + i % 13, 11]),
            max_tokens: 8 + (i % 3) as usize,
        })
        .collect();
    let client = OpenAiClient::new(&server.base, None).unwrap();
    let outcome = run_load(&client, TINY, &requests, &LoadSchedule::Closed(64), |_| {}).unwrap();
    for (r, a) in requests.iter().zip(&outcome.answers) {
        let a = a.as_ref().expect("every stream completes");
        assert_eq!(a.completion_tokens, r.max_tokens);
        assert_eq!(a.token_ids.len(), r.max_tokens);
    }
    // Batched with 63 others, each answer is still the plain loop's.
    for i in [0usize, 17, 63] {
        let a = outcome.answers[i].as_ref().unwrap();
        let LoadPrompt::Tokens(prompt) = &requests[i].prompt else {
            unreachable!("token prompts")
        };
        assert_eq!(
            a.token_ids,
            plain_loop(&model, prompt, requests[i].max_tokens)
        );
    }
    assert_eq!(
        server.settled_metric("tokenflow_requests_completed_total", 64.0),
        64.0
    );
}

/// Opens a stream by hand and returns the socket once its first token chunk came.
fn open_stream(addr: &str, body: &Value) -> TcpStream {
    let mut socket = TcpStream::connect(addr).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let body = body.to_string();
    write!(
        socket,
        "POST /v1/completions HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&seen).contains("data: {") {
        let n = socket.read(&mut buf).unwrap();
        assert!(
            n > 0,
            "the stream ended: {}",
            String::from_utf8_lossy(&seen)
        );
        seen.extend_from_slice(&buf[..n]);
    }
    socket
}

#[test]
fn a_client_gone_mid_stream_frees_its_slot_for_the_next() {
    // One sequence at a time: the second request can only start when the first ends.
    let cluster = slow_cluster();
    let server = Server::start(
        &tiny_path(),
        &[
            "--cluster",
            cluster.to_str().unwrap(),
            "--stages",
            "0..3,3..6",
            "--max-running",
            "1",
        ],
    );
    let long = json!({"model": TINY, "prompt": [5, 6, 7], "max_tokens": 400, "temperature": 0,
        "ignore_eos": true, "stream": true});
    let socket = open_stream(&server.addr, &long);
    drop(socket);
    let short = json!({"model": TINY, "prompt": [8, 9], "max_tokens": 5, "temperature": 0,
        "ignore_eos": true});
    let (status, body) = server.post("/v1/completions", &short);
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["usage"]["completion_tokens"], 5);
    // Had the first run on, the second would have waited for all 400 of its tokens.
    assert_eq!(
        server.settled_metric("tokenflow_requests_cancelled_total", 1.0),
        1.0
    );
    assert_eq!(
        server.settled_metric("tokenflow_sequences_in_flight", 0.0),
        0.0
    );
    let generated = server.metric("tokenflow_generated_tokens_total");
    assert!(
        generated < 400.0,
        "{generated} tokens: the abandoned stream ran on"
    );
}

#[test]
fn a_node_lost_mid_stream_costs_the_client_nothing() {
    // Node `b` holds the second stage alone and dies 3 s after the engine starts,
    // inside a stream of some seconds: the sequence restarts from its token log
    // on a replica re-planned onto `a`, and the client sees one unbroken stream.
    let cluster = slow_cluster();
    let model = tiny_path();
    let server = Server::start(
        &model,
        &[
            "--cluster",
            cluster.to_str().unwrap(),
            "--stages",
            "0..3,3..6",
            "--fail",
            "b@3s",
            "--suspect-ms",
            "300",
        ],
    );
    let prompt = vec![5u32, 6, 7];
    let body = json!({"model": TINY, "prompt": prompt, "max_tokens": 300, "temperature": 0,
        "ignore_eos": true, "stream": true, "return_token_ids": true});
    let chunks = server.stream("/v1/completions", &body);
    assert_eq!(chunks.last().map(String::as_str), Some("[DONE]"));
    assert!(
        chunks.iter().all(|c| !c.contains("\"error\"")),
        "an error event: {chunks:?}"
    );
    assert_eq!(chunk_ids(&chunks), plain_loop(&model, &prompt, 300));
    assert_eq!(
        server.settled_metric("tokenflow_requests_completed_total", 1.0),
        1.0
    );
    assert!(server.metric("tokenflow_failures_detected_total") >= 1.0);
    assert!(server.metric("tokenflow_restarts_total") >= 1.0);
}

fn error_of(status: u16, body: &Value, expected_status: u16, param: Option<&str>) {
    assert_eq!(status, expected_status, "{body}");
    let e = &body["error"];
    assert!(
        e["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    assert!(e["type"].is_string(), "{body}");
    if let Some(p) = param {
        assert_eq!(e["param"], p, "{body}");
    }
}

#[test]
fn bad_requests_get_openai_error_objects_and_overload_gets_429() {
    let cluster = slow_cluster();
    let server = Server::start(
        &tiny_path(),
        &[
            "--cluster",
            cluster.to_str().unwrap(),
            "--stages",
            "0..3,3..6",
            "--api-key",
            "sesame",
            "--queue-limit",
            "1",
        ],
    );
    let key = Some("sesame");
    let chat = |extra: Value| {
        let mut b = json!({"model": TINY, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2});
        for (k, v) in extra.as_object().unwrap() {
            b[k] = v.clone();
        }
        b
    };
    let (s, b) = server.post_with("/v1/chat/completions", &chat(json!({})), None);
    error_of(s, &b, 401, None);
    let (s, b) = server.post_with("/v1/chat/completions", &chat(json!({})), Some("wrong"));
    error_of(s, &b, 401, None);
    // Malformed JSON, sent by hand.
    let response = reqwest::blocking::Client::new()
        .post(format!("{}/v1/chat/completions", server.base))
        .bearer_auth("sesame")
        .body("{\"model\": ")
        .send()
        .unwrap();
    let s = response.status().as_u16();
    error_of(s, &response.json().unwrap(), 400, None);
    let (s, b) = server.post_with("/v1/chat/completions", &json!({"model": TINY}), key);
    error_of(s, &b, 400, None);
    assert!(
        b["error"]["message"].as_str().unwrap().contains("messages"),
        "{b}"
    );
    let (s, b) = server.post_with(
        "/v1/chat/completions",
        &chat(json!({"model": "gpt-9"})),
        key,
    );
    error_of(s, &b, 404, Some("model"));
    assert_eq!(b["error"]["code"], "model_not_found");
    let (s, b) = server.post_with("/v1/chat/completions", &chat(json!({"n": 2})), key);
    error_of(s, &b, 400, Some("n"));
    let (s, b) = server.post_with(
        "/v1/chat/completions",
        &chat(json!({"max_tokens": 100000})),
        key,
    );
    error_of(s, &b, 400, None);
    assert_eq!(b["error"]["code"], "context_length_exceeded");
    let long_prompt = "word ".repeat(2000);
    let (s, b) = server.post_with(
        "/v1/completions",
        &json!({"model": TINY, "prompt": long_prompt, "max_tokens": 1}),
        key,
    );
    error_of(s, &b, 400, None);
    assert_eq!(b["error"]["code"], "context_length_exceeded");
    let (s, b) = server.post_with(
        "/v1/chat/completions",
        &chat(json!({"temperature": -1})),
        key,
    );
    error_of(s, &b, 400, Some("temperature"));
    let (s, b) = server.post_with(
        "/v1/completions",
        &json!({"model": TINY, "prompt": [999999]}),
        key,
    );
    error_of(s, &b, 400, Some("prompt"));
    let (s, b) = server.post_with("/v1/nothing", &json!({}), key);
    error_of(s, &b, 404, None);

    // One long request fills the queue of one: the next is told to retry.
    let base = server.base.clone();
    let long = std::thread::spawn(move || {
        reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(120))
            .build()
            .unwrap()
            .post(format!("{base}/v1/completions"))
            .bearer_auth("sesame")
            .json(&json!({"model": TINY, "prompt": [4, 5], "max_tokens": 30, "ignore_eos": true}))
            .send()
            .unwrap()
            .json::<Value>()
            .unwrap()
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    while server.metric("tokenflow_http_requests_accepted_total") < 1.0 {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(10));
    }
    let response = reqwest::blocking::Client::new()
        .post(format!("{}/v1/completions", server.base))
        .bearer_auth("sesame")
        .json(&json!({"model": TINY, "prompt": [4], "max_tokens": 2}))
        .send()
        .unwrap();
    assert_eq!(response.status(), 429);
    assert_eq!(response.headers()["retry-after"], "1");
    let s = response.status().as_u16();
    error_of(s, &response.json().unwrap(), 429, None);
    // The accepted one is not lost.
    let done = long.join().unwrap();
    assert_eq!(done["usage"]["completion_tokens"], 30, "{done}");
}

#[test]
fn sigterm_lets_the_stream_in_flight_finish_flushes_the_log_and_exits_0() {
    let cluster = slow_cluster();
    let log =
        std::env::temp_dir().join(format!("tokenflow-serve-log-{}.jsonl", std::process::id()));
    let _ = std::fs::remove_file(&log);
    let mut server = Server::start(
        &tiny_path(),
        &[
            "--cluster",
            cluster.to_str().unwrap(),
            "--stages",
            "0..3,3..6",
            "--token-log",
            log.to_str().unwrap(),
        ],
    );
    let body = json!({"model": TINY, "prompt": [5, 6], "max_tokens": 20, "temperature": 0,
        "ignore_eos": true, "stream": true});
    let mut socket = open_stream(&server.addr, &body);
    server.sigterm();
    let mut rest = String::new();
    socket.read_to_string(&mut rest).unwrap();
    assert!(rest.contains("\"finish_reason\":\"length\""), "{rest}");
    assert!(rest.contains("data: [DONE]"), "{rest}");
    let status = server.wait(Duration::from_secs(60));
    assert!(status.success(), "{status}");
    // New connections are refused once it is gone.
    assert!(TcpStream::connect(&server.addr).is_err());
    let logged = LoggedRun::read(&log).unwrap();
    assert_eq!(logged.requests.len(), 1);
    let seq = logged.requests[0].id;
    assert_eq!(logged.tokens[&seq].len(), 20);
    assert!(matches!(logged.ended.get(&seq), Some((Some(_), None))));
    let _ = std::fs::remove_file(&log);
}

#[test]
fn a_killed_server_restarted_on_its_log_finishes_what_was_accepted_once() {
    let cluster = slow_cluster();
    let log =
        std::env::temp_dir().join(format!("tokenflow-serve-kill-{}.jsonl", std::process::id()));
    let _ = std::fs::remove_file(&log);
    let args = [
        "--cluster",
        cluster.to_str().unwrap(),
        "--stages",
        "0..3,3..6",
        "--token-log",
        log.to_str().unwrap(),
    ];
    let mut server = Server::start(&tiny_path(), &args);
    let body = json!({"model": TINY, "prompt": [5, 6, 7], "max_tokens": 40, "temperature": 0,
        "ignore_eos": true, "stream": true});
    let _socket = open_stream(&server.addr, &body);
    server.child.kill().unwrap(); // SIGKILL, mid-stream
    server.child.wait().unwrap();
    let before = LoggedRun::read(&log).unwrap();
    let seq = before.requests[0].id;
    assert!(before.tokens[&seq].len() < 40);
    assert!(!before.ended.contains_key(&seq));

    let restarted = Server::start(&tiny_path(), &args);
    let deadline = Instant::now() + Duration::from_secs(60);
    let after = loop {
        let logged = LoggedRun::read(&log).unwrap();
        if logged.ended.contains_key(&seq) {
            break logged;
        }
        assert!(Instant::now() < deadline, "the resumed request never ended");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(after.requests.len(), 1, "resumed, not submitted again");
    assert_eq!(after.tokens[&seq].len(), 40);
    assert_eq!(after.tokens[&seq], plain_loop(&tiny_path(), &[5, 6, 7], 40));
    let text = std::fs::read_to_string(&log).unwrap();
    let ends = text
        .lines()
        .filter(|l| l.starts_with("{\"End\"") && l.contains(&format!("\"seq\":{seq},")))
        .count();
    assert_eq!(ends, 1, "{text}");
    // A new request gets a fresh id.
    let (status, body) = restarted.post(
        "/v1/completions",
        &json!({"model": TINY, "prompt": [1, 2], "max_tokens": 2}),
    );
    assert_eq!(status, 200, "{body}");
    assert_ne!(body["id"], format!("cmpl-{seq}"));
    drop(restarted);
    let _ = std::fs::remove_file(&log);
}

#[test]
fn smollm2_says_paris() {
    let server = Server::start(&common::smollm2_path(), &[]);
    let (status, body) = server.post(
        "/v1/chat/completions",
        &json!({"model": TINY, "temperature": 0, "max_tokens": 24,
            "messages": [{"role": "user", "content": "What is the capital of France?"}]}),
    );
    assert_eq!(status, 200, "{body}");
    let answer = body["choices"][0]["message"]["content"].as_str().unwrap();
    assert!(answer.contains("Paris"), "{answer}");
    assert_eq!(body["choices"][0]["finish_reason"], "stop");
}

/// `tokenflow bench --url` with `extra`, its exit status and its stderr.
fn bench_url(url: &str, model: &Path, out: &Path, extra: &[&str]) -> (ExitStatus, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_tokenflow"))
        .args(["bench", "--url", url, "--model"])
        .arg(model)
        .args([
            "--requests",
            "6",
            "--concurrency",
            "3",
            "--prompt-len",
            "uniform:4:8",
            "--output-len",
            "fixed:5",
            "--out",
        ])
        .arg(out)
        .args(extra)
        .output()
        .expect("tokenflow bench runs");
    (
        output.status,
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn bench_url_loads_the_server_with_token_and_text_prompts() {
    let model = tiny_path();
    let server = Server::start(&model, &[]);
    for prompt_as in ["tokens", "text"] {
        let out = std::env::temp_dir().join(format!(
            "tokenflow-bench-url-{prompt_as}-{}",
            std::process::id()
        ));
        let (status, stderr) = bench_url(&server.base, &model, &out, &["--prompt-as", prompt_as]);
        assert!(status.success(), "{prompt_as}: {stderr}");
        let metrics: Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("metrics.json")).unwrap())
                .unwrap();
        assert_eq!(metrics["tokens"], 30, "{prompt_as}: {metrics}");
        assert_eq!(metrics["completed"], 6);
        for file in [
            "ttft.hgrm",
            "inter_token.hgrm",
            "latency.csv",
            "latency.svg",
        ] {
            assert!(out.join(file).exists(), "{prompt_as}: no {file}");
        }
    }
}

#[test]
fn bench_url_counts_streams_cut_short_as_failures() {
    // A server that ends every stream after one token, without a finish_reason
    // (as llama-cpp-python's does to a request interrupted by the next).
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for socket in listener.incoming() {
            let Ok(mut socket) = socket else { return };
            std::thread::spawn(move || {
                let mut request = Vec::new();
                let mut buf = [0u8; 4096];
                // Headers, then as many body bytes as Content-Length says.
                loop {
                    let n = socket.read(&mut buf).unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    request.extend_from_slice(&buf[..n]);
                    let text = String::from_utf8_lossy(&request);
                    if let Some(end) = text.find("\r\n\r\n") {
                        let length = text[..end]
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase()
                                    .strip_prefix("content-length:")
                                    .map(|v| v.trim().parse::<usize>().unwrap())
                            })
                            .unwrap_or(0);
                        if request.len() >= end + 4 + length {
                            break;
                        }
                    }
                }
                let chunk = r#"{"choices":[{"index":0,"text":"a","finish_reason":null}]}"#;
                let _ = write!(
                    socket,
                    "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\ndata: {chunk}\n\ndata: [DONE]\n\n"
                );
            });
        }
    });
    let out = std::env::temp_dir().join(format!("tokenflow-bench-cut-{}", std::process::id()));
    let (status, stderr) = bench_url(&url, &tiny_path(), &out, &["--model-name", "m"]);
    assert!(!status.success(), "every answer was cut short: {stderr}");
    assert!(
        stderr.contains("without a finish_reason after 1 of 5 tokens"),
        "{stderr}"
    );
}
