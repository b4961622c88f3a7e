//! Decode and prefill speed of SmolLM2 on this machine, next to the bound set by
//! memory bandwidth (weight bytes read per decode step ÷ read bandwidth measured
//! in the same run). Run with `cargo bench --bench decode`; needs the model
//! (`scripts/fetch-model.sh`). Prints a Markdown table.

use std::time::Instant;
use tokenflow_operators::device::default_device;
use tokenflow_operators::llama::{Head, even_splits};
use tokenflow_operators::{LlamaModel, SeqChunk, StagePipeline};

const MODEL: &str = "models/SmolLM2-135M-Instruct.Q4_1.gguf";

/// Read bandwidth in bytes/s: the best of several passes summing a 1 GiB buffer on every core.
fn read_bandwidth() -> f64 {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let buffer: Vec<f32> = (0..(256usize << 20)).map(|i| (i % 7) as f32).collect();
    let bytes = (buffer.len() * 4) as f64;
    let mut best = 0f64;
    for _ in 0..5 {
        let start = Instant::now();
        let total: f32 = std::thread::scope(|s| {
            let handles: Vec<_> = buffer
                .chunks(buffer.len().div_ceil(threads))
                .map(|part| {
                    s.spawn(move || {
                        // Eight accumulators so the sum is bound by memory, not by one add chain.
                        let mut acc = [0f32; 8];
                        for block in part.chunks_exact(8) {
                            for (a, v) in acc.iter_mut().zip(block) {
                                *a += v;
                            }
                        }
                        acc.iter().sum::<f32>()
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).sum()
        });
        std::hint::black_box(total);
        best = best.max(bytes / start.elapsed().as_secs_f64());
    }
    best
}

/// Seconds per decode step for `batch` sequences that already hold `context` tokens.
fn decode_step_seconds(
    pipeline: &mut StagePipeline,
    batch: usize,
    context: usize,
    steps: usize,
) -> f64 {
    let seqs: Vec<u64> = (0..batch as u64).collect();
    for &s in &seqs {
        pipeline
            .forward(
                &[SeqChunk::new(s, 0, context)],
                &vec![100 + s as u32; context],
            )
            .unwrap();
    }
    let mut times = Vec::new();
    for step in 0..steps + 2 {
        let chunks: Vec<SeqChunk> = seqs
            .iter()
            .map(|&s| SeqChunk::new(s, context + step, 1))
            .collect();
        let start = Instant::now();
        let logits = pipeline.forward(&chunks, &vec![42; batch]).unwrap();
        Head::to_rows(logits).unwrap();
        if step >= 2 {
            times.push(start.elapsed().as_secs_f64());
        }
    }
    for &s in &seqs {
        pipeline.free(s);
    }
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}

fn main() {
    if !std::path::Path::new(MODEL).exists() {
        eprintln!("{MODEL} is missing: run scripts/fetch-model.sh first");
        std::process::exit(1);
    }
    let model = LlamaModel::open(MODEL).unwrap();
    let c = &model.config;
    let mut pipeline = model
        .pipeline(
            &even_splits(c.n_layers, 1),
            u64::MAX,
            &default_device(),
            &mut |_, _| {},
        )
        .unwrap();
    // A decode step reads every block's weights and the whole LM head (the tied embedding).
    let weight_bytes =
        c.block_params() * 4 * c.n_layers as u64 + (c.vocab_size * c.hidden * 4) as u64;
    let bandwidth = read_bandwidth();
    let bound = bandwidth / weight_bytes as f64;

    let prompt = 128;
    let start = Instant::now();
    let reps = 3;
    for r in 0..reps {
        let logits = pipeline
            .forward(&[SeqChunk::new(1000 + r, 0, prompt)], &vec![200; prompt])
            .unwrap();
        Head::to_rows(logits).unwrap();
        pipeline.free(1000 + r);
    }
    let prefill_tps = (prompt * reps as usize) as f64 / start.elapsed().as_secs_f64();

    println!(
        "read bandwidth: {:.1} GB/s; f32 weights read per decode step: {:.1} MB; bound: {:.1} tok/s\n",
        bandwidth / 1e9,
        weight_bytes as f64 / 1e6,
        bound
    );
    println!("| measurement | tokens/s | vs batch 1 | vs bandwidth bound |");
    println!("|---|---|---|---|");
    println!("| prefill, {prompt}-token prompt | {prefill_tps:.1} | | |");
    let mut batch1 = 0.0;
    for batch in [1usize, 4, 16, 32] {
        let seconds =
            decode_step_seconds(&mut pipeline, batch, 64, if batch == 1 { 30 } else { 10 });
        let tps = batch as f64 / seconds;
        if batch == 1 {
            batch1 = tps;
        }
        println!(
            "| decode, batch {batch}, context 64 | {tps:.1} | {:.2}× | {:.0}% |",
            tps / batch1,
            100.0 * tps / bound
        );
    }
}
