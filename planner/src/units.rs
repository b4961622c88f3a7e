//! Durations as people write them on command lines and in spec strings, parsed
//! and converted in one place for every command: `--fail node@1.5s`, `--churn
//! mtbf=2s`, `simulate --duration 5m`, `--slo ttft=500ms`, `--heartbeat-ms 50`.
//!
//! One grammar: a finite, non-negative number followed by a unit (`ns`, `us`,
//! `µs`, `ms`, `s`, `m`, `h`). A bare number is refused rather than guessed at
//! (`500` could be seconds or milliseconds). Every conversion is bounded by
//! [`MAX_DURATION`], so no later `Instant + Duration` or `as_micros() as u64`
//! can overflow, and every error names the option it is about.

use std::time::Duration;

/// The longest duration any option accepts: 10 years. Longer is never a run,
/// and the bound keeps `Instant`/microsecond arithmetic far from overflow.
pub const MAX_DURATION: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// Why a duration was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DurationError {
    /// The text is not `<number><unit>`.
    #[error(
        "{option} `{text}`: {message}; expected a number with a unit, e.g. 500ms, 1.5s, 5m or 2h"
    )]
    Syntax {
        /// The option or field, e.g. `--fail` or `churn mtbf`.
        option: String,
        /// The text given.
        text: String,
        /// What is wrong with it.
        message: String,
    },
    /// A number that is negative, not finite, or past [`MAX_DURATION`].
    #[error("{option} = {value} s: {requirement}")]
    OutOfRange {
        /// The option or field.
        option: String,
        /// The value in seconds.
        value: f64,
        /// The allowed range.
        requirement: String,
    },
}

const UNITS: [(&str, f64); 7] = [
    ("ns", 1e-9),
    ("us", 1e-6),
    ("µs", 1e-6),
    ("ms", 1e-3),
    ("s", 1.0),
    ("m", 60.0),
    ("h", 3600.0),
];

/// Parses `text` (e.g. `250ms`, `1.5s`, `5m`) as the value of `option`.
pub fn parse_duration(option: &str, text: &str) -> Result<Duration, DurationError> {
    parse_seconds(option, text).and_then(|s| duration_from_secs(option, s))
}

/// Parses `text` like [`parse_duration`], in seconds (for the simulator's
/// virtual clock), with the same bounds.
pub fn parse_seconds(option: &str, text: &str) -> Result<f64, DurationError> {
    let t = text.trim();
    let syntax = |message: String| DurationError::Syntax {
        option: option.to_string(),
        text: text.to_string(),
        message,
    };
    // Longest suffix first: `ms` before `s` and `m`.
    if t == "0" {
        return Ok(0.0);
    }
    let mut units = UNITS;
    units.sort_by_key(|(u, _)| std::cmp::Reverse(u.len()));
    let (number, scale) = units
        .iter()
        .find_map(|&(unit, scale)| t.strip_suffix(unit).map(|n| (n.trim(), scale)))
        .ok_or_else(|| {
            if t.parse::<f64>().is_ok() {
                syntax("no unit".into())
            } else {
                syntax("not a duration".into())
            }
        })?;
    if number.is_empty() {
        return Err(syntax("no number".into()));
    }
    let value: f64 = number
        .parse()
        .map_err(|_| syntax(format!("`{number}` is not a number")))?;
    check_seconds(option, value * scale)
}

/// Converts `secs` (from a number option or a file) into a duration for
/// `option`: finite, non-negative and at most [`MAX_DURATION`].
pub fn duration_from_secs(option: &str, secs: f64) -> Result<Duration, DurationError> {
    let secs = check_seconds(option, secs)?;
    Ok(Duration::from_secs_f64(secs))
}

/// Converts a count of milliseconds for `option` (e.g. `--heartbeat-ms`), at
/// most [`MAX_DURATION`]; zero is refused when `positive`.
pub fn duration_from_millis(
    option: &str,
    ms: u64,
    positive: bool,
) -> Result<Duration, DurationError> {
    let d = Duration::from_millis(ms);
    if d > MAX_DURATION {
        return Err(out_of_range(option, d.as_secs_f64()));
    }
    if positive && ms == 0 {
        return Err(DurationError::OutOfRange {
            option: option.to_string(),
            value: 0.0,
            requirement: "must be positive".into(),
        });
    }
    Ok(d)
}

fn check_seconds(option: &str, secs: f64) -> Result<f64, DurationError> {
    if secs.is_finite() && (0.0..=MAX_DURATION.as_secs_f64()).contains(&secs) {
        Ok(secs)
    } else {
        Err(out_of_range(option, secs))
    }
}

fn out_of_range(option: &str, value: f64) -> DurationError {
    DurationError::OutOfRange {
        option: option.to_string(),
        value,
        requirement: format!(
            "must be finite, non-negative and at most {} s (10 years)",
            MAX_DURATION.as_secs()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn units() {
        let d = |t| parse_duration("--x", t).unwrap();
        assert_eq!(d("250ms"), Duration::from_millis(250));
        assert_eq!(d("1.5s"), Duration::from_millis(1500));
        assert_eq!(d("2m"), Duration::from_secs(120));
        assert_eq!(d("1h"), Duration::from_secs(3600));
        assert_eq!(d(" 10 us "), Duration::from_micros(10));
        assert_eq!(d("7ns"), Duration::from_nanos(7));
        assert_eq!(d("0s"), Duration::ZERO);
        assert_eq!(d("0"), Duration::ZERO);
    }

    #[test]
    fn refusals_name_the_option() {
        for bad in [
            "", "s", "500", "abc", "-1s", "NaNs", "infs", "1e30s", "1x", "5 5s",
        ] {
            let e = parse_duration("--fail", bad).unwrap_err();
            assert!(e.to_string().contains("--fail"), "{bad}: {e}");
        }
        assert!(matches!(
            parse_duration("--x", "500"),
            Err(DurationError::Syntax { message, .. }) if message == "no unit"
        ));
        assert!(duration_from_secs("--t", f64::NAN).is_err());
        assert!(duration_from_secs("--t", 1e30).is_err());
        assert!(duration_from_secs("--t", -0.5).is_err());
        assert!(duration_from_millis("--heartbeat-ms", 0, true).is_err());
        assert!(duration_from_millis("--heartbeat-ms", u64::MAX, false).is_err());
        assert_eq!(
            duration_from_millis("--suspect-ms", 2000, true).unwrap(),
            Duration::from_secs(2)
        );
    }

    proptest! {
        #[test]
        fn any_text_parses_or_is_refused(text in "\\PC{0,24}") {
            if let Ok(d) = parse_duration("--x", &text) {
                prop_assert!(d <= MAX_DURATION);
            }
        }

        #[test]
        fn numbers_with_units(v in 0.0f64..1e6, unit in prop::sample::select(vec!["ms", "s", "m"])) {
            let d = parse_duration("--x", &format!("{v}{unit}")).unwrap();
            let scale = match unit { "ms" => 1e-3, "s" => 1.0, _ => 60.0 };
            prop_assert!((d.as_secs_f64() - v * scale).abs() <= 1e-6 * (1.0 + v * scale));
        }

        #[test]
        fn any_seconds_convert_or_are_refused(v in proptest::num::f64::ANY) {
            if let Ok(d) = duration_from_secs("--x", v) {
                prop_assert!(d <= MAX_DURATION);
            }
        }
    }
}
