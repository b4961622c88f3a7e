//! The sequencer on a fake clock, without timely or a model: admission order,
//! KV refusal and waiting, chunked prefill, failures found by silence and by a
//! new incarnation, restarts from the token log, stale attempts, a repaired
//! stage, stop rules, cancellation, and a bad request that touches nothing else.
//!
//! The "loop" here is the test: it reads the commands and answers as stages would.

use std::time::Duration;

use tokenflow_core::sequencer::LatencyMetric;
use tokenflow_core::{
    Command, Feedback, FinishReason, NoPathReason, Request, RequestError, RouterChoice,
    SchedulerConfig, SeqState, Sequencer, SequencerEvent, Step, StepFailure, Submission, Topology,
};
use tokenflow_planner::cost::CostModel;
use tokenflow_planner::{Cluster, Plan, PlanOptions, presets};

const CLUSTER: &str = r#"
name = "three"
[link_defaults]
intra_site = { latency_ms = 1.0, bandwidth_gbps = 10.0 }
[[nodes]]
id = "a"
gpu = "RTX4090"
site = "s"
region = "r"
[[nodes]]
id = "b"
gpu = "RTX4090"
site = "s"
region = "r"
[[nodes]]
id = "c"
gpu = "RTX4090"
site = "s"
region = "r"
"#;

/// Bytes of KV per token and stage.
const PER_TOKEN: u64 = 10;
const CONTEXT: usize = 100;

/// Stage 0 (layers 0..16) on `a` and `b`, stage 1 (16..32) on `c`; each node
/// holds `kv_tokens` tokens of KV per stage it serves.
fn topology(kv_tokens: u64) -> Topology {
    let cluster = Cluster::from_toml_str(CLUSTER).unwrap();
    let model = presets::model("Llama-3-8B").unwrap();
    let plan = Plan::from_stages(
        "test",
        &cluster,
        32,
        &model.name,
        &[(0..16, vec![0, 1]), (16..32, vec![2])],
    );
    let cost = CostModel::new(&model, &PlanOptions::default());
    let room = kv_tokens * PER_TOKEN;
    Topology::new(
        plan,
        cluster,
        cost,
        vec!["a".into(), "b".into(), "c".into()],
        vec![vec![0, 1], vec![2]],
        vec![vec![room, 0], vec![room, 0], vec![0, room]],
        vec![PER_TOKEN, PER_TOKEN],
        vec![1_000, 1_000],
        vec![1e6; 3],
        CONTEXT,
        1_000,
    )
}

fn config() -> SchedulerConfig {
    SchedulerConfig {
        max_prefill_chunk: 4,
        token_budget: 64,
        router: RouterChoice::InterleavedWrr,
        heartbeat: Duration::from_millis(10),
        suspect_after: Duration::from_millis(100),
        stall_timeout: Duration::from_secs(5),
        ..SchedulerConfig::default()
    }
}

fn submit(
    s: &mut Sequencer,
    id: u64,
    prompt_len: usize,
    max_tokens: usize,
    now: u64,
) -> Vec<Command> {
    let mut out = Vec::new();
    let prompt = (1..=prompt_len as u32).collect();
    s.submit(
        Submission {
            request: Request::greedy(id, prompt, max_tokens),
            submitted_us: now,
        },
        now,
        &mut out,
    );
    s.on_tick(now, &mut out);
    out
}

fn steps(out: &[Command]) -> Vec<Step> {
    out.iter()
        .filter_map(|c| match c {
            Command::Send(step) => Some(step.clone()),
            _ => None,
        })
        .collect()
}

fn events(out: &[Command]) -> Vec<SequencerEvent> {
    out.iter()
        .filter_map(|c| match c {
            Command::Event(e) => Some(e.clone()),
            _ => None,
        })
        .collect()
}

fn releases(out: &[Command]) -> Vec<(u64, u32)> {
    out.iter()
        .filter_map(|c| match c {
            Command::Release { seq, attempt, .. } => Some((*seq, *attempt)),
            _ => None,
        })
        .collect()
}

fn feed(s: &mut Sequencer, f: Feedback, now: u64) -> Vec<Command> {
    let mut out = Vec::new();
    s.on_feedback(f, now, &mut out);
    s.on_tick(now, &mut out);
    out
}

