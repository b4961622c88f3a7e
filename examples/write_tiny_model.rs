//! Writes the tiny Llama-shaped test model as a GGUF file and reads it back.
//!
//! `cargo run --release --example write_tiny_model -- [PATH]` (default: a file in the temp folder).

use tokenflow_operators::LlamaModel;
use tokenflow_operators::tiny::{TinyModelSpec, write_tiny_model};

fn main() -> anyhow::Result<()> {
    let path = std::env::args()
        .nth(1)
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("tokenflow-tiny.gguf"));
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    write_tiny_model(&TinyModelSpec::default(), &path)?;
    let model = LlamaModel::open(&path)?;
    println!(
        "wrote {} ({} bytes): {} blocks, hidden {}, vocab {}",
        path.display(),
        std::fs::metadata(&path)?.len(),
        model.config.n_layers,
        model.config.hidden,
        model.config.vocab_size
    );
    Ok(())
}
