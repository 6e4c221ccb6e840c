//! One request's generation driven from async code, one model pass per step: the prompt,
//! then each new token. A step goes to the batcher (one batched pass over every active
//! sequence) or, without one, is its own `Task` awaited on the engine pool; either way
//! sequences advance token by token (no request holds a pool thread for its whole answer),
//! and one whose future is dropped stops at once. Same algorithm and results as `generate`.

use std::time::Instant;

use anyhow::{bail, Context as _, Result};

use mllm::models::{FinishReason, GenerateOptions, Generation, Sampler, TextModel, TokenText};
use mllm::task::Task;

use super::batcher::{Batcher, SeqState as State};

/// Generate after `prompt`, calling `on_text` with each final piece of text (held back
/// while it could still become a stop string); `on_text` returning `false`, or
/// `cancelled()` turning true between steps, ends generation as `Cancelled`.
#[allow(clippy::too_many_arguments)]
pub async fn generate(
    model: &TextModel,
    batcher: Option<&Batcher>,
    label: &str,
    prompt: &[u32],
    opts: &GenerateOptions,
    on_text: &mut (dyn FnMut(&str) -> bool + Send),
    cancelled: &(dyn Fn() -> bool + Sync),
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
    let mut state = Some(State {
        cache: model.decoder.new_cache(prompt.len() + max_tokens)?,
        sampler: Sampler::new(opts.sampling.clone())?,
        history: prompt.to_vec(),
    });
    let mut out = TokenText::new(&model.tokenizer, opts);
    let mut finish = FinishReason::Length;
    let mut input = prompt.to_vec();

    let _member = batcher.map(Batcher::join);
    let t0 = Instant::now();
    let (mut prefill_time, mut t1) = (None, t0);
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
                    let next = st.sampler.sample(logits.as_slice::<f32>()?, &st.history)?;
                    st.history.push(next);
                    Ok((st, next))
                });
                step.await.map_err(anyhow::Error::from)
            }
        }
        .with_context(|| format!("generation step {step} (position {position})"))?;
        state = Some(st);
        if prefill_time.is_none() {
            prefill_time = Some(t0.elapsed());
            t1 = Instant::now();
        }
        if let Some(end) = out.push(next, on_text)? {
            finish = end;
            break;
        }
        input = vec![next];
    }
    let (text, tokens) = out.finish(finish, on_text)?;
    Ok(Generation {
        text,
        tokens,
        prompt_tokens: prompt.len(),
        finish,
        prefill_time: prefill_time.unwrap_or_default(),
        decode_time: t1.elapsed(),
    })
}
