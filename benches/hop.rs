//! Per-hop latency of an activation through timely's TCP channel between two
//! processes on loopback, next to timely's own ping-pong (its `pingpong`
//! example: a `u64` exchanged between the workers every round) in the same run.
//!
//! `cargo bench --bench hop`: the bench starts a second copy of itself as
//! process 1. Each round trip of the loop is one hop to the other process; the
//! figure is wall time ÷ hops, progress tracking included.

use std::net::TcpListener;
use std::process::Command;
use std::time::Instant;

use timely::dataflow::operators::vec::{Filter, Map};
use timely::dataflow::operators::{Concat, ConnectLoop, Exchange, Feedback, ToStream};
use timely::{CommunicationConfig, WorkerConfig};
use tokenflow_engine::dataflow::message::{CLIENT, Payload, StepMsg};
use tokenflow_engine::timely;
use tokenflow_operators::SamplingParams;

const ROLE: &str = "TOKENFLOW_HOP_PROCESS";
const HOSTS: &str = "TOKENFLOW_HOP_HOSTS";
const HOPS: u64 = 2000;

fn config(process: usize, hosts: &[String]) -> timely::Config {
    timely::Config {
        communication: CommunicationConfig::Cluster {
            threads: 1,
            process,
            addresses: hosts.to_vec(),
            report: false,
            zerocopy: false,
        },
        worker: WorkerConfig::default(),
    }
}

/// A decode step's activation for SmolLM2 (576 hidden floats), as the engine sends it.
fn decode_activation() -> StepMsg {
    StepMsg {
        seq: 0,
        attempt: 0,
        route: vec![0; 3],
        start: 10,
        len: 1,
        last_chunk: true,
        replay: false,
        sampling: SamplingParams::greedy(),
        history: Vec::new(),
        from_node: CLIENT,
        sent_us: 0,
        payload: Payload::Hidden(vec![0.5; 576]),
    }
}

/// Microseconds per hop of a `u64` (timely's ping-pong).
fn pingpong(process: usize, hosts: &[String]) -> f64 {
    let guards = timely::execute(config(process, hosts), move |worker| {
        let index = worker.index();
        let start = Instant::now();
        worker.dataflow::<u64, _, _>(move |scope| {
            let (helper, cycle) = scope.feedback(1);
            (0..1u64)
                .filter(move |_| index == 0)
                .map(|_| 0u64)
                .to_stream(scope)
                .concat(cycle)
                .exchange(|&x| x)
                .map_in_place(|x| *x += 1)
                .filter(|&x| x <= HOPS)
                .connect_loop(helper);
        });
        while worker.step_or_park(None) {}
        start.elapsed().as_secs_f64() * 1e6 / HOPS as f64
    })
    .unwrap();
    guards.join().into_iter().next().unwrap().unwrap()
}

/// Microseconds per hop of a decode step's activation (`StepMsg` with SmolLM2's 576 hidden floats).
fn activation(process: usize, hosts: &[String]) -> f64 {
    let guards = timely::execute(config(process, hosts), move |worker| {
        let index = worker.index();
        let start = Instant::now();
        worker.dataflow::<u64, _, _>(move |scope| {
            let (helper, cycle) = scope.feedback(1);
            let first = decode_activation();
            (0..1u64)
                .filter(move |_| index == 0)
                .map(move |_| first.clone())
                .to_stream(scope)
                .concat(cycle)
                .exchange(|m: &StepMsg| m.sent_us)
                .map_in_place(|m| m.sent_us += 1)
                .filter(|m| m.sent_us <= HOPS)
                .connect_loop(helper);
        });
        while worker.step_or_park(None) {}
        start.elapsed().as_secs_f64() * 1e6 / HOPS as f64
    })
    .unwrap();
    guards.join().into_iter().next().unwrap().unwrap()
}

fn main() {
    if let Ok(p) = std::env::var(ROLE) {
        let hosts: Vec<String> = std::env::var(HOSTS)
            .unwrap()
            .split(',')
            .map(String::from)
            .collect();
        let process: usize = p.parse().unwrap();
        pingpong(process, &hosts);
        let hosts2: Vec<String> = std::env::var(format!("{HOSTS}_2"))
            .unwrap()
            .split(',')
            .map(String::from)
            .collect();
        activation(process, &hosts2);
        return;
    }
    let ports = |n: usize| -> Vec<String> {
        (0..n)
            .map(|_| {
                let port = TcpListener::bind("127.0.0.1:0")
                    .unwrap()
                    .local_addr()
                    .unwrap()
                    .port();
                format!("127.0.0.1:{port}")
            })
            .collect()
    };
    let (hosts, hosts2) = (ports(2), ports(2));
    let mut child = Command::new(std::env::current_exe().unwrap())
        .env(ROLE, "1")
        .env(HOSTS, hosts.join(","))
        .env(format!("{HOSTS}_2"), hosts2.join(","))
        .spawn()
        .unwrap();
    let u64_hop = pingpong(0, &hosts);
    let act_hop = activation(0, &hosts2);
    child.wait().unwrap();
    let bytes = decode_activation().wire_bytes();
    println!("| message over timely TCP, 2 processes on loopback | bytes | µs per hop |");
    println!("|---|---:|---:|");
    println!("| u64 (timely's ping-pong) | 8 | {u64_hop:.1} |");
    println!("| decode activation (StepMsg, 576 f32) | {bytes} | {act_hop:.1} |");
    println!("ratio: {:.2}× timely's ping-pong", act_hop / u64_hop);
}
