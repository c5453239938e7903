//! A sequence's sampling parameters and its seeded generator. The rule that turns logits
//! and one uniform draw into a token is `moe_kernels::reference::sample_token` (re-exported
//! by `model_deepseek::sampling`), the same on the CPU and on the GPU: the generator stays
//! here, and each step hands the backend one draw per sequence.

use model_deepseek::sampling::{SamplingRule, sample_token};
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

/// A sequence's sampler: the rule and the generator that carries state between steps.
#[derive(Debug)]
pub struct Sampler {
    rule: SamplingRule,
    rng: ChaCha8Rng,
}

impl Sampler {
    /// A sampler whose draws depend only on `params` (including the seed).
    pub fn new(params: SamplingParams) -> Self {
        Self {
            rule: SamplingRule {
                temperature: params.temperature,
                top_k: params.top_k,
                top_p: params.top_p,
            },
            rng: ChaCha8Rng::seed_from_u64(params.seed),
        }
    }

    /// How tokens are picked.
    pub fn rule(&self) -> SamplingRule {
        self.rule
    }

    /// The uniform number in [0, 1) for the next token. Greedy sequences draw nothing, so
    /// the generator only moves for the picks that use it.
    pub fn draw(&mut self) -> f64 {
        if self.rule.is_greedy() {
            0.0
        } else {
            self.rng.random::<f64>()
        }
    }

    /// Draws and picks the next token from `logits` on the host; `None` when no logit is a
    /// number. NaN logits are never picked.
    pub fn sample(&mut self, logits: &[f32]) -> Option<u32> {
        let u = self.draw();
        sample_token(logits, &self.rule, u)
    }
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
    fn greedy_picks_the_argmax() {
        for seed in 0..20 {
            let logits = random_logits(seed, 97);
            let want = logits
                .iter()
                .enumerate()
                .max_by(|a, b| a.1.total_cmp(b.1))
                .unwrap()
                .0;
            let got = Sampler::new(params(0.0, 0, 1.0, seed))
                .sample(&logits)
                .unwrap();
            assert_eq!(got as usize, want);
        }
    }

    #[test]
    fn same_seed_same_tokens_different_seed_differs() {
        let logits = random_logits(7, 50);
        let draw = |seed| {
            let mut s = Sampler::new(params(1.0, 0, 1.0, seed));
            (0..64)
                .map(|_| s.sample(&logits).unwrap())
                .collect::<Vec<_>>()
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
            let t = s.sample(&logits).unwrap() as usize;
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
            let t = s.sample(&logits).unwrap() as usize;
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
            counts[s.sample(&logits).unwrap() as usize] += 1;
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
            assert_ne!(s.sample(&logits), Some(2));
        }
        assert_ne!(
            Sampler::new(params(0.0, 0, 1.0, 0)).sample(&logits),
            Some(2)
        );
    }
}
