//! The MoE expert combine: every routed (and fused shared) expert applied to its tokens, the
//! outputs weighted, summed, and scaled by the routed scaling factor once.

use super::linear::ActivationMode;
use super::mlp::{MlpWeights, mlp};
use super::routing::ExpertRoute;
use rayon::prelude::*;
use std::collections::BTreeMap;

/// `out_t = rsf · Σ_s w_{t,s} · expert_{e_{t,s}}(x_t)` for each of the `m` rows of `x`.
///
/// `routes` holds the same number of slots for every token (`routes.len() / m`; `m` may be
/// 0), e.g. the output of [`super::route_noaux_tc`] for each token, concatenated. This is the
/// single place the routed scaling factor `rsf` is applied: after the weighted sum over every
/// slot, fused shared slots included (which is why those carry weight `1/rsf`). An unfused
/// shared expert is added by the caller after this sum, unscaled.
///
/// Tokens are grouped by expert and each expert runs once on its rows; since every reference
/// op computes each row independently, a token's output does not depend on the grouping.
/// Slots are summed in their order within the token.
pub fn moe_forward(
    x: &[f32],
    m: usize,
    routes: &[ExpertRoute],
    experts: &[MlpWeights],
    routed_scaling_factor: f32,
    mode: ActivationMode,
    out: &mut [f32],
) {
    if m == 0 {
        return;
    }
    assert!(
        routes.len().is_multiple_of(m),
        "moe_forward: routes not [m, slots]"
    );
    assert!(x.len().is_multiple_of(m), "moe_forward: x not [m, hidden]");
    let h = x.len() / m;
    assert_eq!(out.len(), x.len(), "moe_forward: out not [m, hidden]");
    let slots = routes.len() / m;

    let mut by_expert: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for (i, r) in routes.iter().enumerate() {
        assert!(
            r.expert < experts.len(),
            "moe_forward: expert {} out of range",
            r.expert
        );
        by_expert.entry(r.expert).or_default().push(i);
    }
    let results: Vec<(Vec<usize>, Vec<f32>)> = by_expert
        .into_par_iter()
        .map(|(e, route_ids)| {
            let mut rows = Vec::with_capacity(route_ids.len() * h);
            for &i in &route_ids {
                let t = i / slots;
                rows.extend_from_slice(&x[t * h..(t + 1) * h]);
            }
            let mut y = vec![0f32; rows.len()];
            mlp(&rows, route_ids.len(), &experts[e], mode, &mut y);
            (route_ids, y)
        })
        .collect();
    let mut per_route = vec![0f32; routes.len() * h];
    for (route_ids, y) in &results {
        for (&i, row) in route_ids.iter().zip(y.chunks_exact(h)) {
            per_route[i * h..(i + 1) * h].copy_from_slice(row);
        }
    }
    for (t, out_row) in out.chunks_exact_mut(h).enumerate() {
        out_row.fill(0.0);
        for s in 0..slots {
            let i = t * slots + s;
            let w = routes[i].weight;
            for (o, v) in out_row.iter_mut().zip(&per_route[i * h..(i + 1) * h]) {
                *o += w * v;
            }
        }
        for o in out_row.iter_mut() {
            *o *= routed_scaling_factor;
        }
    }
}
