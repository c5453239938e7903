//! Picking the next token from one row of logits: greedy, or one draw from the tempered
//! softmax restricted to top-k and top-p. The random number comes from the caller (one
//! uniform `u` in [0, 1) per row and step), so the generator and its seed stay with whoever
//! owns the sequence, and the same `u` gives the same token on the CPU and on the device.
//!
//! The definition, which `kernels/sampling.hip` computes too:
//! - NaN logits are never candidates. Candidates are ordered by logit, largest first (with
//!   `-0.0` below `+0.0`), ties by index, smallest first.
//! - Greedy (temperature 0): the first index of the largest logit (`-0.0 == +0.0` here).
//! - Otherwise the first `top_k` candidates are kept (0 = all). With `max` the first
//!   candidate's logit and `inv_t = 1 / temperature` (f32), a candidate's weight is
//!   `exp(f64((l - max) * inv_t))` (the subtraction and product in f32, the exponential in
//!   f64), and exactly 1 where `l == max` (so `+inf` logits share the mass instead of
//!   producing NaN).
//! - `top_p < 1` keeps the shortest prefix whose weight sum reaches `top_p × total`.
//! - The token is the first of that prefix whose inclusive weight sum exceeds
//!   `u × kept_total` (the last of the prefix when rounding leaves none).
//!
//! Sums are f64. The device sums the same weights in another order, so it can pick the
//! neighbouring token only when `u × kept_total` (or `top_p × total`) lies within f64
//! rounding of a prefix sum — a relative distance of about `n × 1e-16` at worst.

/// How to turn a row of logits into a token.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SamplingRule {
    /// 0 means greedy (argmax); otherwise logits are divided by it before the softmax.
    pub temperature: f32,
    /// Keep only the `top_k` most likely tokens (0 = all).
    pub top_k: usize,
    /// Keep the shortest prefix of most likely tokens whose probability reaches `top_p`
    /// (1 = all).
    pub top_p: f32,
}

impl SamplingRule {
    /// Greedy decoding: always the most likely token.
    pub const GREEDY: SamplingRule = SamplingRule {
        temperature: 0.0,
        top_k: 0,
        top_p: 1.0,
    };

    /// Whether the rule ignores the random number (temperature 0).
    pub fn is_greedy(&self) -> bool {
        self.temperature == 0.0
    }
}

/// The token `rule` picks from `logits` with the uniform number `u` in [0, 1) (unused when
/// greedy); `None` when no logit is a number.
pub fn sample_token(logits: &[f32], rule: &SamplingRule, u: f64) -> Option<u32> {
    if rule.is_greedy() {
        return argmax(logits).map(|i| i as u32);
    }
    let mut order: Vec<usize> = (0..logits.len()).filter(|&i| !logits[i].is_nan()).collect();
    // Stable: equal logits keep index order.
    order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]));
    if rule.top_k > 0 {
        order.truncate(rule.top_k);
    }
    let max = logits[*order.first()?];
    let inv_t = 1.0 / rule.temperature;
    let weights: Vec<f64> = order
        .iter()
        .map(|&i| weight(logits[i], max, inv_t))
        .collect();
    let total: f64 = weights.iter().sum();
    let kept = if rule.top_p < 1.0 {
        first_reaching(&weights, f64::from(rule.top_p) * total, true)
    } else {
        weights.len() - 1
    } + 1;
    let kept_total: f64 = weights[..kept].iter().sum();
    let pick = first_reaching(&weights[..kept], u * kept_total, false);
    Some(order[pick] as u32)
}

/// A candidate's unnormalized probability; see the module doc.
fn weight(logit: f32, max: f32, inv_t: f32) -> f64 {
    if logit == max {
        1.0
    } else {
        f64::from((logit - max) * inv_t).exp()
    }
}

/// The first index whose inclusive prefix sum reaches (`inclusive`: `>=`, else `>`)
/// `target`; the last index when none does.
fn first_reaching(weights: &[f64], target: f64, inclusive: bool) -> usize {
    let mut acc = 0.0;
    for (n, w) in weights.iter().enumerate() {
        acc += w;
        if acc > target || (inclusive && acc == target) {
            return n;
        }
    }
    weights.len() - 1
}

