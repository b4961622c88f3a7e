//! The batch policy: what one stage call of a node runs, from the steps queued
//! at it. Decode steps go first (one token each, so long prompts do not stall
//! running sequences), then prefill chunks in arrival order, each if it fits,
//! within a token budget and a number of sequences. The first step always fits,
//! so a chunk larger than the budget still runs alone.
//!
//! The engine's stage operators, the simulator's nodes and the plain loop all
//! queue their steps in a [`StepQueue`] and take their calls from it.
//!
//! ```
//! use tokenflow_core::{BatchLimits, StepQueue};
//!
//! let mut q = StepQueue::default();
//! q.push("prefill a", 300, false);
//! q.push("decode b", 1, true);
//! q.push("prefill c", 300, false);
//! q.push("prefill d", 100, false);
//! let limits = BatchLimits { token_budget: 512, max_sequences: 64 };
//! let batch = q.take_batch(&limits, |_| true);
//! assert_eq!(batch.items, ["decode b", "prefill a", "prefill d"]);
//! assert_eq!(batch.tokens, 401);
//! assert_eq!(q.len(), 1); // `prefill c` waits for the next call
//! ```

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

/// Limits on one stage call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchLimits {
    /// Most tokens (prefill and decode) in one call.
    pub token_budget: usize,
    /// Most sequences in one call.
    pub max_sequences: usize,
}

/// The steps of one call, in the order they run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch<T> {
    /// The steps.
    pub items: Vec<T>,
    /// Tokens of work they carry.
    pub tokens: usize,
    /// Steps that were queued when the call was formed (stale ones included).
    pub queued: usize,
}

/// Steps queued at one node (or one replica), waiting for its next call.
#[derive(Debug, Clone)]
pub struct StepQueue<T> {
    decode: VecDeque<T>,
    prefill: VecDeque<(T, usize)>,
    /// Reused between calls: the prefill chunks a call left behind.
    scratch: VecDeque<(T, usize)>,
}

impl<T> Default for StepQueue<T> {
    fn default() -> Self {
        Self {
            decode: VecDeque::new(),
            prefill: VecDeque::new(),
            scratch: VecDeque::new(),
        }
    }
}

impl<T> StepQueue<T> {
    /// Queues a step of `tokens` tokens; `decode`: it continues a sequence by one token.
    pub fn push(&mut self, item: T, tokens: usize, decode: bool) {
        if decode {
            self.decode.push_back(item);
        } else {
            self.prefill.push_back((item, tokens));
        }
    }

    /// Steps queued.
    pub fn len(&self) -> usize {
        self.decode.len() + self.prefill.len()
    }

    /// Decode steps queued.
    pub fn decode_len(&self) -> usize {
        self.decode.len()
    }

    /// Prefill chunks queued.
    pub fn prefill_len(&self) -> usize {
        self.prefill.len()
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.decode.is_empty() && self.prefill.is_empty()
    }

    /// Drops every queued step.
    pub fn clear(&mut self) {
        self.decode.clear();
        self.prefill.clear();
    }

    /// Keeps only the steps for which `keep` holds.
    pub fn retain(&mut self, mut keep: impl FnMut(&T) -> bool) {
        self.decode.retain(&mut keep);
        self.prefill.retain(|(t, _)| keep(t));
    }

    /// Forms the next call: decode steps first, then prefill chunks in order,
    /// each if it fits the limits (the first step always does). Steps for which
    /// `live` is false (of an abandoned attempt) are dropped on the way; the
    /// others stay queued, in order.
    pub fn take_batch(&mut self, limits: &BatchLimits, live: impl FnMut(&T) -> bool) -> Batch<T> {
        let mut items = Vec::new();
        let (tokens, queued) = self.take_batch_into(limits, live, &mut items);
        Batch {
            items,
            tokens,
            queued,
        }
    }

