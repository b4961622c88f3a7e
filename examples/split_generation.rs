//! The library API: open a model, build it as three stage operators, and generate
//! for several requests at once with continuous batching.
//!
//! Runs on the tiny model so it needs no download (its weights are random, so its
//! tokens are noise; point `LlamaModel::open` at SmolLM2 for text):
//! `cargo run --release --example split_generation`.

use tokenflow_engine::{DirectGenerator, Request, SchedulerConfig};
use tokenflow_operators::device::default_device;
use tokenflow_operators::llama::even_splits;
use tokenflow_operators::tiny::{TinyModelSpec, write_tiny_model};
use tokenflow_operators::{LlamaModel, SamplingParams};

fn main() -> anyhow::Result<()> {
    let path = std::env::temp_dir().join("tokenflow-example-tiny.gguf");
    write_tiny_model(&TinyModelSpec::default(), &path)?;
    let model = LlamaModel::open(&path)?;

    // Three `Blocks` stages, each loading only its own layers, plus embed and head.
    let splits = even_splits(model.config.n_layers, 3);
    let pipeline = model.pipeline(&splits, 64 << 20, &default_device(), &mut |_, _| {})?;
    let mut generator = DirectGenerator::new(pipeline, SchedulerConfig::default());
    for (id, text) in ["the cat", "in the", "hello"].into_iter().enumerate() {
        generator.submit(Request {
            id: id as u64,
            prompt: model.tokenizer.encode(text)?,
            max_tokens: 8,
            sampling: SamplingParams {
                temperature: 0.7,
                seed: id as u64,
                ..SamplingParams::greedy()
            },
            stop_tokens: vec![model.tokenizer.eos_id()],
            stop_strings: vec![],
        })?;
    }
    for (id, reason, log) in generator.run_to_completion()? {
        println!(
            "request {id} ({reason:?}): prompt {:?} + tokens {:?}",
            model.tokenizer.decode(&log.prompt)?,
            log.generated
        );
    }
    Ok(())
}
