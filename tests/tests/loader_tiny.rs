//! Tiny checkpoints: deterministic from their seed, complete (tokenizer and chat template a
//! server can use), and the built-in model created once, atomically.

use model_deepseek::loader::{self, LoadOptions};
use model_deepseek::tiny::builtin::ensure_tiny_checkpoint;
use model_deepseek::tiny::tokenizer::{BOS_ID, EOS_ID, VOCAB_LEN};
use model_deepseek::tiny::{TinyLayout, TinySpec, write_tiny_checkpoint};

fn files(dir: &std::path::Path) -> Vec<(String, Vec<u8>)> {
    let mut out: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect();
    out.sort();
    out
}

#[test]
fn same_seed_same_bytes_other_seed_other_weights() {
    let spec = TinySpec {
        layout: TinyLayout::KimiK25,
        n_routed_experts: 384,
        seed: 9,
        ..TinySpec::default()
    };
    let [a, b, c] = [(); 3].map(|()| tempfile::tempdir().unwrap());
    write_tiny_checkpoint(a.path(), &spec).unwrap();
    write_tiny_checkpoint(b.path(), &spec).unwrap();
    write_tiny_checkpoint(c.path(), &TinySpec { seed: 10, ..spec }).unwrap();
    let (fa, fb, fc) = (files(a.path()), files(b.path()), files(c.path()));
    assert_eq!(fa, fb);
    let shard = |f: &[(String, Vec<u8>)]| {
        f.iter()
            .find(|(n, _)| n.contains("00002"))
            .unwrap()
            .1
            .clone()
    };
    assert_ne!(shard(&fa), shard(&fc));
}

#[test]
fn tokenizer_loads_round_trips_and_fits_the_vocabulary() {
    let dir = tempfile::tempdir().unwrap();
    write_tiny_checkpoint(dir.path(), &TinySpec::default()).unwrap();
    let tok = tokenizers::Tokenizer::from_file(dir.path().join("tokenizer.json")).unwrap();
    assert_eq!(tok.get_vocab_size(true), VOCAB_LEN);
    for text in [
        "Hello world, the end and of it",
        "naïve café — 東京 🚀",
        "  spaces\n\ttabs",
    ] {
        let enc = tok.encode(text, false).unwrap();
        assert!(enc.get_ids().iter().all(|&id| (id as usize) < VOCAB_LEN));
        assert_eq!(tok.decode(enc.get_ids(), false).unwrap(), text);
    }
    // Merges apply: " the" is one token, not four bytes.
    assert_eq!(tok.encode(" the", false).unwrap().get_ids().len(), 1);
    let specials = tok
        .encode(
            "<｜begin▁of▁sentence｜><｜User｜>hi<｜Assistant｜><｜end▁of▁sentence｜>",
            false,
        )
        .unwrap();
    // Specials are single ids; "hi" has no merge, so it is its two bytes.
    let ids = specials.get_ids();
    assert_eq!(
        (ids[0], ids[2], ids[3], ids[5]),
        (BOS_ID, u32::from(b'h'), u32::from(b'i'), EOS_ID)
    );
    assert_eq!(ids.len(), 6);

    let loaded = loader::load(dir.path(), &LoadOptions::default()).unwrap();
    let config = loaded.model.config();
    assert!(config.vocab_size >= VOCAB_LEN);
    assert_eq!(config.bos_token_id, Some(BOS_ID));
    assert_eq!(config.eos_token_ids, vec![EOS_ID]);
}

#[test]
fn chat_template_renders_deepseek_turns() {
    let dir = tempfile::tempdir().unwrap();
    write_tiny_checkpoint(dir.path(), &TinySpec::default()).unwrap();
    let text = std::fs::read_to_string(dir.path().join("tokenizer_config.json")).unwrap();
    let config: serde_json::Value = serde_json::from_str(&text).unwrap();
    let mut env = minijinja::Environment::new();
    env.add_template("chat", config["chat_template"].as_str().unwrap())
        .unwrap();
    let rendered = env
        .get_template("chat")
        .unwrap()
        .render(minijinja::context! {
            bos_token => config["bos_token"].as_str().unwrap(),
            add_generation_prompt => true,
            messages => vec![
                minijinja::context! { role => "system", content => "Be brief." },
                minijinja::context! { role => "user", content => "Hi" },
                minijinja::context! { role => "assistant", content => "Hello." },
                minijinja::context! { role => "user", content => "Bye" },
            ],
        })
        .unwrap();
    assert_eq!(
        rendered,
        "<｜begin▁of▁sentence｜>Be brief.<｜User｜>Hi<｜Assistant｜>Hello.<｜end▁of▁sentence｜>\
         <｜User｜>Bye<｜Assistant｜>"
    );
}

#[test]
fn builtin_style_checkpoint_is_created_once_and_atomically() {
    let cache = tempfile::tempdir().unwrap();
    let dir = cache.path().join("mxserve").join("builtin-test");
    let spec = TinySpec::default();
    ensure_tiny_checkpoint(&dir, &spec).unwrap();
    let first = files(&dir);
    let stamp = std::fs::metadata(dir.join("model.safetensors"))
        .unwrap()
        .modified()
        .unwrap();
    ensure_tiny_checkpoint(&dir, &spec).unwrap();
    assert_eq!(files(&dir), first);
    let again = std::fs::metadata(dir.join("model.safetensors"))
        .unwrap()
        .modified()
        .unwrap();
    assert_eq!(stamp, again, "an existing model is not rewritten");
    let siblings: Vec<_> = std::fs::read_dir(dir.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        siblings,
        vec![std::ffi::OsString::from("builtin-test")],
        "no temp dir left"
    );
    assert!(
        loader::load(&dir, &LoadOptions::default())
            .unwrap()
            .report
            .servable()
    );
}

#[test]
fn builtin_model_logits_are_well_conditioned() {
    let dir = tempfile::tempdir().unwrap();
    write_tiny_checkpoint(dir.path(), &model_deepseek::tiny::builtin::builtin_spec()).unwrap();
    let model = loader::load(dir.path(), &LoadOptions::default())
        .unwrap()
        .model;
    let prompt: Vec<u32> = (0..24).map(|i| (i * 37 + 5) % VOCAB_LEN as u32).collect();
    let mut cache = model_deepseek::KvCache::new(model.config(), prompt.len());
    let chunk = model_deepseek::SequenceChunk {
        seq: model_deepseek::SeqId(0),
        tokens: &prompt,
    };
    let logits = model
        .forward_all_positions(&[chunk], &mut cache)
        .unwrap()
        .pop()
        .unwrap();
    for row in logits.data.chunks_exact(logits.cols) {
        assert!(row.iter().all(|v| v.is_finite()));
        let n = row.len() as f32;
        let mean = row.iter().sum::<f32>() / n;
        let std = (row.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / n).sqrt();
        // Spread enough to prefer some tokens, far from a one-hot softmax.
        assert!((0.5..5.0).contains(&std), "logit std {std}");
        let max = row.iter().copied().fold(f32::MIN, f32::max);
        let top = 1.0 / row.iter().map(|v| (v - max).exp()).sum::<f32>();
        assert!(top < 0.9, "top probability {top}");
    }
}
