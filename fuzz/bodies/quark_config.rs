//! Quark `quantization_config` text → parse → scheme resolution of a DeepSeek-V3 layer set.
//!
//! Any text must give a config or a `QuarkError`, and any config must resolve every layer to a
//! scheme or a `QuarkError`: never a panic. Resolution is also checked for consistency: the
//! routed-experts scheme of a layer, when there is one, is each expert projection's scheme.

use quant_quark::{FusedModules, NameMapper, NameRule, QuarkConfig, SchemeResolver};

/// Routed experts asked about per MoE layer (small: the fuzzer's time goes to the config).
const EXPERTS: usize = 4;

fn layer_names(layer: usize) -> Vec<String> {
    let p = format!("model.layers.{layer}");
    let mut names: Vec<String> = [
        "self_attn.q_a_proj",
        "self_attn.q_b_proj",
        "self_attn.kv_a_proj_with_mqa",
        "self_attn.kv_b_proj",
        "self_attn.o_proj",
        "self_attn.fused_qkv_a_proj_with_mqa",
        "mlp.gate_proj",
        "mlp.up_proj",
        "mlp.down_proj",
        "mlp.gate_up_proj",
        "mlp.shared_experts.gate_proj",
        "mlp.shared_experts.down_proj",
    ]
    .iter()
    .map(|m| format!("{p}.{m}"))
    .collect();
    names.push(format!("{p}.mlp.experts.0.up_proj"));
    names
}

/// Runs one input; panics on a finding.
pub fn run(data: &[u8]) {
    let Some((&selector, text)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(text) else {
        return;
    };
    let Ok(config) = QuarkConfig::from_json_str(text) else {
        return;
    };
    // Both name mappings the loader uses: plain DeepSeek-V3 names and the Kimi-K2.5 wrapper's.
    let mapper = if selector & 1 == 0 {
        NameMapper::identity()
    } else {
        NameMapper::new(vec![
            NameRule::prefix("language_model.model.", "model."),
            NameRule::prefix("language_model.", ""),
        ])
        .expect("a fixed, valid rule set")
    };
    let fused = FusedModules::new(&[
        (
            "fused_qkv_a_proj_with_mqa",
            &["q_a_proj", "kv_a_proj_with_mqa"],
        ),
        ("gate_up_proj", &["gate_proj", "up_proj"]),
    ]);
    let Ok(resolver) = SchemeResolver::new(config, fused, &mapper) else {
        return;
    };
    for layer in 0..3 {
        for name in layer_names(layer)
            .iter()
            .chain(["lm_head".to_owned()].iter())
        {
            let first = resolver.scheme_for(&mapper.map(name)).ok();
            let again = resolver.scheme_for(&mapper.map(name)).ok();
            assert_eq!(first, again, "resolution of {name} is not deterministic");
            let _ = resolver.resolve_module(name, "Linear");
            let _ = resolver.resolve_module(name, "");
        }
        let prefix = format!("model.layers.{layer}");
        if let Ok(scheme) = resolver.routed_experts_scheme(&prefix, EXPERTS) {
            for e in 0..EXPERTS {
                for proj in ["gate_proj", "up_proj", "down_proj"] {
                    let name = format!("{prefix}.mlp.experts.{e}.{proj}");
                    assert_eq!(
                        resolver.scheme_for(&name).ok(),
                        Some(scheme),
                        "{name} disagrees with routed_experts_scheme"
                    );
                }
            }
        }
        let _ = resolver.shared_experts_compatible(&prefix);
    }
    let _ = resolver.routed_experts_scheme("model.layers.0", 0);
}
