//! `config.json` text (DeepSeek-V3 / Kimi-K2 at the top level, or the Kimi-K2.5 wrapper) →
//! `parse_config` → the derived quantities the model uses → the fusion decision of every mode.
//!
//! Any text must give a config or a typed error; a config that parses must yield its derived
//! values (head dims, softmax scale, rope tables) and a fusion plan or error without panicking.

use model_deepseek::fusion::FusionMode;
use model_deepseek::loader::{catalog, fusion_for_config};
use model_deepseek::parse_config;

/// Runs one input; panics on a finding.
pub fn run(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(config) = parse_config(text) else {
        return;
    };
    let model = &config.model;
    model
        .validate()
        .expect("parse_config returns validated configs only");
    let _ = model.qk_head_dim();
    let _ = model.softmax_scale();
    let _ = model.experts_per_group();
    let _ = model.rope();
    // The loader's catalog of expected tensors: shapes are products of config fields.
    let _ = catalog::globals(model);
    for layer in 0..model.num_hidden_layers.min(4) {
        let _ = model.is_moe_layer(layer);
        let _ = catalog::layer(model, layer);
    }
    for mode in [FusionMode::Auto, FusionMode::On, FusionMode::Off] {
        if let Ok(plan) = fusion_for_config(text, mode)
            && mode == FusionMode::Off
        {
            assert!(!plan.model.fused, "fusion off but the plan fuses");
        }
    }
}
