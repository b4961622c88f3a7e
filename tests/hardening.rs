//! The binary as a hostile or careless user drives it: every bad option is a
//! clear error naming the option, nothing hangs (every command here runs under
//! a deadline and is killed past it), a torn token log resumes, processes of
//! one cluster that disagree refuse to compute, and host files that name
//! processes that never start end in a bounded wait.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use tokenflow_operators::tiny::write_tiny_model;

fn exe() -> &'static str {
    env!("CARGO_BIN_EXE_tokenflow")
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tokenflow-hard-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn tiny(dir: &Path) -> String {
    let path = dir.join("tiny.gguf");
    write_tiny_model(&Default::default(), &path).unwrap();
    path.display().to_string()
}

/// Waits for `child` at most `limit`; a child still running then is killed and
/// the test fails: a hang is a bug.
fn wait_bounded(mut child: Child, limit: Duration, what: &str) -> Output {
    let start = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "{what}: still running after {limit:?} (killed); stderr:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn spawn(args: &[&str]) -> Child {
    Command::new(exe())
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn run_bounded(args: &[&str], limit: Duration) -> Output {
    wait_bounded(spawn(args), limit, &args.join(" "))
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Every nonsense value is refused, fast, with the option's name and no panic.
#[test]
fn nonsense_options_are_refused_by_name() {
    let dir = scratch("options");
    let model = tiny(&dir);
    let m = model.as_str();
    let a_dir = dir.to_str().unwrap();
    let file = dir.join("a-file");
    std::fs::write(&file, "x").unwrap();
    let a_file = file.to_str().unwrap();
    let huge = dir.join("huge.toml");
    std::fs::write(
        &huge,
        "name = \"huge\"\n[link_defaults]\nintra_site = { latency_ms = 1.0, bandwidth_gbps = 1.0 }\n[[nodes]]\nid = \"n\"\ngpu = \"RTX4090\"\ncount = 4000000000\nsite = \"a\"\nregion = \"r\"\n",
    )
    .unwrap();
    let a_huge_cluster = huge.to_str().unwrap();
    // `{m}` is the tiny model, `{dir}` a directory, `{file}` a plain file,
    // `{huge}` a cluster file of 4e9 nodes.
    let cases = [
        (
            "generate --model {m} --prompt x --temperature NaN",
            "--temperature",
        ),
        (
            "generate --model {m} --prompt x --temperature -1",
            "--temperature",
        ),
        (
            "generate --model {m} --prompt x --temperature inf",
            "--temperature",
        ),
        ("generate --model {m} --prompt x --top-p 0", "--top-p"),
        ("generate --model {m} --prompt x --top-p 1.5", "--top-p"),
        (
            "generate --model {m} --prompt x --repetition-penalty 0",
            "--repetition-penalty",
        ),
        (
            "generate --model {m} --prompt x --max-tokens 0",
            "--max-tokens",
        ),
        (
            "generate --model {m} --prompt x --stages 0..2,2..9",
            "past the model",
        ),
        (
            "generate --model {m} --prompt x --stages 0..3,2..6",
            "overlap",
        ),
        ("generate --model {dir} --prompt x", "is a directory"),
        ("run --model {m} --max-tokens 0", "--max-tokens"),
        ("run --model {m} --stages 0..2,2..9", "past the model"),
        (
            "run --model {m} --stages 0..2,3..6",
            "blocks 2..3 are in no stage",
        ),
        ("run --model {m} --heartbeat-ms 0", "--heartbeat-ms"),
        (
            "run --model {m} --heartbeat-ms 18446744073709551615",
            "--heartbeat-ms",
        ),
        ("run --model {m} --suspect-ms 10", "--suspect-ms"),
        ("run --model {m} --workers 0", "--workers"),
        ("run --model {m} --workers 100000", "--workers"),
        ("run --model {m} --stop=", "--stop"),
        ("run --model {m} --token-budget 0", "--token-budget"),
        (
            "run --model {m} --max-prefill-chunk 1024",
            "--max-prefill-chunk",
        ),
        ("run --model {m} --memory-fraction -1", "--memory-fraction"),
        ("run --model {m} --memory-fraction NaN", "--memory-fraction"),
        ("run --model {m} --memory-fraction 2", "--memory-fraction"),
        ("run --model {m} --fail local-0@1e30s", "--fail"),
        ("run --model {m} --fail local-0@5", "no unit"),
        ("run --model {m} --fail local-0@-1s", "--fail"),
        (
            "run --model {m} --churn mtbf=1ms,mttr=1ms,horizon=1000h",
            "outages",
        ),
        (
            "run --model {m} --churn mtbf=1s,mttr=1s,horizon=0s",
            "horizon",
        ),
        ("run --model {m} --churn mtbf=1e30s,mttr=1s", "--churn mtbf"),
        ("run --model {m} --churn mtbf=0s,mttr=1s", "positive"),
        (
            "run --model {m} --connect-timeout soon",
            "--connect-timeout",
        ),
        ("run --model {m} --tokens-json {dir}", "--tokens-json"),
        ("run --model {m} --token-log {dir}", "--token-log"),
        ("bench --model {m} --arrival poisson --rate NaN", "--rate"),
        ("bench --model {m} --arrival poisson --rate -2", "--rate"),
        ("bench --model {m} --requests 4000000000000", "--requests"),
        ("bench --model {m} --output-len fixed:0", "at least 1"),
        (
            "bench --model {m} --arrival closed --concurrency 0",
            "--concurrency",
        ),
        (
            "plan --cluster examples/clusters/hetero-4.toml --model {m} --milp-time-limit 1e30",
            "--milp-time-limit",
        ),
        (
            "plan --cluster examples/clusters/hetero-4.toml --model {m} --milp-time-limit -1",
            "--milp-time-limit",
        ),
        (
            "simulate --cluster examples/clusters/hetero-4.toml --model Llama-3-8B --duration 300",
            "no unit",
        ),
        (
            "simulate --cluster examples/clusters/hetero-4.toml --model Llama-3-8B --duration 1e30s",
            "--duration",
        ),
        (
            "simulate --cluster examples/clusters/hetero-4.toml --model Llama-3-8B --load poisson:rate=1e12",
            "would need",
        ),
        (
            "simulate --cluster examples/clusters/hetero-4.toml --model Llama-3-8B --churn exp:mtbf=1ms,mttr=1ms --duration 1000h",
            "would need",
        ),
        (
            "simulate --cluster examples/clusters/hetero-4.toml --model Llama-3-8B --milp-time-limit 1e30",
            "--milp-time-limit",
        ),
        (
            "simulate --cluster examples/clusters/hetero-4.toml --model Llama-3-8B --weight-source-gbps -1",
            "--weight-source-gbps",
        ),
        (
            "simulate --cluster examples/clusters/hetero-4.toml --model Llama-3-8B --token-budget 0",
            "--token-budget",
        ),
        (
            "simulate --cluster examples/clusters/hetero-4.toml --model Llama-3-8B --out {file}",
            "--out",
        ),
        ("plan --cluster {huge} --model Llama-3-8B", "would need"),
    ];
    for (line, expected) in cases {
        let args: Vec<&str> = line
            .split_whitespace()
            .map(|w| match w {
                "{m}" => m,
                "{dir}" => a_dir,
                "{file}" => a_file,
                "{huge}" => a_huge_cluster,
                w => w,
            })
            .collect();
        let out = run_bounded(&args, Duration::from_secs(60));
        let err = stderr(&out);
        assert!(!out.status.success(), "{args:?} succeeded:\n{err}");
        assert!(!err.contains("panicked"), "{args:?} panicked:\n{err}");
        assert!(
            err.contains(expected),
            "{args:?}: expected `{expected}` in:\n{err}"
        );
    }
}

/// Plans with nonsense weights or node names are refused before anything runs.
#[test]
fn bad_plans_are_refused() {
    let dir = scratch("plans");
    let model = tiny(&dir);
    let stage = |weight: &str, node: &str| {
        format!(
            r#"{{"start":0,"end":6,"embed":true,"head":true,"replicas":[{{"node":"{node}","weight":{weight}}}]}}"#
        )
    };
    let cases = [
        (
            stage("0.0", "local-0"),
            r#"["local-0"]"#,
            "at least one must be positive",
        ),
        (stage("-1.0", "local-0"), r#"["local-0"]"#, "routing weight"),
        (stage("1.0", "local-0"), r#"["local-0","ghost"]"#, "ghost"),
        (stage("1.0", "ghost"), r#"["ghost"]"#, "ghost"),
    ];
    for (stage, nodes, expected) in cases {
        let plan = dir.join("plan.json");
        std::fs::write(
            &plan,
            format!(r#"{{"strategy":"hand","model":"tiny","num_layers":6,"nodes":{nodes},"stages":[{stage}]}}"#),
        )
        .unwrap();
        let out = run_bounded(
            &["run", "--model", &model, "--plan", plan.to_str().unwrap()],
            Duration::from_secs(60),
        );
        let err = stderr(&out);
        assert!(!out.status.success(), "{nodes} {stage}: succeeded");
        assert!(err.contains(expected), "expected `{expected}`:\n{err}");
        assert!(
            err.contains("plan.json"),
            "the error names the file:\n{err}"
        );
    }
}

/// A `tokens.log` cut inside a record (a process killed mid-write) resumes,
/// and resumes again, with every token once and the answers of an uncut run.
#[test]
fn a_torn_token_log_resumes_twice() {
    let dir = scratch("torn");
    let model = tiny(&dir);
    let log = dir.join("tokens.log");
    let answers = |name: &str| dir.join(name);
    let base = [
        "run",
        "--model",
        &model,
        "--stages",
        "0..3,3..6",
        "--max-tokens",
        "24",
        "--ignore-eos",
        "--prompt",
        "the cat",
        "--prompt",
        "a dog",
        "--prompt",
        "once upon",
    ];
    let clean = answers("clean.json");
    let mut args: Vec<&str> = base.to_vec();
    args.extend([
        "--tokens-json",
        clean.to_str().unwrap(),
        "--token-log",
        log.to_str().unwrap(),
    ]);
    let out = run_bounded(&args, Duration::from_secs(120));
    assert!(out.status.success(), "{}", stderr(&out));
    let full = std::fs::read(&log).unwrap();
    // Cut in the middle of a record, about two thirds in.
    let mut cut = full.len() * 2 / 3;
    while full[cut] == b'\n' || full[cut - 1] == b'\n' {
        cut += 1;
    }
    std::fs::write(&log, &full[..cut]).unwrap();
    for attempt in 0..2 {
        let resumed = answers(&format!("resumed-{attempt}.json"));
        let mut args: Vec<&str> = base.to_vec();
        args.extend([
            "--tokens-json",
            resumed.to_str().unwrap(),
            "--token-log",
            log.to_str().unwrap(),
            "--resume",
        ]);
        let out = run_bounded(&args, Duration::from_secs(120));
        let err = stderr(&out);
        assert!(out.status.success(), "resume {attempt}: {err}");
        if attempt == 0 {
            assert!(
                err.contains("torn last record"),
                "the repair is reported:\n{err}"
            );
        }
        assert_eq!(
            std::fs::read_to_string(&resumed).unwrap(),
            std::fs::read_to_string(&clean).unwrap(),
            "resume {attempt}"
        );
    }
    let text = std::fs::read_to_string(&log).unwrap();
    let mut seen = std::collections::BTreeSet::new();
    for line in text.lines().filter(|l| l.starts_with("{\"Token\"")) {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let key = (
            v["Token"]["seq"].as_u64().unwrap(),
            v["Token"]["index"].as_u64().unwrap(),
        );
        assert!(seen.insert(key), "token {key:?} logged twice");
    }
    assert_eq!(seen.len(), 3 * 24);
}

fn hostfile(dir: &Path, lines: &[String]) -> PathBuf {
    let path = dir.join("hosts.txt");
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    path
}

/// A host file of `n` processes on free loopback ports, and the ports.
fn local_hostfile(dir: &Path, n: usize) -> (PathBuf, Vec<u16>) {
    let ports: Vec<u16> = (0..n).map(|_| free_port()).collect();
    let lines: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    (hostfile(dir, &lines), ports)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Garbage in a host file is named by line; a process that never starts ends
/// the wait of the others at the deadline, naming it.
#[test]
fn host_files_with_garbage_or_missing_processes_fail_in_bounded_time() {
    let dir = scratch("hosts");
    let model = tiny(&dir);
    for (line, expected) in [
        ("not an address", "line 2"),
        ("127.0.0.1:99999", "valid port"),
        ("127.0.0.1:", "valid port"),
        (":4000", "host name"),
    ] {
        let hosts = hostfile(
            &dir,
            &[format!("127.0.0.1:{}", free_port()), line.to_string()],
        );
        let out = run_bounded(
            &[
                "run",
                "--model",
                &model,
                "--hostfile",
                hosts.to_str().unwrap(),
                "--process",
                "0",
            ],
            Duration::from_secs(30),
        );
        let err = stderr(&out);
        assert!(!out.status.success());
        assert!(
            err.contains(expected) && err.contains("--hostfile"),
            "{line}: {err}"
        );
    }
    let hosts = hostfile(&dir, &[format!("127.0.0.1:{}", free_port())]);
    let out = run_bounded(
        &[
            "run",
            "--model",
            &model,
            "--hostfile",
            hosts.to_str().unwrap(),
            "--process",
            "3",
        ],
        Duration::from_secs(30),
    );
    assert!(stderr(&out).contains("--process 3"), "{}", stderr(&out));

    // Process 1 of two never starts: process 0 gives up at the deadline.
    let (hosts, _) = local_hostfile(&dir, 2);
    let start = Instant::now();
    let out = run_bounded(
        &[
            "run",
            "--model",
            &model,
            "--stages",
            "0..3,3..6",
            "--hostfile",
            hosts.to_str().unwrap(),
            "--process",
            "0",
            "--connect-timeout",
            "1s",
        ],
        Duration::from_secs(60),
    );
    let err = stderr(&out);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("process 1") && err.contains("did not connect"),
        "{err}"
    );
    assert!(start.elapsed() < Duration::from_secs(30));

    // Process 0 answers with another protocol (an HTTP-like server holds its port).
    let server = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = server.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for mut s in server.incoming().flatten() {
            use std::io::Write;
            let _ = s.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n");
        }
    });
    let hosts = hostfile(
        &dir,
        &[
            format!("127.0.0.1:{port}"),
            format!("127.0.0.1:{}", free_port()),
        ],
    );
    let out = run_bounded(
        &[
            "run",
            "--model",
            &model,
            "--stages",
            "0..3,3..6",
            "--hostfile",
            hosts.to_str().unwrap(),
            "--process",
            "1",
            "--connect-timeout",
            "5s",
        ],
        Duration::from_secs(60),
    );
    let err = stderr(&out);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("is not a tokenflow process") && !err.contains("panicked"),
        "{err}"
    );
}

/// Two processes of one cluster given different `--stages` refuse to compute,
/// each naming the plan as what differs.
#[test]
fn disagreeing_processes_refuse_before_any_token() {
    let dir = scratch("disagree");
    let model = tiny(&dir);
    let (hosts, _) = local_hostfile(&dir, 2);
    let h = hosts.to_str().unwrap();
    let p0 = spawn(&[
        "run",
        "--model",
        &model,
        "--stages",
        "0..3,3..6",
        "--hostfile",
        h,
        "--process",
        "0",
        "--connect-timeout",
        "20s",
    ]);
    let p1 = spawn(&[
        "run",
        "--model",
        &model,
        "--stages",
        "0..2,2..6",
        "--hostfile",
        h,
        "--process",
        "1",
        "--connect-timeout",
        "20s",
    ]);
    for (p, child) in [p0, p1].into_iter().enumerate() {
        let out = wait_bounded(child, Duration::from_secs(60), "disagreeing process");
        let err = stderr(&out);
        assert!(!out.status.success(), "process {p} succeeded:\n{err}");
        assert!(
            err.contains("another configuration") && err.contains("plan"),
            "process {p}:\n{err}"
        );
        assert!(!err.contains("panicked"), "process {p}:\n{err}");
    }
}

/// Churn with up and down times of a few milliseconds neither hangs nor
/// changes the answers: the run finishes with the tokens of a run without it.
#[test]
fn fast_churn_finishes() {
    let dir = scratch("churn");
    let model = tiny(&dir);
    let cluster = dir.join("c.toml");
    std::fs::write(
        &cluster,
        "name = \"c\"\n[link_defaults]\nintra_site = { latency_ms = 0.5, bandwidth_gbps = 10.0 }\n[[nodes]]\nid = \"n\"\ngpu = \"RTX4090\"\ncount = 4\nsite = \"a\"\nregion = \"r\"\n",
    )
    .unwrap();
    let c = cluster.to_str().unwrap();
    let clean = dir.join("clean.json");
    let churned = dir.join("churned.json");
    let base = [
        "run",
        "--model",
        &model,
        "--cluster",
        c,
        "--strategy",
        "petals",
        "--max-tokens",
        "16",
        "--ignore-eos",
        "--prompt",
        "the cat",
        "--prompt",
        "a dog",
        "--heartbeat-ms",
        "5",
        "--suspect-ms",
        "30",
    ];
    let mut args = base.to_vec();
    args.extend(["--tokens-json", clean.to_str().unwrap()]);
    let out = run_bounded(&args, Duration::from_secs(120));
    assert!(out.status.success(), "{}", stderr(&out));
    let mut args = base.to_vec();
    args.extend([
        "--tokens-json",
        churned.to_str().unwrap(),
        "--churn",
        "mtbf=40ms,mttr=5ms,horizon=1s,seed=3",
    ]);
    let out = run_bounded(&args, Duration::from_secs(120));
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert_eq!(
        std::fs::read_to_string(&churned).unwrap(),
        std::fs::read_to_string(&clean).unwrap(),
        "{err}"
    );
}

/// A failure scheduled after the run ended is legal but did nothing: warned.
#[test]
fn a_failure_after_the_run_is_warned_about() {
    let dir = scratch("late");
    let model = tiny(&dir);
    let out = run_bounded(
        &[
            "run",
            "--model",
            &model,
            "--max-tokens",
            "2",
            "--fail",
            "local-0@1000s",
        ],
        Duration::from_secs(60),
    );
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("warning") && err.contains("local-0@1000.000s"),
        "{err}"
    );
}

/// Speaks the mesh handshake as process 0 of a two-process host file: reads
/// process 1's handshake, answers with the same configuration (so process 1
/// accepts it as its peer), then does `then` with the socket, as a peer that
/// misbehaves only after the handshake would. Returns the port it listens on.
fn fake_process_zero(then: impl FnOnce(std::net::TcpStream) + Send + 'static) -> u16 {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        let mut head = [0u8; 20];
        stream.read_exact(&mut head).unwrap();
        let len = u32::from_le_bytes(head[16..20].try_into().unwrap()) as usize;
        let mut body = vec![0u8; len];
        stream.read_exact(&mut body).unwrap();
        let mut hello: serde_json::Value = serde_json::from_slice(&body).unwrap();
        hello["process"] = 0.into();
        let body = serde_json::to_vec(&hello).unwrap();
        let mut answer = head[..16].to_vec();
        answer.extend_from_slice(&(body.len() as u32).to_le_bytes());
        answer.extend_from_slice(&body);
        stream.write_all(&answer).unwrap();
        then(stream);
    });
    port
}

