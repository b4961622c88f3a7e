//! Three `tokenflow run` processes on 127.0.0.1 form one timely cluster (timely's
//! own TCP networking) and produce the tokens of a single process.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use tokenflow_operators::tiny::{TinyModelSpec, write_tiny_model};

fn tiny_path() -> PathBuf {
    let path =
        std::env::temp_dir().join(format!("tokenflow-proc-tiny-{}.gguf", std::process::id()));
    if !path.exists() {
        write_tiny_model(&TinyModelSpec::default(), &path).unwrap();
    }
    path
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn base_args(model: &Path, out: &Path) -> Vec<String> {
    let mut args: Vec<String> = [
        "run",
        "--model",
        model.to_str().unwrap(),
        "--stages",
        "0..2,2..3,3..6",
        "--max-tokens",
        "12",
        "--ignore-eos",
        "--tokens-json",
        out.to_str().unwrap(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    for p in [
        "the cat sat on the mat",
        "in the beginning",
        "hello, world! 123",
        "a",
    ] {
        args.push("--prompt".into());
        args.push(p.into());
    }
    args
}

#[test]
fn three_processes_give_the_tokens_of_one() {
    let exe = env!("CARGO_BIN_EXE_tokenflow");
    let model = tiny_path();
    let dir = std::env::temp_dir().join(format!("tokenflow-proc-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let single = dir.join("single.json");
    let status = Command::new(exe)
        .args(base_args(&model, &single))
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());

    let hosts = dir.join("hosts.txt");
    let text: String = (0..3)
        .map(|_| format!("127.0.0.1:{}\n", free_port()))
        .collect();
    std::fs::write(&hosts, text).unwrap();
    let multi = dir.join("multi.json");
    let children: Vec<_> = (0..3)
        .map(|i| {
            let mut args = base_args(&model, &multi);
            args.extend([
                "--hostfile".to_string(),
                hosts.to_str().unwrap().to_string(),
                "--process".to_string(),
                i.to_string(),
                "--workers".to_string(),
                "1".to_string(),
            ]);
            Command::new(exe)
                .args(args)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for (i, child) in children.into_iter().enumerate() {
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "process {i}: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if i == 0 {
            let stdout = String::from_utf8_lossy(&out.stdout);
            // Activations crossed processes: the link table counts them.
            assert!(stdout.contains("local-0 -> local-1"), "{stdout}");
        }
    }
    let a: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&single).unwrap()).unwrap();
    let b: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&multi).unwrap()).unwrap();
    assert_eq!(a.as_object().unwrap().len(), 4);
    assert_eq!(a, b);
}