/// The index of the largest logit; the first one on ties, NaN never.
fn argmax(logits: &[f32]) -> Option<usize> {
    let mut best: Option<(usize, f32)> = None;
    for (i, &v) in logits.iter().enumerate() {
        if !v.is_nan() && best.is_none_or(|(_, b)| v > b) {
            best = Some((i, v));
        }
    }
    best.map(|(i, _)| i)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    #[test]
    fn greedy_takes_the_first_of_equal_maxima_and_skips_nan() {
        let logits = [f32::NAN, 1.0, 3.0, f32::NAN, 3.0, -0.0];
        assert_eq!(sample_token(&logits, &SamplingRule::GREEDY, 0.0), Some(2));
        assert_eq!(
            sample_token(&[-0.0, 0.0], &SamplingRule::GREEDY, 0.0),
            Some(0)
        );
        assert_eq!(
            sample_token(&[f32::NAN, f32::NEG_INFINITY], &SamplingRule::GREEDY, 0.0),
            Some(1)
        );
        assert_eq!(sample_token(&[f32::NAN], &SamplingRule::GREEDY, 0.0), None);
    }

    #[test]
    fn positive_infinities_share_the_mass() {
        let logits = [1.0, f32::INFINITY, 2.0, f32::INFINITY];
        let rule = SamplingRule {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
        };
        assert_eq!(sample_token(&logits, &rule, 0.25), Some(1));
        assert_eq!(sample_token(&logits, &rule, 0.75), Some(3));
        assert_eq!(sample_token(&[f32::NAN; 3], &rule, 0.5), None);
    }

    fn random_rule(rng: &mut StdRng, n: usize) -> SamplingRule {
        SamplingRule {
            temperature: rng.random_range(0.05..3.0),
            top_k: if rng.random_bool(0.5) {
                0
            } else {
                rng.random_range(1..=n)
            },
            top_p: if rng.random_bool(0.5) {
                1.0
            } else {
                rng.random_range(0.01..1.0)
            },
        }
    }

    /// Brute force in f64 from the definition: each kept token's probability interval in
    /// [0, 1), in candidate order.
    fn intervals(logits: &[f32], rule: &SamplingRule) -> Vec<(u32, f64, f64)> {
        let mut order: Vec<usize> = (0..logits.len()).filter(|&i| !logits[i].is_nan()).collect();
        // Selection sort by (logit desc, index asc): slow and obviously right.
        for a in 0..order.len() {
            let mut best = a;
            for b in a + 1..order.len() {
                let (x, y) = (logits[order[b]], logits[order[best]]);
                if x.total_cmp(&y).is_gt() {
                    best = b;
                }
            }
            let moved = order.remove(best);
            order.insert(a, moved);
        }
        if rule.top_k > 0 {
            order.truncate(rule.top_k);
        }
        let max = f64::from(logits[order[0]]);
        let t = f64::from(rule.temperature);
        let p: Vec<f64> = order
            .iter()
            .map(|&i| ((f64::from(logits[i]) - max) / t).exp())
            .collect();
        let total: f64 = p.iter().sum();
        let mut kept = p.len();
        let mut acc = 0.0;
        for (n, w) in p.iter().enumerate() {
            acc += w / total;
            if acc >= f64::from(rule.top_p) {
                kept = n + 1;
                break;
            }
        }
        let kept_total: f64 = p[..kept].iter().sum();
        let mut start = 0.0;
        order[..kept]
            .iter()
            .zip(&p)
            .map(|(&i, w)| {
                let end = start + w / kept_total;
                let out = (i as u32, start, end);
                start = end;
                out
            })
            .collect()
    }

    #[test]
    fn draws_land_in_the_brute_force_interval_of_their_token() {
        let mut rng = StdRng::seed_from_u64(0x5a3);
        let mut checked = 0;
        for case in 0..300 {
            let n = rng.random_range(1..200);
            let mut logits: Vec<f32> = (0..n).map(|_| rng.random_range(-8.0..8.0)).collect();
            // Ties and NaN in some rows.
            if case % 3 == 0 {
                for v in &mut logits {
                    *v = (*v * 2.0).round() / 2.0;
                }
            }
            if case % 5 == 0 {
                logits[rng.random_range(0..n)] = f32::NAN;
            }
            if logits.iter().all(|v| v.is_nan()) {
                continue;
            }
            let rule = random_rule(&mut rng, n);
            let want = intervals(&logits, &rule);
            for _ in 0..20 {
                let u: f64 = rng.random();
                let got = sample_token(&logits, &rule, u).unwrap();
                let near_boundary = want
                    .iter()
                    .any(|&(_, a, b)| (u - a).abs() < 1e-5 || (u - b).abs() < 1e-5);
                if near_boundary {
                    continue;
                }
                let (token, ..) = want
                    .iter()
                    .find(|&&(_, a, b)| a <= u && u < b)
                    .expect("the intervals cover [0, 1)");
                assert_eq!(got, *token, "case {case}: {rule:?}, u = {u}");
                checked += 1;
            }
        }
        assert!(checked > 4000, "only {checked} draws checked");
    }

    #[test]
    fn top_p_boundaries_are_reached_not_crossed() {
        // Four equal weights of exactly 1: top_p 0.5 reaches its target (2 of 4) after two
        // tokens, so only tokens 0 and 1 can be drawn, each with half the mass.
        let logits = [0.25f32; 4];
        let rule = SamplingRule {
            temperature: 0.7,
            top_k: 0,
            top_p: 0.5,
        };
        for (u, want) in [(0.0, 0), (0.49, 0), (0.5, 1), (0.999, 1)] {
            assert_eq!(sample_token(&logits, &rule, u), Some(want), "u = {u}");
        }
        let rule = SamplingRule {
            top_k: 3,
            top_p: 1.0,
            ..rule
        };
        assert_eq!(sample_token(&logits, &rule, 0.999), Some(2));
    }
}