/// Timely's frame header: channel, source worker, target workers, length, seqno.
fn timely_header(channel: u64, source: u64, targets: (u64, u64), length: u64) -> Vec<u8> {
    [channel, source, targets.0, targets.1, length, 0]
        .iter()
        .flat_map(|f| f.to_be_bytes())
        .collect()
}

/// A peer that passes the handshake and then closes, or sends frames timely
/// cannot take (for workers this process does not hold, from workers the peer
/// does not hold, longer than any real message), ends the run at once with an
/// error that names the peer and what it did: no panic, no hang, no memory
/// taken for what the peer claims.
#[test]
fn a_peer_that_misbehaves_after_the_handshake_is_named() {
    use std::io::Write;
    let dir = scratch("misbehave");
    let model = tiny(&dir);
    type Misdeed = Box<dyn FnOnce(std::net::TcpStream) + Send>;
    let cases: Vec<(&str, Misdeed)> = vec![
        ("closed the connection", Box::new(drop)),
        (
            "sent a frame for workers 5..6, but this process holds workers 1..2",
            Box::new(|mut s| {
                let _ = s.write_all(&timely_header(0, 0, (5, 6), 8));
                std::thread::sleep(Duration::from_secs(5));
            }),
        ),
        (
            "sent a frame from worker 1, but it holds workers 0..1",
            Box::new(|mut s| {
                let _ = s.write_all(&timely_header(0, 1, (1, 2), 8));
                std::thread::sleep(Duration::from_secs(5));
            }),
        ),
        (
            "sent a frame of 1099511627776 bytes",
            Box::new(|mut s| {
                let _ = s.write_all(&timely_header(0, 0, (1, 2), 1 << 40));
                // Then keep streaming: nothing of it may be buffered.
                let chunk = vec![0u8; 1 << 20];
                while s.write_all(&chunk).is_ok() {}
            }),
        ),
    ];
    for (expected, misdeed) in cases {
        let port = fake_process_zero(misdeed);
        let hosts = hostfile(
            &dir,
            &[
                format!("127.0.0.1:{port}"),
                format!("127.0.0.1:{}", free_port()),
            ],
        );
        let out = run_bounded(
            &[
                "run",
                "--model",
                &model,
                "--stages",
                "0..3,3..6",
                "--hostfile",
                hosts.to_str().unwrap(),
                "--process",
                "1",
                "--connect-timeout",
                "20s",
            ],
            Duration::from_secs(60),
        );
        let err = stderr(&out);
        assert!(!out.status.success(), "{expected}: {err}");
        assert!(
            err.contains(&format!("process 0 at 127.0.0.1:{port} {expected}")),
            "{expected}: {err}"
        );
        assert!(!err.contains("panicked"), "{expected}: {err}");
    }
}

