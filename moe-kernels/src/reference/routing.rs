//! `noaux_tc` expert routing (DeepSeek-V3): sigmoid scores, correction bias for selection
//! only, group-limited top-k, weights from the unbiased scores, shared slots appended.

/// One expert slot of a token: which expert, with what weight.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ExpertRoute {
    /// Expert index: `< n_routed` for routed experts, `n_routed + j` for fused shared slot `j`.
    pub expert: usize,
    /// The expert output's weight in the MoE sum (before the routed scaling factor).
    pub weight: f32,
}

/// Routing hyper-parameters (from the model config).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RoutingParams {
    /// Expert groups; the routed experts split into `n_group` equal contiguous groups.
    pub n_group: usize,
    /// Groups kept per token.
    pub topk_group: usize,
    /// Routed experts chosen per token.
    pub top_k: usize,
    /// Renormalise the chosen routed weights to sum to one.
    pub norm_topk_prob: bool,
    /// The routed scaling factor `rsf`, applied once after the MoE sum (see
    /// [`super::moe_forward`]); fused shared slots get weight `1/rsf` so that the shared
    /// expert ends up with weight exactly one.
    pub routed_scaling_factor: f32,
    /// Fused shared-expert slots to append (0 when the shared expert runs separately).
    pub shared_slots: usize,
}

/// Route one token from its router logits (`[n_routed]`, the `mlp.gate` output) and the
/// correction bias (`[n_routed]`).
///
/// 1. `s = sigmoid(logit)`; `b = s + bias` is used for selection only. A NaN `b` (a NaN
///    logit: the hidden state went non-finite) ranks as +inf whatever its sign, so such experts
///    are taken first and their NaN weight reaches the output, where the step reports it.
/// 2. Group score = sum of the group's two largest `b`; keep the `topk_group` best groups.
/// 3. Among the kept groups' experts take the `top_k` largest `b` (ties: lower index first),
///    in descending order of `b`.
/// 4. Weights are the unbiased `s` of the chosen experts, divided by their sum
///    (`+ 1e-20`, as the reference does) when `norm_topk_prob`.
/// 5. Append `shared_slots` slots `n_routed + j` with weight `1/rsf`.
pub fn route_noaux_tc(logits: &[f32], bias: &[f32], p: &RoutingParams) -> Vec<ExpertRoute> {
    validate(logits, bias, p);
    let Selection {
        scores,
        mut candidates,
        ..
    } = select(logits, bias, p);
    candidates.truncate(p.top_k);

    let mut routes: Vec<ExpertRoute> = candidates
        .iter()
        .map(|&e| ExpertRoute {
            expert: e,
            weight: scores[e],
        })
        .collect();
    if p.norm_topk_prob {
        let sum = routes.iter().map(|r| r.weight).sum::<f32>() + 1e-20;
        for r in &mut routes {
            r.weight /= sum;
        }
    }
    let shared_weight = 1.0 / p.routed_scaling_factor;
    routes.extend((0..p.shared_slots).map(|j| ExpertRoute {
        expert: logits.len() + j,
        weight: shared_weight,
    }));
    routes
}

/// The router's preconditions (a programming error in the caller when broken: the model
/// config was validated before any routing runs).
fn validate(logits: &[f32], bias: &[f32], p: &RoutingParams) {
    let n = logits.len();
    assert_eq!(
        bias.len(),
        n,
        "route_noaux_tc: bias length differs from logits"
    );
    assert!(
        p.n_group > 0 && n.is_multiple_of(p.n_group),
        "route_noaux_tc: bad n_group"
    );
    assert!(
        n / p.n_group >= 2,
        "route_noaux_tc: groups need two experts"
    );
    assert!(
        p.topk_group <= p.n_group,
        "route_noaux_tc: topk_group > n_group"
    );
    assert!(
        p.top_k <= p.topk_group * (n / p.n_group),
        "route_noaux_tc: top_k too large"
    );
}

