//! Choosing the next token from a logits vector on the host: greedy, or temperature sampling
//! restricted to the top-k tokens and the top-p nucleus, from a seeded generator. The GPU
//! model returns logits to the host, so the same sampler serves the CPU and GPU paths.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use thiserror::Error;

/// How to pick the next token.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SamplingParams {
    /// 0 = greedy (argmax); otherwise logits are divided by it before the softmax.
    pub temperature: f32,
    /// Keep only the `k` most likely tokens (`None` = all).
    pub top_k: Option<usize>,
    /// Keep the smallest set of most likely tokens whose probability reaches `top_p`
    /// (1 = all).
    pub top_p: f32,
}

impl SamplingParams {
    /// Greedy decoding.
    pub const GREEDY: SamplingParams = SamplingParams {
        temperature: 0.0,
        top_k: None,
        top_p: 1.0,
    };
}

/// A sampling request that cannot be honoured.
#[derive(Debug, Error, PartialEq)]
pub enum SamplingError {
    /// A parameter is out of range.
    #[error("sampling parameter {parameter} = {value}: {reason}")]
    Parameter {
        /// `temperature`, `top_k` or `top_p`.
        parameter: &'static str,
        /// Its value.
        value: String,
        /// What is allowed.
        reason: &'static str,
    },
    /// The logits are empty or hold NaN / infinity.
    #[error("logits: {0}")]
    Logits(&'static str),
}

/// A seeded token sampler; the same seed and inputs give the same tokens.
#[derive(Debug, Clone)]
pub struct Sampler {
    rng: ChaCha8Rng,
}

impl Sampler {
    /// A sampler whose random stream is fixed by `seed`.
    pub fn new(seed: u64) -> Self {
        Self {
            rng: ChaCha8Rng::seed_from_u64(seed),
        }
    }

    /// The next token under `params`.
    pub fn sample(
        &mut self,
        logits: &[f32],
        params: &SamplingParams,
    ) -> Result<u32, SamplingError> {
        check(params)?;
        if logits.is_empty() {
            return Err(SamplingError::Logits("empty"));
        }
        if !logits.iter().all(|v| v.is_finite()) {
            return Err(SamplingError::Logits("NaN or infinity"));
        }
        let mut order: Vec<usize> = (0..logits.len()).collect();
        // Most likely first; ties to the lower id, so greedy is the first argmax.
        order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]).then(a.cmp(&b)));
        if params.temperature == 0.0 {
            return Ok(order[0] as u32);
        }
        if let Some(k) = params.top_k {
            order.truncate(k);
        }
        let max = logits[order[0]];
        let t = f64::from(params.temperature);
        let weights: Vec<f64> = order
            .iter()
            .map(|&i| ((f64::from(logits[i]) - f64::from(max)) / t).exp())
            .collect();
        let total: f64 = weights.iter().sum();
        // The nucleus: the shortest prefix whose probability reaches top_p.
        let mut kept = 0;
        let mut mass = 0.0;
        for w in &weights {
            kept += 1;
            mass += w / total;
            if mass >= f64::from(params.top_p) {
                break;
            }
        }
        let kept_total: f64 = weights[..kept].iter().sum();
        let mut u = self.rng.random::<f64>() * kept_total;
        for (&i, w) in order[..kept].iter().zip(&weights) {
            if u < *w {
                return Ok(i as u32);
            }
            u -= w;
        }
        Ok(order[kept - 1] as u32)
    }
}

