//! When a sequence ends: a stop token, a stop string in its decoded output, its
//! token limit, or the end of the context.

use crate::request::{FinishReason, Request, TokenLog};

/// Decodes token ids to text, for stop strings (`None` when it cannot).
pub type Detokenize = dyn Fn(&[u32]) -> Option<String> + Send + Sync;

/// Why `log` (whose last generated token is `token`) ends now, if it does.
///
/// Stop strings are checked only when `detokenize` is given; a token decodes
/// to at least one byte, so the last `longest + 1` tokens hold any match that
/// ends with this one.
pub fn stop_reason(
    request: &Request,
    log: &TokenLog,
    token: u32,
    context_length: usize,
    detokenize: Option<&Detokenize>,
) -> Option<FinishReason> {
    if request.stop_tokens.contains(&token) {
        return Some(FinishReason::Stop);
    }
    if !request.stop_strings.is_empty()
        && let Some(decode) = detokenize
    {
        let longest = request
            .stop_strings
            .iter()
            .map(String::len)
            .max()
            .unwrap_or(0);
        let tail = &log.generated[log.generated.len().saturating_sub(longest + 1)..];
        if let Some(text) = decode(tail)
            && request
                .stop_strings
                .iter()
                .any(|s| !s.is_empty() && text.contains(s.as_str()))
        {
            return Some(FinishReason::Stop);
        }
    }
    if log.generated.len() >= request.max_tokens || log.len() >= context_length {
        return Some(FinishReason::Length);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log(generated: &[u32]) -> TokenLog {
        TokenLog {
            prompt: vec![1, 2],
            generated: generated.to_vec(),
        }
    }

    #[test]
    fn each_rule_ends_a_sequence() {
        let mut r = Request::greedy(0, vec![1, 2], 3);
        r.stop_tokens = vec![9];
        assert_eq!(
            stop_reason(&r, &log(&[9]), 9, 100, None),
            Some(FinishReason::Stop)
        );
        assert_eq!(stop_reason(&r, &log(&[4]), 4, 100, None), None);
        assert_eq!(
            stop_reason(&r, &log(&[4, 5, 6]), 6, 100, None),
            Some(FinishReason::Length)
        );
        assert_eq!(
            stop_reason(&r, &log(&[4]), 4, 3, None),
            Some(FinishReason::Length)
        );
        r.stop_strings = vec!["ab".into()];
        let letters = |t: &[u32]| Some(t.iter().map(|&c| (b'a' + c as u8) as char).collect());
        assert_eq!(stop_reason(&r, &log(&[0]), 0, 100, Some(&letters)), None);
        assert_eq!(
            stop_reason(&r, &log(&[0, 1]), 1, 100, Some(&letters)),
            Some(FinishReason::Stop)
        );
        // Without a tokenizer stop strings are not checked.
        assert_eq!(stop_reason(&r, &log(&[0, 1]), 1, 100, None), None);
    }
}
