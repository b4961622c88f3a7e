//! Loading a model's stages with a progress bar.

use indicatif::{ProgressBar, ProgressStyle};
use std::ops::Range;
use tokenflow_operators::device::default_device;
use tokenflow_operators::{LlamaModel, StagePipeline};

/// Builds the stages of `model` for `splits`, showing a progress bar over the weight bytes.
pub fn load_pipeline(
    model: &LlamaModel,
    splits: &[Range<usize>],
    kv_capacity: u64,
) -> anyhow::Result<StagePipeline> {
    // A tied head reports the table it maps as well.
    let w = &model.config.weights;
    let bar = ProgressBar::new(w.total() + if w.tied { w.embed } else { 0 });
    bar.set_style(
        ProgressStyle::with_template("{msg:>24} [{bar:30}] {bytes}/{total_bytes} {elapsed}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar.set_message("loading weights");
    let pipeline = model.pipeline(
        splits,
        kv_capacity,
        &default_device(),
        &mut |name, bytes| {
            bar.set_message(name.to_string());
            bar.inc(bytes);
        },
    )?;
    bar.finish_and_clear();
    Ok(pipeline)
}
