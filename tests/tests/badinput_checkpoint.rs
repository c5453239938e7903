//! Bad-input catalogue, checkpoint layer: every damaged checkpoint directory in the table must
//! give its documented, named `LoadError` from `loader::load` (and the same from `inspect`
//! where it fails before the report) — never a panic, never a silent load — while the
//! undamaged checkpoint of the same layout loads.
//!
//! The damages: malformed and contradictory `config.json`s, Quark configs inside them that
//! cannot be honoured (exclude regexes that do not compile, a quantized KV cache), a bf16
//! shared expert with fusion forced on, NaN E8M0 scale bytes, lying safetensors headers
//! (truncated files, overlapping ranges, absurd shapes, wrong dtypes), and shard indexes that
//! name missing or wrong shards.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use model_deepseek::fusion::FusionMode;
use model_deepseek::loader::{self, LoadError, LoadOptions, TensorProblem, header};
use model_deepseek::tiny::{SharedExperts, TinyLayout, TinySpec, write_tiny_checkpoint};
use serde_json::{Value, json};
use tests::{assert_no_failures, named_error_failure};

/// Which undamaged checkpoint a case starts from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Base {
    /// DeepSeek-V3 layout, one file, MXFP4 shared experts.
    Deepseek,
    /// DeepSeek-V3 layout with bf16 shared experts (not fusable).
    DeepseekBf16Shared,
    /// Kimi-K2.5 wrapper, sharded with an index.
    Kimi,
}

impl Base {
    fn spec(self) -> TinySpec {
        let spec = TinySpec {
            n_routed_experts: 16,
            seed: 5,
            ..TinySpec::default()
        };
        match self {
            Self::Deepseek => spec,
            Self::DeepseekBf16Shared => TinySpec {
                shared_experts: SharedExperts::Bf16,
                ..spec
            },
            Self::Kimi => TinySpec {
                layout: TinyLayout::KimiK25,
                ..spec
            },
        }
    }

    /// The undamaged checkpoint, written once per test process.
    fn template(self) -> &'static Path {
        static DIRS: [OnceLock<tempfile::TempDir>; 3] =
            [OnceLock::new(), OnceLock::new(), OnceLock::new()];
        DIRS[self as usize]
            .get_or_init(|| {
                let dir = tempfile::tempdir().unwrap();
                write_tiny_checkpoint(dir.path(), &self.spec()).unwrap();
                dir
            })
            .path()
    }

    /// A fresh copy of the template to damage.
    fn copy(self) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for entry in std::fs::read_dir(self.template()).unwrap() {
            let entry = entry.unwrap();
            std::fs::copy(entry.path(), dir.path().join(entry.file_name())).unwrap();
        }
        dir
    }
}

fn edit_json(path: &Path, edit: impl FnOnce(&mut Value)) {
    let mut value: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    edit(&mut value);
    std::fs::write(path, value.to_string()).unwrap();
}

fn config(dir: &Path) -> PathBuf {
    dir.join("config.json")
}

fn weights(dir: &Path) -> PathBuf {
    dir.join("model.safetensors")
}

