//! The whole stack on the tiny GGUF model the project writes itself: stage splits,
//! batching, KV accounting and capacity, and rebuilding a sequence from its tokens.

// A one-stage split is a list holding one layer range, not a range of ranges.
#![allow(clippy::single_range_in_vec_init)]

use std::ops::Range;
use std::path::PathBuf;
use tokenflow_engine::{DirectGenerator, Request, SchedulerConfig};
use tokenflow_operators::device::default_device;
use tokenflow_operators::kv_cache::KvError;
use tokenflow_operators::llama::{Head, even_splits};
use tokenflow_operators::tiny::{TinyModelSpec, write_tiny_model};
use tokenflow_operators::{LlamaModel, SamplingParams, SeqChunk, StageError, StagePipeline};

fn tiny_model() -> LlamaModel {
    let path: PathBuf =
        std::env::temp_dir().join(format!("tokenflow-tiny-{}.gguf", std::process::id()));
    if !path.exists() {
        write_tiny_model(&TinyModelSpec::default(), &path).unwrap();
    }
    LlamaModel::open(&path).unwrap()
}

fn pipeline(model: &LlamaModel, splits: &[Range<usize>], kv: u64) -> StagePipeline {
    model
        .pipeline(splits, kv, &default_device(), &mut |_, _| {})
        .unwrap()
}

fn prompt(model: &LlamaModel, i: usize) -> Vec<u32> {
    let texts = [
        "the cat sat on the mat",
        "in the beginning",
        "hello, world! 123",
        "a",
        "the other one: ünïcode 🦀",
    ];
    model.tokenizer.encode(texts[i % texts.len()]).unwrap()
}

fn generate(
    model: &LlamaModel,
    splits: &[Range<usize>],
    kv: u64,
    config: SchedulerConfig,
    requests: usize,
    max_tokens: usize,
) -> Vec<Vec<u32>> {
    let mut g = DirectGenerator::new(pipeline(model, splits, kv), config);
    for i in 0..requests {
        g.submit(Request {
            id: i as u64,
            prompt: prompt(model, i),
            max_tokens,
            sampling: SamplingParams::greedy(),
            stop_tokens: vec![],
            stop_strings: vec![],
        })
        .unwrap();
    }
    let mut out = vec![Vec::new(); requests];
    for (seq, _, log) in g.run_to_completion().unwrap() {
        out[seq as usize] = log.generated;
    }
    out
}

#[test]
fn tokenizer_uses_merges_and_round_trips() {
    let model = tiny_model();
    let ids = model.tokenizer.encode("the them").unwrap();
    assert_eq!(model.tokenizer.decode(&ids).unwrap(), "the them");
    assert!(ids.len() < "the them".len(), "merges apply: {ids:?}");
    let special = model.tokenizer.encode("<|im_start|>hi<|im_end|>").unwrap();
    assert_eq!(special.first(), Some(&1));
    assert_eq!(special.last(), Some(&2));
}

#[test]
fn every_split_gives_the_same_logits_and_tokens() {
    let model = tiny_model();
    let n = model.config.n_layers;
    let p = prompt(&model, 0);
    let chunk = [SeqChunk::new(0, 0, p.len())];
    let whole = Head::to_rows(
        pipeline(&model, &[0..n], u64::MAX)
            .forward(&chunk, &p)
            .unwrap(),
    )
    .unwrap();
    let reference = generate(&model, &[0..n], u64::MAX, SchedulerConfig::default(), 1, 24);
    for splits in [
        even_splits(n, 2),
        even_splits(n, 3),
        even_splits(n, n),
        vec![0..1, 1..5, 5..n],
    ] {
        let got = Head::to_rows(
            pipeline(&model, &splits, u64::MAX)
                .forward(&chunk, &p)
                .unwrap(),
        )
        .unwrap();
        assert_eq!(got, whole, "{splits:?}: logits");
        assert_eq!(
            generate(&model, &splits, u64::MAX, SchedulerConfig::default(), 1, 24),
            reference,
            "{splits:?}: tokens"
        );
    }
}

