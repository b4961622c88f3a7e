//! [`StopText`]: the text of a completion as it streams, with stop strings
//! cut out (OpenAI returns the text before a stop string, not the string).

/// Turns pieces of decoded text into what may be shown, holding back a tail
/// that could still become a stop string.
#[derive(Debug, Clone, Default)]
pub struct StopText {
    stops: Vec<String>,
    held: String,
    stopped: bool,
}

impl StopText {
    /// A filter for `stops` (empty strings ignored).
    pub fn new(stops: Vec<String>) -> Self {
        Self {
            stops: stops.into_iter().filter(|s| !s.is_empty()).collect(),
            ..Self::default()
        }
    }

    /// Whether a stop string has appeared (everything after it is dropped).
    pub fn stopped(&self) -> bool {
        self.stopped
    }

    /// Takes the next piece; returns the text that can be shown now.
    pub fn push(&mut self, piece: &str) -> String {
        if self.stopped {
            return String::new();
        }
        self.held.push_str(piece);
        if let Some(at) = self
            .stops
            .iter()
            .filter_map(|s| self.held.find(s.as_str()))
            .min()
        {
            self.stopped = true;
            let shown = self.held[..at].to_string();
            self.held.clear();
            return shown;
        }
        // Hold back the longest tail that is the start of some stop string.
        let keep = self
            .stops
            .iter()
            .flat_map(|s| {
                (1..s.len().min(self.held.len() + 1))
                    .rev()
                    .filter(|&k| s.is_char_boundary(k))
                    .find(|&k| self.held.ends_with(&s[..k]))
            })
            .max()
            .unwrap_or(0);
        let cut = self.held.len() - keep;
        let shown = self.held[..cut].to_string();
        self.held.drain(..cut);
        shown
    }

    /// The generation ended without a stop string: whatever was held back.
    pub fn finish(&mut self) -> String {
        std::mem::take(&mut self.held)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_stop_string_split_over_pieces_is_cut() {
        let mut t = StopText::new(vec!["END".into()]);
        assert_eq!(t.push("hello E"), "hello ");
        assert_eq!(t.push("N"), "");
        assert_eq!(t.push("D and more"), "");
        assert!(t.stopped());
        assert_eq!(t.push("x"), "");
    }

    #[test]
    fn a_false_start_is_released() {
        let mut t = StopText::new(vec!["END".into()]);
        assert_eq!(t.push("E"), "");
        assert_eq!(t.push("x"), "Ex");
        assert_eq!(t.push("EN"), "");
        assert_eq!(t.finish(), "EN");
    }

    proptest! {
        /// Whatever the split, the shown text is the text before the first stop.
        #[test]
        fn shown_text_is_the_prefix_before_the_stop(
            text in "[a-cé]{0,30}",
            stop in "[a-cé]{1,3}",
            cuts in proptest::collection::vec(0usize..40, 0..8),
        ) {
            let mut t = StopText::new(vec![stop.clone()]);
            let chars: Vec<char> = text.chars().collect();
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(chars.len())).collect();
            cuts.push(chars.len());
            cuts.sort();
            let mut shown = String::new();
            let mut from = 0;
            for c in cuts {
                let piece: String = chars[from..c].iter().collect();
                shown.push_str(&t.push(&piece));
                from = c;
            }
            if !t.stopped() {
                shown.push_str(&t.finish());
            }
            let expected = match text.find(&stop) {
                Some(at) => &text[..at],
                None => &text[..],
            };
            prop_assert_eq!(shown, expected);
        }
    }
}