/// Answers a step as the loop would: a chunk short of the end, or a token.
fn answer(s: &mut Sequencer, step: &Step, token: u32, now: u64) -> Vec<Command> {
    let end = step.start as usize + step.tokens.len();
    let f = if step.last_chunk {
        Feedback::Sampled {
            seq: step.seq,
            attempt: step.attempt,
            end,
            token,
        }
    } else {
        Feedback::ChunkDone {
            seq: step.seq,
            attempt: step.attempt,
            end,
        }
    };
    feed(s, f, now)
}

/// Every node answers the pings in `out` at `now`.
fn pong_all(
    s: &mut Sequencer,
    out: &[Command],
    now: u64,
    except: &[u32],
    incarnation: u32,
) -> Vec<Command> {
    let mut more = Vec::new();
    for c in out {
        if let Command::Ping { node, sent_us } = c
            && !except.contains(node)
        {
            s.on_feedback(
                Feedback::Pong {
                    node: *node,
                    incarnation,
                    pinged_us: *sent_us,
                },
                now,
                &mut more,
            );
        }
    }
    more
}

#[test]
fn prompts_are_prefilled_in_chunks_then_decoded_token_by_token() {
    let mut s = Sequencer::new(config(), topology(1_000), None).unwrap();
    let out = submit(&mut s, 7, 10, 3, 1_000);
    let first = steps(&out);
    assert_eq!(first.len(), 1);
    assert_eq!(
        (first[0].start, first[0].tokens.len(), first[0].last_chunk),
        (0, 4, false)
    );
    assert_eq!(first[0].from_node, None);
    assert_eq!(first[0].route.len(), 2);
    assert_eq!(first[0].route[1], 2, "stage 1 has one replica");
    let second = steps(&answer(&mut s, &first[0], 0, 2_000));
    assert_eq!(
        (
            second[0].start,
            second[0].tokens.clone(),
            second[0].last_chunk
        ),
        (4, vec![5, 6, 7, 8], false)
    );
    let third = steps(&answer(&mut s, &second[0], 0, 3_000));
    assert_eq!(
        (third[0].start, third[0].tokens.len(), third[0].last_chunk),
        (8, 2, true)
    );
    let out = answer(&mut s, &third[0], 42, 4_000);
    assert_eq!(
        events(&out),
        [SequencerEvent::Token {
            seq: 7,
            index: 0,
            token: 42,
            at_us: 4_000
        }]
    );
    assert!(out.contains(&Command::Latency {
        metric: LatencyMetric::Ttft,
        us: 3_000
    }));
    let decode = steps(&out);
    assert_eq!(
        (
            decode[0].start,
            decode[0].tokens.clone(),
            decode[0].last_chunk
        ),
        (10, vec![42], true)
    );
    assert_eq!(decode[0].from_node, Some(2));
    let out = answer(&mut s, &decode[0], 43, 5_000);
    let out = answer(&mut s, &steps(&out)[0], 44, 6_000);
    let ev = events(&out);
    assert!(matches!(
        &ev[1],
        SequencerEvent::Finished { seq: 7, reason: FinishReason::Length, log, .. } if log.generated == [42, 43, 44]
    ));
    assert_eq!(releases(&out), [(7, 0)]);
    assert_eq!(s.state(7), Some(SeqState::Releasing));
    feed(&mut s, Feedback::Released { seq: 7, attempt: 0 }, 7_000);
    assert_eq!(s.state(7), None);
    assert!(!s.busy());
    assert_eq!(s.kv().free(2, 1), 1_000 * PER_TOKEN, "every byte came back");
}

