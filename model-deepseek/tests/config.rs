//! Config parsing: snapshots of the published layouts, and a typed error naming the field for
//! every impossible or unsupported value.

use model_deepseek::config::{ConfigError, Layout, parse_config};
use serde_json::{Value, json};

fn fixture(name: &str) -> String {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

#[test]
fn deepseek_v3_config() {
    let parsed = parse_config(&fixture("deepseek_v3.json")).expect("parses");
    assert_eq!(parsed.layout, Layout::DeepseekV3);
    insta::assert_yaml_snapshot!(parsed);
}

#[test]
fn kimi_k2_config() {
    let parsed = parse_config(&fixture("kimi_k2.json")).expect("parses");
    assert_eq!(parsed.layout, Layout::DeepseekV3);
    insta::assert_yaml_snapshot!(parsed);
}

#[test]
fn kimi_k25_wrapper_config() {
    let parsed = parse_config(&fixture("kimi_k25_mxfp4.json")).expect("parses");
    assert_eq!(parsed.layout, Layout::KimiK25);
    insta::assert_yaml_snapshot!(parsed);
}

/// The derived quantities the forward pass uses, checked against hand computation from the
/// published formulas: yarn `mscale(40, 1) = 0.1·ln 40 + 1`, softmax scale `192^-½ · mscale²`.
#[test]
fn derived_quantities_of_deepseek_v3() {
    let c = parse_config(&fixture("deepseek_v3.json")).unwrap().model;
    assert_eq!(c.qk_head_dim(), 192);
    let m = 0.1 * 40f64.ln() + 1.0;
    let expected = (1.0 / 192f64.sqrt() * m * m) as f32;
    assert!((c.softmax_scale() - expected).abs() <= f32::EPSILON * expected);
    assert_eq!(c.rope_scaling.unwrap().cos_sin_scale(), 1.0);
    assert!(!c.is_moe_layer(2) && c.is_moe_layer(3) && c.is_moe_layer(60));
    assert_eq!(c.experts_per_group(), 32);
}

/// Kimi-K2.5 puts `quantization_config` at the top level; a copy inside `text_config` is
/// equally valid, and two different ones are an error.
#[test]
fn kimi_k25_quantization_config_at_either_level() {
    let mut root: Value = serde_json::from_str(&fixture("kimi_k25_mxfp4.json")).unwrap();
    let quant = root["quantization_config"].clone();

    let mut inner_only = root.clone();
    inner_only
        .as_object_mut()
        .unwrap()
        .remove("quantization_config");
    inner_only["text_config"]["quantization_config"] = quant.clone();
    let parsed = parse_config(&inner_only.to_string()).unwrap();
    assert_eq!(parsed.quantization, Some(quant.clone()));

    root["text_config"]["quantization_config"] = quant.clone();
    assert_eq!(
        parse_config(&root.to_string()).unwrap().quantization,
        Some(quant)
    );

    root["text_config"]["quantization_config"] = json!({"quant_method": "fp8"});
    assert!(matches!(
        parse_config(&root.to_string()),
        Err(ConfigError::ConflictingQuantization)
    ));
}

/// The error for each bad config, rendered: one line per case naming the field and value.
#[test]
fn bad_configs_are_typed_errors_naming_the_field() {
    let base: Value = serde_json::from_str(&fixture("deepseek_v3.json")).unwrap();
    let with = |field: &str, value: Value| {
        let mut v = base.clone();
        v[field] = value;
        v
    };
    let mut wrapper_without_text: Value =
        serde_json::from_str(&fixture("kimi_k25_mxfp4.json")).unwrap();
    wrapper_without_text
        .as_object_mut()
        .unwrap()
        .remove("text_config");
    let cases: Vec<(&str, String)> = vec![
        (
            "other architecture",
            with("architectures", json!(["LlamaForCausalLM"])).to_string(),
        ),
        ("no architecture", {
            let mut v = base.clone();
            v.as_object_mut().unwrap().remove("architectures");
            v.to_string()
        }),
        (
            "wrapper without text_config",
            wrapper_without_text.to_string(),
        ),
        (
            "zero heads",
            with("num_attention_heads", json!(0)).to_string(),
        ),
        ("zero hidden", with("hidden_size", json!(0)).to_string()),
        (
            "top-k above experts",
            with("num_experts_per_tok", json!(300)).to_string(),
        ),
        (
            "top-k above kept groups",
            with("num_experts_per_tok", json!(129)).to_string(),
        ),
        (
            "groups do not divide experts",
            with("n_group", json!(7)).to_string(),
        ),
        (
            "topk_group above n_group",
            with("topk_group", json!(9)).to_string(),
        ),
        (
            "odd rope dim",
            with("qk_rope_head_dim", json!(63)).to_string(),
        ),
        (
            "zero q_lora_rank",
            with("q_lora_rank", json!(0)).to_string(),
        ),
        (
            "negative rsf",
            with("routed_scaling_factor", json!(-1.0)).to_string(),
        ),
        ("zero eps", with("rms_norm_eps", json!(0.0)).to_string()),
        (
            "eos outside vocab",
            with("eos_token_id", json!([1, 200000])).to_string(),
        ),
        (
            "softmax scoring",
            with("scoring_func", json!("softmax")).to_string(),
        ),
        (
            "greedy topk",
            with("topk_method", json!("greedy")).to_string(),
        ),
        ("gelu", with("hidden_act", json!("gelu")).to_string()),
        (
            "linear rope scaling",
            with("rope_scaling", json!({"type": "linear", "factor": 2.0})).to_string(),
        ),
        (
            "yarn without factor",
            with("rope_scaling", json!({"type": "yarn"})).to_string(),
        ),
        (
            "beta_fast below beta_slow",
            with(
                "rope_scaling",
                json!({"type": "yarn", "factor": 4.0, "beta_fast": 0.5, "beta_slow": 1.0}),
            )
            .to_string(),
        ),
        (
            "attention bias",
            with("attention_bias", json!(true)).to_string(),
        ),
        (
            "NeoX rope",
            with("rope_interleave", json!(false)).to_string(),
        ),
        (
            "string where a number goes",
            with("hidden_size", json!("big")).to_string(),
        ),
        ("not JSON", "{".to_string()),
    ];
    let rendered: Vec<String> = cases
        .iter()
        .map(|(name, text)| match parse_config(text) {
            Ok(_) => panic!("{name}: accepted"),
            Err(e) => format!("{name}: {e}"),
        })
        .collect();
    insta::assert_snapshot!(rendered.join("\n"));
}

/// Absent fields take the reference `DeepseekV3Config` defaults.
#[test]
fn missing_fields_take_the_reference_defaults() {
    let minimal = json!({"architectures": ["DeepseekV3ForCausalLM"]});
    let c = parse_config(&minimal.to_string()).unwrap().model;
    let full = parse_config(&fixture("deepseek_v3.json")).unwrap().model;
    // The published file differs from the defaults only in these fields.
    assert_eq!(c.max_position_embeddings, 4096);
    assert_eq!(c.rope_scaling, None);
    assert_eq!(c.num_nextn_predict_layers, 0);
    let mut adjusted = full;
    adjusted.max_position_embeddings = 4096;
    adjusted.rope_scaling = None;
    adjusted.num_nextn_predict_layers = 0;
    adjusted.model_type = None;
    assert_eq!(c, adjusted);
}

/// Regression (fuzz target `config_json`): a config whose layers are all dense skipped the MoE
/// checks, so `n_group = 0` was accepted and `experts_per_group()` divided by zero.
#[test]
fn n_group_zero_is_refused_even_without_moe_layers() {
    let mut config: Value = serde_json::from_str(&fixture("deepseek_v3.json")).unwrap();
    let layers = config["num_hidden_layers"].as_u64().unwrap();
    config["first_k_dense_replace"] = json!(layers);
    config["n_group"] = json!(0);
    match parse_config(&config.to_string()) {
        Err(ConfigError::Invalid { field, .. }) => assert_eq!(field, "n_group"),
        other => panic!("n_group = 0 gave {other:?}"),
    }
    // The same dense config with a valid group count parses, and its derived values are
    // defined.
    config["n_group"] = json!(8);
    let parsed = parse_config(&config.to_string()).unwrap();
    assert_eq!(
        parsed.model.experts_per_group(),
        parsed.model.n_routed_experts / 8
    );
    assert!((0..parsed.model.num_hidden_layers).all(|l| !parsed.model.is_moe_layer(l)));
}