/// Rewrites a safetensors file's header with `edit` applied to its JSON, keeping the data.
fn edit_header(path: &Path, edit: impl FnOnce(&mut Value)) {
    let bytes = std::fs::read(path).unwrap();
    let len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let mut json: Value = serde_json::from_slice(&bytes[8..8 + len]).unwrap();
    edit(&mut json);
    let text = json.to_string();
    let mut out = (text.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(text.as_bytes());
    out.extend_from_slice(&bytes[8 + len..]);
    std::fs::write(path, out).unwrap();
}

/// Sets one scale byte of `tensor` to 255 (E8M0 NaN).
fn nan_scale(path: &Path, tensor: &str, index: usize) {
    let mut bytes = std::fs::read(path).unwrap();
    let entries = header::parse(path, &bytes, bytes.len()).unwrap();
    let entry = entries.iter().find(|e| e.name == tensor).unwrap();
    bytes[entry.range.start + index] = 255;
    std::fs::write(path, bytes).unwrap();
}

fn is_header(e: &LoadError) -> bool {
    matches!(e, LoadError::Header(_))
}
fn is_config(e: &LoadError) -> bool {
    matches!(e, LoadError::Config(_))
}
fn is_quantization(e: &LoadError) -> bool {
    matches!(e, LoadError::Quantization(_))
}
fn is_index(e: &LoadError) -> bool {
    matches!(e, LoadError::Index { .. })
}
fn is_fusion(e: &LoadError) -> bool {
    matches!(e, LoadError::Fusion(_))
}
fn is_bad_value(e: &LoadError) -> bool {
    matches!(e, LoadError::Tensors { problems }
        if problems.iter().all(|p| matches!(p, TensorProblem::BadValue { .. })))
}
fn is_mismatch(e: &LoadError) -> bool {
    matches!(e, LoadError::Tensors { problems }
        if problems.iter().any(|p| matches!(p, TensorProblem::Mismatch { .. })))
}

/// One catalogue entry.
struct Case {
    name: &'static str,
    base: Base,
    fusion: FusionMode,
    damage: fn(&Path),
    variant: fn(&LoadError) -> bool,
    /// A fragment the error message must contain (the field, tensor, file or reason).
    names: &'static str,
}

const SHARED_SCALE: &str = "model.layers.1.mlp.shared_experts.up_proj.weight_scale";
const EXPERT_SCALE: &str = "model.layers.2.mlp.experts.11.down_proj.weight_scale";
const KIMI_SHARD: &str = "model-00002-of-00004.safetensors";

fn catalogue() -> Vec<Case> {
    use FusionMode::{Auto, On};
    vec![
        Case {
            name: "config.json is not JSON",
            base: Base::Deepseek,
            fusion: Auto,
            damage: |d| std::fs::write(config(d), "{\"architectures\": [").unwrap(),
            variant: is_config,
            names: "config.json",
        },
        Case {
            name: "config.json names another architecture",
            base: Base::Deepseek,
            fusion: Auto,
            damage: |d| {
                edit_json(&config(d), |v| {
                    v["architectures"] = json!(["MixtralForCausalLM"])
                })
            },
            variant: is_config,
            names: "MixtralForCausalLM",
        },
        Case {
            name: "config field of the wrong JSON type",
            base: Base::Deepseek,
            fusion: Auto,
            damage: |d| edit_json(&config(d), |v| v["hidden_size"] = json!("sixty-four")),
            variant: is_config,
            names: "sixty-four",
        },
        Case {
            name: "contradictory routing: top-k above the expert count",
            base: Base::Deepseek,
            fusion: Auto,
            damage: |d| edit_json(&config(d), |v| v["num_experts_per_tok"] = json!(17)),
            variant: is_config,
            names: "num_experts_per_tok",
        },
        Case {
            name: "contradictory routing: n_group does not divide the experts",
            base: Base::Deepseek,
            fusion: Auto,
            damage: |d| edit_json(&config(d), |v| v["n_group"] = json!(3)),
            variant: is_config,
            names: "n_group",
        },
        Case {
            name: "Kimi wrapper without text_config",
            base: Base::Kimi,
            fusion: Auto,
            damage: |d| {
                edit_json(&config(d), |v| {
                    v.as_object_mut().unwrap().remove("text_config");
                })
            },
            variant: is_config,
            names: "text_config",
        },
        Case {
            name: "Kimi wrapper with two different quantization configs",
            base: Base::Kimi,
            fusion: Auto,
            damage: |d| {
                edit_json(&config(d), |v| {
                    let mut inner = v["quantization_config"].clone();
                    inner["exclude"] = json!([]);
                    v["text_config"]["quantization_config"] = inner;
                })
            },
            variant: is_config,
            names: "differs",
        },
        Case {
            name: "quantization by another method",
            base: Base::Deepseek,
            fusion: Auto,
            damage: |d| {
                edit_json(&config(d), |v| {
                    v["quantization_config"]["quant_method"] = json!("gptq")
                })
            },
            variant: is_quantization,
            names: "gptq",
        },
        Case {
            name: "exclude regex that does not compile",
            base: Base::Kimi,
            fusion: Auto,
            damage: |d| {
                edit_json(&config(d), |v| {
                    v["quantization_config"]["exclude"] =
                        json!(["re:.*lm_head", "re:.*self_attn[.*"])
                })
            },
            variant: is_quantization,
            names: "re:.*self_attn[.*",
        },
        Case {
            name: "quantized KV cache",
            base: Base::Deepseek,
            fusion: Auto,
            damage: |d| {
                edit_json(&config(d), |v| {
                    v["quantization_config"]["export"]["kv_cache_group"] = json!(["*kv_b_proj"])
                })
            },
            variant: is_quantization,
            names: "kv_cache_group",
        },
        Case {
            name: "bf16 shared expert with --fusion on",
            base: Base::DeepseekBf16Shared,
            fusion: On,
            damage: |_| {},
            variant: is_fusion,
            names: "layer 1",
        },
        Case {
            name: "NaN scale byte in a shared expert",
            base: Base::Deepseek,
            fusion: Auto,
            damage: |d| nan_scale(&weights(d), SHARED_SCALE, 3),
            variant: is_bad_value,
            names: SHARED_SCALE,
        },
        Case {
            name: "NaN scale byte in a routed expert",
            base: Base::Deepseek,
            fusion: Auto,
            damage: |d| nan_scale(&weights(d), EXPERT_SCALE, 0),
            variant: is_bad_value,
            names: "(NaN)",
        },
        Case {
            name: "truncated weights file",
            base: Base::Deepseek,
            fusion: Auto,
            damage: |d| {
                let bytes = std::fs::read(weights(d)).unwrap();
                std::fs::write(weights(d), &bytes[..bytes.len() - 100]).unwrap();
            },
            variant: is_header,
            names: "truncated",
        },
        Case {
            name: "file cut inside its header",
            base: Base::Deepseek,
            fusion: Auto,
            damage: |d| {
                let bytes = std::fs::read(weights(d)).unwrap();
                std::fs::write(weights(d), &bytes[..200]).unwrap();
            },
            variant: is_header,
            names: "runs past the end",
        },
        Case {
            name: "header length of 2^64 - 1",
            base: Base::Deepseek,
            fusion: Auto,
            damage: |d| {
                let mut bytes = std::fs::read(weights(d)).unwrap();
                bytes[..8].copy_from_slice(&u64::MAX.to_le_bytes());
                std::fs::write(weights(d), bytes).unwrap();
            },
            variant: is_header,
            names: "exceeds",
        },
        Case {
            name: "overlapping data ranges",
            base: Base::Deepseek,
            fusion: Auto,
            damage: |d| {
                edit_header(&weights(d), |h| {
                    // Two bytes into the tensor before it; the two bytes after it become a gap.
                    let offsets = &mut h["model.norm.weight"]["data_offsets"];
                    let (start, end) = (offsets[0].as_u64().unwrap(), offsets[1].as_u64().unwrap());
                    *offsets = json!([start - 2, end - 2]);
                })
            },
            variant: is_header,
            names: "overlaps",
        },
        Case {
            name: "absurd shape",
            base: Base::Deepseek,
            fusion: Auto,
            damage: |d| {
                edit_header(&weights(d), |h| {
                    h["model.norm.weight"]["shape"] = json!([1u64 << 62, 1u64 << 62]);
                })
            },
            variant: is_header,
            names: "overflows",
        },
        Case {
            name: "dtype the format does not have",
            base: Base::Deepseek,
            fusion: Auto,
            damage: |d| {
                edit_header(&weights(d), |h| {
                    h["model.norm.weight"]["dtype"] = json!("F4")
                })
            },
            variant: is_header,
            names: "unsupported dtype F4",
        },
        Case {
            name: "wrong dtype for the model (I16 norm, same byte size; F16/F32 are accepted)",
            base: Base::Deepseek,
            fusion: Auto,
            damage: |d| {
                edit_header(&weights(d), |h| {
                    h["model.norm.weight"]["dtype"] = json!("I16")
                })
            },
            variant: is_mismatch,
            names: "model.norm.weight",
        },
        Case {
            name: "index names a missing shard",
            base: Base::Kimi,
            fusion: Auto,
            damage: |d| std::fs::remove_file(d.join(KIMI_SHARD)).unwrap(),
            variant: is_index,
            names: KIMI_SHARD,
        },
        Case {
            name: "index names a path outside the directory",
            base: Base::Kimi,
            fusion: Auto,
            damage: |d| {
                edit_json(&d.join("model.safetensors.index.json"), |v| {
                    v["weight_map"]["language_model.model.norm.weight"] =
                        json!("../model.safetensors")
                })
            },
            variant: is_index,
            names: "not a file in the directory",
        },
        Case {
            name: "index is not JSON",
            base: Base::Kimi,
            fusion: Auto,
            damage: |d| {
                std::fs::write(d.join("model.safetensors.index.json"), "{\"weight_map\"").unwrap()
            },
            variant: is_index,
            names: "not valid JSON",
        },
    ]
}

#[test]
fn undamaged_bases_load() {
    for base in [Base::Deepseek, Base::DeepseekBf16Shared, Base::Kimi] {
        let loaded = loader::load(base.template(), &LoadOptions::default())
            .unwrap_or_else(|e| panic!("{base:?}: {e}"));
        assert!(loaded.report.servable(), "{base:?}");
    }
}

#[test]
fn every_damaged_checkpoint_gives_its_named_error() {
    let mut failures = Vec::new();
    for case in catalogue() {
        let dir = case.base.copy();
        (case.damage)(dir.path());
        let options = LoadOptions {
            fusion: case.fusion,
            ..LoadOptions::default()
        };
        let outcome = loader::load(dir.path(), &options);
        failures.extend(named_error_failure(
            case.name,
            outcome,
            case.variant,
            case.names,
            |_| "loaded".into(),
        ));
    }
    assert_no_failures(&failures);
}
