//! Scheme resolution over realistic layer lists, snapshotted, plus the rules behind it:
//! exclude matching and expansion, name mapping, fused shards, shared-expert compatibility.

use std::fmt::Write as _;

use quant_quark::{
    ExcludeList, Fp8Activations, Fp8Weight, FusedModules, LayerScheme, NameMapper, NameRule,
    QuarkConfig, QuarkError, ScaleRule, SchemeResolver, SharedExperts, SharedExpertsMismatch,
    SpecSource,
};

const W4A4_EVEN: LayerScheme = LayerScheme::Mxfp4 {
    activations: Some(ScaleRule::Even),
};
const W4A4_OCP: LayerScheme = LayerScheme::Mxfp4 {
    activations: Some(ScaleRule::Ocp),
};
const W4_ONLY: LayerScheme = LayerScheme::Mxfp4 { activations: None };

fn fixture(name: &str) -> QuarkConfig {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    QuarkConfig::from_json_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The model's own fused modules (DeepSeek-V3 family).
fn deepseek_fused() -> FusedModules {
    FusedModules::new(&[
        (
            "fused_qkv_a_proj_with_mqa",
            &["q_a_proj", "kv_a_proj_with_mqa"],
        ),
        ("gate_up_proj", &["gate_proj", "up_proj"]),
    ])
}

/// Kimi-K2.5's checkpoint names → the language model's names, both wrapped layouts.
fn kimi_mapper() -> NameMapper {
    NameMapper::new(vec![
        NameRule::prefix("language_model.model.", "model."),
        NameRule::prefix("language_model.layers.", "model.layers."),
        NameRule::prefix("language_model.", ""),
    ])
    .unwrap()
}

/// Every linear layer of a small model: dense decoder layers, MoE decoder layers with
/// `experts` routed experts and a shared expert, fused names, and `lm_head`.
fn layer_names(dense: &[u32], moe: &[u32], experts: usize) -> Vec<String> {
    let mut names = Vec::new();
    let attention = [
        "q_a_proj",
        "q_b_proj",
        "kv_a_proj_with_mqa",
        "kv_b_proj",
        "o_proj",
        "fused_qkv_a_proj_with_mqa",
    ];
    let mlp = ["gate_proj", "up_proj", "down_proj", "gate_up_proj"];
    for &layer in dense.iter().chain(moe) {
        let prefix = format!("model.layers.{layer}");
        names.extend(attention.iter().map(|p| format!("{prefix}.self_attn.{p}")));
        if dense.contains(&layer) {
            names.extend(mlp.iter().map(|p| format!("{prefix}.mlp.{p}")));
        } else {
            for e in 0..experts {
                names.extend(
                    mlp[..3]
                        .iter()
                        .map(|p| format!("{prefix}.mlp.experts.{e}.{p}")),
                );
            }
            names.extend(
                mlp.iter()
                    .map(|p| format!("{prefix}.mlp.shared_experts.{p}")),
            );
        }
    }
    names.push("lm_head".to_owned());
    names
}

fn source_text(source: &SpecSource) -> String {
    match source {
        SpecSource::Excluded { entry } => format!("exclude {entry:?}"),
        SpecSource::LayerPattern { pattern } => format!("layer_quant_config[{pattern:?}]"),
        SpecSource::LayerType { module_type } => {
            format!("layer_type_quant_config[{module_type:?}]")
        }
        SpecSource::Global => "global".to_owned(),
        SpecSource::NoSpec => "no spec".to_owned(),
        SpecSource::Fused { shards } => {
            let parts: Vec<String> = shards
                .iter()
                .map(|(shard, s)| {
                    format!("{}: {}", shard.rsplit('.').next().unwrap(), source_text(s))
                })
                .collect();
            format!("fused [{}]", parts.join("; "))
        }
    }
}

/// One line per layer: name, scheme, where the scheme came from; then the shared-expert
/// verdict of every MoE layer.
fn resolution_table(
    resolver: &SchemeResolver,
    names: &[String],
    moe: &[u32],
    experts: usize,
) -> String {
    let mut table = String::new();
    for name in names {
        let line = match resolver.resolve(name) {
            Ok(r) => format!(
                "{name:<48} {:<32} {}",
                format!("{:?}", r.scheme),
                source_text(&r.source)
            ),
            Err(e) => format!("{name:<48} ERROR {e}"),
        };
        writeln!(table, "{}", line.trim_end()).unwrap();
    }
    for layer in moe {
        let prefix = format!("model.layers.{layer}");
        let routed = match resolver.routed_experts_scheme(&prefix, experts) {
            Ok(scheme) => format!("{scheme:?}"),
            Err(e) => format!("ERROR {e}"),
        };
        writeln!(table, "routed experts of {prefix}: {routed}").unwrap();
        let verdict = match resolver.shared_experts_compatible(&prefix) {
            Ok(SharedExperts::Compatible) => "compatible".to_owned(),
            Ok(SharedExperts::Incompatible(reason)) => format!("incompatible: {reason}"),
            Err(e) => format!("ERROR {e}"),
        };
        writeln!(table, "shared experts of {prefix}: {verdict}").unwrap();
    }
    table
}

#[test]
fn deepseek_v3_regex_excludes() {
    let resolver = SchemeResolver::new(
        fixture("deepseek_v3_mxfp4.json"),
        deepseek_fused(),
        &NameMapper::identity(),
    )
    .unwrap();
    // Layer 61 is the MTP layer, excluded wholesale.
    let names = layer_names(&[0], &[3, 61], 3);
    insta::assert_snapshot!(resolution_table(&resolver, &names, &[3, 61], 3));
}

#[test]
fn kimi_k25_wrapped_literal_excludes() {
    let config = fixture("kimi_k25_mxfp4_wrapped.json");
    let names = layer_names(&[0], &[1, 60], 3);
    let mapped = SchemeResolver::new(config.clone(), deepseek_fused(), &kimi_mapper()).unwrap();
    // Without a mapper the expansion (`language_model.X` also matches `X`) must give the same
    // answers for the language model's names.
    let expanded = SchemeResolver::new(config, deepseek_fused(), &NameMapper::identity()).unwrap();
    for name in &names {
        assert_eq!(
            mapped.resolve(name).unwrap().scheme,
            expanded.resolve(name).unwrap().scheme,
            "{name}"
        );
    }
    // Checkpoint names, as the wrapper writes them, match the literal entries directly.
    assert_eq!(
        expanded
            .resolve("language_model.model.layers.7.self_attn.kv_b_proj")
            .unwrap()
            .source,
        SpecSource::Excluded {
            entry: "language_model.model.layers.7.self_attn.kv_b_proj".into()
        }
    );
    insta::assert_snapshot!(resolution_table(&mapped, &names, &[1, 60], 3));
}

#[test]
fn kimi_k25_old_revision_excludes_shared_experts() {
    let resolver = SchemeResolver::new(
        fixture("kimi_k25_mxfp4_shared_excluded.json"),
        deepseek_fused(),
        &kimi_mapper(),
    )
    .unwrap();
    let names = layer_names(&[0], &[1], 2);
    insta::assert_snapshot!(resolution_table(&resolver, &names, &[1], 2));
}

#[test]
fn per_layer_overrides() {
    let resolver = SchemeResolver::new(
        fixture("per_layer_overrides.json"),
        deepseek_fused(),
        &NameMapper::identity(),
    )
    .unwrap();
    let names = layer_names(&[0], &[3], 2);
    insta::assert_snapshot!(resolution_table(&resolver, &names, &[3], 2));
    // A module type with no layer_type entry falls through to the global spec.
    let embedding = resolver
        .resolve_module("model.embed_tokens", "Embedding")
        .unwrap();
    assert_eq!(
        (embedding.scheme, embedding.source),
        (W4A4_EVEN, SpecSource::Global)
    );
}

#[test]
fn parsed_config_keeps_every_field() {
    let config = fixture("per_layer_overrides.json");
    // Unknown keys survive at every level.
    assert_eq!(config.extra["version"], "0.11");
    assert!(config.extra.contains_key("softmax_quant_spec"));
    assert_eq!(config.export.extra["weight_format"], "real_quantized");
    let global = config.global_quant_config.as_ref().unwrap();
    assert_eq!(global.weight[0].extra["is_scale_quant"], false);
    assert!(global.extra.contains_key("target_device"));
    // Patterns keep file order: it decides the first match.
    let patterns: Vec<&str> = config
        .layer_quant_config
        .iter()
        .map(|(p, _)| p.as_str())
        .collect();
    assert_eq!(
        patterns,
        [
            "*.self_attn.*",
            "*.q_a_proj",
            "model.layers.[0-2].mlp.*",
            "*.experts.*.down_proj"
        ]
    );
    insta::assert_yaml_snapshot!(config);
}

/// Resolves `layer` under a config that is the fixture `base` with `patch` merged in at the
/// top level, and checks the scheme (or the error's text fragments).
fn check_scheme(patch: serde_json::Value, layer: &str, want: Result<LayerScheme, &[&str]>) {
    let path = format!(
        "{}/tests/fixtures/deepseek_v3_mxfp4.json",
        env!("CARGO_MANIFEST_DIR")
    );
    let mut value: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    for (k, v) in patch.as_object().unwrap() {
        value[k] = v.clone();
    }
    let resolved = QuarkConfig::from_value(&value)
        .and_then(|c| SchemeResolver::new(c, deepseek_fused(), &NameMapper::identity()))
        .and_then(|r| r.scheme_for(layer));
    match (resolved, want) {
        (Ok(got), Ok(want)) => assert_eq!(got, want, "{layer} under {patch}"),
        (Err(e), Err(fragments)) => {
            let text = e.to_string();
            for f in fragments {
                assert!(text.contains(f), "error {text:?} lacks {f:?}");
            }
        }
        (got, want) => panic!("{layer} under {patch}: got {got:?}, want {want:?}"),
    }
}

fn mx(dynamic: bool) -> serde_json::Value {
    serde_json::json!({"dtype": "fp4", "qscheme": "per_group", "group_size": 32, "ch_axis": -1,
        "scale_format": "e8m0", "scale_calculation_mode": "even", "round_method": "half_even",
        "is_dynamic": dynamic})
}

fn fp8(qscheme: &str, dynamic: bool, ch_axis: i64) -> serde_json::Value {
    serde_json::json!({"dtype": "fp8_e4m3", "qscheme": qscheme, "ch_axis": ch_axis,
        "is_dynamic": dynamic})
}

fn with(base: &serde_json::Value, path: &[&str], value: serde_json::Value) -> serde_json::Value {
    let mut out = base.clone();
    let mut at = &mut out;
    for key in &path[..path.len() - 1] {
        at = &mut at[*key];
    }
    at[path[path.len() - 1]] = value;
    out
}

#[test]
fn scheme_recognition() {
    use serde_json::{Value, json};
    const EXPERT: &str = "model.layers.3.mlp.experts.0.up_proj";
    let w4a4 = json!({"weight": mx(false), "input_tensors": mx(true)});
    let global = |spec: Value| json!({ "global_quant_config": spec });
    let cases: Vec<(Value, Result<LayerScheme, &[&str]>)> = vec![
        (global(w4a4.clone()), Ok(W4A4_EVEN)),
        (
            global(with(
                &w4a4,
                &["input_tensors", "scale_calculation_mode"],
                json!("floor"),
            )),
            Ok(W4A4_OCP),
        ),
        (global(json!({"weight": mx(false)})), Ok(W4_ONLY)),
        (
            global(json!({"weight": null, "input_tensors": null})),
            Ok(LayerScheme::Unquantized),
        ),
        (
            json!({"global_quant_config": null}),
            Ok(LayerScheme::Unquantized),
        ),
        (
            global(
                json!({"weight": fp8("per_tensor", false, 0), "input_tensors": fp8("per_tensor", false, 0)}),
            ),
            Ok(LayerScheme::Fp8 {
                weight: Fp8Weight::PerTensor,
                activations: Fp8Activations::StaticPerTensor,
            }),
        ),
        (
            global(
                json!({"weight": fp8("per_channel", false, 0), "input_tensors": fp8("per_channel", true, 1)}),
            ),
            Ok(LayerScheme::Fp8 {
                weight: Fp8Weight::PerChannel,
                activations: Fp8Activations::DynamicPerToken,
            }),
        ),
        (
            global(
                json!({"weight": fp8("per_tensor", false, 0), "input_tensors": fp8("per_tensor", true, 0)}),
            ),
            Ok(LayerScheme::Fp8 {
                weight: Fp8Weight::PerTensor,
                activations: Fp8Activations::DynamicPerTensor,
            }),
        ),
        // Everything below is refused with the layer, the spec's origin and the reason.
        (
            global(with(
                &w4a4,
                &["input_tensors", "scale_calculation_mode"],
                Value::Null,
            )),
            Err(&[
                EXPERT,
                "global_quant_config",
                "scale_calculation_mode is None",
            ]),
        ),
        (
            global(with(
                &w4a4,
                &["input_tensors", "scale_calculation_mode"],
                json!("ceil"),
            )),
            Err(&["scale_calculation_mode is Some(\"ceil\")"]),
        ),
        (
            global(with(&w4a4, &["input_tensors", "is_dynamic"], json!(false))),
            Err(&["input_tensors.is_dynamic is Some(false)"]),
        ),
        (
            global(with(&w4a4, &["weight", "is_dynamic"], json!(true))),
            Err(&["weight.is_dynamic is true"]),
        ),
        (
            global(with(&w4a4, &["weight", "group_size"], json!(16))),
            Err(&["weight.group_size is Some(16)"]),
        ),
        (
            global(with(&w4a4, &["weight", "ch_axis"], json!(0))),
            Err(&["weight.ch_axis is Some(0)"]),
        ),
        (
            global(with(&w4a4, &["weight", "scale_format"], json!("float"))),
            Err(&["weight.scale_format is Some(\"float\")"]),
        ),
        (
            global(with(
                &w4a4,
                &["input_tensors", "round_method"],
                json!("round"),
            )),
            Err(&["round_method is Some(\"round\")"]),
        ),
        (
            global(with(&w4a4, &["output_tensors"], mx(true))),
            Err(&["output_tensors quantization"]),
        ),
        (
            global(with(&w4a4, &["bias"], mx(false))),
            Err(&["bias quantization"]),
        ),
        (
            global(json!({"weight": [mx(false), mx(false)]})),
            Err(&["chain of 2 quantizers"]),
        ),
        (
            global(json!({"input_tensors": mx(true)})),
            Err(&["without weight quantization"]),
        ),
        (
            global(json!({"weight": {"dtype": "int4", "qscheme": "per_group", "group_size": 32}})),
            Err(&["weight.dtype \"int4\""]),
        ),
        (
            global(json!({"weight": fp8("per_tensor", false, 0)})),
            Err(&["weight-only FP8"]),
        ),
        (
            global(json!({"weight": mx(false), "input_tensors": fp8("per_tensor", false, 0)})),
            Err(&["input_tensors.dtype \"fp8_e4m3\""]),
        ),
        (
            json!({"layer_quant_config": {"*.experts.*": {"weight": {"dtype": "int8"}}}}),
            Err(&[
                EXPERT,
                "layer_quant_config[\"*.experts.*\"]",
                "\"dtype\":\"int8\"",
            ]),
        ),
    ];
    for (patch, want) in cases {
        check_scheme(patch, EXPERT, want);
    }
}

/// Config text, fragments its error must contain, and the error variant expected.
type ParseErrorCase = (String, Vec<&'static str>, fn(&QuarkError) -> bool);

/// Parses `text` and checks that it fails with every fragment in the error's text.
fn check_parse_error(text: &str, fragments: &[&str], matches: fn(&QuarkError) -> bool) {
    let err = QuarkConfig::from_json_str(text).expect_err(text);
    assert!(matches(&err), "{text}: wrong variant {err:?}");
    let message = err.to_string();
    for f in fragments {
        assert!(message.contains(f), "{message:?} lacks {f:?}");
    }
}

#[test]
fn parse_errors_name_the_field() {
    let export = r#""export": {"kv_cache_group": [], "pack_method": "reorder"}"#;
    let cases: Vec<ParseErrorCase> = vec![
        (
            "{\"quant_method\": \"quark\",".into(),
            vec!["not valid JSON"],
            |e| matches!(e, QuarkError::Json(_)),
        ),
        (
            "[1]".into(),
            vec!["quantization_config", "expected an object"],
            |e| matches!(e, QuarkError::WrongType { .. }),
        ),
        (
            format!(r#"{{"quant_method": "fp8", {export}}}"#),
            vec!["\"fp8\""],
            |e| matches!(e, QuarkError::NotQuark { .. }),
        ),
        (
            format!("{{{export}}}"),
            vec!["quant_method is missing"],
            |e| matches!(e, QuarkError::MissingField { .. }),
        ),
        (
            r#"{"quant_method": "quark"}"#.into(),
            vec!["export is missing"],
            |e| matches!(e, QuarkError::MissingField { path } if path == "export"),
        ),
        (
            r#"{"quant_method": "quark", "export": null}"#.into(),
            vec!["export is missing"],
            |e| matches!(e, QuarkError::MissingField { .. }),
        ),
        (
            format!(
                r#"{{"quant_method": "quark", {export}, "layer_quant_config": {{"*.q_a_proj": {{"weight": {{"qscheme": "per_group"}}}}}}}}"#
            ),
            vec![r#"layer_quant_config["*.q_a_proj"].weight.dtype is missing"#],
            |e| matches!(e, QuarkError::MissingField { .. }),
        ),
        (
            format!(
                r#"{{"quant_method": "quark", {export}, "global_quant_config": {{"input_tensors": [{{"dtype": "fp4", "group_size": "32"}}]}}}}"#
            ),
            vec![
                "global_quant_config.input_tensors[0].group_size",
                "string \"32\"",
            ],
            |e| matches!(e, QuarkError::WrongType { .. }),
        ),
        (
            format!(
                r#"{{"quant_method": "quark", {export}, "global_quant_config": {{"weight": {{"dtype": "fp4", "group_size": -32}}}}}}"#
            ),
            vec!["global_quant_config.weight.group_size", "non-negative"],
            |e| matches!(e, QuarkError::WrongType { .. }),
        ),
        (
            format!(r#"{{"quant_method": "quark", {export}, "exclude": ["lm_head", 5]}}"#),
            vec!["exclude[1]", "number 5"],
            |e| matches!(e, QuarkError::WrongType { .. }),
        ),
        (
            r#"{"quant_method": "quark", "export": {"kv_cache_group": "k_proj"}}"#.into(),
            vec!["export.kv_cache_group", "a list of strings"],
            |e| matches!(e, QuarkError::WrongType { .. }),
        ),
        (
            format!(r#"{{"quant_method": "quark", {export}, "layer_type_quant_config": []}}"#),
            vec!["layer_type_quant_config", "expected an object"],
            |e| matches!(e, QuarkError::WrongType { .. }),
        ),
        (
            format!(r#"{{"quant_method": "quark", {export}, "exclude": ["re:.*(self_attn"]}}"#),
            vec!["re:.*(self_attn"],
            |e| matches!(e, QuarkError::BadExcludeRegex { .. }),
        ),
    ];
    for (text, fragments, matches) in cases {
        check_parse_error(&text, &fragments, matches);
    }
}

#[test]
fn quantized_kv_cache_is_refused() {
    for (patch, field) in [
        (
            r#""export": {"kv_cache_group": ["*k_proj", "*v_proj"]}"#,
            "export.kv_cache_group",
        ),
        (
            r#""export": {}, "kv_cache_quant_config": {"*k_proj": {"output_tensors": {"dtype": "fp8_e4m3"}}}"#,
            "kv_cache_quant_config",
        ),
    ] {
        let config =
            QuarkConfig::from_json_str(&format!(r#"{{"quant_method": "quark", {patch}}}"#))
                .unwrap();
        let err = SchemeResolver::new(config, FusedModules::default(), &NameMapper::identity())
            .unwrap_err();
        assert!(
            matches!(err, QuarkError::UnsupportedKvCache { field: f } if f == field),
            "{err}"
        );
    }
}

#[test]
fn fused_shards_must_agree() {
    let text = format!(
        r#"{{"quant_method": "quark", "export": {{}}, "global_quant_config": {{"weight": {}, "input_tensors": {}}},
            "exclude": ["model.layers.0.self_attn.q_a_proj", "re:.*\\.up_proj$"]}}"#,
        mx(false),
        mx(true)
    );
    let resolver = SchemeResolver::new(
        QuarkConfig::from_json_str(&text).unwrap(),
        deepseek_fused(),
        &NameMapper::identity(),
    )
    .unwrap();
    for (layer, first, other) in [
        (
            "model.layers.0.self_attn.fused_qkv_a_proj_with_mqa",
            "model.layers.0.self_attn.q_a_proj",
            "model.layers.0.self_attn.kv_a_proj_with_mqa",
        ),
        (
            "model.layers.3.mlp.gate_up_proj",
            "model.layers.3.mlp.gate_proj",
            "model.layers.3.mlp.up_proj",
        ),
    ] {
        let err = resolver.scheme_for(layer).unwrap_err();
        let QuarkError::FusedShardsDisagree {
            layer: l,
            first: f,
            other: o,
            first_scheme,
            other_scheme,
        } = &err
        else {
            panic!("{layer}: {err:?}");
        };
        assert_eq!((l.as_str(), f.as_str(), o.as_str()), (layer, first, other));
        assert_ne!(first_scheme, other_scheme);
        let message = err.to_string();
        assert!(
            message.contains(first) && message.contains(other),
            "{message}"
        );
    }
    // The same fused names agree on a layer where nothing is excluded.
    assert_eq!(
        resolver
            .scheme_for("model.layers.1.self_attn.fused_qkv_a_proj_with_mqa")
            .unwrap(),
        W4A4_EVEN
    );
    // Without a fused table the name is looked up as it is.
    let plain = SchemeResolver::new(
        QuarkConfig::from_json_str(&text).unwrap(),
        FusedModules::default(),
        &NameMapper::identity(),
    )
    .unwrap();
    let r = plain
        .resolve("model.layers.0.self_attn.fused_qkv_a_proj_with_mqa")
        .unwrap();
    assert_eq!((r.scheme, r.source), (W4A4_EVEN, SpecSource::Global));
}

/// Checks which of `names` the exclude list (built from `entries`, seen through `mapper`)
/// excludes, and by which entry.
fn check_exclude(entries: &[&str], mapper: &NameMapper, cases: &[(&str, Option<&str>)]) {
    let list = ExcludeList::parse(entries).unwrap().expanded(mapper);
    for &(name, want) in cases {
        assert_eq!(list.matching(name), want, "{name} against {entries:?}");
    }
}

#[test]
fn exclude_matching() {
    let identity = NameMapper::identity();
    // `re:` is Python's re.match: anchored at the start, not at the end.
    check_exclude(
        &[
            "re:layers",
            "re:model\\.layers\\.1\\.",
            "re:.*mlp\\.gate$",
            "model.layers.0.self_attn",
        ],
        &identity,
        &[
            ("model.layers.0.mlp.gate", Some("re:.*mlp\\.gate$")),
            ("model.layers.0.mlp.gate_proj", None),
            ("layers.0.mlp.up_proj", Some("re:layers")),
            ("model.layers.0.mlp.up_proj", None),
            (
                "model.layers.1.mlp.up_proj",
                Some("re:model\\.layers\\.1\\."),
            ),
            ("model.layers.11.mlp.up_proj", None),
            // Literal entries match only the exact name: not its children, not a substring.
            ("model.layers.0.self_attn", Some("model.layers.0.self_attn")),
            ("model.layers.0.self_attn.q_a_proj", None),
            ("xmodel.layers.0.self_attn", None),
        ],
    );
    // Wrapper names: with no mapper, `language_model.X` also excludes `X`.
    check_exclude(
        &[
            "language_model.lm_head",
            "language_model.model.layers.0.mlp.up_proj",
        ],
        &identity,
        &[
            ("lm_head", Some("lm_head")),
            ("language_model.lm_head", Some("language_model.lm_head")),
            (
                "model.layers.0.mlp.up_proj",
                Some("model.layers.0.mlp.up_proj"),
            ),
            ("model.layers.0.mlp.gate_proj", None),
        ],
    );
}

#[test]
fn exclude_expansion_dedups_in_order() {
    let entries = [
        "language_model.lm_head",
        "lm_head",
        "re:.*self_attn.*",
        "language_model.model.layers.0.mlp.up_proj",
        "language_model.layers.1.mlp.up_proj",
        "re:.*self_attn.*",
    ];
    let list = ExcludeList::parse(&entries).unwrap();
    let cases: [(NameMapper, &[&str]); 2] = [
        (
            NameMapper::identity(),
            &[
                "language_model.lm_head",
                "lm_head",
                "re:.*self_attn.*",
                "language_model.model.layers.0.mlp.up_proj",
                "model.layers.0.mlp.up_proj",
                "language_model.layers.1.mlp.up_proj",
                "layers.1.mlp.up_proj",
            ],
        ),
        (
            kimi_mapper(),
            &[
                "lm_head",
                "re:.*self_attn.*",
                "model.layers.0.mlp.up_proj",
                "model.layers.1.mlp.up_proj",
            ],
        ),
    ];
    for (mapper, want) in cases {
        let expanded = list.expanded(&mapper);
        let got: Vec<&str> = expanded.entries().collect();
        assert_eq!(got, want, "{mapper:?}");
    }
}

#[test]
fn name_mapping() {
    let cases: [(Vec<NameRule>, &str, &str); 6] = [
        (
            vec![NameRule::prefix("language_model.", "")],
            "language_model.lm_head",
            "lm_head",
        ),
        // A prefix rule only rewrites the start, once.
        (
            vec![NameRule::prefix("model.", "m.")],
            "model.model.x",
            "m.model.x",
        ),
        (
            vec![NameRule::prefix("model.", "m.")],
            "a.model.x",
            "a.model.x",
        ),
        // A substring rule rewrites every occurrence.
        (
            vec![NameRule::substring(".wo.", ".attn.proj.")],
            "a.wo.b.wo.c",
            "a.attn.proj.b.attn.proj.c",
        ),
        (
            vec![NameRule::suffix(".weight_scale", ".scale")],
            "x.weight_scale",
            "x.scale",
        ),
        // Rules apply in order, each to the previous output.
        (
            vec![
                NameRule::prefix("language_model.layers.", "model.layers."),
                NameRule::substring("model.", "lm."),
            ],
            "language_model.layers.3.mlp",
            "lm.layers.3.mlp",
        ),
    ];
    for (rules, name, want) in cases {
        assert_eq!(
            NameMapper::new(rules.clone()).unwrap().map(name),
            want,
            "{rules:?}"
        );
    }
    assert_eq!(
        kimi_mapper().map("language_model.model.layers.2.mlp.gate"),
        "model.layers.2.mlp.gate"
    );
    assert_eq!(
        kimi_mapper().map("language_model.layers.2.mlp.gate"),
        "model.layers.2.mlp.gate"
    );
    assert!(matches!(
        NameMapper::new(vec![
            NameRule::prefix("a", "b"),
            NameRule::substring("", "x")
        ]),
        Err(QuarkError::EmptySubstringRule { index: 1 })
    ));
}

/// Checks the shared-expert verdict for decoder layer `model.layers.3` under a config whose
/// global spec is W4A4 and which adds `exclude` and `layer_quant_config`.
fn check_shared(exclude: serde_json::Value, layers: serde_json::Value, want: SharedExperts) {
    let text = serde_json::json!({
        "quant_method": "quark", "export": {},
        "global_quant_config": {"weight": mx(false), "input_tensors": mx(true)},
        "exclude": exclude, "layer_quant_config": layers,
    });
    let resolver = SchemeResolver::new(
        QuarkConfig::from_value(&text).unwrap(),
        deepseek_fused(),
        &NameMapper::identity(),
    )
    .unwrap();
    assert_eq!(
        resolver
            .shared_experts_compatible("model.layers.3")
            .unwrap(),
        want,
        "{text}"
    );
}

#[test]
fn shared_experts_compatibility() {
    use serde_json::json;
    let layer = |p: &str| format!("model.layers.3.mlp.shared_experts.{p}");
    check_shared(json!([]), json!({}), SharedExperts::Compatible);
    check_shared(
        json!(["re:.*shared_experts.*"]),
        json!({}),
        SharedExperts::Incompatible(SharedExpertsMismatch::Excluded {
            layer: layer("gate_proj"),
            entry: "re:.*shared_experts.*".into(),
            routed: W4A4_EVEN,
        }),
    );
    check_shared(
        json!([]),
        json!({"*.shared_experts.down_proj": {"weight": mx(false)}}),
        SharedExperts::Incompatible(SharedExpertsMismatch::DifferentScheme {
            layer: layer("down_proj"),
            shared: W4_ONLY,
            routed: W4A4_EVEN,
        }),
    );
    // Both excluded: the same (unquantized) computation, so fusable.
    check_shared(
        json!(["re:.*experts.*"]),
        json!({}),
        SharedExperts::Compatible,
    );
    // No global spec: routed experts quantized by a pattern, shared experts by nothing.
    let text = serde_json::json!({
        "quant_method": "quark", "export": {},
        "layer_quant_config": {"*.experts.*": {"weight": mx(false), "input_tensors": mx(true)}},
    });
    let resolver = SchemeResolver::new(
        QuarkConfig::from_value(&text).unwrap(),
        deepseek_fused(),
        &NameMapper::identity(),
    )
    .unwrap();
    let verdict = resolver
        .shared_experts_compatible("model.layers.3")
        .unwrap();
    assert_eq!(
        verdict,
        SharedExperts::Incompatible(SharedExpertsMismatch::NoSpec {
            layer: layer("gate_proj"),
            routed: W4A4_EVEN
        })
    );
    let SharedExperts::Incompatible(reason) = verdict else {
        unreachable!()
    };
    assert_eq!(
        reason.to_string(),
        "model.layers.3.mlp.shared_experts.gate_proj has no quantization spec while routed experts are \
         Mxfp4 { activations: Some(Even) }"
    );
}

#[test]
fn routed_experts_need_one_scheme() {
    let text = serde_json::json!({
        "quant_method": "quark", "export": {},
        "global_quant_config": {"weight": mx(false), "input_tensors": mx(true)},
        "layer_quant_config": {"model.layers.3.mlp.experts.5.*": {"weight": mx(false)}},
    });
    let resolver = SchemeResolver::new(
        QuarkConfig::from_value(&text).unwrap(),
        deepseek_fused(),
        &NameMapper::identity(),
    )
    .unwrap();
    // Experts 0..5 agree; expert 5 is weight-only.
    assert_eq!(
        resolver.routed_experts_scheme("model.layers.3", 5).unwrap(),
        W4A4_EVEN
    );
    assert_eq!(
        resolver.routed_experts_scheme("model.layers.4", 8).unwrap(),
        W4A4_EVEN
    );
    let err = resolver
        .routed_experts_scheme("model.layers.3", 8)
        .unwrap_err();
    assert!(
        matches!(&err, QuarkError::ExpertsDisagree { first, other, first_scheme, other_scheme }
            if first == "model.layers.3.mlp.experts.0.gate_proj"
                && other == "model.layers.3.mlp.experts.5.gate_proj"
                && *first_scheme == W4A4_EVEN
                && *other_scheme == W4_ONLY),
        "{err:?}"
    );
    assert!(matches!(
        resolver.routed_experts_scheme("model.layers.3", 0),
        Err(QuarkError::NoRoutedExperts { .. })
    ));
}

#[test]
fn layer_patterns_go_through_the_mapper() {
    let text = serde_json::json!({
        "quant_method": "quark", "export": {},
        "global_quant_config": {"weight": mx(false), "input_tensors": mx(true)},
        "layer_quant_config": {"language_model.model.layers.1.mlp.experts.*": {"weight": mx(false)}},
    });
    let config = QuarkConfig::from_value(&text).unwrap();
    let mapped = SchemeResolver::new(config.clone(), deepseek_fused(), &kimi_mapper()).unwrap();
    let r = mapped
        .resolve("model.layers.1.mlp.experts.0.up_proj")
        .unwrap();
    assert_eq!(r.scheme, W4_ONLY);
    // The source names the pattern as the config wrote it.
    assert_eq!(
        r.source,
        SpecSource::LayerPattern {
            pattern: "language_model.model.layers.1.mlp.experts.*".into()
        }
    );
    assert_eq!(
        mapped
            .scheme_for("model.layers.2.mlp.experts.0.up_proj")
            .unwrap(),
        W4A4_EVEN
    );
    // Without the mapper the pattern only matches the checkpoint's own names.
    let plain = SchemeResolver::new(config, deepseek_fused(), &NameMapper::identity()).unwrap();
    assert_eq!(
        plain
            .scheme_for("model.layers.1.mlp.experts.0.up_proj")
            .unwrap(),
        W4A4_EVEN
    );
    assert_eq!(
        plain
            .scheme_for("language_model.model.layers.1.mlp.experts.0.up_proj")
            .unwrap(),
        W4_ONLY
    );
}