/// SIGKILL of one process in the middle of a run: the other stops within a
/// bounded time with an error naming the dead process (timely cannot lose a
/// member), and what the token log accepted before the death is kept: a
/// resume from it gives the answers of a run without the death, each token
/// logged once.
#[test]
fn a_killed_process_ends_the_run_naming_it_and_the_log_resumes() {
    let dir = scratch("killed-peer");
    let model = tiny(&dir);
    let prompts = [
        "the cat",
        "a dog",
        "once upon",
        "in the",
        "it was",
        "we are",
        "so far",
        "up high",
    ];
    let mut base: Vec<String> = [
        "run",
        "--model",
        &model,
        "--max-tokens",
        "400",
        "--ignore-eos",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    for p in prompts {
        base.extend(["--prompt".to_string(), p.to_string()]);
    }
    let args = |extra: &[&str]| -> Vec<String> {
        let mut a = base.clone();
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    };
    let clean = dir.join("clean.json");
    let clean_args = args(&["--tokens-json", clean.to_str().unwrap()]);
    let refs: Vec<&str> = clean_args.iter().map(String::as_str).collect();
    let out = run_bounded(&refs, Duration::from_secs(120));
    assert!(out.status.success(), "{}", stderr(&out));

    let (hosts, ports) = local_hostfile(&dir, 2);
    let p1_port = ports[1];
    let log = dir.join("tokens.log");
    let h = hosts.to_str().unwrap();
    let cluster = [
        "--stages",
        "0..3,3..6",
        "--hostfile",
        h,
        "--connect-timeout",
        "20s",
    ];
    let mut a0 = args(&cluster);
    a0.extend(["--process", "0", "--token-log", log.to_str().unwrap()].map(String::from));
    let mut a1 = args(&cluster);
    a1.extend(["--process", "1"].map(String::from));
    let p0 = spawn(&a0.iter().map(String::as_str).collect::<Vec<_>>());
    let mut p1 = spawn(&a1.iter().map(String::as_str).collect::<Vec<_>>());
    let tokens_logged = || {
        std::fs::read_to_string(&log)
            .map(|t| t.lines().filter(|l| l.starts_with("{\"Token\"")).count())
            .unwrap_or(0)
    };
    let start = Instant::now();
    while tokens_logged() < 20 {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the cluster logged no tokens"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    p1.kill().unwrap();
    let _ = p1.wait();
    let logged_at_kill = tokens_logged();
    eprintln!(
        "killed process 1 after {:?}, {logged_at_kill} tokens logged",
        start.elapsed()
    );
    assert!(
        logged_at_kill < prompts.len() * 400,
        "the run ended before the kill"
    );
    let out = wait_bounded(p0, Duration::from_secs(30), "the surviving process");
    let err = stderr(&out);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains(&format!("process 1 at 127.0.0.1:{p1_port}")) && err.contains("resume"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
    eprintln!("{err}");

    let resumed = dir.join("resumed.json");
    let resume_args = args(&[
        "--tokens-json",
        resumed.to_str().unwrap(),
        "--token-log",
        log.to_str().unwrap(),
        "--resume",
    ]);
    let refs: Vec<&str> = resume_args.iter().map(String::as_str).collect();
    let out = run_bounded(&refs, Duration::from_secs(120));
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        std::fs::read_to_string(&resumed).unwrap(),
        std::fs::read_to_string(&clean).unwrap()
    );
    let text = std::fs::read_to_string(&log).unwrap();
    let mut seen = std::collections::BTreeSet::new();
    for line in text.lines().filter(|l| l.starts_with("{\"Token\"")) {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let key = (
            v["Token"]["seq"].as_u64().unwrap(),
            v["Token"]["index"].as_u64().unwrap(),
        );
        assert!(seen.insert(key), "token {key:?} logged twice");
    }
    assert_eq!(seen.len(), prompts.len() * 400);
}

/// A process that stops (SIGSTOP: its sockets stay open, so no read ever
/// fails) is taken for hung once it has sent nothing for `--connect-timeout`:
/// the others end the run naming it (the third process too, though the link
/// it sees break is the one to the process that noticed first), instead of
/// waiting forever, and the stopped one, let go again, ends too.
#[test]
fn a_stopped_process_is_named_after_the_silence_limit() {
    let dir = scratch("stopped-peer");
    let model = tiny(&dir);
    let (hosts, ports) = local_hostfile(&dir, 3);
    let log = dir.join("tokens.log");
    let h = hosts.to_str().unwrap();
    let args = |process: &'static str| {
        let mut a = vec![
            "run",
            "--model",
            &model,
            "--max-tokens",
            "400",
            "--ignore-eos",
            "--prompt",
            "the cat",
            "--prompt",
            "a dog",
            "--stages",
            "0..2,2..4,4..6",
            "--hostfile",
            h,
            "--connect-timeout",
            "2s",
            "--process",
            process,
        ];
        if process == "0" {
            a.extend(["--token-log", log.to_str().unwrap()]);
        }
        a
    };
    let p0 = spawn(&args("0"));
    let p1 = spawn(&args("1"));
    let p2 = spawn(&args("2"));
    let start = Instant::now();
    while std::fs::read_to_string(&log).map_or(0, |t| t.lines().count()) < 10 {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "no tokens logged"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let signal = |sig: &str| {
        let status = Command::new("kill")
            .args([sig, &p1.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill {sig}");
    };
    signal("-STOP");
    let stopped = Instant::now();
    let expected = format!(
        "process 1 at 127.0.0.1:{} neither sent anything nor answered a probe for 2s",
        ports[1]
    );
    for (name, child) in [("process 0", p0), ("process 2", p2)] {
        let out = wait_bounded(child, Duration::from_secs(30), name);
        let err = stderr(&out);
        assert!(!out.status.success(), "{name}: {err}");
        assert!(err.contains(&expected), "{name}: {err}");
        assert!(!err.contains("panicked"), "{name}: {err}");
    }
    assert!(
        stopped.elapsed() >= Duration::from_secs(2),
        "named before its limit"
    );
    signal("-CONT");
    let out = wait_bounded(p1, Duration::from_secs(30), "the stopped process, let go");
    assert!(!out.status.success(), "{}", stderr(&out));
}
