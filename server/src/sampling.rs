//! Picking the next token from a sequence's logits: greedy, or temperature with top-k and
//! top-p, drawn from a generator seeded per sequence so a seeded request is reproducible.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// How to pick tokens for one sequence. Validated by the request layer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SamplingParams {
    /// 0 means greedy (argmax); otherwise logits are divided by it before the softmax.
    pub temperature: f32,
    /// Keep only the `top_k` most likely tokens (0 = all).
    pub top_k: usize,
    /// Keep the smallest set of most likely tokens whose probability reaches `top_p` (1 = all).
    pub top_p: f32,
    /// Seed of this sequence's generator.
    pub seed: u64,
}

/// A sequence's sampler: the parameters and the generator that carries state between steps.
#[derive(Debug)]
pub struct Sampler {
    params: SamplingParams,
    rng: ChaCha8Rng,
}

/// The token picked and its log-probability under the distribution it was drawn from.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sampled {
    /// The token id.
    pub token: u32,
    /// Natural log of its probability after temperature (0-temperature: of the plain softmax).
    pub logprob: f32,
}

impl Sampler {
    /// A sampler whose draws depend only on `params` (including the seed).
    pub fn new(params: SamplingParams) -> Self {
        Self {
            params,
            rng: ChaCha8Rng::seed_from_u64(params.seed),
        }
    }

    /// Picks the next token from `logits`. NaN logits are never picked.
    pub fn sample(&mut self, logits: &[f32]) -> Sampled {
        if self.params.temperature == 0.0 {
            let token = argmax(logits);
            return Sampled {
                token: token as u32,
                logprob: log_softmax_at(logits, token, 1.0),
            };
        }
        let inv_t = 1.0 / self.params.temperature;
        // Candidates sorted by logit, most likely first; NaN sorts last and is dropped.
        let mut order: Vec<usize> = (0..logits.len()).filter(|&i| !logits[i].is_nan()).collect();
        order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]));
        if self.params.top_k > 0 {
            order.truncate(self.params.top_k);
        }
        let max = logits[order[0]];
        let weights: Vec<f64> = order
            .iter()
            .map(|&i| f64::from((logits[i] - max) * inv_t).exp())
            .collect();
        let total: f64 = weights.iter().sum();
        let mut kept = weights.len();
        if self.params.top_p < 1.0 {
            let mut acc = 0.0;
            for (n, w) in weights.iter().enumerate() {
                acc += w / total;
                if acc >= f64::from(self.params.top_p) {
                    kept = n + 1;
                    break;
                }
            }
        }
        let kept_total: f64 = weights[..kept].iter().sum();
        let mut draw = self.rng.random::<f64>() * kept_total;
        let mut pick = kept - 1;
        for (n, w) in weights[..kept].iter().enumerate() {
            if draw < *w {
                pick = n;
                break;
            }
            draw -= w;
        }
        let token = order[pick];
        Sampled {
            token: token as u32,
            logprob: log_softmax_at(logits, token, inv_t),
        }
    }
}

/// The index of the largest logit; the first one on ties, NaN never.
fn argmax(logits: &[f32]) -> usize {
    let mut best = 0;
    let mut best_value = f32::NEG_INFINITY;
    for (i, &v) in logits.iter().enumerate() {
        if v > best_value {
            best = i;
            best_value = v;
        }
    }
    best
}

