//! The live routing state the sequencer keeps (for every stage, the cheapest
//! live replica and how many are alive), maintained two ways as nodes fail and
//! return: recomputed from scratch after each change, and maintained
//! incrementally by differential dataflow (`semijoin` of replicas with the live
//! set, `reduce` to the minimum). `cargo bench --bench routing_state` prints µs
//! per membership change for three cluster sizes, both ways in the same run.

use std::time::Instant;

use differential_dataflow::input::Input;
use timely::dataflow::operators::Probe;

/// (stage, cost, node) for every replica; node `n` serves stage `n % stages`.
fn replicas(nodes: u32, stages: u32) -> Vec<(u32, u64, u32)> {
    (0..nodes)
        .map(|n| (n % stages, 1_000 + (n as u64 * 7919) % 1_000, n))
        .collect()
}

/// Node flips (fail or return), from a fixed linear congruential sequence.
fn changes(nodes: u32, count: usize) -> Vec<u32> {
    let mut x = 12_345u64;
    (0..count)
        .map(|_| {
            x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            ((x >> 33) % nodes as u64) as u32
        })
        .collect()
}

/// µs per change, recomputing every stage's best live replica after each change.
fn recompute(nodes: u32, stages: u32, flips: &[u32]) -> f64 {
    let reps = replicas(nodes, stages);
    let mut alive = vec![true; nodes as usize];
    let mut best = vec![(u64::MAX, u32::MAX, 0u32); stages as usize];
    let start = Instant::now();
    for &n in flips {
        alive[n as usize] = !alive[n as usize];
        best.iter_mut().for_each(|b| *b = (u64::MAX, u32::MAX, 0));
        for &(s, cost, node) in &reps {
            if alive[node as usize] {
                let b = &mut best[s as usize];
                if (cost, node) < (b.0, b.1) {
                    (b.0, b.1) = (cost, node);
                }
                b.2 += 1;
            }
        }
        std::hint::black_box(&best);
    }
    start.elapsed().as_secs_f64() * 1e6 / flips.len() as f64
}

/// µs per change, with differential dataflow maintaining the same state.
fn differential(nodes: u32, stages: u32, flips: Vec<u32>) -> f64 {
    timely::execute_directly(move |worker| {
        let (mut alive_in, mut reps_in, probe) = worker.dataflow::<u64, _, _>(|scope| {
            let (alive_in, alive) = scope.new_collection::<u32, isize>();
            let (reps_in, reps) = scope.new_collection::<(u32, (u32, u64)), isize>();
            let best = reps
                .semijoin(alive)
                .map(|(node, (stage, cost))| (stage, (cost, node)))
                .reduce(
                    |_stage,
                     live: &[(&(u64, u32), isize)],
                     out: &mut Vec<((u64, u32, usize), isize)>| {
                        let count = live.iter().filter(|(_, r)| *r > 0).count();
                        if let Some(&(&(cost, node), _)) = live.iter().find(|(_, r)| *r > 0) {
                            out.push(((cost, node, count), 1));
                        }
                    },
                );
            let (probe, _) = best.inner.probe();
            (alive_in, reps_in, probe)
        });
        for (s, cost, node) in replicas(nodes, stages) {
            reps_in.insert((node, (s, cost)));
            alive_in.insert(node);
        }
        let mut time = 1u64;
        alive_in.advance_to(time);
        reps_in.advance_to(time);
        alive_in.flush();
        reps_in.flush();
        while probe.less_than(&time) {
            worker.step();
        }
        let mut alive = vec![true; nodes as usize];
        let start = Instant::now();
        for &n in &flips {
            alive_in.update(n, if alive[n as usize] { -1 } else { 1 });
            alive[n as usize] = !alive[n as usize];
            time += 1;
            alive_in.advance_to(time);
            reps_in.advance_to(time);
            alive_in.flush();
            reps_in.flush();
            while probe.less_than(&time) {
                worker.step();
            }
        }
        start.elapsed().as_secs_f64() * 1e6 / flips.len() as f64
    })
}

fn main() {
    println!("| nodes | stages | recompute µs/change | differential µs/change | faster |");
    println!("|---:|---:|---:|---:|---|");
    for (nodes, stages) in [(64u32, 8u32), (1_000, 30), (10_000, 80)] {
        let flips = changes(nodes, 2_000);
        let r = recompute(nodes, stages, &flips);
        let d = differential(nodes, stages, flips);
        let faster = if r <= d { "recompute" } else { "differential" };
        println!("| {nodes} | {stages} | {r:.2} | {d:.2} | {faster} |");
    }
}
