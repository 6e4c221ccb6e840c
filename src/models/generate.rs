//! The generation loop: prefill the prompt in one pass, then decode token by token
//! with a sampler until EOS, a stop string or the token limit, streaming text as it
//! becomes final (text that could still turn into a stop string is held back).

use std::time::{Duration, Instant};

use crate::models::sampler::{Sampler, SamplingParams};
use crate::models::tokenizer::TokenStream;
use crate::models::{Decoder, Tokenizer};
use crate::{Error, Result};

/// What to generate.
#[derive(Clone, Debug, PartialEq)]
pub struct GenerateOptions {
    pub max_tokens: usize,
    pub sampling: SamplingParams,
    /// Stop when the text contains one of these (it is not included in the output).
    pub stop_strings: Vec<String>,
    /// Stop at the model's end-of-sequence / end-of-turn tokens.
    pub stop_at_eos: bool,
    /// Most tokens (prompt + generated) this sequence may hold; `None`: the model's
    /// trained context. The KV cache is sized to what is actually needed.
    pub context_limit: Option<usize>,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        GenerateOptions {
            max_tokens: 128,
            sampling: SamplingParams::default(),
            stop_strings: Vec::new(),
            stop_at_eos: true,
            context_limit: None,
        }
    }
}

/// Why generation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FinishReason {
    /// An end-of-sequence token or a stop string.
    Stop,
    /// `max_tokens` reached.
    Length,
    /// The caller's callback asked to stop (a client went away).
    Cancelled,
}

/// The result of one generation.
#[derive(Clone, Debug)]
pub struct Generation {
    pub text: String,
    /// Generated ids (without the prompt; with a final EOS if one was produced).
    pub tokens: Vec<u32>,
    pub prompt_tokens: usize,
    pub finish: FinishReason,
    pub prefill_time: Duration,
    pub decode_time: Duration,
}

impl Generation {
    /// Prompt tokens per second of the prefill pass.
    pub fn prefill_tps(&self) -> f64 {
        self.prompt_tokens as f64 / self.prefill_time.as_secs_f64().max(1e-9)
    }

    /// Generated tokens per second after the first (which comes from the prefill).
    pub fn decode_tps(&self) -> f64 {
        self.tokens.len().saturating_sub(1) as f64 / self.decode_time.as_secs_f64().max(1e-9)
    }
}

/// Generate after `prompt` (token ids). `on_text` receives each final piece of text
/// and returns `false` to cancel. The KV cache is sized to prompt + `max_tokens`.
pub fn generate(
    model: &Decoder,
    tokenizer: &Tokenizer,
    prompt: &[u32],
    opts: &GenerateOptions,
    on_text: &mut dyn FnMut(&str) -> bool,
) -> Result<Generation> {
    if prompt.is_empty() {
        return Err(Error::invalid("the prompt is empty (no tokens)"));
    }
    let trained = model.config().context_length;
    let ctx = opts.context_limit.unwrap_or(trained).min(trained);
    if prompt.len() >= ctx {
        return Err(Error::invalid(format!(
            "the prompt has {} tokens; the context holds {ctx}, so nothing is left to generate",
            prompt.len()
        )));
    }
    let max_tokens = opts.max_tokens.min(ctx - prompt.len());
    let mut sampler = Sampler::new(opts.sampling.clone())?;
    let mut cache = model.new_cache(prompt.len() + max_tokens)?;
    let mut history: Vec<u32> = prompt.to_vec();
    let mut out = TokenText::new(tokenizer, opts);

    let t0 = Instant::now();
    let mut logits = model.forward_tokens(prompt, &mut cache)?;
    let prefill_time = t0.elapsed();
    let t1 = Instant::now();
    let mut finish = FinishReason::Length;
    while out.tokens().len() < max_tokens {
        let next = sampler.sample(logits.as_slice::<f32>()?, &history).map_err(|e| {
            Error::invalid(format!("generation step {} (position {}): {e}", out.tokens().len(), history.len()))
        })?;
        history.push(next);
        if let Some(end) = out.push(next, on_text)? {
            finish = end;
            break;
        }
        if out.tokens().len() == max_tokens {
            break;
        }
        logits = model.forward_tokens(&[next], &mut cache)?;
    }
    let (text, tokens) = out.finish(finish, on_text)?;
    Ok(Generation { text, tokens, prompt_tokens: prompt.len(), finish, prefill_time, decode_time: t1.elapsed() })
}

