//! A custom operator in the inference DAG: the engine's loop is built inside
//! our own `timely::execute`, and its event stream feeds a detokenizer that
//! streams text per request and a tee that logs each completion.
//!
//! Uses SmolLM2 when `models/` has it (`scripts/fetch-model.sh`), else the tiny
//! model (random weights: its text is noise).
//! `cargo run --release --example pipeline`

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use tokenflow_engine::Request;
use tokenflow_engine::dataflow::{
    ClientMsg, EngineEvent, EngineOptions, InferenceDataflow, Submission,
};
use tokenflow_engine::timely;
use tokenflow_engine::timely::dataflow::channels::pact::Pipeline;
use tokenflow_engine::timely::dataflow::operators::generic::Operator;
use tokenflow_engine::timely::dataflow::operators::{Input, Inspect, Probe};
use tokenflow_engine::timely::dataflow::{InputHandle, StreamVec};
use tokenflow_operators::LlamaModel;
use tokenflow_operators::tiny::{TinyModelSpec, write_tiny_model};
use tokenflow_operators::tokenizer::TokenTextStream;
use tokenflow_planner::{Cluster, Plan};

fn model_path() -> anyhow::Result<PathBuf> {
    let smollm2 =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/SmolLM2-135M-Instruct.Q4_1.gguf");
    if smollm2.exists() {
        return Ok(smollm2);
    }
    let tiny = std::env::temp_dir().join("tokenflow-example-pipeline-tiny.gguf");
    write_tiny_model(&TinyModelSpec::default(), &tiny)?;
    Ok(tiny)
}

fn main() -> anyhow::Result<()> {
    let model = Arc::new(LlamaModel::open(model_path()?)?);
    let n = model.config.n_layers;
    // Three local nodes, one stage each.
    let cluster = Cluster::from_toml_str(
        "name = \"local\"\n[link_defaults]\nintra_site = { latency_ms = 0.1, bandwidth_gbps = 10.0 }\n[[nodes]]\nid = \"gpu\"\ngpu = \"RTX4090\"\ncount = 3\nsite = \"here\"\nregion = \"here\"\n",
    )?;
    let plan = Plan::from_stages(
        "example",
        &cluster,
        n,
        model.name(),
        &[
            (0..n / 3, vec![0]),
            (n / 3..2 * n / 3, vec![1]),
            (2 * n / 3..n, vec![2]),
        ],
    );
    let engine = Arc::new(InferenceDataflow::new(
        Arc::clone(&model),
        &plan,
        &cluster,
        1,
        EngineOptions::default(),
    )?);
    let prompts: Vec<Vec<u32>> = [
        "The capital of France is",
        "Three colours of the rainbow are",
    ]
    .iter()
    .map(|p| model.tokenizer.encode(p))
    .collect::<Result<_, _>>()?;

    timely::execute(timely::Config::thread(), move |worker| {
        let mut input = InputHandle::new();
        let tokenizer = engine.model().tokenizer.clone();
        let probe = worker.dataflow::<u64, _, _>(|scope| {
            let requests = scope.input_from(&mut input);
            let streams = engine.build(requests).expect("the plan was checked");
            // Our own operator: per-request detokenizer, emitting (request, text piece).
            let text: StreamVec<u64, (u64, String)> =
                streams.events.unary(Pipeline, "Detokenize", move |_, _| {
                    let mut streams: HashMap<u64, TokenTextStream> = HashMap::new();
                    move |input, output| {
                        input.for_each(|cap, data| {
                            let mut session = output.session(&cap);
                            for event in data.drain(..) {
                                match event {
                                    EngineEvent::Token { seq, token, .. } => {
                                        let s = streams.entry(seq).or_default();
                                        if let Ok(piece) = s.push(&tokenizer, token)
                                            && !piece.is_empty()
                                        {
                                            session.give((seq, piece));
                                        }
                                    }
                                    EngineEvent::Finished { seq, timing, .. } => {
                                        streams.remove(&seq);
                                        let ms =
                                            (timing.finished_us - timing.submitted_us) as f64 / 1e3;
                                        session.give((seq, format!("  [done in {ms:.0} ms]")));
                                    }
                                    EngineEvent::Refused { seq, error } => {
                                        session.give((seq, format!("  [refused: {error}]")));
                                    }
                                }
                            }
                        });
                    }
                });
            // A tee: log every piece as it passes.
            let (probe, _) = text
                .inspect(|(seq, piece): &(u64, String)| println!("request {seq}: {piece:?}"))
                .probe();
            probe
        });
        if worker.index() == 0 {
            for (i, p) in prompts.iter().enumerate() {
                input.send(ClientMsg::from(Submission::now(Request::greedy(
                    i as u64,
                    p.clone(),
                    12,
                ))));
            }
        }
        drop(input);
        while !probe.done() {
            worker.step_or_park(None);
        }
    })
    .map_err(anyhow::Error::msg)?;
    Ok(())
}
