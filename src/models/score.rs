//! Scoring text with a model: log-probabilities of tokens and perplexity over windows of
//! a fixed context, as llama.cpp's `llama-perplexity` computes it (each window starts
//! fresh; only its second half is scored, so every scored token has at least half a
//! window of context), so figures are comparable with its output.

use crate::models::{Decoder, KvCache};
use crate::{Error, Result};

/// `log softmax(logits)[target]`, computed in f64 (a 49k-entry sum in f32 loses digits).
pub fn log_prob(logits: &[f32], target: u32) -> Result<f64> {
    let t = *logits
        .get(target as usize)
        .ok_or_else(|| Error::invalid(format!("token {target} is outside the {} logits", logits.len())))?;
    if let Some(bad) = logits.iter().position(|x| !x.is_finite()) {
        return Err(Error::invalid(format!("logit {bad} is not finite ({})", logits[bad])));
    }
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = logits.iter().map(|&x| ((x - max) as f64).exp()).sum();
    Ok((t - max) as f64 - sum.ln())
}

/// Perplexity of a text and its uncertainty.
#[derive(Clone, Debug, PartialEq)]
pub struct Perplexity {
    /// exp(mean negative log-likelihood).
    pub ppl: f64,
    /// Standard error of `ppl` (from the per-token spread, by the delta method).
    pub stderr: f64,
    /// Mean negative log-likelihood per scored token (nats).
    pub nll: f64,
    /// Tokens scored.
    pub scored: usize,
    /// Windows evaluated.
    pub windows: usize,
}

/// Accumulates per-token negative log-likelihoods.
#[derive(Clone, Debug, Default)]
pub struct NllStats {
    sum: f64,
    sum_sq: f64,
    n: usize,
    windows: usize,
}

impl NllStats {
    pub fn push(&mut self, nll: f64) {
        self.sum += nll;
        self.sum_sq += nll * nll;
        self.n += 1;
    }

    /// The perplexity so far (`None` before any token).
    pub fn result(&self) -> Option<Perplexity> {
        if self.n == 0 {
            return None;
        }
        let n = self.n as f64;
        let mean = self.sum / n;
        let var = (self.sum_sq / n - mean * mean).max(0.0);
        let se_mean = if self.n > 1 { (var / (n - 1.0)).sqrt() } else { 0.0 };
        let ppl = mean.exp();
        Some(Perplexity { ppl, stderr: ppl * se_mean, nll: mean, scored: self.n, windows: self.windows })
    }
}

/// Perplexity of `tokens` in windows of `ctx` tokens (`ctx / 2` scored in each; a text
/// shorter than two windows' worth is an error, as is a window longer than the model's
/// context). With `bos`, each window's first token is replaced by it (llama.cpp does the
/// same for models that expect a BOS). `on_window(done, total, so_far)` reports progress;
/// `max_windows` limits the work.
pub fn perplexity(
    model: &Decoder,
    tokens: &[u32],
    ctx: usize,
    bos: Option<u32>,
    max_windows: Option<usize>,
    on_window: &mut dyn FnMut(usize, usize, &Perplexity),
) -> Result<Perplexity> {
    if ctx < 4 {
        return Err(Error::invalid(format!("a window of {ctx} tokens is too short (at least 4)")));
    }
    if ctx > model.config().context_length {
        return Err(Error::invalid(format!(
            "a window of {ctx} tokens exceeds the model's context of {}",
            model.config().context_length
        )));
    }
    let mut windows = tokens.len() / ctx;
    if windows == 0 {
        return Err(Error::invalid(format!(
            "the text has {} tokens, fewer than one window of {ctx}: give a longer text or a smaller --ctx",
            tokens.len()
        )));
    }
    if let Some(m) = max_windows {
        windows = windows.min(m.max(1));
    }
    let vocab = model.config().vocab_size;
    let first = ctx / 2;
    let mut stats = NllStats::default();
    let mut cache: Option<KvCache> = None;
    for w in 0..windows {
        let mut chunk = tokens[w * ctx..(w + 1) * ctx].to_vec();
        if let Some(b) = bos {
            chunk[0] = b;
        }
        let cache = match &mut cache {
            Some(c) => {
                c.clear();
                c
            }
            None => cache.insert(model.new_cache(ctx)?),
        };
        let logits = model.forward_all_logits(&chunk, cache)?;
        let logits = logits.as_slice::<f32>()?;
        for i in first..ctx - 1 {
            stats.push(-log_prob(&logits[i * vocab..(i + 1) * vocab], chunk[i + 1])?);
        }
        stats.windows += 1;
        on_window(w + 1, windows, &stats.result().expect("tokens were scored"));
    }
    Ok(stats.result().expect("at least one window"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_prob_is_log_softmax() {
        let l = [1.0f32, 2.0, 3.0];
        let z: f64 = l.iter().map(|&x| (x as f64).exp()).sum();
        for t in 0..3 {
            assert!((log_prob(&l, t).unwrap() - ((l[t as usize] as f64) - z.ln())).abs() < 1e-9);
        }
        // large logits do not overflow
        assert!((log_prob(&[1000.0, 1000.0], 0).unwrap() + std::f64::consts::LN_2).abs() < 1e-9);
        assert!(log_prob(&l, 3).is_err());
        assert!(log_prob(&[f32::NAN, 1.0], 1).is_err());
    }

    #[test]
    fn stats_give_exp_mean_and_delta_method_error() {
        let mut s = NllStats::default();
        assert!(s.result().is_none());
        for x in [1.0, 2.0, 3.0] {
            s.push(x);
        }
        let r = s.result().unwrap();
        assert!((r.ppl - 2f64.exp()).abs() < 1e-12);
        // sample sd 1 -> se of the mean 1/sqrt(3)
        assert!((r.stderr - 2f64.exp() / 3f64.sqrt()).abs() < 1e-9, "{r:?}");
    }
}
