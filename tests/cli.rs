//! The `tokenflow` binary end to end: generate on the tiny model, clear errors on bad
//! input, and the planner's comparison.

use std::process::Command;

fn tokenflow(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_tokenflow"))
        .args(args)
        .output()
        .expect("binary runs")
}

/// Asserts that the command succeeded, showing its stderr if not.
fn assert_success(out: &std::process::Output) {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn tiny_model_path() -> String {
    let path = std::env::temp_dir().join(format!("tokenflow-cli-tiny-{}.gguf", std::process::id()));
    tokenflow_operators::tiny::write_tiny_model(&Default::default(), &path).unwrap();
    path.display().to_string()
}

#[test]
fn generate_streams_text_and_reports_speed() {
    let model = tiny_model_path();
    let out = tokenflow(&[
        "generate",
        "--model",
        &model,
        "--prompt",
        "the cat",
        "--max-tokens",
        "6",
        "--stages",
        "0..2,2..6",
    ]);
    assert_success(&out);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("prefill:") && stderr.contains("decode:"),
        "{stderr}"
    );
}

#[test]
fn bad_inputs_are_reported_not_panicked() {
    let junk = std::env::temp_dir().join(format!("tokenflow-junk-{}.gguf", std::process::id()));
    std::fs::write(&junk, b"GGML this is not a model").unwrap();
    let out = tokenflow(&[
        "generate",
        "--model",
        junk.to_str().unwrap(),
        "--prompt",
        "x",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("not a GGUF file"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");

    let model = tiny_model_path();
    let out = tokenflow(&[
        "generate",
        "--model",
        &model,
        "--prompt",
        "x",
        "--stages",
        "0..2,3..6",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("--stages"), "{stderr}");
    assert!(stderr.contains("blocks 2..3 are in no stage"), "{stderr}");
}

#[test]
fn plan_compares_every_strategy() {
    let cluster = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/planner/data/scenarios/rack-4090.toml"
    );
    let out = tokenflow(&[
        "plan",
        "--cluster",
        cluster,
        "--model",
        "Llama-3-8B",
        "--compare",
    ]);
    assert_success(&out);
    let table = String::from_utf8_lossy(&out.stdout);
    for strategy in [
        "even",
        "memory-proportional",
        "petals",
        "chain-dp",
        "max-flow",
        "odp",
        "availability",
        "local-search",
    ] {
        assert!(table.contains(strategy), "{strategy} missing from\n{table}");
    }
    let out = tokenflow(&[
        "plan",
        "--cluster",
        "/nonexistent.toml",
        "--model",
        "Llama-3-8B",
    ]);
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn run_and_bench_write_latency_files_and_refuse_bad_plans() {
    let model = tiny_model_path();
    let dir = std::env::temp_dir().join(format!("tokenflow-cli-bench-{}", std::process::id()));
    let out = tokenflow(&[
        "bench",
        "--model",
        &model,
        "--stages",
        "0..3,3..6",
        "--requests",
        "6",
        "--concurrency",
        "3",
        "--prompt-len",
        "uniform:4:12",
        "--output-len",
        "fixed:5",
        "--out",
        dir.to_str().unwrap(),
    ]);
    assert_success(&out);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("| ttft | 6 |"), "{stdout}");
    for file in [
        "ttft.hgrm",
        "inter_token.hgrm",
        "e2e.hgrm",
        "latency.json",
        "latency.svg",
    ] {
        assert!(dir.join(file).exists(), "{file} missing");
    }
    let hgrm = std::fs::read_to_string(dir.join("ttft.hgrm")).unwrap();
    assert!(
        hgrm.contains("Percentile") && hgrm.contains("#[Mean"),
        "{hgrm}"
    );

    // A plan that leaves layers 3..6 uncovered is refused before anything runs.
    let plan = dir.join("bad-plan.json");
    std::fs::write(
        &plan,
        r#"{"strategy":"hand","model":"tiny","num_layers":6,"nodes":["local-0"],
            "stages":[{"start":0,"end":3,"embed":true,"head":false,
                       "replicas":[{"node":"local-0","weight":1.0}]}]}"#,
    )
    .unwrap();
    let out = tokenflow(&["run", "--model", &model, "--plan", plan.to_str().unwrap()]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("layer 3 is not covered"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");

    // Killing a node the plan does not use is refused with its name.
    let out = tokenflow(&["run", "--model", &model, "--fail", "ghost@1s"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("ghost"));
}
