//! Incremental detokenization: turns a growing list of token ids into text deltas, holding
//! back bytes until they form whole UTF-8 characters, so a stream never splits a character.

use tokenizers::Tokenizer;

/// The detokenization state of one sequence.
///
/// It decodes a short window of recent tokens twice (with and without the newest ones) and
/// emits the difference; the window keeps the context byte-level and SentencePiece decoders
/// need (leading spaces, merged bytes). A window ending in U+FFFD is an incomplete character
/// and waits for more tokens.
#[derive(Debug, Default)]
pub struct Detokenizer {
    tokens: Vec<u32>,
    /// Start of the window decoded for context.
    prefix_offset: usize,
    /// End of what has been emitted.
    read_offset: usize,
}

impl Detokenizer {
    /// A detokenizer for a completion that starts from nothing.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `token` and returns the newly completed text (possibly empty).
    pub fn push(&mut self, tokenizer: &Tokenizer, token: u32) -> Result<String, tokenizers::Error> {
        self.tokens.push(token);
        let prefix = tokenizer.decode(&self.tokens[self.prefix_offset..self.read_offset], true)?;
        let full = tokenizer.decode(&self.tokens[self.prefix_offset..], true)?;
        if full.len() > prefix.len() && !full.ends_with('\u{FFFD}') && full.starts_with(&prefix) {
            let delta = full[prefix.len()..].to_string();
            self.prefix_offset = self.read_offset;
            self.read_offset = self.tokens.len();
            Ok(delta)
        } else {
            Ok(String::new())
        }
    }

    /// Text held back at the end of the sequence (an incomplete character decodes to U+FFFD).
    pub fn flush(&mut self, tokenizer: &Tokenizer) -> Result<String, tokenizers::Error> {
        let prefix = tokenizer.decode(&self.tokens[self.prefix_offset..self.read_offset], true)?;
        let full = tokenizer.decode(&self.tokens[self.prefix_offset..], true)?;
        self.prefix_offset = self.tokens.len();
        self.read_offset = self.tokens.len();
        Ok(full.strip_prefix(&prefix).unwrap_or("").to_string())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    /// A byte-level BPE tokenizer with one token per byte and no merges, so any multi-byte
    /// character is split across tokens.
    pub(crate) fn byte_tokenizer() -> Tokenizer {
        // GPT-2's byte-to-unicode table: printable bytes map to themselves, the rest to 256+.
        let mut chars = Vec::new();
        let mut extra = 0u32;
        for b in 0u32..256 {
            let printable =
                (33..=126).contains(&b) || (161..=172).contains(&b) || (174..=255).contains(&b);
            if printable {
                chars.push(char::from_u32(b).unwrap());
            } else {
                chars.push(char::from_u32(256 + extra).unwrap());
                extra += 1;
            }
        }
        let vocab: serde_json::Map<String, serde_json::Value> = chars
            .iter()
            .enumerate()
            .map(|(i, c)| (c.to_string(), serde_json::Value::from(i)))
            .collect();
        let json = serde_json::json!({
            "version": "1.0",
            "added_tokens": [
                {"id": 256, "content": "<eos>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true}
            ],
            "normalizer": null,
            "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": true},
            "post_processor": null,
            "decoder": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": true},
            "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                      "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false,
                      "vocab": vocab, "merges": []}
        });
        json.to_string().parse().unwrap()
    }

    #[test]
    fn streamed_deltas_are_whole_characters_and_concatenate_to_the_text() {
        let tok = byte_tokenizer();
        let mut rng = ChaCha8Rng::seed_from_u64(17);
        let alphabet = ['a', ' ', 'é', '日', '本', '🦀', '\n', 'Ω', 'z'];
        for _ in 0..50 {
            let text: String = (0..rng.random_range(1..30))
                .map(|_| alphabet[rng.random_range(0..alphabet.len())])
                .collect();
            let ids = tok.encode(text.as_str(), false).unwrap().get_ids().to_vec();
            assert_eq!(ids.len(), text.len(), "one token per byte");
            let mut d = Detokenizer::new();
            let mut out = String::new();
            for &id in &ids {
                let delta = d.push(&tok, id).unwrap();
                assert!(
                    !delta.contains('\u{FFFD}'),
                    "delta {delta:?} split a character"
                );
                out.push_str(&delta);
            }
            out.push_str(&d.flush(&tok).unwrap());
            assert_eq!(out, text);
        }
    }

    #[test]
    fn a_truncated_character_is_flushed_as_the_replacement_character() {
        let tok = byte_tokenizer();
        let ids = tok.encode("a日", false).unwrap().get_ids().to_vec();
        let mut d = Detokenizer::new();
        assert_eq!(d.push(&tok, ids[0]).unwrap(), "a");
        assert_eq!(d.push(&tok, ids[1]).unwrap(), "");
        assert_eq!(d.push(&tok, ids[2]).unwrap(), "");
        assert_eq!(d.flush(&tok).unwrap(), "\u{FFFD}");
    }
}
