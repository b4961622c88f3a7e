//! The neighbourhood of a stage layout for hill climbing: shift a stage
//! boundary by one layer, take a node out of its stage, or put a node into
//! another stage. Moves are generated one at a time and applied to a copy, so
//! a climb over 10,000 nodes holds one candidate layout, not one per move.

use super::Layout;

/// One change to a layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Move {
    /// Move the boundary after stage `stage` by `delta` layers.
    Shift {
        /// Stage whose end moves.
        stage: usize,
        /// −1 or +1.
        delta: i64,
    },
    /// Take `node` out of its stage (which keeps another replica).
    Remove {
        /// Cluster index.
        node: usize,
    },
    /// Put `node` into stage `to` (out of the stage it was in, if any).
    Place {
        /// Cluster index.
        node: usize,
        /// Stage index.
        to: usize,
    },
}

/// Every move of `layout` over a cluster of `nodes`, in a fixed order:
/// boundary shifts, then per node its removal (when `removals`) and its
/// placements. `placed[i]` is node `i`'s stage.
pub fn moves<'a>(
    layout: &'a Layout,
    placed: &'a [Option<usize>],
    removals: bool,
) -> impl Iterator<Item = Move> + 'a {
    let stages = layout.len();
    let shifts = (0..stages.saturating_sub(1))
        .flat_map(|s| [-1i64, 1].map(move |d| (s, d)))
        .filter(move |&(s, d)| {
            let b = layout[s].0.end as i64 + d;
            b > layout[s].0.start as i64 && b < layout[s + 1].0.end as i64
        })
        .map(|(stage, delta)| Move::Shift { stage, delta });
    let per_node = placed.iter().enumerate().flat_map(move |(node, at)| {
        let remove = (removals && at.is_some_and(|a| layout[a].1.len() > 1))
            .then_some(Move::Remove { node });
        let place = (0..stages)
            .filter(move |&t| *at != Some(t))
            .map(move |to| Move::Place { node, to });
        remove.into_iter().chain(place)
    });
    shifts.chain(per_node)
}

/// `layout` with `m` applied (`placed` as given to [`moves`]); node lists stay sorted
/// where `sorted` is set.
pub fn apply(layout: &Layout, placed: &[Option<usize>], m: Move, sorted: bool) -> Layout {
    let mut l = layout.clone();
    match m {
        Move::Shift { stage, delta } => {
            let b = (l[stage].0.end as i64 + delta) as usize;
            l[stage].0.end = b;
            l[stage + 1].0.start = b;
        }
        Move::Remove { node } => {
            if let Some(a) = placed[node] {
                l[a].1.retain(|&x| x != node);
            }
        }
        Move::Place { node, to } => {
            if let Some(a) = placed[node] {
                l[a].1.retain(|&x| x != node);
            }
            l[to].1.push(node);
            if sorted {
                l[to].1.sort_unstable();
            }
        }
    }
    l
}

/// Each node's stage in `layout` (`None`: unused), for a cluster of `nodes`.
pub fn placement(layout: &Layout, nodes: usize) -> Vec<Option<usize>> {
    let mut at = vec![None; nodes];
    for (s, (_, ns)) in layout.iter().enumerate() {
        for &i in ns {
            if i < nodes && at[i].is_none() {
                at[i] = Some(s);
            }
        }
    }
    at
}

/// Which moves a [`climb`] makes and how it keeps node lists.
#[derive(Debug, Clone, Copy)]
pub struct ClimbMoves {
    /// Also try taking nodes out of stages that keep another replica.
    pub removals: bool,
    /// Keep each stage's node list sorted.
    pub sorted: bool,
}

/// Where a [`climb`] ended.
pub struct Climb<T> {
    /// The last accepted layout (the start if none was).
    pub layout: Layout,
    /// Its score.
    pub score: f64,
    /// What the score function returned with the last accepted layout.
    pub best: Option<T>,
    /// Moves accepted.
    pub moves: usize,
    /// Whether `stop` ended it (rather than a local optimum).
    pub stopped: bool,
}

/// First-improvement hill climbing over [`moves`] from `start` (scored
/// `score_start`): the first move whose layout scores above the current
/// score by a relative `min_gain` (plus a thousandth of it absolute) is taken,
/// until no move improves or `stop` (asked before each evaluation) says so.
/// `score` returns `None` for layouts it refuses.
pub fn climb<T>(
    start: Layout,
    score_start: f64,
    nodes: usize,
    kind: ClimbMoves,
    min_gain: f64,
    mut stop: impl FnMut() -> bool,
    mut score: impl FnMut(&Layout) -> Option<(f64, T)>,
) -> Climb<T> {
    let mut out = Climb {
        layout: start,
        score: score_start,
        best: None,
        moves: 0,
        stopped: false,
    };
    loop {
        let placed = placement(&out.layout, nodes);
        let mut next = None;
        for m in moves(&out.layout, &placed, kind.removals) {
            if stop() {
                out.stopped = true;
                break;
            }
            let c = apply(&out.layout, &placed, m, kind.sorted);
            if let Some((s, t)) = score(&c)
                && s > out.score * (1.0 + min_gain) + min_gain * 1e-3
            {
                next = Some((c, s, t));
                break;
            }
        }
        if out.stopped {
            return out;
        }
        let Some((c, s, t)) = next else {
            return out;
        };
        out.layout = c;
        out.score = s;
        out.best = Some(t);
        out.moves += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn moves_cover_shifts_removals_and_placements_in_order() {
        let l: Layout = vec![(0..4, vec![0, 1]), (4..8, vec![2])];
        let at = placement(&l, 4);
        assert_eq!(at, vec![Some(0), Some(0), Some(1), None]);
        let m: Vec<Move> = moves(&l, &at, true).collect();
        assert_eq!(
            m[0],
            Move::Shift {
                stage: 0,
                delta: -1
            }
        );
        assert_eq!(m[1], Move::Shift { stage: 0, delta: 1 });
        // Node 0: removable (its stage keeps node 1), placeable in stage 1.
        assert_eq!(m[2], Move::Remove { node: 0 });
        assert_eq!(m[3], Move::Place { node: 0, to: 1 });
        // Node 2 is alone in its stage: no removal.
        assert!(!m.contains(&Move::Remove { node: 2 }));
        // Node 3 (unused): placements in both stages.
        assert!(m.contains(&Move::Place { node: 3, to: 0 }));
        assert_eq!(m.len(), 2 + 2 + 2 + 1 + 2);
        let moved = apply(&l, &at, Move::Place { node: 3, to: 0 }, true);
        assert_eq!(moved[0].1, vec![0, 1, 3]);
        let shifted = apply(&l, &at, Move::Shift { stage: 0, delta: 1 }, true);
        assert_eq!((shifted[0].0.clone(), shifted[1].0.clone()), (0..5, 5..8));
    }
}
