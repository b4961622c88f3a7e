//! Decode and prefill speed of SmolLM2 on this machine, for both numerics on 1
//! and 2 threads, next to the bound set by memory bandwidth (the file's weight
//! bytes, read once per decode step, ÷ read bandwidth measured in the same run).
//! Run with `cargo bench --bench decode`; needs the model (`scripts/fetch-model.sh`).
//! Prints a Markdown table.

use std::time::Instant;
use tokenflow_operators::device::default_device;
use tokenflow_operators::llama::{Head, even_splits};
use tokenflow_operators::quant::{KernelSet, Numerics};
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

/// One row of the table: tokens/s of `label` under `numerics` on `threads` threads.
struct Line {
    numerics: Numerics,
    threads: usize,
    label: String,
    tps: f64,
    batch1: Option<f64>,
    bound: Option<f64>,
}

fn measure(model: &LlamaModel, numerics: Numerics, threads: usize, bound: f64) -> Vec<Line> {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap();
    let model = model.clone().with_numerics(numerics);
    let c = &model.config;
    let mut pipeline = model
        .pipeline(
            &even_splits(c.n_layers, 1),
            u64::MAX,
            &default_device(),
            &mut |_, _| {},
        )
        .unwrap();
    pool.install(|| {
        let mut lines = Vec::new();
        let line = |label: String, tps: f64, batch1: Option<f64>, bound: Option<f64>| Line {
            numerics,
            threads,
            label,
            tps,
            batch1,
            bound,
        };
        let prompt = 512;
        let reps = 2;
        let start = Instant::now();
        for r in 0..reps {
            let tokens: Vec<u32> = (0..prompt as u32).map(|i| 200 + i % 1000).collect();
            let logits = pipeline
                .forward(&[SeqChunk::new(1000 + r, 0, prompt)], &tokens)
                .unwrap();
            Head::to_rows(logits).unwrap();
            pipeline.free(1000 + r);
        }
        let prefill = (prompt * reps as usize) as f64 / start.elapsed().as_secs_f64();
        lines.push(line(
            format!("prefill, {prompt}-token prompt"),
            prefill,
            None,
            None,
        ));
        let mut batch1 = 0.0;
        for batch in [1usize, 4, 16, 32, 64] {
            let steps = if batch == 1 { 40 } else { 10 };
            let tps = batch as f64 / decode_step_seconds(&mut pipeline, batch, 64, steps);
            if batch == 1 {
                batch1 = tps;
            }
            lines.push(line(
                format!("decode, batch {batch}, context 64"),
                tps,
                Some(tps / batch1),
                Some(tps / bound),
            ));
        }
        lines
    })
}

fn main() {
    if !std::path::Path::new(MODEL).exists() {
        eprintln!("{MODEL} is missing: run scripts/fetch-model.sh first");
        std::process::exit(1);
    }
    let model = LlamaModel::open(MODEL).unwrap();
    // A decode step reads every weight once: the blocks, and the LM head (the tied
    // embedding table), as the file stores them.
    let weight_bytes = model.weight_bytes();
    let bandwidth = read_bandwidth();
    let bound = bandwidth / weight_bytes as f64;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut threads = vec![1];
    if cores > 1 {
        threads.push(cores.min(2));
    }
    println!(
        "read bandwidth: {:.1} GB/s; weight bytes read per decode step: {:.1} MB; bound: {:.1} tok/s; kernels: {}\n",
        bandwidth / 1e9,
        weight_bytes as f64 / 1e6,
        bound,
        KernelSet::detect().name()
    );
    println!("| numerics | threads | measurement | tokens/s | vs batch 1 | vs bandwidth bound |");
    println!("|---|---|---|---|---|---|");
    for numerics in Numerics::ALL {
        for &t in &threads {
            for l in measure(&model, numerics, t, bound) {
                let ratio = l.batch1.map_or(String::new(), |r| format!("{r:.2}×"));
                let share = l
                    .bound
                    .map_or(String::new(), |b| format!("{:.0}%", 100.0 * b));
                println!(
                    "| {} | {} | {} | {:.1} | {ratio} | {share} |",
                    l.numerics, l.threads, l.label, l.tps
                );
            }
        }
    }
}