    /// [`StepQueue::take_batch`] into a vector the caller reuses (cleared
    /// first): returns the call's tokens and the steps that were queued.
    pub fn take_batch_into(
        &mut self,
        limits: &BatchLimits,
        mut live: impl FnMut(&T) -> bool,
        items: &mut Vec<T>,
    ) -> (usize, usize) {
        items.clear();
        let queued = self.len();
        let max = limits.max_sequences.max(1);
        let mut tokens = 0usize;
        while let Some(item) = self.decode.front() {
            if !live(item) {
                self.decode.pop_front();
                continue;
            }
            if items.len() >= max || (!items.is_empty() && tokens + 1 > limits.token_budget) {
                break;
            }
            items.push(self.decode.pop_front().expect("front exists"));
            tokens += 1;
        }
        if items.len() < max && !self.prefill.is_empty() {
            let mut rest = std::mem::take(&mut self.scratch);
            rest.clear();
            while let Some((item, t)) = self.prefill.pop_front() {
                if !live(&item) {
                    continue;
                }
                if items.len() < max && (items.is_empty() || tokens + t <= limits.token_budget) {
                    items.push(item);
                    tokens += t;
                } else {
                    rest.push_back((item, t));
                }
                if items.len() >= max || tokens >= limits.token_budget {
                    break;
                }
            }
            if !rest.is_empty() {
                rest.append(&mut self.prefill);
                std::mem::swap(&mut self.prefill, &mut rest);
            }
            self.scratch = rest;
        }
        (tokens, queued)
    }
}

/// When a node holds its next call a little, for steps still on their way back.
///
/// A node's sequences drift into groups: a step that returns while a call runs
/// waits for the next one, and under decode-first batching the groups never
/// merge again. On a path of `S` block stages, `S` groups keep every stage busy
/// (pipeline parallelism), but more than `S` only repeat each call's fixed cost
/// (reading the weights) for fewer sequences: on one SmolLM2 node, eight
/// streams arriving apart ran 531 calls where eight arriving together ran 256.
/// So a node with fewer than `held / S` (rounded up) of its sequences queued
/// waits for the rest up to `fraction` of its mean call time, counted from when
/// it could have started.
///
/// ```
/// use tokenflow_core::batch::CallHold;
///
/// let hold = CallHold { fraction: 0.25, path_stages: 1 };
/// // 3 of the 8 sequences it holds are back, 2 ms after it went idle; calls take 40 ms.
/// assert_eq!(hold.hold_us(3, 8, 2_000, 40_000), Some(8_000));
/// // Waited its 10 ms: it runs what it has.
/// assert_eq!(hold.hold_us(3, 8, 10_000, 40_000), None);
/// // On a path of 4 stages, 2 of 8 is a full group.
/// let deep = CallHold { fraction: 0.25, path_stages: 4 };
/// assert_eq!(deep.hold_us(2, 8, 0, 40_000), None);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct CallHold {
    /// Longest hold, as a fraction of the node's mean call time (0: never).
    pub fraction: f64,
    /// Block stages on a sequence's path: the groups that keep a pipeline full.
    pub path_stages: usize,
}

impl CallHold {
    /// A hold that never waits.
    pub const NEVER: CallHold = CallHold {
        fraction: 0.0,
        path_stages: 1,
    };

    /// How much longer the node should wait before its next call (`None`: start
    /// it now), given its `queued` steps (one per sequence), the `held`
    /// sequences it keeps KV for, how long it has `waited_us` since it could
    /// have started, and its `mean_call_us`.
    pub fn hold_us(
        &self,
        queued: usize,
        held: usize,
        waited_us: u64,
        mean_call_us: u64,
    ) -> Option<u64> {
        let group = held.div_ceil(self.path_stages.max(1));
        if queued == 0 || queued >= group || self.fraction.is_nan() || self.fraction <= 0.0 {
            return None;
        }
        let limit = (mean_call_us as f64 * self.fraction.min(1.0)) as u64;
        (waited_us < limit).then(|| limit - waited_us)
    }
}

/// Busy share (EWMA of call time over call time plus the idle time before it)
/// below which a node never holds. Holding merges drifted groups into fewer
/// calls, which pays only on a node that is the bottleneck: one saturated by
/// closed-loop streams (where it raised `tokenflow serve` from 0.70 to 1.02 of
/// batch mode). A node idle a quarter of the time or more has the capacity to
/// run each group's call as it comes, and a hold would only add to the
/// inter-token latency.
pub const HOLD_WHEN_BUSY: f64 = 0.75;

