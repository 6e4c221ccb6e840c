//! One request's generation driven from async code, one model pass per step: the prompt,
//! then each new token. A step goes to the batcher (one batched pass over every active
//! sequence) or, without one, is its own `Task` awaited on the engine pool; either way
//! sequences advance token by token (no request holds a pool thread for its whole answer),
//! and one whose future is dropped stops at once. Same algorithm and results as `generate`.
//! A prompt longer than `prefill_chunk` tokens is prefilled in chunks of that many, one
//! step each (chunked prefill): other sequences advance between them, and a cancelled
//! request stops between two chunks.

use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};

use mllm::models::{FinishReason, GenerateOptions, Generation, KvCache, Sampler, TextModel, TokenText};
use mllm::task::Task;

use super::batcher::{Batcher, SeqState as State};
use super::logprobs::TokenLogprob;
use super::prefix::PrefixCache;

/// What a generation did beside its text, filled in as it goes (so that it holds what
/// happened also when the generation ends early): for usage and metrics.
#[derive(Debug, Default)]
pub struct SeqStats {
    /// Prompt tokens whose keys and values came from the prefix cache (not prefilled).
    pub cached_tokens: usize,
    /// When the first token was sampled.
    pub first_token: Option<Instant>,
    /// Time between each two consecutive sampled tokens.
    pub token_gaps: Vec<Duration>,
}

