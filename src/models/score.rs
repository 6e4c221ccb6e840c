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

/// How far a model's next-token distributions lie from a reference's on the same tokens
/// (two precisions of one model, or ours against another implementation): the
/// log-probability of the token that actually follows, every logit, and the top token.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct Fidelity {
    /// Positions compared (each with the token that follows it).
    pub positions: usize,
    /// Mean and largest |Δ log p(next token)| (nats).
    pub mean_dlogprob: f64,
    pub max_dlogprob: f64,
    /// Mean and largest |Δ logit| over every compared logit (the full vocabulary, or the
    /// entries a reference file lists).
    pub mean_dlogit: f64,
    pub max_dlogit: f64,
    /// Positions whose top token is the reference's.
    pub top1_same: usize,
    /// Positions where the reference's top token leads its runner-up by at least the
    /// margin given to [`FidelityStats::new`], and how many of those changed top token.
    pub clear: usize,
    pub clear_flips: usize,
    /// The smallest reference margin among positions whose top token changed (if any).
    pub min_flipped_margin: Option<f64>,
}

/// Accumulates a [`Fidelity`] position by position.
#[derive(Clone, Debug, Default)]
pub struct FidelityStats {
    clear_margin: f64,
    f: Fidelity,
    dlogprob_sum: f64,
    dlogit_sum: f64,
    dlogit_n: usize,
}

/// The two largest entries' indices and values of `logits` (at least two entries).
fn top2(logits: &[f32]) -> ((usize, f32), f32) {
    let (mut best, mut second) = ((0usize, f32::NEG_INFINITY), f32::NEG_INFINITY);
    for (i, &v) in logits.iter().enumerate() {
        if v > best.1 {
            second = best.1;
            best = (i, v);
        } else if v > second {
            second = v;
        }
    }
    (best, second)
}

impl FidelityStats {
    /// `clear_margin`: a reference top token leading by this many logits is "clear".
    pub fn new(clear_margin: f64) -> FidelityStats {
        FidelityStats { clear_margin, ..Default::default() }
    }

    /// One position: the reference's and the model's full logits, and the token that
    /// follows.
    pub fn push(&mut self, reference: &[f32], ours: &[f32], next: u32) -> Result<()> {
        if reference.len() != ours.len() || reference.len() < 2 {
            return Err(Error::invalid(format!(
                "fidelity: {} reference logits against {} (need two or more, the same count)",
                reference.len(),
                ours.len()
            )));
        }
        let (ra, ro) = (log_prob(reference, next)?, log_prob(ours, next)?);
        for (a, b) in reference.iter().zip(ours) {
            let d = (a - b).abs() as f64;
            self.dlogit_sum += d;
            self.f.max_dlogit = self.f.max_dlogit.max(d);
        }
        self.dlogit_n += reference.len();
        let ((rtop, rv), rsecond) = top2(reference);
        let ((otop, _), _) = top2(ours);
        self.push_summary(ra, ro, rtop, (rv - rsecond) as f64, otop);
        Ok(())
    }

    /// One position known only by summary figures (a reference file): both
    /// log-probabilities of the next token, the reference's top token and its margin, ours.
    pub fn push_summary(&mut self, ref_logprob: f64, our_logprob: f64, ref_top: usize, margin: f64, our_top: usize) {
        let d = (ref_logprob - our_logprob).abs();
        self.dlogprob_sum += d;
        self.f.max_dlogprob = self.f.max_dlogprob.max(d);
        self.f.positions += 1;
        if ref_top == our_top {
            self.f.top1_same += 1;
        } else {
            let m = self.f.min_flipped_margin.map_or(margin, |x| x.min(margin));
            self.f.min_flipped_margin = Some(m);
        }
        if margin >= self.clear_margin {
            self.f.clear += 1;
            self.f.clear_flips += (ref_top != our_top) as usize;
        }
    }

    /// Adds |Δ logit| of compared entries known apart from [`FidelityStats::push`].
    pub fn push_dlogits(&mut self, diffs: impl IntoIterator<Item = f64>) {
        for d in diffs {
            self.dlogit_sum += d;
            self.dlogit_n += 1;
            self.f.max_dlogit = self.f.max_dlogit.max(d);
        }
    }

    pub fn result(&self) -> Fidelity {
        let mut f = self.f.clone();
        f.mean_dlogprob = self.dlogprob_sum / f.positions.max(1) as f64;
        f.mean_dlogit = self.dlogit_sum / self.dlogit_n.max(1) as f64;
        f
    }
}

/// [`Fidelity`] of `model` against `reference` (typically the same weights at another
/// [`MatmulPrecision`](crate::tensor::ops::MatmulPrecision)) over every position of each
/// token sequence in `texts`, each run as one prompt from an empty cache.
pub fn fidelity(reference: &Decoder, model: &Decoder, texts: &[Vec<u32>], clear_margin: f64) -> Result<Fidelity> {
    let vocab = model.config().vocab_size;
    if reference.config().vocab_size != vocab {
        return Err(Error::invalid("fidelity: the two models have different vocabularies"));
    }
    let mut stats = FidelityStats::new(clear_margin);
    for ids in texts.iter().filter(|t| t.len() >= 2) {
        let mut logits = Vec::with_capacity(2);
        for m in [reference, model] {
            let mut cache = m.new_cache(ids.len())?;
            logits.push(m.forward_all_logits(ids, &mut cache)?.to_vec::<f32>()?);
        }
        for (i, &next) in ids.iter().enumerate().skip(1) {
            let at = (i - 1) * vocab..i * vocab;
            stats.push(&logits[0][at.clone()], &logits[1][at], next)?;
        }
    }
    Ok(stats.result())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fidelity_counts_logprobs_logits_and_flips() {
        let mut s = FidelityStats::new(0.5);
        // Same distribution shifted: log-probabilities equal, logits all 1 apart.
        s.push(&[1.0, 2.0, 3.0], &[2.0, 3.0, 4.0], 2).unwrap();
        // Top token flips where the reference leads by 0.1 (not clear).
        s.push(&[0.0, 0.1, -5.0], &[0.1, 0.0, -5.0], 0).unwrap();
        let f = s.result();
        assert_eq!((f.positions, f.top1_same, f.clear, f.clear_flips), (2, 1, 1, 0));
        assert!((f.max_dlogit - 1.0).abs() < 1e-6 && (f.mean_dlogit - (3.0 + 0.2) / 6.0).abs() < 1e-6, "{f:?}");
        let d = (log_prob(&[0.0, 0.1, -5.0], 0).unwrap() - log_prob(&[0.1, 0.0, -5.0], 0).unwrap()).abs();
        assert!((f.max_dlogprob - d).abs() < 1e-9 && (f.mean_dlogprob - d / 2.0).abs() < 1e-9, "{f:?}");
        assert!((f.min_flipped_margin.unwrap() - 0.1).abs() < 1e-6);
        assert!(s.push(&[1.0], &[1.0], 0).is_err());
    }

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
