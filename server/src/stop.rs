//! Stop strings: text is held back while it could still be the start of a stop string, and
//! the completion ends, without the stop string, as soon as one appears.

/// The stop-string state of one sequence.
#[derive(Debug)]
pub struct StopMatcher {
    stops: Vec<String>,
    /// Text produced but not yet released because it may begin a stop string.
    pending: String,
}

/// What to do with a piece of generated text.
#[derive(Debug, PartialEq, Eq)]
pub struct StopOutcome {
    /// Text safe to send to the client now.
    pub emit: String,
    /// A stop string was found: the completion ends after `emit`.
    pub stopped: bool,
}

impl StopMatcher {
    /// A matcher for `stops` (empty strings are ignored).
    pub fn new(stops: Vec<String>) -> Self {
        Self {
            stops: stops.into_iter().filter(|s| !s.is_empty()).collect(),
            pending: String::new(),
        }
    }

    /// Adds newly generated text.
    pub fn push(&mut self, text: &str) -> StopOutcome {
        self.pending.push_str(text);
        if let Some(at) = self
            .stops
            .iter()
            .filter_map(|s| self.pending.find(s.as_str()))
            .min()
        {
            let emit = self.pending[..at].to_string();
            self.pending.clear();
            return StopOutcome {
                emit,
                stopped: true,
            };
        }
        // Keep the longest suffix that is a proper prefix of some stop string.
        let keep = self
            .pending
            .char_indices()
            .map(|(i, _)| i)
            .find(|&i| {
                let tail = &self.pending[i..];
                self.stops.iter().any(|s| s.starts_with(tail))
            })
            .unwrap_or(self.pending.len());
        let emit = self.pending[..keep].to_string();
        self.pending.drain(..keep);
        StopOutcome {
            emit,
            stopped: false,
        }
    }

    /// Releases held-back text when the completion ends for another reason.
    pub fn finish(&mut self) -> String {
        std::mem::take(&mut self.pending)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    /// Feeds `text` in random pieces; returns (what was emitted, whether it stopped).
    fn run(stops: &[&str], text: &str, rng: &mut ChaCha8Rng) -> (String, bool) {
        let mut m = StopMatcher::new(stops.iter().map(|s| s.to_string()).collect());
        let chars: Vec<char> = text.chars().collect();
        let mut out = String::new();
        let mut i = 0;
        while i < chars.len() {
            let n = rng.random_range(1..=3).min(chars.len() - i);
            let piece: String = chars[i..i + n].iter().collect();
            i += n;
            let o = m.push(&piece);
            out.push_str(&o.emit);
            if o.stopped {
                return (out, true);
            }
        }
        out.push_str(&m.finish());
        (out, false)
    }

    #[test]
    fn output_is_the_text_before_the_first_stop_wherever_pieces_split() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let alphabet = ['a', 'b', 'é', '\n', 'c'];
        let stops = ["ab", "\n\n", "éé c"];
        for _ in 0..500 {
            let text: String = (0..rng.random_range(0..20))
                .map(|_| alphabet[rng.random_range(0..alphabet.len())])
                .collect();
            // Reference: cut at the earliest occurrence of any stop string.
            let first = stops.iter().filter_map(|s| text.find(s)).min();
            let (out, stopped) = run(&stops, &text, &mut rng);
            match first {
                Some(at) => {
                    assert!(stopped, "{text:?}");
                    assert_eq!(out, text[..at], "{text:?}");
                }
                None => {
                    assert!(!stopped, "{text:?}");
                    assert_eq!(out, text);
                }
            }
        }
    }

    #[test]
    fn text_that_cannot_start_a_stop_is_released_at_once() {
        let mut m = StopMatcher::new(vec!["END".into()]);
        assert_eq!(m.push("hello E").emit, "hello ");
        assert_eq!(m.push("x").emit, "Ex");
    }
}
