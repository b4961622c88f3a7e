//! The failure detector: which nodes the sequencer believes down, from
//! heartbeats alone.
//!
//! Every node is pinged each heartbeat while work is in flight. A node that has
//! not answered for the detection delay, and for four times its recent round
//! trip (a worker busy with a long stage call answers late without being dead:
//! an adaptive timeout, as phi-accrual detectors do), is declared down. A node
//! that answers with a new incarnation restarted between two heartbeats and
//! lost its memory. An answer from a node believed down brings it back.

/// What the detector believes about one node.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NodeView {
    /// Declared down.
    pub down: bool,
    /// Restarts seen so far.
    pub incarnation: u32,
    /// When it last answered (µs).
    pub last_pong_us: u64,
    /// A slowly decaying maximum of its heartbeat round trips (µs).
    pub rtt_us: u64,
}

/// A change the detector found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeChange {
    /// The node stopped answering: every sequence on it must move.
    Down(u32),
    /// The node answered with a new incarnation while believed up: what it held is gone.
    Restarted(u32),
    /// A node believed down answered again.
    Up(u32),
}

/// Heartbeat bookkeeping for every node.
#[derive(Debug, Clone)]
pub struct FailureDetector {
    nodes: Vec<NodeView>,
    heartbeat_us: u64,
    suspect_after_us: u64,
    last_ping_us: Option<u64>,
    watching: bool,
}

impl FailureDetector {
    /// A detector of `nodes` nodes, all believed up.
    pub fn new(nodes: usize, heartbeat_us: u64, suspect_after_us: u64) -> Self {
        Self {
            nodes: vec![NodeView::default(); nodes],
            heartbeat_us: heartbeat_us.max(1),
            suspect_after_us,
            last_ping_us: None,
            watching: false,
        }
    }

    /// Whether `node` is believed down.
    pub fn is_down(&self, node: u32) -> bool {
        self.nodes.get(node as usize).is_some_and(|v| v.down)
    }

    /// Whether any node is believed down.
    pub fn any_down(&self) -> bool {
        self.nodes.iter().any(|v| v.down)
    }

    /// What it believes about `node`.
    pub fn view(&self, node: u32) -> Option<NodeView> {
        self.nodes.get(node as usize).copied()
    }

    /// Adds a node (a cluster that grew), believed up.
    pub fn add_node(&mut self, now_us: u64) -> u32 {
        self.nodes.push(NodeView {
            last_pong_us: now_us,
            ..NodeView::default()
        });
        (self.nodes.len() - 1) as u32
    }

    /// Called while work is in flight: whether to ping every node now, and the
    /// nodes newly declared down (in index order).
    pub fn tick(&mut self, now_us: u64) -> (bool, Vec<NodeChange>) {
        if !self.watching {
            // After an idle spell nobody was pinged: start the clocks afresh.
            self.watching = true;
            for v in &mut self.nodes {
                v.last_pong_us = now_us;
            }
            self.last_ping_us = None;
        }
        let ping = self
            .last_ping_us
            .is_none_or(|last| now_us.saturating_sub(last) >= self.heartbeat_us);
        if ping {
            self.last_ping_us = Some(now_us);
        }
        let mut changes = Vec::new();
        for (n, v) in self.nodes.iter_mut().enumerate() {
            let limit = self.suspect_after_us.max(4 * v.rtt_us);
            if !v.down && now_us.saturating_sub(v.last_pong_us) > limit {
                v.down = true;
                changes.push(NodeChange::Down(n as u32));
            }
        }
        (ping, changes)
    }

    /// Nothing is in flight: stop watching (silence while idle means nothing).
    pub fn idle(&mut self) {
        self.watching = false;
    }

    /// A node answered a ping sent at `pinged_us`.
    pub fn on_pong(
        &mut self,
        node: u32,
        incarnation: u32,
        pinged_us: u64,
        now_us: u64,
    ) -> Option<NodeChange> {
        let v = self.nodes.get_mut(node as usize)?;
        let was = *v;
        let rtt = now_us.saturating_sub(pinged_us);
        v.rtt_us = rtt.max(v.rtt_us - v.rtt_us / 32);
        v.last_pong_us = now_us;
        v.down = false;
        if incarnation != was.incarnation {
            v.incarnation = incarnation;
            if !was.down {
                return Some(NodeChange::Restarted(node));
            }
        }
        was.down.then_some(NodeChange::Up(node))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn silence_past_the_delay_is_a_failure_and_an_answer_a_return() {
        let mut d = FailureDetector::new(2, 10, 100);
        assert_eq!(d.tick(1_000), (true, vec![]));
        assert_eq!(d.tick(1_005), (false, vec![]));
        assert_eq!(d.on_pong(0, 0, 1_000, 1_050), None);
        let (ping, changes) = d.tick(1_120);
        assert!(ping);
        assert_eq!(changes, vec![NodeChange::Down(1)]);
        assert!(d.is_down(1) && !d.is_down(0));
        assert_eq!(d.on_pong(1, 0, 1_120, 1_130), Some(NodeChange::Up(1)));
        assert!(!d.any_down());
    }

    #[test]
    fn a_new_incarnation_is_a_restart_and_slow_answers_stretch_the_limit() {
        let mut d = FailureDetector::new(1, 10, 100);
        d.tick(0);
        assert_eq!(d.on_pong(0, 1, 0, 5), Some(NodeChange::Restarted(0)));
        // A round trip of 400 µs: silence up to 1,600 µs is not suspicious.
        assert_eq!(d.on_pong(0, 1, 100, 500), None);
        assert_eq!(d.tick(1_500).1, vec![]);
        assert_eq!(d.tick(2_200).1, vec![NodeChange::Down(0)]);
        // Idle, then busy again: the clocks restart.
        d.idle();
        d.on_pong(0, 1, 2_200, 2_210);
        assert_eq!(d.tick(90_000).1, vec![]);
    }
}
