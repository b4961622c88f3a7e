//! Helpers shared by the integration tests.
#![allow(dead_code)]

use serde::Deserialize;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Path of the real SmolLM2 file, which `scripts/fetch-model.sh` downloads.
pub fn smollm2_path() -> PathBuf {
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(
        path.exists(),
        "{} is missing: run scripts/fetch-model.sh (the README's test command does)",
        path.display()
    );
    path
}

/// A fixture file under `tests/fixtures`.
pub fn fixture(name: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// One prompt of `smollm2_greedy.json`, written by `tests/reference/reference.py`.
#[derive(Debug, Deserialize)]
pub struct ReferencePrompt {
    pub name: String,
    pub chat: bool,
    pub prompt: String,
    pub text: String,
    pub prompt_ids: Vec<u32>,
    pub tokens: Vec<u32>,
    pub top5: Vec<Vec<(u32, f32)>>,
    pub margins: Vec<f32>,
    pub first_small_margin_step: Option<usize>,
}

/// The greedy reference fixture.
#[derive(Debug, Deserialize)]
pub struct ReferenceRun {
    pub model_sha256: String,
    pub prompts: Vec<ReferencePrompt>,
}

/// Loads `smollm2_greedy.json`.
pub fn reference_run() -> ReferenceRun {
    serde_json::from_str(&fixture("smollm2_greedy.json")).expect("valid fixture")
}

/// Starts `command` with its stdout piped and waits, at most `timeout`, for
/// the line where it says `listening on ADDR` (as `tokenflow serve`, `node`
/// and `serve --coordinator` do); returns the child and ADDR without
/// `http://`. Later stdout lines are read and dropped, so the child never
/// blocks on a full pipe.
pub fn spawn_listening(command: &mut Command, timeout: Duration) -> (Child, String) {
    let mut child = command
        .stdout(Stdio::piped())
        .spawn()
        .expect("the process starts");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + timeout;
    let addr = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = rx
            .recv_timeout(left)
            .expect("the process prints its address");
        if let Some(rest) = line.split("listening on ").nth(1) {
            let a = rest.split_whitespace().next().unwrap();
            break a.trim_start_matches("http://").to_string();
        }
    };
    (child, addr)
}