/// The scores and ranked choices behind one token's routing.
struct Selection {
    /// `sigmoid(logit)` per expert.
    scores: Vec<f32>,
    /// `scores + bias` per expert (NaN as +inf).
    biased: Vec<f32>,
    /// Group scores (sum of each group's two largest biased scores), largest first.
    ranked_group_scores: Vec<f32>,
    /// Every expert of the kept groups, in descending order of the biased score.
    candidates: Vec<usize>,
}

/// Steps 1–3 of [`route_noaux_tc`], before the candidates are cut to `top_k`.
fn select(logits: &[f32], bias: &[f32], p: &RoutingParams) -> Selection {
    let group_size = logits.len() / p.n_group;
    let scores: Vec<f32> = logits.iter().map(|l| 1.0 / (1.0 + (-l).exp())).collect();
    let biased: Vec<f32> = scores
        .iter()
        .zip(bias)
        .map(|(s, b)| match s + b {
            v if v.is_nan() => f32::INFINITY,
            v => v,
        })
        .collect();

    let group_scores: Vec<f32> = biased
        .chunks_exact(group_size)
        .map(|g| {
            let (mut first, mut second) = (f32::NEG_INFINITY, f32::NEG_INFINITY);
            for &v in g {
                if v > first {
                    second = first;
                    first = v;
                } else if v > second {
                    second = v;
                }
            }
            first + second
        })
        .collect();
    let kept_groups = top_indices(&group_scores, p.topk_group);
    let mut candidates: Vec<usize> = kept_groups
        .iter()
        .flat_map(|g| g * group_size..(g + 1) * group_size)
        .collect();
    candidates.sort_by(|&a, &b| biased[b].total_cmp(&biased[a]).then(a.cmp(&b)));

    let mut ranked_group_scores = group_scores;
    ranked_group_scores.sort_by(|a, b| b.total_cmp(a));
    Selection {
        scores,
        biased,
        ranked_group_scores,
        candidates,
    }
}

/// How close one token's routing is to choosing differently. A perturbation of every biased
/// score by less than half of [`RoutingMargin::min`] cannot change which experts are chosen
/// (their order within the top-k and their weights change continuously).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RoutingMargin {
    /// Biased score of the `top_k`-th chosen expert minus that of the best candidate left
    /// out (infinite when every candidate is chosen).
    pub top_k: f32,
    /// Score of the `topk_group`-th kept group minus that of the best dropped group
    /// (infinite when every group is kept).
    pub group: f32,
}

impl RoutingMargin {
    /// The decision's margin in biased-score units: the top-k gap, or half the group gap if
    /// smaller (a group score sums two biased scores, so it moves up to twice as far).
    pub fn min(&self) -> f32 {
        self.top_k.min(self.group / 2.0)
    }
}

/// The [`RoutingMargin`] of the routing [`route_noaux_tc`] computes for the same inputs.
pub fn routing_margin(logits: &[f32], bias: &[f32], p: &RoutingParams) -> RoutingMargin {
    validate(logits, bias, p);
    let sel = select(logits, bias, p);
    let gap = |ranked: &[f32], k: usize| match ranked.get(k) {
        Some(next) => ranked[k - 1] - next,
        None => f32::INFINITY,
    };
    let ranked_biased: Vec<f32> = sel.candidates.iter().map(|&e| sel.biased[e]).collect();
    RoutingMargin {
        top_k: if p.top_k == 0 {
            f32::INFINITY
        } else {
            gap(&ranked_biased, p.top_k)
        },
        group: gap(&sel.ranked_group_scores, p.topk_group),
    }
}

/// Indices of the `k` largest values, largest first, ties to the lower index.
fn top_indices(values: &[f32], k: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..values.len()).collect();
    idx.sort_by(|&a, &b| values[b].total_cmp(&values[a]).then(a.cmp(&b)));
    idx.truncate(k);
    idx
}
