//! A supervised 3-process timely cluster survives a SIGKILL mid-generation:
//! the supervisor restarts the cluster without the dead process, resumes every
//! unfinished request from the durable token log, and every request ends with
//! the tokens of a run without failures, each once.

use std::path::PathBuf;
use std::process::Command;

use tokenflow_operators::tiny::{TinyModelSpec, write_tiny_model};

fn tiny_path() -> PathBuf {
    let path = std::env::temp_dir().join(format!("tokenflow-sup-tiny-{}.gguf", std::process::id()));
    if !path.exists() {
        write_tiny_model(&TinyModelSpec::default(), &path).unwrap();
    }
    path
}

const PROMPTS: [&str; 4] = ["the cat sat", "in the beginning", "hello, world", "a"];

fn run_args(cluster: &std::path::Path) -> Vec<String> {
    let mut args: Vec<String> = [
        "--cluster",
        cluster.to_str().unwrap(),
        "--max-tokens",
        "100",
        "--ignore-eos",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    for p in PROMPTS {
        args.push("--prompt".into());
        args.push(p.into());
    }
    args
}

#[test]
fn a_killed_process_costs_a_restart_not_an_answer() {
    let exe = env!("CARGO_BIN_EXE_tokenflow");
    let dir = std::env::temp_dir().join(format!("tokenflow-sup-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    // Three nodes 5 ms apart, so generation lasts long enough to be interrupted.
    let cluster = dir.join("c3.toml");
    std::fs::write(
        &cluster,
        "name = \"c3\"\n[link_defaults]\nintra_site = { latency_ms = 5.0, bandwidth_gbps = 1.0 }\n[[nodes]]\nid = \"n\"\ngpu = \"RTX4090\"\ncount = 3\nsite = \"a\"\nregion = \"r\"\n",
    )
    .unwrap();
    let model = tiny_path();
    let baseline = dir.join("baseline.json");
    let status = Command::new(exe)
        .args([
            "run",
            "--model",
            model.to_str().unwrap(),
            "--stages",
            "0..2,2..4,4..6",
        ])
        .args(run_args(&cluster))
        .args(["--tokens-json", baseline.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );

    let log_dir = dir.join("supervised");
    let out = Command::new(exe)
        .args([
            "cluster",
            "up",
            "--processes",
            "3",
            "--model",
            model.to_str().unwrap(),
        ])
        .args([
            "--log-dir",
            log_dir.to_str().unwrap(),
            "--kill",
            "1@80tok",
            "--",
        ])
        .args(run_args(&cluster))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stderr.contains("SIGKILL"), "{stderr}");
    assert!(stdout.contains("after 1 restart(s)"), "{stdout}");
    // The kill struck mid-generation: some requests were unfinished and resumed.
    let unfinished: usize = stderr
        .lines()
        .find_map(|l| l.split("; ").nth(1)?.split(" of ").next()?.parse().ok())
        .unwrap_or_else(|| panic!("no restart line in {stderr}"));
    assert!(unfinished > 0, "{stderr}");
    let want: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&baseline).unwrap()).unwrap();
    let got: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(log_dir.join("answers.json")).unwrap())
            .unwrap();
    assert_eq!(want.as_object().unwrap().len(), PROMPTS.len());
    assert_eq!(got, want);
    // Each token is in the log once: the resumed run appended only what was missing.
    let log = std::fs::read_to_string(log_dir.join("tokens.log")).unwrap();
    let tokens = log.lines().filter(|l| l.starts_with("{\"Token\"")).count();
    assert_eq!(tokens, 100 * PROMPTS.len());
}

/// Processes whose command line mentions `needle` (Linux /proc).
fn processes_mentioning(needle: &str) -> Vec<u32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if let Ok(cmd) = std::fs::read(entry.path().join("cmdline")) {
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            if cmd.contains(needle) && pid != std::process::id() {
                found.push(pid);
            }
        }
    }
    found
}

/// SIGKILL to the supervisor itself takes its children down with it (no
/// orphans writing the log), and `cluster up --resume` on the same log dir
/// finishes the run with the answers of a run without failures, each token once.
#[test]
#[cfg(target_os = "linux")]
fn a_killed_supervisor_leaves_no_orphans_and_resumes() {
    let exe = env!("CARGO_BIN_EXE_tokenflow");
    let dir = std::env::temp_dir().join(format!("tokenflow-sup-kill-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let cluster = dir.join("c3.toml");
    std::fs::write(
        &cluster,
        "name = \"c3\"\n[link_defaults]\nintra_site = { latency_ms = 5.0, bandwidth_gbps = 1.0 }\n[[nodes]]\nid = \"n\"\ngpu = \"RTX4090\"\ncount = 3\nsite = \"a\"\nregion = \"r\"\n",
    )
    .unwrap();
    let model = tiny_path();
    let baseline = dir.join("baseline.json");
    let status = Command::new(exe)
        .args([
            "run",
            "--model",
            model.to_str().unwrap(),
            "--stages",
            "0..2,2..4,4..6",
        ])
        .args(run_args(&cluster))
        .args(["--tokens-json", baseline.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );

    let log_dir = dir.join("supervised");
    let up = |resume: bool| {
        let mut cmd = Command::new(exe);
        cmd.args([
            "cluster",
            "up",
            "--processes",
            "3",
            "--model",
            model.to_str().unwrap(),
        ])
        .args(["--log-dir", log_dir.to_str().unwrap()]);
        if resume {
            cmd.arg("--resume");
        }
        cmd.arg("--").args(run_args(&cluster));
        cmd
    };
    let mut supervisor = up(false)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let log = log_dir.join("tokens.log");
    let start = std::time::Instant::now();
    loop {
        let tokens = std::fs::read_to_string(&log).map_or(0, |t| {
            t.lines().filter(|l| l.starts_with("{\"Token\"")).count()
        });
        if tokens >= 60 {
            break;
        }
        assert!(
            supervisor.try_wait().unwrap().is_none(),
            "the run ended before the kill"
        );
        assert!(start.elapsed().as_secs() < 120, "no tokens after 120 s");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let needle = log_dir.to_str().unwrap().to_string();
    let children = processes_mentioning(&format!("{needle}/tokens.log"));
    assert!(!children.is_empty(), "no child process found");
    supervisor.kill().unwrap(); // SIGKILL
    supervisor.wait().unwrap();
    let gone = std::time::Instant::now();
    while !processes_mentioning(&format!("{needle}/tokens.log")).is_empty() {
        assert!(
            gone.elapsed().as_secs() < 10,
            "orphans still running: {:?}",
            processes_mentioning(&needle)
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }

    // Without --resume the existing log is refused; with it, the run finishes.
    let refused = up(false).output().unwrap();
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("--resume"));
    let out = up(true).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    let want: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&baseline).unwrap()).unwrap();
    let got: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(log_dir.join("answers.json")).unwrap())
            .unwrap();
    assert_eq!(got, want);
    let text = std::fs::read_to_string(&log).unwrap();
    let tokens = text.lines().filter(|l| l.starts_with("{\"Token\"")).count();
    assert_eq!(tokens, 100 * PROMPTS.len(), "each token once");
}
