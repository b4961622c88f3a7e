//! SmolLM2-135M against the independent numpy reference (`tests/reference/reference.py`):
//! tokenizer ids, logits teacher-forced on the reference tokens, and greedy tokens
//! for every split of the model into stages, with batching on and off.

mod common;

use common::{ReferencePrompt, reference_run, smollm2_path};
use std::ops::Range;
use tokenflow_engine::{DirectGenerator, Request, SchedulerConfig};
use tokenflow_operators::chat::render_user_prompt;
use tokenflow_operators::device::default_device;
use tokenflow_operators::llama::{Head, even_splits};
use tokenflow_operators::quant::Numerics;
use tokenflow_operators::{LlamaModel, SamplingParams, SeqChunk};

/// Largest difference allowed between our f32 logits and the numpy f32 reference's.
/// Both sum the same products in different orders over 30 blocks; logits are about 25 in size.
const LOGIT_TOLERANCE: f32 = 2e-3;

/// The model under `exact` numerics, which these f32 tolerances are for (the `q8`
/// numerics is checked against llama.cpp in `smollm2_llama_cpp.rs`).
fn model() -> LlamaModel {
    LlamaModel::open(smollm2_path())
        .expect("SmolLM2 opens")
        .with_numerics(Numerics::Exact)
}

#[test]
fn prompt_token_ids_equal_the_reference() {
    let model = model();
    for p in reference_run().prompts {
        let text = if p.chat {
            render_user_prompt(&p.prompt)
        } else {
            p.prompt.clone()
        };
        assert_eq!(text, p.text, "{}: template", p.name);
        assert_eq!(
            model.tokenizer.encode(&text).unwrap(),
            p.prompt_ids,
            "{}: ids",
            p.name
        );
    }
}

#[test]
fn tokenizer_cases_equal_the_reference() {
    #[derive(serde::Deserialize)]
    struct Case {
        text: String,
        ids: Vec<u32>,
    }
    let model = model();
    let cases: Vec<Case> = serde_json::from_str(&common::fixture("tokenizer_cases.json")).unwrap();
    assert!(cases.len() >= 20);
    for case in cases {
        assert_eq!(
            model.tokenizer.encode(&case.text).unwrap(),
            case.ids,
            "encoding {:?}",
            case.text
        );
        assert_eq!(
            model.tokenizer.decode(&case.ids).unwrap(),
            case.text,
            "decoding {:?}",
            case.text
        );
    }
}

#[test]
fn logits_match_the_reference_at_every_step() {
    let model = model();
    let mut pipeline = model
        .pipeline(
            &even_splits(30, 1),
            u64::MAX,
            &default_device(),
            &mut |_, _| {},
        )
        .unwrap();
    let mut worst = 0f32;
    for (seq, p) in reference_run().prompts.iter().enumerate() {
        let seq = seq as u64;
        let mut pos = 0;
        let mut input = p.prompt_ids.clone();
        for (step, top5) in p.top5.iter().enumerate() {
            let logits = pipeline
                .forward(&[SeqChunk::new(seq, pos, input.len())], &input)
                .unwrap();
            let row = &Head::to_rows(logits).unwrap()[0];
            for &(id, reference) in top5 {
                let diff = (row[id as usize] - reference).abs();
                worst = worst.max(diff);
                assert!(
                    diff <= LOGIT_TOLERANCE,
                    "{} step {step}: logit of {id} is {} vs {reference}",
                    p.name,
                    row[id as usize]
                );
            }
            pos += input.len();
            input = vec![p.tokens[step]];
        }
        pipeline.free(seq);
    }
    eprintln!("largest logit difference from the reference: {worst:e}");
}

/// Greedy tokens of every prompt through stages `splits`, all prompts batched together or one by one.
fn greedy(
    model: &LlamaModel,
    prompts: &[ReferencePrompt],
    splits: &[Range<usize>],
    batched: bool,
) -> Vec<Vec<u32>> {
    let pipeline = model
        .pipeline(splits, u64::MAX, &default_device(), &mut |_, _| {})
        .unwrap();
    let config = SchedulerConfig {
        max_running: Some(if batched { 64 } else { 1 }),
        ..SchedulerConfig::default()
    };
    let mut generator = DirectGenerator::new(pipeline, config);
    for (i, p) in prompts.iter().enumerate() {
        generator
            .submit(Request {
                id: i as u64,
                prompt: p.prompt_ids.clone(),
                max_tokens: p.tokens.len(),
                sampling: SamplingParams::greedy(),
                stop_tokens: vec![],
                stop_strings: vec![],
            })
            .unwrap();
    }
    let mut out = vec![Vec::new(); prompts.len()];
    for (seq, _, log) in generator.run_to_completion().unwrap() {
        out[seq as usize] = log.generated;
    }
    out
}

fn assert_matches_reference(prompts: &[ReferencePrompt], got: &[Vec<u32>], what: &str) {
    for (p, tokens) in prompts.iter().zip(got) {
        // Past a step where the reference's top two logits are within 0.01, f32
        // rounding may legitimately pick the other token.
        let exact = p.first_small_margin_step.unwrap_or(p.tokens.len());
        assert_eq!(
            &tokens[..exact],
            &p.tokens[..exact],
            "{what}: {} differs from the reference",
            p.name
        );
    }
}

#[test]
fn greedy_tokens_equal_the_reference_for_every_split() {
    let model = model();
    let prompts = reference_run().prompts;
    let whole = greedy(&model, &prompts, &even_splits(30, 1), false);
    assert_matches_reference(&prompts, &whole, "1 stage, unbatched");
    let splits: Vec<(&str, Vec<Range<usize>>)> = vec![
        ("1 stage", even_splits(30, 1)),
        ("2 stages", even_splits(30, 2)),
        ("3 stages", even_splits(30, 3)),
        ("5 stages", even_splits(30, 5)),
        ("30 stages", even_splits(30, 30)),
        ("uneven", vec![0..1, 1..13, 13..14, 14..29, 29..30]),
    ];
    for (name, split) in splits {
        let batched = greedy(&model, &prompts, &split, true);
        assert_eq!(
            batched, whole,
            "{name}, batched: tokens differ from the unsplit, unbatched model"
        );
    }
    let split_unbatched = greedy(&model, &prompts, &[0..7, 7..30], false);
    assert_eq!(split_unbatched, whole, "2 uneven stages, unbatched");
}
