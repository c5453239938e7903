//! The feed-forward block of one layer: the dense MLP, or the MoE (router, routed experts,
//! shared experts fused as slots or run separately).

use crate::config::ModelConfig;
use crate::weights::{FeedForward, MoeWeights};
use moe_kernels::reference::{
    ActivationMode, RoutingMargin, matmul, mlp, moe_forward, route_noaux_tc, routing_margin,
};

/// `out = ffn(x)` for `m` rows of normed hidden states; an MoE block appends each row's
/// routing margin to `margins` when given.
pub(crate) fn feed_forward(
    c: &ModelConfig,
    block: &FeedForward,
    x: &[f32],
    m: usize,
    mode: ActivationMode,
    out: &mut [f32],
    margins: Option<&mut Vec<RoutingMargin>>,
) {
    match block {
        FeedForward::Dense(w) => mlp(x, m, w, mode, out),
        FeedForward::Moe(w) => moe(c, w, x, m, mode, out, margins),
    }
}

/// Route every token (the router and its bias in f32, never quantized), run the experts,
/// then add the unfused shared expert if there is one. The routed scaling factor is applied
/// once, inside `moe_forward`, before the unfused shared expert is added.
fn moe(
    c: &ModelConfig,
    w: &MoeWeights,
    x: &[f32],
    m: usize,
    mode: ActivationMode,
    out: &mut [f32],
    margins: Option<&mut Vec<RoutingMargin>>,
) {
    let e = c.n_routed_experts;
    let h = c.hidden_size;
    let mut logits = vec![0f32; m * e];
    matmul(x, &w.router.data, m, h, e, &mut logits);
    let params = c.routing_params(w.fused_shared_slots);
    if let Some(margins) = margins {
        margins.extend(
            logits
                .chunks_exact(e)
                .map(|l| routing_margin(l, &w.correction_bias, &params)),
        );
    }
    let routes: Vec<_> = logits
        .chunks_exact(e)
        .flat_map(|l| route_noaux_tc(l, &w.correction_bias, &params))
        .collect();
    moe_forward(
        x,
        m,
        &routes,
        &w.experts,
        c.routed_scaling_factor,
        mode,
        out,
    );
    if let Some(shared) = &w.shared {
        let mut y = vec![0f32; m * h];
        mlp(x, m, shared, mode, &mut y);
        for (o, v) in out.iter_mut().zip(&y) {
            *o += v;
        }
    }
}