#[test]
fn results_do_not_depend_on_the_rest_of_the_batch() {
    let model = tiny_model();
    let n = model.config.n_layers;
    let prompts: Vec<Vec<u32>> = (0..4).map(|i| prompt(&model, i)).collect();
    // Alone: the logits after a prompt (and optionally one more token), nothing else in the batch.
    let alone = |p: &[u32], extra: Option<u32>| {
        let mut pl = pipeline(&model, &[0..n], u64::MAX);
        let prefill = Head::to_rows(pl.forward(&[SeqChunk::new(0, 0, p.len())], p).unwrap())
            .unwrap()
            .remove(0);
        match extra {
            None => prefill,
            Some(t) => Head::to_rows(pl.forward(&[SeqChunk::new(0, p.len(), 1)], &[t]).unwrap())
                .unwrap()
                .remove(0),
        }
    };
    // Mixed: sequences 0 and 1 prefilled first, then decodes of 0 and 1 batched with prefills of 2 and 3.
    let mut pl = pipeline(&model, &even_splits(n, 2), u64::MAX);
    let first: Vec<SeqChunk> = (0..2)
        .map(|i| SeqChunk::new(i, 0, prompts[i as usize].len()))
        .collect();
    pl.forward(&first, &[prompts[0].clone(), prompts[1].clone()].concat())
        .unwrap();
    let mixed_chunks = vec![
        SeqChunk::new(2, 0, prompts[2].len() - 1),
        SeqChunk::new(0, prompts[0].len(), 1),
        SeqChunk::new(3, 0, prompts[3].len()),
        SeqChunk::new(1, prompts[1].len(), 1),
    ];
    let tokens = [
        &prompts[2][..prompts[2].len() - 1],
        &[7],
        &prompts[3][..],
        &[8],
    ]
    .concat();
    let rows = Head::to_rows(pl.forward(&mixed_chunks, &tokens).unwrap()).unwrap();
    let last2 = *prompts[2].last().unwrap();
    let follow = vec![
        SeqChunk::new(2, prompts[2].len() - 1, 1),
        SeqChunk::new(3, prompts[3].len(), 1),
    ];
    let rows2 = Head::to_rows(pl.forward(&follow, &[last2, 10]).unwrap()).unwrap();
    let expected = [
        alone(&prompts[0], Some(7)),
        alone(&prompts[1], Some(8)),
        alone(&prompts[3], None),
        alone(&prompts[2], None),
        alone(&prompts[3], Some(10)),
    ];
    let mixed = [&rows[1], &rows[3], &rows[2], &rows2[0], &rows2[1]];
    for (i, (a, b)) in expected.iter().zip(mixed).enumerate() {
        let worst = a
            .iter()
            .zip(b.iter())
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max);
        assert!(worst <= 1e-4, "case {i}: logits differ by {worst}");
    }
    // And greedy tokens of 5 concurrent requests equal those of each alone.
    let batched = generate(&model, &[0..n], u64::MAX, SchedulerConfig::default(), 5, 16);
    let serial = generate(
        &model,
        &[0..n],
        u64::MAX,
        SchedulerConfig {
            max_running: Some(1),
            ..SchedulerConfig::default()
        },
        5,
        16,
    );
    assert_eq!(batched, serial);
    // Chunked prefill (tiny chunks and budget) changes nothing either.
    let chunked = generate(
        &model,
        &[0..n],
        u64::MAX,
        SchedulerConfig {
            token_budget: 5,
            max_prefill_chunk: 3,
            max_running: Some(64),
            ..SchedulerConfig::default()
        },
        5,
        16,
    );
    assert_eq!(chunked, serial);
}