/// One node's side of the hold rule, the same in every executor: its mean call
/// time, how busy it is, and since when it could have started its next call.
#[derive(Debug, Clone)]
pub struct HoldClock {
    /// Mean time of decode-only calls in µs (exponentially weighted); 0
    /// before the first. Prefill calls are left out: a hold waits for decode
    /// steps, and a mean dominated by long prompts would hold them for a
    /// prefill's time.
    mean_call_us: f64,
    /// Share of time in calls (exponentially weighted over calls).
    busy_share: f64,
    /// Since when the node has been idle with work queued.
    ready_since_us: Option<u64>,
    /// When the running call started.
    call_started_us: Option<u64>,
    /// When the last call ended.
    last_end_us: Option<u64>,
    /// Time with nothing queued before the running call.
    idle_before_us: u64,
}

impl Default for HoldClock {
    fn default() -> Self {
        HoldClock {
            mean_call_us: 0.0,
            // Busy until measured otherwise: a node starts under its first load.
            busy_share: 1.0,
            ready_since_us: None,
            call_started_us: None,
            last_end_us: None,
            idle_before_us: 0,
        }
    }
}

impl HoldClock {
    /// Counts a call of `us` µs (the one last started; `decode_only` if it
    /// held no prefill chunk) into the means.
    pub fn record_call(&mut self, us: u64, decode_only: bool) {
        if decode_only {
            self.mean_call_us = if self.mean_call_us == 0.0 {
                us as f64
            } else {
                0.8 * self.mean_call_us + 0.2 * us as f64
            };
        }
        let share = if us == 0 {
            1.0
        } else {
            us as f64 / (us + self.idle_before_us) as f64
        };
        self.busy_share = 0.8 * self.busy_share + 0.2 * share;
        self.last_end_us = self.call_started_us.map(|s| s + us);
        self.idle_before_us = 0;
    }

    /// The node's busy share as measured so far (1 before any idle time).
    pub fn busy_share(&self) -> f64 {
        self.busy_share
    }

    /// At `now_us`, an idle node with `decode` steps and `prefill` chunks
    /// queued and `held` sequences: `Some(rest)` to wait `rest` µs more,
    /// `None` to start the call now (the clock is then ready for the next
    /// one). A queued prefill is never held: it is new work, not a step on
    /// its way back, and holding it only delays a first token (on the
    /// simulator's helix-24 study it tripled `chain-dp`'s median TTFT). A
    /// node busy less than [`HOLD_WHEN_BUSY`] of the time never waits. A
    /// clock stepped back does not stretch the hold.
    pub fn hold_us(
        &mut self,
        rule: &CallHold,
        decode: usize,
        prefill: usize,
        held: usize,
        now_us: u64,
    ) -> Option<u64> {
        let since = self.ready_since_us.map_or(now_us, |s| s.min(now_us));
        self.ready_since_us = Some(since);
        let rest = if prefill > 0 || self.busy_share < HOLD_WHEN_BUSY {
            None
        } else {
            rule.hold_us(decode, held, now_us - since, self.mean_call_us as u64)
        };
        if rest.is_none() {
            self.ready_since_us = None;
            self.call_started_us = Some(now_us);
            self.idle_before_us = self.last_end_us.map_or(0, |e| since.saturating_sub(e));
        }
        rest
    }

