//! Bad-input catalogue, Quark layer: every malformed or contradictory `quantization_config` in
//! the table must give its documented, named `QuarkError` — never a panic, never a silent
//! fallback to another scheme — and the same resolver pipeline must accept the valid base.
//!
//! Each entry edits a valid MXFP4 W4A4 config (the shape of amd/DeepSeek-R1-MXFP4's), runs the
//! loader's sequence (parse → resolver → every layer of a MoE decoder layer → routed experts →
//! shared expert) and checks the first error: its variant, and that its message names the
//! offending field, entry or layer.

use quant_quark::{
    FusedModules, LayerScheme, NameMapper, QuarkConfig, QuarkError, ScaleRule, SchemeResolver,
    SharedExperts,
};
use serde_json::{Value, json};
use tests::{assert_no_failures, named_error_failure};

const LAYER: &str = "model.layers.3";
const EXPERTS: usize = 8;

fn mxfp4(dynamic: bool) -> Value {
    json!({"dtype": "fp4", "qscheme": "per_group", "group_size": 32, "ch_axis": -1,
           "scale_format": "e8m0", "scale_calculation_mode": "even",
           "round_method": "half_even", "is_dynamic": dynamic})
}

fn base() -> Value {
    json!({
        "quant_method": "quark",
        "export": {"kv_cache_group": [], "pack_method": "reorder"},
        "global_quant_config": {"weight": mxfp4(false), "input_tensors": mxfp4(true)},
        "layer_quant_config": {},
        "layer_type_quant_config": {},
        "kv_cache_quant_config": {},
        "exclude": ["lm_head", "re:.*self_attn\\.kv_b_proj"],
    })
}

/// Runs the loader's sequence on `text`, returning what the routed experts resolved to.
fn pipeline(text: &str) -> Result<LayerScheme, QuarkError> {
    let config = QuarkConfig::from_json_str(text)?;
    let fused = FusedModules::new(&[
        (
            "fused_qkv_a_proj_with_mqa",
            &["q_a_proj", "kv_a_proj_with_mqa"],
        ),
        ("gate_up_proj", &["gate_proj", "up_proj"]),
    ]);
    let mapper = NameMapper::identity();
    let resolver = SchemeResolver::new(config, fused, &mapper)?;
    for module in [
        "self_attn.fused_qkv_a_proj_with_mqa",
        "self_attn.q_b_proj",
        "self_attn.kv_b_proj",
        "self_attn.o_proj",
    ] {
        resolver.scheme_for(&format!("{LAYER}.{module}"))?;
    }
    let routed = resolver.routed_experts_scheme(LAYER, EXPERTS)?;
    match resolver.shared_experts_compatible(LAYER)? {
        SharedExperts::Compatible => Ok(routed),
        SharedExperts::Incompatible(reason) => panic!("base shared expert incompatible: {reason}"),
    }
}

/// One catalogue entry: how to break the config, which error variant must come back, and a
/// fragment its message must contain.
struct Case {
    name: &'static str,
    text: String,
    variant: fn(&QuarkError) -> bool,
    names: &'static str,
}

fn edited(edit: impl FnOnce(&mut Value)) -> String {
    let mut v = base();
    edit(&mut v);
    v.to_string()
}

