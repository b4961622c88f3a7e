//! The KV ledger: bytes of KV room per (node, stage), reserved for a sequence
//! along its path when it starts and given back when its release comes back.
//!
//! A sequence reserves room for every token it may reach
//! ([`crate::Request::tokens_needed`]), so a running sequence never runs out
//! of KV mid-way; a path without room for it is not taken.

/// Room reserved by one sequence: (node, stage, bytes) per stage of its path.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reservation(Vec<(u32, usize, u64)>);

impl Reservation {
    /// Bytes reserved in all.
    pub fn bytes(&self) -> u64 {
        self.0.iter().map(|r| r.2).sum()
    }

    /// Whether nothing is reserved.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Free KV bytes of every (node, stage), and the sequences each node runs.
#[derive(Debug, Clone)]
pub struct KvLedger {
    free: Vec<Vec<u64>>,
    active: Vec<u32>,
}

impl KvLedger {
    /// A ledger with `capacity[node][stage]` bytes free.
    pub fn new(capacity: Vec<Vec<u64>>) -> Self {
        let active = vec![0; capacity.len()];
        Self {
            free: capacity,
            active,
        }
    }

    /// Free bytes of `stage` on `node` (0 when it does not serve it).
    pub fn free(&self, node: u32, stage: usize) -> u64 {
        self.free
            .get(node as usize)
            .and_then(|f| f.get(stage))
            .copied()
            .unwrap_or(0)
    }

    /// Free bytes of every stage of `node`.
    pub fn node_free(&self, node: u32) -> u64 {
        self.free.get(node as usize).map_or(0, |f| f.iter().sum())
    }

    /// Sequences running through `node`.
    pub fn active(&self, node: u32) -> usize {
        self.active.get(node as usize).copied().unwrap_or(0) as usize
    }

    /// How many sequences needing `need[stage]` bytes per stage `node` can still take.
    pub fn room_in_sequences(&self, node: u32, stages: &[usize], need: &[u64]) -> u32 {
        stages
            .iter()
            .map(|&s| {
                self.free(node, s)
                    .checked_div(need[s])
                    .map_or(u32::MAX, |k| k.min(u32::MAX as u64) as u32)
            })
            .min()
            .unwrap_or(0)
    }

    /// Whether `route` (node per stage) has `need[stage]` bytes free on each stage.
    pub fn fits(&self, route: &[u32], need: &[u64]) -> bool {
        route
            .iter()
            .enumerate()
            .all(|(s, &n)| self.free(n, s) >= need[s])
    }

    /// Takes `need[stage]` bytes on each stage of `route`; the caller checked [`KvLedger::fits`].
    pub fn reserve(&mut self, route: &[u32], need: &[u64]) -> Reservation {
        let mut reserved = Vec::with_capacity(route.len());
        for (s, &n) in route.iter().enumerate() {
            let free = &mut self.free[n as usize][s];
            let take = need[s].min(*free);
            *free -= take;
            reserved.push((n, s, take));
        }
        for n in distinct(route.iter().copied()) {
            self.active[n as usize] += 1;
        }
        Reservation(reserved)
    }

    /// Gives a reservation back.
    pub fn release(&mut self, reservation: Reservation) {
        for &(n, s, bytes) in &reservation.0 {
            self.free[n as usize][s] += bytes;
        }
        for n in distinct(reservation.0.iter().map(|r| r.0)) {
            self.active[n as usize] = self.active[n as usize].saturating_sub(1);
        }
    }

    /// Takes `bytes` from `node`'s stages, largest free first (room for a
    /// replica a repair adds there); returns what it could not find.
    pub fn take_node_room(&mut self, node: u32, bytes: u64) -> u64 {
        let free = &mut self.free[node as usize];
        let mut order: Vec<usize> = (0..free.len()).collect();
        order.sort_by_key(|&k| std::cmp::Reverse(free[k]));
        let mut left = bytes;
        for k in order {
            let take = left.min(free[k]);
            free[k] -= take;
            left -= take;
        }
        left
    }

    /// Adds `bytes` of room for `stage` on `node` (a replica that finished loading).
    pub fn add_room(&mut self, node: u32, stage: usize, bytes: u64) {
        self.free[node as usize][stage] += bytes;
    }
}

/// The distinct values, in first-seen order (a path may visit a node twice).
fn distinct(items: impl Iterator<Item = u32>) -> Vec<u32> {
    let mut seen = Vec::new();
    for n in items {
        if !seen.contains(&n) {
            seen.push(n);
        }
    }
    seen
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserve_and_release_give_back_every_byte() {
        let mut kv = KvLedger::new(vec![vec![100, 0], vec![0, 50]]);
        let route = [0, 1];
        assert!(kv.fits(&route, &[60, 50]));
        assert!(!kv.fits(&route, &[60, 51]));
        let r = kv.reserve(&route, &[60, 50]);
        assert_eq!((kv.free(0, 0), kv.free(1, 1), r.bytes()), (40, 0, 110));
        assert_eq!((kv.active(0), kv.active(1)), (1, 1));
        assert!(!kv.fits(&route, &[60, 1]));
        kv.release(r);
        assert_eq!((kv.free(0, 0), kv.free(1, 1)), (100, 50));
        assert_eq!(kv.active(0), 0);
    }

    #[test]
    fn a_node_on_two_stages_counts_one_sequence() {
        let mut kv = KvLedger::new(vec![vec![10, 10]]);
        let r = kv.reserve(&[0, 0], &[5, 5]);
        assert_eq!(kv.active(0), 1);
        assert_eq!(kv.room_in_sequences(0, &[0, 1], &[5, 5]), 1);
        kv.release(r);
        assert_eq!(kv.take_node_room(0, 15), 0);
        assert_eq!(kv.node_free(0), 5);
    }
}