#[test]
fn requests_start_in_order_and_wait_for_kv_room() {
    // Each node holds 30 tokens: one sequence of 20 at a time on stage 1.
    let mut s = Sequencer::new(config(), topology(30), None).unwrap();
    let a = steps(&submit(&mut s, 1, 10, 10, 0));
    assert_eq!(a.len(), 1);
    assert!(
        steps(&submit(&mut s, 2, 10, 10, 1)).is_empty(),
        "no room on `c`"
    );
    assert!(
        steps(&submit(&mut s, 3, 5, 5, 2)).is_empty(),
        "it would fit beside 1, but 2 is first"
    );
    assert_eq!(
        (s.state(2), s.state(3)),
        (Some(SeqState::Queued), Some(SeqState::Queued))
    );
    // Past the largest replica: refused at once, the queue untouched.
    let out = submit(&mut s, 4, 10, 50, 3);
    assert!(matches!(
        events(&out)[..],
        [SequencerEvent::Refused {
            seq: 4,
            error: RequestError::PastCapacity {
                stage: 0,
                needed: 600,
                largest: 300,
                ..
            }
        }]
    ));
    assert_eq!(s.queued(), 2);
    let mut out = Vec::new();
    assert!(s.cancel(1, 4, &mut out));
    assert_eq!(releases(&out), [(1, 0)]);
    // Room comes back with the release, not before.
    assert!(
        steps(&feed(
            &mut s,
            Feedback::Sampled {
                seq: 1,
                attempt: 0,
                end: 10,
                token: 5
            },
            5
        ))
        .is_empty()
    );
    let out = feed(&mut s, Feedback::Released { seq: 1, attempt: 0 }, 6);
    let started: Vec<u64> = steps(&out).iter().map(|s| s.seq).collect();
    assert_eq!(
        started,
        [2, 3],
        "2 first, then 3 beside it (it waited behind 2)"
    );
    assert!(out.contains(&Command::Latency {
        metric: LatencyMetric::Queue,
        us: 5
    }));
}

#[test]
fn a_bad_request_is_refused_without_touching_the_others() {
    let mut s = Sequencer::new(config(), topology(1_000), None).unwrap();
    let ok = steps(&submit(&mut s, 1, 3, 2, 0));
    let mut out = Vec::new();
    for (id, prompt) in [(2, vec![]), (3, vec![5000]), (4, vec![1; CONTEXT])] {
        s.submit(
            Submission {
                request: Request::greedy(id, prompt, 1),
                submitted_us: 1,
            },
            1,
            &mut out,
        );
    }
    s.submit(
        Submission {
            request: Request::greedy(1, vec![1], 1),
            submitted_us: 1,
        },
        1,
        &mut out,
    );
    let mut bad = Request::greedy(5, vec![1], 1);
    bad.sampling.top_p = 2.0;
    s.submit(
        Submission {
            request: bad,
            submitted_us: 1,
        },
        1,
        &mut out,
    );
    let refused: Vec<(u64, &str)> = events(&out)
        .iter()
        .map(|e| match e {
            SequencerEvent::Refused { seq, error } => (
                *seq,
                match error {
                    RequestError::BadPrompt { .. } => "prompt",
                    RequestError::DuplicateId { .. } => "duplicate",
                    RequestError::BadSampling { .. } => "sampling",
                    _ => "other",
                },
            ),
            _ => panic!("only refusals"),
        })
        .collect();
    assert_eq!(
        refused,
        [
            (2, "prompt"),
            (3, "prompt"),
            (4, "prompt"),
            (1, "duplicate"),
            (5, "sampling")
        ]
    );
    assert_eq!(s.counters().failed, 5);
    // The first request goes on as if nothing happened.
    let out = answer(&mut s, &ok[0], 9, 2);
    assert_eq!(
        events(&out),
        [SequencerEvent::Token {
            seq: 1,
            index: 0,
            token: 9,
            at_us: 2
        }]
    );
}

#[test]
fn stop_tokens_and_stop_strings_end_a_sequence() {
    let detok = |t: &[u32]| {
        Some(
            t.iter()
                .map(|&c| char::from(b'a' + (c % 26) as u8))
                .collect::<String>(),
        )
    };
    let mut s = Sequencer::new(config(), topology(1_000), Some(Box::new(detok))).unwrap();
    let mut out = Vec::new();
    let mut r = Request::greedy(1, vec![1, 2], 50);
    r.stop_tokens = vec![99];
    s.submit(
        Submission {
            request: r,
            submitted_us: 0,
        },
        0,
        &mut out,
    );
    let mut r = Request::greedy(2, vec![1, 2], 50);
    r.stop_strings = vec!["cd".into()];
    s.submit(
        Submission {
            request: r,
            submitted_us: 0,
        },
        0,
        &mut out,
    );
    s.on_tick(0, &mut out);
    let first = steps(&out);
    let out = answer(&mut s, &first[0], 99, 1);
    assert!(matches!(
        events(&out)[1],
        SequencerEvent::Finished {
            seq: 1,
            reason: FinishReason::Stop,
            ..
        }
    ));
    let out = answer(&mut s, &first[1], 2, 1); // "c"
    let out = answer(&mut s, &steps(&out)[0], 3, 2); // "cd"
    assert!(matches!(
        events(&out)[1],
        SequencerEvent::Finished {
            seq: 2,
            reason: FinishReason::Stop,
            ..
        }
    ));
}

