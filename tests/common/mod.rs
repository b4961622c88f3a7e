//! Helpers shared by the integration tests.
#![allow(dead_code)]

use serde::Deserialize;
use std::path::PathBuf;

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
