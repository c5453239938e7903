//! The CPU forward pass against logits computed by Hugging Face `transformers`' own
//! `DeepseekV3ForCausalLM` on the same tiny checkpoints (dequantized weights, float64, on CPU).
//!
//! The fixtures and the script that made them are in `tests/reference/`
//! (`hf_reference_logits.py`; run on the device machine with torch 2.11 and transformers
//! 5.17). The checkpoints are regenerated here from the same seeds; a generator change that
//! alters a single weight makes this test fail until the fixtures are regenerated.
//!
//! Our side runs with unquantized activations (weight-only MXFP4), which is what the reference
//! computes. Tolerance: the reference is float64, ours float32 throughout. With unit-sized
//! activations, f32 rounding over 3 layers of 64-wide dot products, attention and 8+1 expert
//! MLPs per token stays near 1e-5 relative; logits are a few units, so 2e-4 absolute leaves
//! an order of magnitude of headroom while a real bug (wrong rope pairing, yarn mscale, eps,
//! routing, rsf applied twice, one flipped expert) moves logits by 1e-2 or more. The script
//! records the smallest routing margin (about 4e-4 here), far above f32 rounding, so no expert
//! choice can flip between the two implementations.

use std::path::Path;

use model_deepseek::ActivationMode;
use model_deepseek::fusion::FusionMode;
use model_deepseek::loader::{self, Dtype, LoadOptions, header};
use model_deepseek::tiny::{SharedExperts, TinyLayout, TinySpec, write_tiny_checkpoint};
use model_deepseek::{KvCache, SeqId, SequenceChunk};

const TOLERANCE: f64 = 2e-4;

/// Reads an f64 or i64 tensor from a fixture with our own validated header parser.
fn fixture(path: &Path, name: &str) -> (Vec<usize>, Vec<[u8; 8]>) {
    let bytes = std::fs::read(path).unwrap();
    let entries = header::parse(path, &bytes, bytes.len()).unwrap();
    let e = entries.iter().find(|e| e.name == name).unwrap();
    assert!(
        matches!(e.dtype, Dtype::F64 | Dtype::I64),
        "{name}: {}",
        e.dtype
    );
    let values = bytes[e.range.clone()]
        .chunks_exact(8)
        .map(|c| c.try_into().unwrap())
        .collect();
    (e.shape.clone(), values)
}

fn check(spec: TinySpec, fixture_name: &str) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("reference")
        .join(fixture_name);
    let (shape, logits) = fixture(&path, "logits");
    let expected: Vec<f64> = logits.iter().map(|b| f64::from_le_bytes(*b)).collect();
    let (_, ids) = fixture(&path, "prompt_ids");
    let prompt: Vec<u32> = ids
        .iter()
        .map(|b| u32::try_from(i64::from_le_bytes(*b)).unwrap())
        .collect();
    let (_, margin) = fixture(&path, "router_margin");
    assert!(
        f64::from_le_bytes(margin[0]) > 1e-5,
        "fixture has a near-tie in routing"
    );

    let dir = tempfile::tempdir().unwrap();
    write_tiny_checkpoint(dir.path(), &spec).unwrap();
    for fusion in [FusionMode::Auto, FusionMode::Off] {
        let options = LoadOptions {
            fusion,
            activations: ActivationMode::Unquantized,
        };
        let loaded = loader::load(dir.path(), &options).unwrap();
        assert_eq!(loaded.report.fusion.model.fused, fusion == FusionMode::Auto);
        let model = loaded.model;
        let mut cache = KvCache::new(model.config(), prompt.len());
        let got = model
            .forward_all_positions(
                &[SequenceChunk {
                    seq: SeqId(0),
                    tokens: &prompt,
                }],
                &mut cache,
            )
            .unwrap()
            .pop()
            .unwrap();
        assert_eq!([got.rows, got.cols], [shape[0], shape[1]]);
        let mut worst = (0.0f64, 0usize);
        for (i, (g, e)) in got.data.iter().zip(&expected).enumerate() {
            let d = (f64::from(*g) - e).abs();
            if d > worst.0 {
                worst = (d, i);
            }
        }
        eprintln!(
            "{fixture_name} fusion {fusion}: max |ours - HF| = {:.3e}",
            worst.0
        );
        assert!(
            worst.0 <= TOLERANCE,
            "{fixture_name} (fusion {fusion}): logit {} of position {} differs by {:.3e} \
             (ours {}, HF {})",
            worst.1 % shape[1],
            worst.1 / shape[1],
            worst.0,
            got.data[worst.1],
            expected[worst.1]
        );
    }
}

#[test]
fn deepseek_layout_256_experts_matches_transformers() {
    check(
        TinySpec {
            layout: TinyLayout::DeepseekV3,
            shared_experts: SharedExperts::Quantized,
            n_routed_experts: 256,
            n_shared_experts: 1,
            seed: 7,
        },
        "hf_tiny_deepseek_seed7.safetensors",
    );
}

#[test]
fn kimi_layout_384_experts_matches_transformers() {
    check(
        TinySpec {
            layout: TinyLayout::KimiK25,
            shared_experts: SharedExperts::Quantized,
            n_routed_experts: 384,
            n_shared_experts: 1,
            seed: 11,
        },
        "hf_tiny_kimi_k25_seed11.safetensors",
    );
}