/// Runs heartbeats from `from` to `to` every 10 ms; every node but `silent` answers.
fn heartbeats(s: &mut Sequencer, from: u64, to: u64, silent: &[u32]) -> Vec<Command> {
    let mut all = Vec::new();
    let mut t = from;
    while t <= to {
        let mut out = Vec::new();
        s.on_tick(t, &mut out);
        let more = pong_all(s, &out, t + 1, silent, 0);
        all.extend(out);
        all.extend(more);
        t += 10_000;
    }
    all
}

#[test]
fn a_silent_node_is_declared_down_and_its_sequences_restart_from_their_logs() {
    let mut s = Sequencer::new(config(), topology(1_000), None).unwrap();
    let first = steps(&submit(&mut s, 1, 3, 20, 0));
    let node0 = first[0].route[0];
    // Three tokens come back, then the stage-0 node falls silent.
    let mut step = first[0].clone();
    for (i, t) in [(1, 50), (2, 51), (3, 52)] {
        step = steps(&answer(&mut s, &step, t, i * 1_000))[0].clone();
    }
    assert_eq!(step.start, 5);
    let out = heartbeats(&mut s, 10_000, 300_000, &[node0]);
    assert!(s.node_down(node0));
    assert_eq!(s.counters().failures_detected, 1);
    assert_eq!(releases(&out), [(1, 0)], "the old path is released");
    let restarted = steps(&out);
    assert_eq!(restarted.len(), 1);
    let r = &restarted[0];
    assert_eq!(r.attempt, 1);
    assert_ne!(r.route[0], node0);
    assert!(r.replay);
    assert_eq!(
        (r.start, r.tokens.clone()),
        (0, vec![1, 2, 3, 50]),
        "prefilled again from the log"
    );
    assert_eq!(s.state(1), Some(SeqState::Recovering));
    // The old attempt's step comes back late: dropped.
    let late = feed(
        &mut s,
        Feedback::Sampled {
            seq: 1,
            attempt: 0,
            end: 6,
            token: 77,
        },
        301_000,
    );
    assert!(steps(&late).is_empty() && events(&late).is_empty());
    // The new path goes on; its first token ends the recovery.
    let r2 = steps(&answer(&mut s, r, 0, 302_000))[0].clone();
    assert_eq!((r2.start, r2.tokens.clone()), (4, vec![51, 52]));
    let out = answer(&mut s, &r2, 53, 303_000);
    assert_eq!(
        events(&out),
        [SequencerEvent::Token {
            seq: 1,
            index: 3,
            token: 53,
            at_us: 303_000
        }]
    );
    assert!(out.iter().any(|c| matches!(
        c,
        Command::Latency {
            metric: LatencyMetric::Recovery,
            ..
        }
    )));
    assert_eq!(s.state(1), Some(SeqState::Running));
    assert_eq!(s.counters().restarts, 1);
    assert_eq!(s.counters().recomputed_tokens, 6);
}

#[test]
fn a_new_incarnation_restarts_the_sequences_on_that_node() {
    let mut s = Sequencer::new(config(), topology(1_000), None).unwrap();
    let first = steps(&submit(&mut s, 1, 3, 20, 0));
    let mut out = Vec::new();
    s.on_tick(10_000, &mut out);
    // Node `c` answers with a new incarnation: it restarted between two pings.
    let more = pong_all(&mut s, &out, 10_500, &[], 1);
    assert_eq!(releases(&more), [(1, 0)]);
    assert_eq!(s.state(1), Some(SeqState::Stalled));
    let mut out = Vec::new();
    s.on_tick(11_000, &mut out);
    let again = steps(&out);
    assert_eq!(first[0].route[1], 2);
    assert_eq!(
        (again[0].attempt, again[0].route[1]),
        (1, 2),
        "`c` is up again: it serves stage 1 anew"
    );
    // A lost-state answer of the new attempt restarts it once more.
    let out = feed(&mut s, Feedback::Lost { seq: 1, attempt: 1 }, 12_000);
    assert_eq!(releases(&out), [(1, 1)]);
    assert_eq!(steps(&out)[0].attempt, 2);
}

