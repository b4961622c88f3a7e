//! Link emulation at the receiving end: a message that left node `a` at time
//! `t` over a link of latency `L` and bandwidth `B` is delivered at
//! `max(t, link free) + bytes / B + L`. The operator holds the message's
//! capability and asks to be woken then; no thread sleeps.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};

use super::message::LoopMsg;
use super::placement::Placement;

/// Traffic counted on one directed link.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LinkTraffic {
    /// Messages received.
    pub messages: u64,
    /// Bytes received, as encoded for timely's serde path.
    pub bytes: u64,
}

/// Messages in flight on emulated links, each with what keeps it alive (a capability).
pub struct DelayedInbox<C> {
    heap: BinaryHeap<Reverse<(u64, u64)>>,
    held: HashMap<u64, (C, LoopMsg)>,
    next_id: u64,
    link_free_us: HashMap<(u32, u32), u64>,
    /// Traffic per (from node, to node).
    pub traffic: HashMap<(u32, u32), LinkTraffic>,
}

impl<C> Default for DelayedInbox<C> {
    fn default() -> Self {
        Self {
            heap: BinaryHeap::new(),
            held: HashMap::new(),
            next_id: 0,
            link_free_us: HashMap::new(),
            traffic: HashMap::new(),
        }
    }
}

impl<C> DelayedInbox<C> {
    /// Accepts a message arriving at node `to`; it becomes ready when the link delivers it.
    pub fn push(&mut self, placement: &Placement, to: u32, cap: C, msg: LoopMsg) {
        let (from, sent_us) = (msg.from_node(), msg.sent_us());
        let link = placement.link(from, to);
        let mut ready = sent_us;
        if from != to {
            let bytes = msg.wire_bytes();
            let t = self.traffic.entry((from, to)).or_default();
            t.messages += 1;
            t.bytes += bytes;
            let transfer = link.transfer_us(bytes);
            if transfer > 0 || link.latency_us() > 0 {
                let free = self.link_free_us.entry((from, to)).or_insert(0);
                let start = (*free).max(sent_us);
                *free = start + transfer;
                ready = start + transfer + link.latency_us();
            }
        }
        let id = self.next_id;
        self.next_id += 1;
        self.heap.push(Reverse((ready, id)));
        self.held.insert(id, (cap, msg));
    }

    /// Messages delivered by `now_us`, in delivery order.
    pub fn ready(&mut self, now_us: u64) -> Vec<(C, LoopMsg)> {
        let mut out = Vec::new();
        while let Some(Reverse((t, id))) = self.heap.peek().copied() {
            if t > now_us {
                break;
            }
            self.heap.pop();
            if let Some(entry) = self.held.remove(&id) {
                out.push(entry);
            }
        }
        out
    }

    /// When the next message will be delivered.
    pub fn next_delivery_us(&self) -> Option<u64> {
        self.heap.peek().map(|Reverse((t, _))| *t)
    }

    /// Whether nothing is in flight.
    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }
}