fn check(p: &SamplingParams) -> Result<(), SamplingError> {
    let bad = |parameter, value: String, reason| {
        Err(SamplingError::Parameter {
            parameter,
            value,
            reason,
        })
    };
    if !(p.temperature.is_finite() && p.temperature >= 0.0) {
        return bad(
            "temperature",
            p.temperature.to_string(),
            "must be finite and ≥ 0",
        );
    }
    if p.top_k == Some(0) {
        return bad("top_k", "0".into(), "must be at least 1");
    }
    if !(p.top_p > 0.0 && p.top_p <= 1.0) {
        return bad("top_p", p.top_p.to_string(), "must be in (0, 1]");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(temperature: f32, top_k: Option<usize>, top_p: f32) -> SamplingParams {
        SamplingParams {
            temperature,
            top_k,
            top_p,
        }
    }

    fn frequencies(logits: &[f32], p: &SamplingParams, draws: usize, seed: u64) -> Vec<f64> {
        let mut s = Sampler::new(seed);
        let mut counts = vec![0usize; logits.len()];
        for _ in 0..draws {
            counts[s.sample(logits, p).unwrap() as usize] += 1;
        }
        counts.iter().map(|&c| c as f64 / draws as f64).collect()
    }

    /// Softmax of `logits / t` over `keep` (others 0), in f64: the independent reference.
    fn softmax(logits: &[f32], t: f64, keep: &[usize]) -> Vec<f64> {
        let mut p = vec![0f64; logits.len()];
        let total: f64 = keep.iter().map(|&i| (f64::from(logits[i]) / t).exp()).sum();
        for &i in keep {
            p[i] = (f64::from(logits[i]) / t).exp() / total;
        }
        p
    }

    #[test]
    fn greedy_and_top_k_one_take_the_argmax() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        for _ in 0..20 {
            let logits: Vec<f32> = (0..50).map(|_| rng.random_range(-5.0..5.0)).collect();
            let best = logits
                .iter()
                .enumerate()
                .max_by(|a, b| a.1.total_cmp(b.1))
                .unwrap()
                .0 as u32;
            let mut s = Sampler::new(1);
            assert_eq!(s.sample(&logits, &SamplingParams::GREEDY).unwrap(), best);
            assert_eq!(s.sample(&logits, &params(2.0, Some(1), 1.0)).unwrap(), best);
        }
    }

    #[test]
    fn frequencies_follow_the_tempered_softmax_within_top_k_and_top_p() {
        let logits = [1.0f32, 0.2, 2.0, -1.0, 0.5, 1.5];
        let draws = 40_000;
        // Plain temperature: every token.
        let all: Vec<usize> = (0..6).collect();
        let cases = [
            (params(0.7, None, 1.0), all.clone()),
            // top-k 3 keeps tokens 2, 5, 0.
            (params(1.3, Some(3), 1.0), vec![2, 5, 0]),
            // At t = 1 the sorted probabilities are .41 .25 .15 .09 .07 .02 (tokens 2 5 0 4 1
            // 3): top_p .6 keeps the first two.
            (params(1.0, None, 0.6), vec![2, 5]),
        ];
        for (p, keep) in cases {
            let want = softmax(&logits, f64::from(p.temperature), &keep);
            let got = frequencies(&logits, &p, draws, 11);
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                // Five binomial standard deviations.
                let sd = (w * (1.0 - w) / draws as f64).sqrt();
                assert!(
                    (g - w).abs() <= 5.0 * sd + 1e-9,
                    "{p:?} token {i}: {g} vs {w}"
                );
            }
        }
    }

    #[test]
    fn same_seed_same_tokens() {
        let logits: Vec<f32> = (0..30).map(|i| (i as f32 * 0.37).sin()).collect();
        let p = params(0.9, Some(10), 0.9);
        let run = |seed| {
            let mut s = Sampler::new(seed);
            (0..50)
                .map(|_| s.sample(&logits, &p).unwrap())
                .collect::<Vec<_>>()
        };
        assert_eq!(run(5), run(5));
        assert_ne!(run(5), run(6));
    }

    #[test]
    fn bad_parameters_and_logits_are_errors() {
        let mut s = Sampler::new(0);
        let l = [0.0f32, 1.0];
        for (p, name) in [
            (params(-1.0, None, 1.0), "temperature"),
            (params(f32::NAN, None, 1.0), "temperature"),
            (params(1.0, Some(0), 1.0), "top_k"),
            (params(1.0, None, 0.0), "top_p"),
            (params(1.0, None, 1.5), "top_p"),
        ] {
            match s.sample(&l, &p) {
                Err(SamplingError::Parameter { parameter, .. }) => assert_eq!(parameter, name),
                other => panic!("{p:?}: {other:?}"),
            }
        }
        assert!(matches!(
            s.sample(&[], &SamplingParams::GREEDY),
            Err(SamplingError::Logits(_))
        ));
        assert!(matches!(
            s.sample(&[0.0, f32::NAN], &SamplingParams::GREEDY),
            Err(SamplingError::Logits(_))
        ));
    }
}
