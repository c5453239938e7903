//! Log-probabilities of generated tokens, for requests that ask for `logprobs`: the chosen
//! token's and the most likely alternatives', under the model's own distribution (the
//! softmax of the raw logits, before temperature, top-k and top-p).

/// The log-probabilities reported for one generated token.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenLogprob {
    /// The generated token.
    pub token: u32,
    /// Its natural-log probability.
    pub logprob: f32,
    /// The most likely tokens and their log-probabilities, most likely first.
    pub top: Vec<(u32, f32)>,
}

/// The log-probability of `token` and of the `top_n` most likely tokens in `logits`.
/// NaN logits count as impossible.
pub fn token_logprobs(logits: &[f32], token: u32, top_n: usize) -> TokenLogprob {
    let max = logits
        .iter()
        .copied()
        .filter(|v| !v.is_nan())
        .fold(f32::NEG_INFINITY, f32::max);
    let log_sum: f64 = logits
        .iter()
        .filter(|v| !v.is_nan())
        .map(|&v| f64::from(v - max).exp())
        .sum::<f64>()
        .ln();
    let logprob = |i: usize| -> f32 {
        let v = logits[i];
        if v.is_nan() {
            f32::NEG_INFINITY
        } else {
            (f64::from(v - max) - log_sum) as f32
        }
    };
    let mut order: Vec<usize> = (0..logits.len()).filter(|&i| !logits[i].is_nan()).collect();
    let n = top_n.min(order.len());
    if n > 0 && n < order.len() {
        order.select_nth_unstable_by(n - 1, |&a, &b| logits[b].total_cmp(&logits[a]));
    }
    order.truncate(n);
    order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]).then(a.cmp(&b)));
    TokenLogprob {
        token,
        logprob: logprob(token as usize),
        top: order.into_iter().map(|i| (i as u32, logprob(i))).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn matches_a_float64_softmax_and_lists_the_most_likely_first() {
        let mut rng = ChaCha8Rng::seed_from_u64(4);
        for _ in 0..20 {
            let n = rng.random_range(2..300);
            let logits: Vec<f32> = (0..n).map(|_| rng.random_range(-20.0..20.0)).collect();
            let z: f64 = logits.iter().map(|&v| f64::from(v).exp()).sum();
            let reference = |i: usize| (f64::from(logits[i]).exp() / z).ln();
            let token = rng.random_range(0..n) as u32;
            let top_n = rng.random_range(0..8);
            let got = token_logprobs(&logits, token, top_n);
            assert!((f64::from(got.logprob) - reference(token as usize)).abs() < 1e-4);
            let mut sorted: Vec<usize> = (0..n).collect();
            sorted.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]));
            let want: Vec<u32> = sorted.iter().take(top_n).map(|&i| i as u32).collect();
            assert_eq!(got.top.iter().map(|t| t.0).collect::<Vec<_>>(), want);
            for &(i, lp) in &got.top {
                assert!((f64::from(lp) - reference(i as usize)).abs() < 1e-4);
            }
        }
    }

    #[test]
    fn nan_logits_are_impossible_and_never_listed() {
        let logits = [1.0, f32::NAN, 0.5];
        let got = token_logprobs(&logits, 1, 3);
        assert_eq!(got.logprob, f32::NEG_INFINITY);
        assert_eq!(got.top.iter().map(|t| t.0).collect::<Vec<_>>(), vec![0, 2]);
    }
}