#[test]
fn kv_bytes_are_counted_exactly_and_freed() {
    let model = tiny_model();
    let c = &model.config;
    let mut stage = model
        .blocks(1..4, u64::MAX, &default_device(), &mut |_, _| {})
        .unwrap();
    let per_token = 3 * 2 * c.kv_dim() as u64 * 4;
    let hidden = model
        .embed(&default_device(), &mut |_, _| {})
        .unwrap()
        .forward(&[SeqChunk::new(5, 0, 10)], &[3; 10])
        .unwrap();
    stage.forward(&[SeqChunk::new(5, 0, 10)], hidden).unwrap();
    assert_eq!(stage.kv().used_bytes(), 10 * per_token);
    assert_eq!(stage.free(5), 10 * per_token);
    assert_eq!(stage.kv().used_bytes(), 0);
    assert_eq!(
        stage.weight_bytes(),
        model
            .file
            .tensors()
            .iter()
            .filter(|t| ["blk.1.", "blk.2.", "blk.3."]
                .iter()
                .any(|p| t.name.starts_with(p)))
            .map(|t| t.size_bytes)
            .sum::<u64>(),
        "weights held only for the stage's own blocks, as the file's bytes"
    );
}

#[test]
fn kv_capacity_is_a_clear_error_and_requests_wait_for_room() {
    let model = tiny_model();
    let n = model.config.n_layers;
    let per_token = n as u64 * 2 * model.config.kv_dim() as u64 * 4;
    let mut small = pipeline(&model, &[0..n], 4 * per_token);
    let err = small
        .forward(&[SeqChunk::new(0, 0, 5)], &[3; 5])
        .unwrap_err();
    assert!(
        matches!(err, StageError::Kv(KvError::CapacityExceeded { seq: 0, needed, .. }) if needed == 5 * per_token),
        "{err}"
    );
    assert_eq!(
        small.blocks[0].kv().used_bytes(),
        0,
        "a refused batch changes nothing"
    );

    // Room for about one sequence: five requests still all complete, token-exact.
    let longest = (0..5).map(|i| prompt(&model, i).len()).max().unwrap() + 12;
    let unconstrained = generate(&model, &[0..n], u64::MAX, SchedulerConfig::default(), 5, 12);
    let constrained = generate(
        &model,
        &[0..n],
        longest as u64 * per_token,
        SchedulerConfig::default(),
        5,
        12,
    );
    assert_eq!(constrained, unconstrained);

    // A prompt that can never fit is refused; the others are not disturbed.
    let mut g = DirectGenerator::new(
        pipeline(&model, &[0..n], 40 * per_token),
        SchedulerConfig::default(),
    );
    g.submit(Request {
        id: 0,
        prompt: vec![3; 60],
        max_tokens: 4,
        sampling: SamplingParams::greedy(),
        stop_tokens: vec![],
        stop_strings: vec![],
    })
    .unwrap();
    g.submit(Request {
        id: 1,
        prompt: prompt(&model, 1),
        max_tokens: 4,
        sampling: SamplingParams::greedy(),
        stop_tokens: vec![],
        stop_strings: vec![],
    })
    .unwrap();
    let mut refused = 0;
    let mut finished = Vec::new();
    while g.has_work() {
        match g.step() {
            Ok(events) => finished.extend(events.into_iter().filter_map(|e| match e {
                tokenflow_engine::TokenEvent::Finished { seq, log, .. } => {
                    Some((seq, log.generated))
                }
                _ => None,
            })),
            Err(StageError::Kv(KvError::CapacityExceeded { .. })) => refused += 1,
            Err(e) => panic!("unexpected {e}"),
        }
    }
    assert_eq!(refused, 1);
    assert_eq!(finished, vec![(1, unconstrained[1][..4].to_vec())]);
}