/// Turns sampled tokens into the answer's text, as every generation loop needs it:
/// detokenises incrementally, ends at an end-of-sequence token or a stop string (cut
/// off), and gives `on_text` only text that can no longer turn into a stop string.
pub struct TokenText<'a> {
    stream: TokenStream<'a>,
    stop_ids: &'a [u32],
    stop_at_eos: bool,
    stops: &'a [String],
    text: String,
    /// Bytes of `text` already given to `on_text`.
    emitted: usize,
    tokens: Vec<u32>,
}

impl<'a> TokenText<'a> {
    pub fn new(tokenizer: &'a Tokenizer, opts: &'a GenerateOptions) -> TokenText<'a> {
        TokenText {
            stream: tokenizer.stream(),
            stop_ids: tokenizer.stop_ids(),
            stop_at_eos: opts.stop_at_eos,
            stops: &opts.stop_strings,
            text: String::new(),
            emitted: 0,
            tokens: Vec::new(),
        }
    }

    /// The tokens taken so far.
    pub fn tokens(&self) -> &[u32] {
        &self.tokens
    }

    /// Take the next sampled token; passes any text that became final to `on_text`.
    /// Returns how generation ends if it must end here (a stop, or `on_text` refusing).
    pub fn push(&mut self, next: u32, on_text: &mut dyn FnMut(&str) -> bool) -> Result<Option<FinishReason>> {
        self.tokens.push(next);
        if self.stop_at_eos && self.stop_ids.contains(&next) {
            return Ok(Some(FinishReason::Stop));
        }
        if let Some(piece) = self.stream.push(next)? {
            self.text.push_str(&piece);
        }
        if let Some(at) = find_stop(&self.text, self.stops) {
            self.text.truncate(at);
            return Ok(Some(FinishReason::Stop));
        }
        let safe = self.text.len() - held_back(&self.text, self.stops);
        if safe > self.emitted {
            if !on_text(&self.text[self.emitted..safe]) {
                return Ok(Some(FinishReason::Cancelled));
            }
            self.emitted = safe;
        }
        Ok(None)
    }

    /// End the answer as `finish`: the rest of the text goes to `on_text` (unless
    /// cancelled); returns the whole text and the tokens.
    pub fn finish(mut self, finish: FinishReason, on_text: &mut dyn FnMut(&str) -> bool) -> Result<(String, Vec<u32>)> {
        if finish == FinishReason::Length {
            let rest = self.stream.finish()?;
            self.text.push_str(&rest);
        }
        if finish != FinishReason::Cancelled && self.text.len() > self.emitted {
            on_text(&self.text[self.emitted..]);
        }
        Ok((self.text, self.tokens))
    }
}

/// Byte offset of the earliest stop string in `text`, if any (empty ones never match).
pub fn find_stop(text: &str, stops: &[String]) -> Option<usize> {
    stops.iter().filter(|s| !s.is_empty()).filter_map(|s| text.find(s.as_str())).min()
}

/// Bytes at the end of `text` that could be the start of a stop string.
pub fn held_back(text: &str, stops: &[String]) -> usize {
    let mut hold = 0;
    for s in stops {
        for n in (1..s.len()).rev() {
            if n <= text.len() && s.is_char_boundary(n) && text.ends_with(&s[..n]) {
                hold = hold.max(n);
                break;
            }
        }
    }
    hold
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_strings_are_found_and_their_prefixes_held_back() {
        let stops = vec!["\nUser:".to_string(), "###".to_string()];
        assert_eq!(find_stop("hello\nUser: hi", &stops), Some(5));
        assert_eq!(find_stop("a ### b", &stops), Some(2));
        assert_eq!(find_stop("nothing", &stops), None);
        assert_eq!(held_back("text\nUs", &stops), 3);
        assert_eq!(held_back("text#", &stops), 1);
        assert_eq!(held_back("text", &stops), 0);
    }
}