#[test]
fn a_stage_that_lost_every_replica_is_loaded_elsewhere() {
    let mut s = Sequencer::new(config(), topology(1_000), None).unwrap();
    let first = steps(&submit(&mut s, 1, 3, 5, 0));
    assert_eq!(first[0].route[1], 2);
    let out = heartbeats(&mut s, 10_000, 200_000, &[2]);
    let loads: Vec<(u32, usize)> = out
        .iter()
        .filter_map(|c| match c {
            Command::Load { node, stage, .. } => Some((*node, *stage)),
            _ => None,
        })
        .collect();
    assert_eq!(loads.len(), 1, "one repair of stage 1: {loads:?}");
    let (node, stage) = loads[0];
    assert_eq!(stage, 1);
    assert_ne!(node, 2);
    assert_eq!(s.counters().replans, 1);
    assert_eq!(s.state(1), Some(SeqState::Stalled));
    // Loaded; the weights take 1 ms to download at 1 MB/s.
    let mut out = Vec::new();
    s.on_feedback(
        Feedback::Loaded {
            node,
            stage,
            error: None,
        },
        200_500,
        &mut out,
    );
    s.on_tick(200_600, &mut out);
    assert!(steps(&out).is_empty(), "the download is not over");
    let out = heartbeats(&mut s, 202_000, 202_000, &[2]);
    let resumed = steps(&out);
    assert_eq!(resumed.len(), 1);
    assert_eq!(
        resumed[0].route[1], node,
        "stage 1 now runs on the repaired node"
    );
}

#[test]
fn a_sequence_with_no_path_fails_after_the_stall_timeout() {
    let mut cfg = config();
    cfg.stall_timeout = Duration::from_millis(300);
    // No node can take stage 1 again: the repair finds no room.
    let mut topo = topology(1_000);
    topo.stage_weight_bytes = vec![u64::MAX / 4, u64::MAX / 4];
    let mut s = Sequencer::new(cfg, topo, None).unwrap();
    steps(&submit(&mut s, 1, 3, 5, 0));
    let out = heartbeats(&mut s, 10_000, 600_000, &[2]);
    let ev = events(&out);
    assert!(
        matches!(
            &ev[..],
            [SequencerEvent::Refused {
                seq: 1,
                error: RequestError::NoPath {
                    reason: NoPathReason::StageDown {
                        stage: 1,
                        repair: Some(_),
                        ..
                    },
                    waited_us: Some(_),
                    ..
                }
            }]
        ),
        "{ev:?}"
    );
    // The old path's release still comes back and frees the room.
    feed(&mut s, Feedback::Released { seq: 1, attempt: 0 }, 601_000);
    assert!(!s.busy());
}

#[test]
fn a_stage_failure_ends_only_its_sequence() {
    let mut s = Sequencer::new(config(), topology(1_000), None).unwrap();
    let mut out = Vec::new();
    for id in [1, 2] {
        s.submit(
            Submission {
                request: Request::greedy(id, vec![1, 2], 4),
                submitted_us: 0,
            },
            0,
            &mut out,
        );
    }
    s.on_tick(0, &mut out);
    let st = steps(&out);
    let out = feed(
        &mut s,
        Feedback::Failed {
            seq: 1,
            attempt: 0,
            failure: StepFailure::Panicked,
        },
        1,
    );
    assert!(matches!(
        &events(&out)[..],
        [SequencerEvent::Refused {
            seq: 1,
            error: RequestError::StageFailed { .. }
        }]
    ));
    assert_eq!(releases(&out), [(1, 0)]);
    let out = answer(&mut s, &st[1], 5, 2);
    assert_eq!(steps(&out)[0].seq, 2);
}
