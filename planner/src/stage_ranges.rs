//! Block ranges of a pipeline's stages, as `--stages 0..10,10..20,20..30` gives
//! them: parsed and checked in one place for `generate`, `run`, `bench` and
//! plans, so every command accepts and refuses the same splits.
//!
//! A split is valid when its ranges are non-empty, in order, and tile
//! `0..n_layers` exactly: no gap, no overlap, nothing past the model.

use std::ops::Range;

/// Why a split was refused; each names the ranges at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StageRangeError {
    /// A part that is not `START..END` with two layer numbers.
    #[error("`{part}` is not a block range like 0..10")]
    Syntax {
        /// The text of the part.
        part: String,
    },
    /// No ranges at all.
    #[error("no block range given; expected e.g. 0..10,10..20")]
    Empty,
    /// A range with nothing in it, or backwards.
    #[error("block range {start}..{end} is empty")]
    EmptyRange {
        /// Its first block.
        start: usize,
        /// One past its last block.
        end: usize,
    },
    /// The first range does not start at block 0.
    #[error("the first stage starts at block {start}: blocks 0..{start} are in no stage")]
    MissingStart {
        /// Where it starts.
        start: usize,
    },
    /// Blocks between two consecutive ranges are in no stage.
    #[error("blocks {end}..{next_start} are in no stage (a gap between {prev} and {next})")]
    Gap {
        /// The earlier range, as written.
        prev: String,
        /// The later range.
        next: String,
        /// Where the earlier range ends.
        end: usize,
        /// Where the later range starts.
        next_start: usize,
    },
    /// Two ranges share blocks.
    #[error("{prev} and {next} overlap on blocks {next_start}..{end}")]
    Overlap {
        /// The earlier range.
        prev: String,
        /// The later range.
        next: String,
        /// Where the later range starts.
        next_start: usize,
        /// Where the overlap ends.
        end: usize,
    },
    /// A range past the model's last block.
    #[error("{range} goes past the model, which has {n_layers} blocks (0..{n_layers})")]
    PastModel {
        /// The range.
        range: String,
        /// Blocks in the model.
        n_layers: usize,
    },
    /// The last range stops before the model's end.
    #[error("the last stage ends at block {end}: blocks {end}..{n_layers} are in no stage")]
    MissingEnd {
        /// Where it ends.
        end: usize,
        /// Blocks in the model.
        n_layers: usize,
    },
}

/// Parses `0..10,10..20,20..30` and checks it tiles `0..n_layers`.
pub fn parse_stage_ranges(
    text: &str,
    n_layers: usize,
) -> Result<Vec<Range<usize>>, StageRangeError> {
    let ranges = text
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(parse_range)
        .collect::<Result<Vec<_>, _>>()?;
    check_stage_ranges(&ranges, n_layers)?;
    Ok(ranges)
}

fn parse_range(part: &str) -> Result<Range<usize>, StageRangeError> {
    let syntax = || StageRangeError::Syntax { part: part.into() };
    let (a, b) = part.split_once("..").ok_or_else(syntax)?;
    let a: usize = a.trim().parse().map_err(|_| syntax())?;
    let b: usize = b.trim().parse().map_err(|_| syntax())?;
    Ok(a..b)
}

/// Checks that `ranges` are non-empty, in order, and tile `0..n_layers`.
pub fn check_stage_ranges(ranges: &[Range<usize>], n_layers: usize) -> Result<(), StageRangeError> {
    let show = |r: &Range<usize>| format!("{}..{}", r.start, r.end);
    let first = ranges.first().ok_or(StageRangeError::Empty)?;
    for r in ranges {
        if r.start >= r.end {
            return Err(StageRangeError::EmptyRange {
                start: r.start,
                end: r.end,
            });
        }
        if r.end > n_layers {
            return Err(StageRangeError::PastModel {
                range: show(r),
                n_layers,
            });
        }
    }
    if first.start != 0 {
        return Err(StageRangeError::MissingStart { start: first.start });
    }
    for pair in ranges.windows(2) {
        let (prev, next) = (&pair[0], &pair[1]);
        if next.start > prev.end {
            return Err(StageRangeError::Gap {
                prev: show(prev),
                next: show(next),
                end: prev.end,
                next_start: next.start,
            });
        }
        if next.start < prev.end {
            return Err(StageRangeError::Overlap {
                prev: show(prev),
                next: show(next),
                next_start: next.start,
                end: prev.end.min(next.end),
            });
        }
    }
    let last = ranges.last().expect("non-empty");
    if last.end != n_layers {
        return Err(StageRangeError::MissingEnd {
            end: last.end,
            n_layers,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn valid_splits() {
        assert_eq!(parse_stage_ranges("0..30", 30).unwrap(), vec![0..30]);
        assert_eq!(
            parse_stage_ranges(" 0..10, 10..20 ,20..30", 30).unwrap(),
            vec![0..10, 10..20, 20..30]
        );
    }

    #[test]
    fn each_fault_is_named() {
        let e = |t| parse_stage_ranges(t, 30).unwrap_err();
        assert!(matches!(
            e("0..10,12..30"),
            StageRangeError::Gap {
                end: 10,
                next_start: 12,
                ..
            }
        ));
        assert!(e("0..10,12..30").to_string().contains("10..12"));
        assert!(matches!(
            e("0..12,10..30"),
            StageRangeError::Overlap {
                next_start: 10,
                end: 12,
                ..
            }
        ));
        assert!(matches!(
            e("0..10,10..40"),
            StageRangeError::PastModel { n_layers: 30, .. }
        ));
        assert!(matches!(
            e("2..30"),
            StageRangeError::MissingStart { start: 2 }
        ));
        assert!(matches!(
            e("0..20"),
            StageRangeError::MissingEnd { end: 20, .. }
        ));
        assert!(matches!(
            e("0..0,0..30"),
            StageRangeError::EmptyRange { .. }
        ));
        assert!(matches!(e("10..0"), StageRangeError::EmptyRange { .. }));
        assert!(matches!(e(""), StageRangeError::Empty));
        assert!(matches!(e("0-10"), StageRangeError::Syntax { .. }));
        assert!(matches!(e("0..x"), StageRangeError::Syntax { .. }));
        assert!(matches!(e("-1..30"), StageRangeError::Syntax { .. }));
        assert!(matches!(
            e("0..99999999999999999999999"),
            StageRangeError::Syntax { .. }
        ));
    }

    proptest! {
        #[test]
        fn any_text_is_a_tiling_or_an_error(text in "[0-9., ]{0,30}", n in 1usize..64) {
            if let Ok(ranges) = parse_stage_ranges(&text, n) {
                prop_assert_eq!(ranges[0].start, 0);
                prop_assert_eq!(ranges.last().unwrap().end, n);
                for w in ranges.windows(2) {
                    prop_assert_eq!(w[0].end, w[1].start);
                }
            }
        }

        #[test]
        fn every_even_split_parses(n in 1usize..64, k in 1usize..64) {
            let k = k.min(n);
            let text = (0..k)
                .map(|i| format!("{}..{}", i * n / k, (i + 1) * n / k))
                .collect::<Vec<_>>()
                .join(",");
            prop_assert_eq!(parse_stage_ranges(&text, n).unwrap().len(), k);
        }
    }
}