fn catalogue() -> Vec<Case> {
    vec![
        Case {
            name: "truncated JSON",
            text: base().to_string()[..40].to_owned(),
            variant: |e| matches!(e, QuarkError::Json(_)),
            names: "not valid JSON",
        },
        Case {
            name: "not an object",
            text: "[1, 2, 3]".to_owned(),
            variant: |e| matches!(e, QuarkError::WrongType { .. }),
            names: "quantization_config",
        },
        Case {
            name: "another quantizer",
            text: edited(|v| v["quant_method"] = json!("awq")),
            variant: |e| matches!(e, QuarkError::NotQuark { found } if found == "awq"),
            names: "awq",
        },
        Case {
            name: "quant_method missing",
            text: edited(|v| {
                v.as_object_mut().unwrap().remove("quant_method");
            }),
            variant: |e| matches!(e, QuarkError::MissingField { .. }),
            names: "quant_method",
        },
        Case {
            name: "export missing",
            text: edited(|v| v["export"] = Value::Null),
            variant: |e| matches!(e, QuarkError::MissingField { .. }),
            names: "export",
        },
        Case {
            name: "exclude is a string, not a list",
            text: edited(|v| v["exclude"] = json!("lm_head")),
            variant: |e| matches!(e, QuarkError::WrongType { .. }),
            names: "exclude",
        },
        Case {
            name: "weight dtype of the wrong JSON type",
            text: edited(|v| v["global_quant_config"]["weight"]["dtype"] = json!(4)),
            variant: |e| matches!(e, QuarkError::WrongType { .. }),
            names: "global_quant_config.weight.dtype",
        },
        Case {
            name: "exclude regex that does not compile",
            text: edited(|v| v["exclude"] = json!(["lm_head", "re:model.layers.([0-9]+"])),
            variant: |e| matches!(e, QuarkError::BadExcludeRegex { entry, .. } if entry == "re:model.layers.([0-9]+"),
            names: "re:model.layers.([0-9]+",
        },
        Case {
            name: "quantized KV cache",
            text: edited(|v| v["export"]["kv_cache_group"] = json!(["*k_proj", "*v_proj"])),
            variant: |e| matches!(e, QuarkError::UnsupportedKvCache { .. }),
            names: "export.kv_cache_group",
        },
        Case {
            name: "kv_cache_quant_config not empty",
            text: edited(|v| {
                v["kv_cache_quant_config"] = json!({"*kv_b_proj": {"output_tensors": mxfp4(false)}})
            }),
            variant: |e| matches!(e, QuarkError::UnsupportedKvCache { .. }),
            names: "kv_cache_quant_config",
        },
        Case {
            name: "unknown weight dtype",
            text: edited(|v| v["global_quant_config"]["weight"]["dtype"] = json!("int3")),
            variant: |e| matches!(e, QuarkError::UnsupportedScheme { .. }),
            names: "int3",
        },
        Case {
            name: "MXFP4 with group size 64",
            text: edited(|v| v["global_quant_config"]["weight"]["group_size"] = json!(64)),
            variant: |e| matches!(e, QuarkError::UnsupportedScheme { .. }),
            names: "global_quant_config",
        },
        Case {
            name: "MXFP4 with float scales instead of e8m0",
            text: edited(|v| v["global_quant_config"]["weight"]["scale_format"] = json!("float")),
            variant: |e| matches!(e, QuarkError::UnsupportedScheme { .. }),
            names: "scale_format",
        },
        Case {
            name: "static fp4 activations (no input_scale exists)",
            text: edited(|v| {
                v["global_quant_config"]["input_tensors"]["is_dynamic"] = json!(false)
            }),
            variant: |e| matches!(e, QuarkError::UnsupportedScheme { .. }),
            names: "input_tensors",
        },
        Case {
            name: "fused q_a/kv_a shards with contradictory specs",
            text: edited(|v| {
                v["layer_quant_config"] =
                    json!({"*.q_a_proj": {"weight": mxfp4(false), "input_tensors": null}})
            }),
            variant: |e| matches!(e, QuarkError::FusedShardsDisagree { .. }),
            names: "fused_qkv_a_proj_with_mqa",
        },
        Case {
            name: "one routed expert excluded from its layer's format",
            text: edited(|v| {
                v["exclude"] = json!(["lm_head", "model.layers.3.mlp.experts.5.up_proj"])
            }),
            variant: |e| matches!(e, QuarkError::ExpertsDisagree { .. }),
            names: "experts.5.up_proj",
        },
        Case {
            name: "one routed expert with another activation rule",
            text: edited(|v| {
                let mut input = mxfp4(true);
                input["scale_calculation_mode"] = json!("floor");
                v["layer_quant_config"] =
                    json!({"*experts.2.*": {"weight": mxfp4(false), "input_tensors": input}})
            }),
            variant: |e| matches!(e, QuarkError::ExpertsDisagree { .. }),
            names: "experts.2",
        },
    ]
}

#[test]
fn the_valid_base_resolves_to_mxfp4_w4a4() {
    let routed = pipeline(&base().to_string()).expect("the base config is valid");
    assert_eq!(
        routed,
        LayerScheme::Mxfp4 {
            activations: Some(ScaleRule::Even)
        }
    );
}

#[test]
fn every_bad_config_gives_its_named_error() {
    let failures: Vec<String> = catalogue()
        .into_iter()
        .filter_map(|case| {
            named_error_failure(
                case.name,
                pipeline(&case.text),
                case.variant,
                case.names,
                |scheme| format!("accepted, resolved to {scheme:?}"),
            )
        })
        .collect();
    assert_no_failures(&failures);
}
