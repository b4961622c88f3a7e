//! `tokenflow profile`: the model profile the planner consumes, measured here.

use anyhow::Context;
use clap::Args;
use std::path::PathBuf;
use tokenflow_operators::LlamaModel;
use tokenflow_operators::device::{default_device, device_name};
use tokenflow_operators::profile::{StageMeasurement, measure_blocks, static_profile};

/// Arguments of `tokenflow profile`.
#[derive(Debug, Args)]
pub struct ProfileArgs {
    /// GGUF model file.
    #[arg(long, default_value = "models/SmolLM2-135M-Instruct.Q4_1.gguf")]
    pub model: PathBuf,
    /// Blocks in the measured stage.
    #[arg(long, default_value_t = 5)]
    pub layers: usize,
    /// Decode batch sizes to measure.
    #[arg(long, value_delimiter = ',', default_value = "1,4,16")]
    pub batches: Vec<usize>,
    /// Write the JSON here instead of standard output.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// Runs `tokenflow profile`.
pub fn run(args: ProfileArgs) -> anyhow::Result<()> {
    let model = LlamaModel::open(&args.model)?;
    let name = model.name().to_string();
    let mut profile = static_profile(&name, &model.config);
    let layers = args.layers.clamp(1, model.config.n_layers);
    let spec = StageMeasurement {
        layers,
        prompt: 64,
        context: 64,
        batches: args.batches.clone(),
        repeats: 5,
    };
    profile.measured = measure_blocks(&model, device_name(), &default_device(), &spec)?;
    let json = serde_json::to_string_pretty(&profile)?;
    match args.out {
        Some(path) => {
            std::fs::write(&path, json).with_context(|| format!("writing {}", path.display()))?
        }
        None => println!("{json}"),
    }
    Ok(())
}