    /// Forgets the wait so far (the node lost its queue).
    pub fn reset(&mut self) {
        self.ready_since_us = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_chunk_larger_than_the_budget_runs_alone() {
        let mut q = StepQueue::default();
        q.push(1, 900, false);
        q.push(2, 1, true);
        let limits = BatchLimits {
            token_budget: 512,
            max_sequences: 8,
        };
        assert_eq!(q.take_batch(&limits, |_| true).items, [2]);
        let b = q.take_batch(&limits, |_| true);
        assert_eq!((b.items, b.tokens), (vec![1], 900));
        assert!(q.is_empty());
    }

    #[test]
    fn stale_steps_are_dropped_and_sequences_limited() {
        let mut q = StepQueue::default();
        for i in 0..6 {
            q.push(i, 1, true);
        }
        let limits = BatchLimits {
            token_budget: 512,
            max_sequences: 2,
        };
        let b = q.take_batch(&limits, |&i| i % 2 == 1);
        assert_eq!(b.items, [1, 3]);
        assert_eq!(b.queued, 6);
        assert_eq!(q.take_batch(&limits, |&i| i % 2 == 1).items, [5]);
        assert!(q.is_empty());
    }

    #[test]
    fn a_hold_waits_only_for_a_partial_group_and_only_so_long() {
        let hold = CallHold {
            fraction: 0.5,
            path_stages: 2,
        };
        // 8 held on a 2-stage path: a group is 4.
        assert_eq!(hold.hold_us(4, 8, 0, 10_000), None);
        assert_eq!(hold.hold_us(3, 8, 1_000, 10_000), Some(4_000));
        assert_eq!(hold.hold_us(3, 8, 5_000, 10_000), None);
        // Nothing queued, nothing held, no history, or holding off: run now.
        assert_eq!(hold.hold_us(0, 8, 0, 10_000), None);
        assert_eq!(hold.hold_us(1, 0, 0, 10_000), None);
        assert_eq!(hold.hold_us(1, 8, 0, 0), None);
        assert_eq!(CallHold::NEVER.hold_us(1, 8, 0, 10_000), None);
    }

    #[test]
    fn a_hold_clock_waits_from_when_the_node_went_idle() {
        let rule = CallHold {
            fraction: 0.5,
            path_stages: 1,
        };
        let mut clock = HoldClock::default();
        // No call yet: no mean, no hold.
        assert_eq!(clock.hold_us(&rule, 1, 0, 4, 100), None);
        clock.record_call(10_000, true);
        assert_eq!(clock.hold_us(&rule, 1, 0, 4, 1_000), Some(5_000));
        assert_eq!(clock.hold_us(&rule, 1, 0, 4, 4_000), Some(2_000));
        // The clock stepped back: counted from then, not stretched.
        assert_eq!(clock.hold_us(&rule, 1, 0, 4, 500), Some(5_000));
        assert_eq!(clock.hold_us(&rule, 1, 0, 4, 5_500), None);
        // Ready again for the next call.
        assert_eq!(clock.hold_us(&rule, 1, 0, 4, 6_000), Some(5_000));
        clock.reset();
        assert_eq!(clock.hold_us(&rule, 4, 0, 4, 9_000), None);
    }

    #[test]
    fn a_node_mostly_idle_never_holds() {
        let rule = CallHold {
            fraction: 0.5,
            path_stages: 1,
        };
        let mut clock = HoldClock::default();
        // Calls of 10 ms, each after 90 ms with nothing queued: 10% busy.
        let mut now = 0;
        for _ in 0..20 {
            assert_eq!(clock.hold_us(&rule, 4, 0, 4, now), None);
            clock.record_call(10_000, true);
            now += 100_000;
        }
        assert!(clock.busy_share() < 0.2, "{}", clock.busy_share());
        assert_eq!(clock.hold_us(&rule, 1, 0, 4, now), None);
        // Back to back calls make it busy again, and then it holds.
        for _ in 0..20 {
            now += 10_000;
            clock.record_call(10_000, true);
            assert_eq!(clock.hold_us(&rule, 4, 0, 4, now), None);
        }
        assert!(
            clock.busy_share() > HOLD_WHEN_BUSY,
            "{}",
            clock.busy_share()
        );
        assert_eq!(clock.hold_us(&rule, 1, 0, 4, now + 10_000), Some(5_000));
        // A prefill waiting is never held.
        assert_eq!(clock.hold_us(&rule, 1, 1, 4, now + 10_000), None);
    }

    proptest! {
        /// Every live step runs exactly once, each call within the limits (or
        /// alone), decodes before prefills and prefills in arrival order.
        #[test]
        fn every_step_runs_once_within_the_limits(
            steps in proptest::collection::vec((1usize..700, any::<bool>()), 0..60),
            budget in 1usize..600,
            max in 1usize..10,
        ) {
            let mut q = StepQueue::default();
            for (i, &(t, decode)) in steps.iter().enumerate() {
                q.push(i, if decode { 1 } else { t }, decode);
            }
            let limits = BatchLimits { token_budget: budget, max_sequences: max };
            let mut seen = Vec::new();
            while !q.is_empty() {
                let b = q.take_batch(&limits, |_| true);
                prop_assert!(!b.items.is_empty());
                prop_assert!(b.items.len() <= max);
                prop_assert!(b.items.len() == 1 || b.tokens <= budget);
                let mut in_prefill = false;
                for &i in &b.items {
                    let decode = steps[i].1;
                    prop_assert!(!(decode && in_prefill), "a decode after a prefill");
                    in_prefill |= !decode;
                    seen.push(i);
                }
            }
            seen.sort_unstable();
            prop_assert_eq!(seen, (0..steps.len()).collect::<Vec<_>>());
        }
    }
}