/// `log softmax(logits * scale)[index]`, computed in f64.
fn log_softmax_at(logits: &[f32], index: usize, scale: f32) -> f32 {
    let max = logits
        .iter()
        .copied()
        .filter(|v| !v.is_nan())
        .fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = logits
        .iter()
        .filter(|v| !v.is_nan())
        .map(|&v| f64::from((v - max) * scale).exp())
        .sum();
    (f64::from((logits[index] - max) * scale) - sum.ln()) as f32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn random_logits(seed: u64, n: usize) -> Vec<f32> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        (0..n).map(|_| rng.random_range(-4.0..4.0)).collect()
    }

    fn params(temperature: f32, top_k: usize, top_p: f32, seed: u64) -> SamplingParams {
        SamplingParams {
            temperature,
            top_k,
            top_p,
            seed,
        }
    }

    /// Reference: probabilities of the softmax at temperature t, in f64.
    fn softmax(logits: &[f32], t: f32) -> Vec<f64> {
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let e: Vec<f64> = logits
            .iter()
            .map(|&v| (f64::from(v - max) / f64::from(t)).exp())
            .collect();
        let s: f64 = e.iter().sum();
        e.iter().map(|v| v / s).collect()
    }

    #[test]
    fn greedy_picks_the_argmax_and_its_logprob() {
        for seed in 0..20 {
            let logits = random_logits(seed, 97);
            let want = logits
                .iter()
                .enumerate()
                .max_by(|a, b| a.1.total_cmp(b.1))
                .unwrap()
                .0;
            let got = Sampler::new(params(0.0, 0, 1.0, seed)).sample(&logits);
            assert_eq!(got.token as usize, want);
            let p = softmax(&logits, 1.0)[want];
            assert!((f64::from(got.logprob) - p.ln()).abs() < 1e-5);
        }
    }

    #[test]
    fn same_seed_same_tokens_different_seed_differs() {
        let logits = random_logits(7, 50);
        let draw = |seed| {
            let mut s = Sampler::new(params(1.0, 0, 1.0, seed));
            (0..64).map(|_| s.sample(&logits).token).collect::<Vec<_>>()
        };
        assert_eq!(draw(3), draw(3));
        assert_ne!(draw(3), draw(4));
    }

    #[test]
    fn top_k_and_top_p_only_draw_allowed_tokens() {
        let logits = random_logits(11, 40);
        let probs = softmax(&logits, 0.7);
        let mut order: Vec<usize> = (0..40).collect();
        order.sort_by(|&a, &b| probs[b].total_cmp(&probs[a]));
        // top-k 5: only the 5 most likely.
        let mut s = Sampler::new(params(0.7, 5, 1.0, 1));
        for _ in 0..500 {
            let t = s.sample(&logits).token as usize;
            assert!(order[..5].contains(&t), "token {t} outside top-5");
        }
        // top-p: the smallest prefix reaching 0.5.
        let mut acc = 0.0;
        let mut n = 0;
        while acc < 0.5 {
            acc += probs[order[n]];
            n += 1;
        }
        let mut s = Sampler::new(params(0.7, 0, 0.5, 2));
        for _ in 0..500 {
            let t = s.sample(&logits).token as usize;
            assert!(order[..n].contains(&t), "token {t} outside top-p set");
        }
    }

    #[test]
    fn draws_follow_the_tempered_softmax() {
        // Chi-square-ish check: empirical frequencies match the reference within 4 sigma.
        let logits = random_logits(5, 6);
        let probs = softmax(&logits, 1.5);
        let draws = 40_000;
        let mut counts = [0usize; 6];
        let mut s = Sampler::new(params(1.5, 0, 1.0, 9));
        for _ in 0..draws {
            counts[s.sample(&logits).token as usize] += 1;
        }
        for (i, &c) in counts.iter().enumerate() {
            let expect = probs[i] * draws as f64;
            let sigma = (draws as f64 * probs[i] * (1.0 - probs[i])).sqrt();
            assert!(
                (c as f64 - expect).abs() < 4.0 * sigma + 1.0,
                "token {i}: {c} draws, expected {expect:.0}"
            );
        }
    }

    #[test]
    fn nan_logits_are_never_picked() {
        let mut logits = random_logits(3, 10);
        logits[2] = f32::NAN;
        let mut s = Sampler::new(params(1.0, 0, 1.0, 0));
        for _ in 0..200 {
            assert_ne!(s.sample(&logits).token, 2);
        }
        assert_ne!(
            Sampler::new(params(0.0, 0, 1.0, 0)).sample(&logits).token,
            2
        );
    }
}