/// Generate after `prompt`, calling `on_text` with each final piece of text (held back
/// while it could still become a stop string) and, with `logprobs` (alternatives per
/// token), the scores of the tokens taken since the previous piece (the last call may
/// have no text; an end-of-sequence token is not scored, as its text is not in the
/// answer); `on_text` returning `false`, or `cancelled()` turning true between steps,
/// ends generation as `Cancelled`. A `primed` cache already holds the start of the
/// prompt (the scoring pass of `echo`), with room for the answer.
#[allow(clippy::too_many_arguments)]
pub async fn generate(
    model: &TextModel,
    batcher: Option<&Batcher>,
    label: &str,
    prompt: &[u32],
    prefill_chunk: usize,
    prefixes: Option<&PrefixCache>,
    primed: Option<KvCache>,
    opts: &GenerateOptions,
    logprobs: Option<usize>,
    on_text: &mut (dyn FnMut(&str, Vec<TokenLogprob>) -> bool + Send),
    cancelled: &(dyn Fn() -> bool + Sync),
    stats: &mut SeqStats,
) -> Result<Generation> {
    if prompt.is_empty() {
        bail!("the prompt is empty (no tokens)");
    }
    let trained = model.decoder.config().context_length;
    let ctx = opts.context_limit.unwrap_or(trained).min(trained);
    if prompt.len() >= ctx {
        bail!("the prompt has {} tokens; the context holds {ctx}, so nothing is left to generate", prompt.len());
    }
    let max_tokens = opts.max_tokens.min(ctx - prompt.len());
    let capacity = prompt.len() + max_tokens;
    let from_prefixes = || prefixes.and_then(|p| p.take(prompt, capacity));
    let (cache, reused) = match primed.map(|c| (c.len(), c)) {
        Some((n, cache)) if n < prompt.len() && cache.capacity() >= capacity => (cache, n),
        Some(_) => bail!("the primed cache does not fit the prompt and answer"),
        None => match from_prefixes() {
            Some((cache, n)) => {
                eprintln!("--- {label}: reusing the keys and values of {n} of {} prompt tokens", prompt.len());
                (cache, n)
            }
            None => (model.decoder.new_cache(capacity)?, 0),
        },
    };
    stats.cached_tokens = reused;
    // Whatever the sequence has computed is kept for later requests, however it ends.
    let keep = |state: Option<State>| {
        if let (Some(p), Some(st)) = (prefixes, state) {
            let n = st.cache.len();
            p.put(st.history[..n].to_vec(), st.cache);
        }
    };
    let mut state = Some(State {
        cache,
        sampler: Sampler::new(opts.sampling.clone())?,
        history: prompt.to_vec(),
        logprobs,
        scored: None,
    });
    // Scores of tokens whose text has not gone to `on_text` yet.
    let mut pending: Vec<TokenLogprob> = Vec::new();
    let mut out = TokenText::new(&model.tokenizer, opts);
    let mut finish = FinishReason::Length;
    let _member = batcher.map(Batcher::join);
    let t0 = Instant::now();

    // All but the last chunk of the prompt, without sampling.
    let chunk = if prefill_chunk == 0 { prompt.len() } else { prefill_chunk };
    let mut done = reused;
    while prompt.len() - done > chunk {
        if cancelled() {
            eprintln!("--- {label}: stopped after prefilling {done} of {} prompt tokens", prompt.len());
            keep(state);
            return Ok(Generation {
                text: String::new(),
                tokens: Vec::new(),
                prompt_tokens: prompt.len(),
                finish: FinishReason::Cancelled,
                prefill_time: t0.elapsed(),
                decode_time: Default::default(),
            });
        }
        let part = prompt[done..done + chunk].to_vec();
        let mut st = state.take().expect("the state comes back after each step");
        let st = match batcher {
            Some(b) => b.prefill(part, st).await,
            None => {
                let decoder = model.decoder.clone();
                let step = Task::lazy(label.to_string(), move || {
                    decoder.forward_tokens(&part, &mut st.cache)?;
                    Ok(st)
                });
                step.await.map_err(anyhow::Error::from)
            }
        }
        .with_context(|| format!("prefill of prompt tokens {done}..{}", done + chunk))?;
        state = Some(st);
        done += chunk;
    }
    let mut input = prompt[done..].to_vec();

    let (mut prefill_time, mut t1) = (None, t0);
    let mut last_token = t0;
    while out.tokens().len() < max_tokens {
        if cancelled() {
            finish = FinishReason::Cancelled;
            break;
        }
        // One pass over `input` and the choice of the next token, on the pool.
        let mut st = state.take().expect("the state comes back after each step");
        let (step, position) = (out.tokens().len(), st.history.len());
        let (st, next) = match batcher {
            Some(b) => b.step(std::mem::take(&mut input), st).await,
            None => {
                let decoder = model.decoder.clone();
                let input = std::mem::take(&mut input);
                let step = Task::lazy(label.to_string(), move || {
                    let logits = decoder.forward_tokens(&input, &mut st.cache)?;
                    let next = st.sample(logits.as_slice::<f32>()?)?;
                    Ok((st, next))
                });
                step.await.map_err(anyhow::Error::from)
            }
        }
        .with_context(|| format!("generation step {step} (position {position})"))?;
        let mut st = st;
        if let Some(scored) = st.scored.take() {
            if !(opts.stop_at_eos && model.tokenizer.stop_ids().contains(&next)) {
                pending.push(scored);
            }
        }
        state = Some(st);
        let now = Instant::now();
        match stats.first_token {
            None => stats.first_token = Some(now),
            Some(_) => stats.token_gaps.push(now - last_token),
        }
        last_token = now;
        if prefill_time.is_none() {
            prefill_time = Some(t0.elapsed());
            t1 = Instant::now();
        }
        let mut emit = |piece: &str| on_text(piece, std::mem::take(&mut pending));
        if let Some(end) = out.push(next, &mut emit)? {
            finish = end;
            break;
        }
        input = vec![next];
    }
    keep(state);
    let mut emit = |piece: &str| on_text(piece, std::mem::take(&mut pending));
    let (text, tokens) = out.finish(finish, &mut emit)?;
    if finish != FinishReason::Cancelled && !pending.is_empty() {
        on_text("", pending);
    }
    Ok(Generation {
        text,
        tokens,
        prompt_tokens: prompt.len(),
        finish,
        prefill_time: prefill_time.unwrap_or_default(),
        decode_time: t1.elapsed(),
    })
}
