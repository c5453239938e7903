//! Weight validation against the config, and the shared-expert split used for fusion.

mod common;

use common::tiny_config;
use model_deepseek::synthetic::{SyntheticSpec, WeightFormat, synthetic_weights};
use model_deepseek::weights::{FeedForward, ModelWeights, MoeWeights};
use model_deepseek::{ForwardOptions, Model, ModelError};

fn moe_layer(w: &mut ModelWeights) -> &mut MoeWeights {
    match &mut w.layers[1].feed_forward {
        FeedForward::Moe(moe) => moe,
        FeedForward::Dense(_) => panic!("layer 1 of the tiny config is MoE"),
    }
}

/// Each corruption is refused by `Model::new` with an error naming the tensor or structure.
#[test]
fn mismatched_weights_are_refused_with_the_tensor_named() {
    let config = tiny_config(256, false);
    let spec = SyntheticSpec::quark_w4a4();
    let base = synthetic_weights(&config, &spec, 1).unwrap();
    type Corrupt = fn(&mut ModelWeights);
    let cases: [(&str, Corrupt); 7] = [
        ("short norm", |w| {
            w.layers[2]
                .attention
                .kv_a_layernorm
                .pop()
                .map(drop)
                .unwrap()
        }),
        ("missing layer", |w| drop(w.layers.pop())),
        ("missing expert", |w| drop(moe_layer(w).experts.pop())),
        ("short bias", |w| {
            moe_layer(w).correction_bias.pop();
        }),
        ("no shared expert", |w| moe_layer(w).shared = None),
        ("tied head on untied config", |w| w.lm_head = None),
        ("dense block on a MoE layer", |w| {
            let dense = match &w.layers[0].feed_forward {
                FeedForward::Dense(m) => m.clone(),
                FeedForward::Moe(_) => unreachable!(),
            };
            w.layers[1].feed_forward = FeedForward::Dense(dense);
        }),
    ];
    let rendered: Vec<String> = cases
        .iter()
        .map(|(name, corrupt)| {
            let mut w = base.clone();
            corrupt(&mut w);
            match Model::new(config.clone(), w, ForwardOptions::default()) {
                Err(ModelError::Weights(e)) => format!("{name}: {e}"),
                other => panic!("{name}: {other:?}"),
            }
        })
        .collect();
    insta::assert_snapshot!(rendered.join("\n"));
}

/// Fusing moves the shared MLP into slot `n_routed` with the same routed-expert shape and
/// keeps every routed expert; fusing twice changes nothing. Fusion is decided per layer, so a
/// model with one fused and one unfused MoE layer is valid.
#[test]
fn fusing_appends_the_shared_expert_as_one_slot() {
    let config = tiny_config(384, false);
    let mut w = synthetic_weights(&config, &SyntheticSpec::quark_w4a4(), 4).unwrap();
    let moe = moe_layer(&mut w).clone();
    let shared = moe.shared.clone().unwrap();
    let fused = moe.clone().into_fused().unwrap();
    assert_eq!(fused.fused_shared_slots, 1);
    assert!(fused.shared.is_none());
    assert_eq!(fused.experts[..384], moe.experts[..]);
    assert_eq!(fused.experts[384], shared);
    assert_eq!(fused.clone().into_fused().unwrap(), fused);
    *moe_layer(&mut w) = fused;
    Model::new(config, w, ForwardOptions::default()).expect("layer 1 fused, layer 2 not");
}

/// A 2-slot shared expert (DeepSeek-V2 style, `n_shared_experts: 2`) splits into two slots,
/// and a bf16 shared expert next to MXFP4 routed experts splits as well (fusion *policy* is the
/// loader's; the split itself is format-agnostic).
#[test]
fn wide_and_bf16_shared_experts_split_into_slots() {
    let mut config = tiny_config(256, false);
    config.n_shared_experts = 2;
    let spec = SyntheticSpec {
        shared_experts: WeightFormat::Dense,
        fuse_shared: true,
        ..SyntheticSpec::quark_w4a4()
    };
    let w = synthetic_weights(&config, &spec, 6).unwrap();
    let model = Model::new(config, w, ForwardOptions::default()).expect("fused model");
    match &model.weights().layers[2].feed_forward {
        FeedForward::Moe(moe) => {
            assert_eq!((moe.fused_shared_slots, moe.experts.len()), (2, 258));
            assert_eq!(moe.experts[257].down_proj.in_features(), 32);
        }
        FeedForward::Dense(_) => panic!("layer 2 is MoE"),
    }
}
