//! Choosing the next token from logits: greedy, or temperature sampling narrowed by
//! top-k, top-p and min-p, with a repetition penalty, from a seeded RNG so a run can
//! be reproduced.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::{Error, Result};

/// How to pick tokens. The default is greedy (temperature 0).
#[derive(Clone, Debug, PartialEq)]
pub struct SamplingParams {
    /// 0 picks the most likely token; higher values flatten the distribution.
    pub temperature: f32,
    /// Keep only the `k` most likely tokens (0: all).
    pub top_k: usize,
    /// Keep the smallest set of tokens whose probabilities add up to `p` (1: all).
    pub top_p: f32,
    /// Drop tokens less likely than `min_p` times the most likely one (0: none).
    pub min_p: f32,
    /// Divide positive (multiply negative) logits of recently seen tokens by this (1: off).
    pub repetition_penalty: f32,
    /// How many recent tokens the penalty looks at.
    pub repetition_window: usize,
    /// RNG seed; the same seed, model and prompt give the same text.
    pub seed: u64,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            temperature: 0.0,
            top_k: 40,
            top_p: 0.95,
            min_p: 0.05,
            repetition_penalty: 1.0,
            repetition_window: 64,
            seed: 0,
        }
    }
}

impl SamplingParams {
    /// Check ranges; errors say which parameter is wrong.
    pub fn validate(&self) -> Result<()> {
        let bad = |what: &str| Err(Error::invalid(format!("invalid sampling parameter: {what}")));
        if !(self.temperature >= 0.0 && self.temperature.is_finite()) {
            return bad("temperature must be a finite number >= 0");
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return bad("top_p must be in (0, 1]");
        }
        if !(0.0..=1.0).contains(&self.min_p) {
            return bad("min_p must be in [0, 1]");
        }
        if !(self.repetition_penalty > 0.0 && self.repetition_penalty.is_finite()) {
            return bad("repetition_penalty must be > 0");
        }
        Ok(())
    }
}

/// A sampler with its own RNG state.
pub struct Sampler {
    params: SamplingParams,
    rng: StdRng,
    candidates: Vec<(u32, f32)>,
}

impl Sampler {
    pub fn new(params: SamplingParams) -> Result<Sampler> {
        params.validate()?;
        let rng = StdRng::seed_from_u64(params.seed);
        Ok(Sampler { params, rng, candidates: Vec::new() })
    }

    pub fn params(&self) -> &SamplingParams {
        &self.params
    }

    /// Pick the next token from `logits`, given the tokens so far (`history`).
    pub fn sample(&mut self, logits: &[f32], history: &[u32]) -> Result<u32> {
        if logits.is_empty() {
            return Err(Error::invalid("sample: empty logits"));
        }
        // A corrupt or mis-read model gives NaN (or +inf) logits; sampling on would print
        // some arbitrary token forever.
        if let Some(i) = logits.iter().position(|x| x.is_nan() || *x == f32::INFINITY) {
            return Err(Error::invalid(format!(
                "the model's logits are not finite (token {i}: {}); the model file may be corrupt",
                logits[i]
            )));
        }
        let p = &self.params;
        let mut logits_owned;
        let mut logits = logits;
        if p.repetition_penalty != 1.0 {
            logits_owned = logits.to_vec();
            let start = history.len().saturating_sub(p.repetition_window);
            for &id in &history[start..] {
                if let Some(l) = logits_owned.get_mut(id as usize) {
                    *l = if *l > 0.0 { *l / p.repetition_penalty } else { *l * p.repetition_penalty };
                }
            }
            logits = &logits_owned;
        }
        if p.temperature == 0.0 {
            let best = argmax(logits);
            if logits[best as usize] == f32::NEG_INFINITY {
                return Err(Error::invalid("sample: no finite logits"));
            }
            return Ok(best);
        }
        let c = &mut self.candidates;
        c.clear();
        c.extend(logits.iter().enumerate().filter(|(_, l)| l.is_finite()).map(|(i, &l)| (i as u32, l)));
        if c.is_empty() {
            return Err(Error::invalid("sample: no finite logits"));
        }
        let by_logit = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
        if p.top_k > 0 && p.top_k < c.len() {
            c.select_nth_unstable_by(p.top_k - 1, by_logit);
            c.truncate(p.top_k);
        }
        c.sort_unstable_by(by_logit);
        // Softmax with temperature, in place: .1 becomes a probability.
        let max = c[0].1;
        let mut sum = 0.0f64;
        for e in c.iter_mut() {
            e.1 = ((e.1 - max) / p.temperature).exp();
            sum += e.1 as f64;
        }
        for e in c.iter_mut() {
            e.1 = (e.1 as f64 / sum) as f32;
        }
        if p.min_p > 0.0 {
            let floor = c[0].1 * p.min_p;
            let keep = c.iter().take_while(|e| e.1 >= floor).count().max(1);
            c.truncate(keep);
        }
        if p.top_p < 1.0 {
            let mut acc = 0.0;
            let mut keep = c.len();
            for (i, e) in c.iter().enumerate() {
                acc += e.1;
                if acc >= p.top_p {
                    keep = i + 1;
                    break;
                }
            }
            c.truncate(keep);
        }
        let total: f32 = c.iter().map(|e| e.1).sum();
        let mut r = self.rng.random::<f32>() * total;
        for e in c.iter() {
            r -= e.1;
            if r <= 0.0 {
                return Ok(e.0);
            }
        }
        Ok(c[c.len() - 1].0)
    }
}