#[test]
fn a_sequence_rebuilt_from_its_tokens_continues_identically() {
    let model = tiny_model();
    let n = model.config.n_layers;
    let sampling = SamplingParams {
        temperature: 0.8,
        top_p: 0.9,
        seed: 11,
        ..SamplingParams::greedy()
    };
    let run = |prompt: Vec<u32>, max_tokens: usize, splits: &[Range<usize>]| {
        let mut g = DirectGenerator::new(
            pipeline(&model, splits, u64::MAX),
            SchedulerConfig::default(),
        );
        g.submit(Request {
            id: 9,
            prompt,
            max_tokens,
            sampling: sampling.clone(),
            stop_tokens: vec![],
            stop_strings: vec![],
        })
        .unwrap();
        g.run_to_completion().unwrap().remove(0).2.generated
    };
    let p = prompt(&model, 2);
    let full = run(p.clone(), 20, &[0..n]);
    // Stop after 8 tokens, then rebuild elsewhere (another split) from prompt + generated tokens.
    let first = run(p.clone(), 8, &[0..n]);
    assert_eq!(first, full[..8]);
    let rest = run([p, first.clone()].concat(), 12, &even_splits(n, 3));
    assert_eq!(
        [first, rest].concat(),
        full,
        "seeded sampling continues identically after a rebuild"
    );
}

#[test]
fn bad_inputs_are_typed_errors() {
    let model = tiny_model();
    let n = model.config.n_layers;
    let device = default_device();
    assert!(matches!(
        model.blocks(3..3, 0, &device, &mut |_, _| {}),
        Err(StageError::BadLayerRange { .. })
    ));
    assert!(matches!(
        model.blocks(0..n + 1, 0, &device, &mut |_, _| {}),
        Err(StageError::BadLayerRange { .. })
    ));
    assert!(matches!(
        model.pipeline(&[0..2, 3..n], 0, &device, &mut |_, _| {}),
        Err(StageError::BadLayerRange { .. })
    ));
    let mut pl = pipeline(&model, &[0..n], u64::MAX);
    let vocab = model.config.vocab_size as u32;
    assert!(matches!(
        pl.forward(&[SeqChunk::new(0, 0, 1)], &[vocab]),
        Err(StageError::TokenOutOfVocab { .. })
    ));
    assert!(matches!(
        pl.forward(&[SeqChunk::new(0, 4, 1)], &[1]),
        Err(StageError::Kv(KvError::PositionMismatch {
            start: 4,
            held: 0,
            ..
        }))
    ));
    assert!(matches!(
        pl.forward(&[SeqChunk::new(0, 0, 2)], &[1]),
        Err(StageError::BatchMismatch(_))
    ));
    let twice = [SeqChunk::new(3, 0, 1), SeqChunk::new(3, 1, 1)];
    assert!(matches!(
        pl.forward(&twice, &[1, 2]),
        Err(StageError::BatchMismatch(_))
    ));
}

#[test]
fn requests_that_can_never_run_are_refused_at_submission() {
    let model = tiny_model();
    let n = model.config.n_layers;
    let context = model.config.context_length;
    let mut g = DirectGenerator::new(
        pipeline(&model, &[0..n], u64::MAX),
        SchedulerConfig::default(),
    );
    let request = |id: u64, prompt: Vec<u32>, max_tokens: usize| Request {
        id,
        prompt,
        max_tokens,
        sampling: SamplingParams::greedy(),
        stop_tokens: vec![],
        stop_strings: vec![],
    };
    assert!(matches!(
        g.submit(request(0, vec![], 4)),
        Err(StageError::EmptyPrompt { seq: 0 })
    ));
    let vocab = model.config.vocab_size as u32;
    assert!(matches!(
        g.submit(request(1, vec![vocab], 4)),
        Err(StageError::TokenOutOfVocab { .. })
    ));
    assert!(matches!(
        g.submit(request(2, vec![3; context], 4)),
        Err(StageError::ContextExceeded { .. })
    ));
    // A request asking for more tokens than the context holds stops at the context.
    g.submit(request(3, vec![3; context - 5], 100)).unwrap();
    let done = g.run_to_completion().unwrap();
    assert_eq!(done.len(), 1);
    assert_eq!(done[0].2.len(), context);
}
