//! Scoring text with a model: log-probabilities of tokens (the log-softmax of a row of
//! logits over the whole vocabulary, its most likely tokens: what the server returns as
//! `logprobs`) and perplexity over windows of a fixed context, as llama.cpp's
//! `llama-perplexity` computes it (each window starts fresh; only its second half is
//! scored, so every scored token has at least half a window of context), so figures are
//! comparable with its output.

use crate::models::{Decoder, KvCache};
use crate::{Error, Result};

/// `log softmax(logits)[target]`, computed in f64 (a 49k-entry sum in f32 loses digits).
pub fn log_prob(logits: &[f32], target: u32) -> Result<f64> {
    LogSoftmax::new(logits)?.get(target)
}

/// The log-softmax of one row of logits over the whole vocabulary, normalised once (in
/// f64, as [`log_prob`]) so that many tokens of the row can be read at the cost of one.
#[derive(Clone, Copy, Debug)]
pub struct LogSoftmax<'a> {
    logits: &'a [f32],
    max: f32,
    /// `ln(sum(exp(logit - max)))`.
    log_sum: f64,
}

impl<'a> LogSoftmax<'a> {
    /// Refuses an empty row and any non-finite logit (naming it).
    pub fn new(logits: &'a [f32]) -> Result<LogSoftmax<'a>> {
        if logits.is_empty() {
            return Err(Error::invalid("log-softmax of no logits"));
        }
        if let Some(bad) = logits.iter().position(|x| !x.is_finite()) {
            return Err(Error::invalid(format!("logit {bad} is not finite ({})", logits[bad])));
        }
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let sum: f64 = logits.iter().map(|&x| ((x - max) as f64).exp()).sum();
        Ok(LogSoftmax { logits, max, log_sum: sum.ln() })
    }

    /// The log-probability of `token`.
    pub fn get(&self, token: u32) -> Result<f64> {
        let t = *self
            .logits
            .get(token as usize)
            .ok_or_else(|| Error::invalid(format!("token {token} is outside the {} logits", self.logits.len())))?;
        Ok((t - self.max) as f64 - self.log_sum)
    }

    /// The `k` most likely tokens with their log-probabilities, most likely first (see
    /// [`top_k`]).
    pub fn top(&self, k: usize) -> Vec<(u32, f64)> {
        top_k(self.logits, k).into_iter().map(|(id, x)| (id, (x - self.max) as f64 - self.log_sum)).collect()
    }
}

/// The `k` largest entries of `logits` as `(index, value)`, largest first; equal values
/// in index order, so the answer is deterministic. One pass, no allocation beyond `k`
/// entries (a full sort of a 49k vocabulary for 20 entries would cost far more). NaN
/// entries are never chosen.
pub fn top_k(logits: &[f32], k: usize) -> Vec<(u32, f32)> {
    let k = k.min(logits.len());
    let mut best: Vec<(u32, f32)> = Vec::with_capacity(k + 1);
    if k == 0 {
        return best;
    }
    for (i, &x) in logits.iter().enumerate() {
        // `best` is sorted, largest first; an entry must beat the smallest kept one.
        if x.is_nan() || (best.len() == k && x <= best[k - 1].1) {
            continue;
        }
        let at = best.partition_point(|&(_, y)| y >= x);
        best.insert(at, (i as u32, x));
        best.truncate(k);
    }
    best
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
    fn one_normalisation_serves_every_token_of_a_row() {
        let l = [0.5f32, -1.0, 3.0, 3.0, 2.0];
        let ls = LogSoftmax::new(&l).unwrap();
        let total: f64 = (0..5).map(|t| ls.get(t).unwrap().exp()).sum();
        assert!((total - 1.0).abs() < 1e-12, "{total}");
        for t in 0..5 {
            assert_eq!(ls.get(t).unwrap(), log_prob(&l, t).unwrap());
        }
        let top = ls.top(3);
        assert_eq!(top.iter().map(|e| e.0).collect::<Vec<_>>(), vec![2, 3, 4], "ties in index order");
        for (id, lp) in top {
            assert_eq!(lp, ls.get(id).unwrap());
        }
        assert!(LogSoftmax::new(&[]).is_err());
        assert!(LogSoftmax::new(&[1.0, f32::INFINITY]).is_err());
        assert!(ls.get(5).is_err());
    }

    #[test]
    fn top_k_equals_a_full_sort() {
        // A pseudo-random row with many repeated values.
        let mut x = 12345u32;
        let row: Vec<f32> = (0..5000)
            .map(|_| {
                x = x.wrapping_mul(1664525).wrapping_add(1013904223);
                ((x >> 20) % 97) as f32 - 40.0
            })
            .collect();
        let mut sorted: Vec<(u32, f32)> = row.iter().enumerate().map(|(i, &v)| (i as u32, v)).collect();
        sorted.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        for k in [0, 1, 2, 7, 20, 5000, 6000] {
            assert_eq!(top_k(&row, k), sorted[..k.min(row.len())].to_vec(), "k = {k}");
        }
        assert_eq!(top_k(&[f32::NAN, 1.0, f32::NAN, 0.0], 3), vec![(1, 1.0), (3, 0.0)]);
        assert!(top_k(&[], 4).is_empty());
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