/// Index of the largest value (the first one on ties).
pub fn argmax(v: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &x) in v.iter().enumerate() {
        if x > v[best] {
            best = i;
        }
    }
    best as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(t: f32) -> SamplingParams {
        SamplingParams { temperature: t, top_k: 0, top_p: 1.0, min_p: 0.0, ..Default::default() }
    }

    #[test]
    fn greedy_takes_the_argmax() {
        let mut s = Sampler::new(params(0.0)).unwrap();
        assert_eq!(s.sample(&[0.1, 3.0, -1.0, 2.9], &[]).unwrap(), 1);
    }

    /// -inf masks a token; NaN, +inf or nothing but -inf is an error, greedy or sampled.
    #[test]
    fn logits_that_leave_no_choice_are_errors() {
        let inf = f32::INFINITY;
        for t in [0.0, 0.8] {
            let mut s = Sampler::new(params(t)).unwrap();
            assert_eq!(s.sample(&[-inf, 1.0, -inf], &[]).unwrap(), 1);
            for bad in [[-inf, -inf, -inf], [0.0, f32::NAN, 1.0], [0.0, inf, 1.0]] {
                assert!(s.sample(&bad, &[]).is_err(), "temperature {t}: {bad:?}");
            }
        }
    }

    #[test]
    fn repetition_penalty_can_change_the_choice() {
        let mut s = Sampler::new(SamplingParams { repetition_penalty: 2.0, ..params(0.0) }).unwrap();
        assert_eq!(s.sample(&[0.0, 3.0, 2.0], &[1]).unwrap(), 2);
    }

    #[test]
    fn same_seed_same_tokens_and_frequencies_follow_probabilities() {
        let logits = [1.0f32, 2.0, 0.5, 2.0f32.ln() + 1.0];
        let run = |seed| {
            let mut s = Sampler::new(SamplingParams { seed, ..params(1.0) }).unwrap();
            (0..4000).map(|_| s.sample(&logits, &[]).unwrap()).collect::<Vec<_>>()
        };
        let a = run(7);
        assert_eq!(a, run(7));
        assert_ne!(a, run(8));
        let z: f32 = logits.iter().map(|l| l.exp()).sum();
        for id in 0..4 {
            let freq = a.iter().filter(|&&t| t == id).count() as f32 / a.len() as f32;
            let p = logits[id as usize].exp() / z;
            assert!((freq - p).abs() < 0.03, "token {id}: {freq} vs {p}");
        }
    }

    #[test]
    fn top_k_top_p_and_min_p_narrow_the_choice() {
        let logits = [5.0f32, 4.9, 1.0, 0.0, -1.0];
        let mut k1 = Sampler::new(SamplingParams { top_k: 2, seed: 1, ..params(5.0) }).unwrap();
        assert!((0..500).all(|_| k1.sample(&logits, &[]).unwrap() < 2));
        let mut p = Sampler::new(SamplingParams { top_p: 0.5, seed: 2, ..params(1.0) }).unwrap();
        assert!((0..500).all(|_| p.sample(&logits, &[]).unwrap() == 0));
        let mut m = Sampler::new(SamplingParams { min_p: 0.5, seed: 3, ..params(1.0) }).unwrap();
        assert!((0..500).all(|_| m.sample(&logits, &[]).unwrap() < 2));
    }

    #[test]
    fn bad_parameters_are_rejected() {
        assert!(Sampler::new(params(-1.0)).is_err());
        assert!(Sampler::new(SamplingParams { top_p: 0.0, ..params(1.0) }).is_err());
        assert!(Sampler::new(SamplingParams { min_p: 2.0, ..params(1.0) }).is_err());
        assert!(Sampler::new(SamplingParams { temperature: f32::NAN, ..params(1.0) }).is_err());
    }
}
