//! A small byte-level BPE tokenizer for tiny checkpoints, in the Hugging Face `tokenizers`
//! JSON format, plus a `tokenizer_config.json` with a DeepSeek-style chat template.
//!
//! Ids 0..256 are the 256 bytes (GPT-2's byte-to-printable-character mapping), then one id per
//! merge, then the special tokens. Any UTF-8 text round-trips, so a server can use it as is.

use serde_json::{Value, json};

/// Beginning-of-sequence token, spelled as DeepSeek-V3 spells it.
pub const BOS: &str = "<｜begin▁of▁sentence｜>";
/// End-of-sequence token.
pub const EOS: &str = "<｜end▁of▁sentence｜>";
/// Chat-template marker before a user turn.
pub const USER: &str = "<｜User｜>";
/// Chat-template marker before an assistant turn.
pub const ASSISTANT: &str = "<｜Assistant｜>";
/// Padding token.
pub const PAD: &str = "<｜▁pad▁｜>";

const SPECIALS: [&str; 5] = [BOS, EOS, USER, ASSISTANT, PAD];

/// Merges in priority order, as pairs of existing tokens (`Ġ` is the byte-level space).
const MERGES: [(&str, &str); 40] = [
    ("Ġ", "t"),
    ("t", "h"),
    ("h", "e"),
    ("i", "n"),
    ("e", "r"),
    ("a", "n"),
    ("Ġ", "a"),
    ("o", "n"),
    ("r", "e"),
    ("Ġt", "he"),
    ("Ġ", "s"),
    ("Ġ", "w"),
    ("n", "d"),
    ("Ġa", "nd"),
    ("o", "u"),
    ("a", "t"),
    ("e", "n"),
    ("i", "s"),
    ("Ġ", "i"),
    ("i", "t"),
    ("e", "s"),
    ("in", "g"),
    ("Ġ", "o"),
    ("Ġo", "f"),
    ("Ġ", "h"),
    ("e", "l"),
    ("l", "o"),
    ("Ġ", "c"),
    ("o", "r"),
    ("Ġ", "m"),
    ("a", "r"),
    ("Ġ", "b"),
    ("l", "l"),
    ("Ġ", "p"),
    ("Ġ", "f"),
    ("Ġ", "d"),
    ("e", "d"),
    ("Ġw", "or"),
    ("Ġh", "el"),
    ("Ġhel", "lo"),
];

/// Number of ids the tokenizer uses; a model's `vocab_size` must be at least this.
pub const VOCAB_LEN: usize = 256 + MERGES.len() + SPECIALS.len();

/// Id of [`BOS`].
pub const BOS_ID: u32 = (256 + MERGES.len()) as u32;
/// Id of [`EOS`].
pub const EOS_ID: u32 = BOS_ID + 1;

/// DeepSeek-style chat template: system prompts first, then `<｜User｜>`/`<｜Assistant｜>` turns,
/// each assistant turn closed by the end-of-sentence token.
const CHAT_TEMPLATE: &str = concat!(
    "{% if not add_generation_prompt is defined %}{% set add_generation_prompt = false %}{% endif %}",
    "{% set ns = namespace(system='') %}",
    "{% for message in messages %}{% if message['role'] == 'system' %}",
    "{% set ns.system = ns.system + message['content'] %}{% endif %}{% endfor %}",
    "{{ bos_token }}{{ ns.system }}",
    "{% for message in messages %}",
    "{% if message['role'] == 'user' %}{{ '<｜User｜>' + message['content'] }}",
    "{% elif message['role'] == 'assistant' %}",
    "{{ '<｜Assistant｜>' + message['content'] + '<｜end▁of▁sentence｜>' }}",
    "{% endif %}{% endfor %}",
    "{% if add_generation_prompt %}{{ '<｜Assistant｜>' }}{% endif %}",
);

/// GPT-2's reversible map from bytes to printable characters, so byte-level BPE tokens are
/// valid JSON strings.
fn byte_char(b: u8) -> char {
    let printable = |b: u8| (b'!'..=b'~').contains(&b) || (0xA1..=0xAC).contains(&b) || b >= 0xAE;
    if printable(b) {
        return char::from(b);
    }
    let shift = (0..b).filter(|&x| !printable(x)).count() as u32;
    char::from_u32(256 + shift).expect("256..324 are valid chars")
}

/// The `tokenizer.json` document.
pub fn tokenizer_json() -> Value {
    let mut vocab = serde_json::Map::new();
    for b in 0..=255u8 {
        vocab.insert(byte_char(b).to_string(), json!(b));
    }
    for (i, (a, b)) in MERGES.iter().enumerate() {
        debug_assert!(vocab.contains_key(*a) && vocab.contains_key(*b), "{a} {b}");
        vocab.insert(format!("{a}{b}"), json!(256 + i));
    }
    let added: Vec<Value> = SPECIALS
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let id = BOS_ID as usize + i;
            vocab.insert((*s).to_owned(), json!(id));
            json!({"id": id, "content": s, "single_word": false, "lstrip": false,
                   "rstrip": false, "normalized": false, "special": true})
        })
        .collect();
    let byte_level = json!({"type": "ByteLevel", "add_prefix_space": false,
                            "trim_offsets": true, "use_regex": true});
    json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": byte_level,
        "post_processor": null,
        "decoder": byte_level,
        "model": {
            "type": "BPE",
            "dropout": null,
            "unk_token": null,
            "continuing_subword_prefix": null,
            "end_of_word_suffix": null,
            "fuse_unk": false,
            "byte_fallback": false,
            "ignore_merges": false,
            "vocab": vocab,
            "merges": MERGES.iter().map(|(a, b)| json!([a, b])).collect::<Vec<_>>(),
        }
    })
}

/// The `tokenizer_config.json` document: special tokens and the chat template.
pub fn tokenizer_config_json() -> Value {
    json!({
        "add_bos_token": true,
        "add_eos_token": false,
        "bos_token": BOS,
        "eos_token": EOS,
        "pad_token": PAD,
        "clean_up_tokenization_spaces": false,
        "model_max_length": 2048,
        "tokenizer_class": "PreTrainedTokenizerFast",
        "chat_template": CHAT_TEMPLATE,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_map_is_a_bijection_onto_distinct_chars() {
        let chars: std::collections::BTreeSet<char> = (0..=255u8).map(byte_char).collect();
        assert_eq!(chars.len(), 256);
        assert_eq!(byte_char(b' '), 'Ġ');
        assert_eq!(byte_char(b'a'), 'a');
    }

    #[test]
    fn every_merge_joins_tokens_that_exist_earlier() {
        let doc = tokenizer_json();
        let vocab = doc["model"]["vocab"].as_object().unwrap();
        assert_eq!(vocab.len(), VOCAB_LEN);
        for (i, (a, b)) in MERGES.iter().enumerate() {
            let id = 256 + i as u64;
            assert!(vocab[*a].as_u64().unwrap() < id, "{a}");
            assert!(vocab[*b].as_u64().unwrap() < id, "{b}");
            assert_eq!(vocab[&format!("{a}{b}")].as_u64().unwrap(), id);
        }
        assert_eq!(vocab[BOS].as_u64().unwrap(), u64::from(BOS_ID));
        assert_eq!(vocab[EOS].as_u64().unwrap(), u64::from(EOS_ID));
    }
}
