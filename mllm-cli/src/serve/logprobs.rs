//! Log-probabilities in the API (OpenAI's `logprobs`): the model's own log-softmax over the
//! whole vocabulary (`models::score`, in f64), before temperature, top-k/p, min-p or the
//! repetition penalty touch the logits; of each generated token and, with `echo`, of each
//! prompt token (the scoring pass); and their two JSON shapes, chat's `content` entries and
//! the legacy completions' parallel lists. No HTTP here.

use anyhow::{Context as _, Result};
use mllm::models::score::LogSoftmax;
use mllm::models::{KvCache, TextModel, Tokenizer};
use mllm::task::Task;
use serde_json::{json, Map, Value};

/// Most alternatives per position (`top_logprobs`, and the legacy `logprobs`), as OpenAI's
/// chat API allows.
pub const MAX_TOP_LOGPROBS: usize = 20;

/// Prompt rows scored per pass: a pass keeps `[rows, vocab]` logits (25 MB for SmolLM2).
const SCORE_ROWS: usize = 128;

/// One token's log-probability and the most likely tokens at its position.
#[derive(Clone, Debug, PartialEq)]
pub struct TokenLogprob {
    pub token: u32,
    pub logprob: f64,
    /// The `top` most likely tokens, most likely first (they may or may not include `token`).
    pub top: Vec<(u32, f64)>,
}

impl TokenLogprob {
    /// `token`'s entry from the logits of the position that chose it.
    pub fn of(logits: &[f32], token: u32, top: usize) -> mllm::Result<TokenLogprob> {
        let ls = LogSoftmax::new(logits)?;
        Ok(TokenLogprob { token, logprob: ls.get(token)?, top: ls.top(top) })
    }
}

/// Scores `prompt`'s own tokens (`echo`): runs all but its last token through a new KV
/// cache with room for `capacity` positions, `SCORE_ROWS` at a time, each pass a task on
/// the engine's pool, and reads each position's log-softmax at the token that follows.
/// Returns one entry per prompt token (the first has none: nothing comes before it) and
/// the cache, which holds the prompt but its last token, so that generation goes on from
/// there; `None` if `cancelled()` turned true between two passes.
pub async fn score_prompt(
    model: &TextModel,
    label: &str,
    prompt: &[u32],
    top: usize,
    capacity: usize,
    cancelled: &(dyn Fn() -> bool + Sync),
) -> Result<Option<(Vec<Option<TokenLogprob>>, KvCache)>> {
    let mut cache = model.decoder.new_cache(capacity)?;
    let mut entries = Vec::with_capacity(prompt.len());
    entries.push(None);
    let scored = prompt.len().saturating_sub(1);
    let mut done = 0;
    while done < scored {
        if cancelled() {
            return Ok(None);
        }
        let end = (done + SCORE_ROWS).min(scored);
        let input = prompt[done..end].to_vec();
        let targets = prompt[done + 1..end + 1].to_vec();
        let decoder = model.decoder.clone();
        let pass = Task::lazy(label.to_string(), move || {
            let logits = decoder.forward_all_logits(&input, &mut cache)?;
            let logits = logits.as_slice::<f32>()?;
            let vocab = logits.len() / input.len();
            let rows: mllm::Result<Vec<Option<TokenLogprob>>> = logits
                .chunks_exact(vocab)
                .zip(&targets)
                .map(|(row, &t)| TokenLogprob::of(row, t, top).map(Some))
                .collect();
            Ok((rows?, cache))
        });
        let (rows, back) =
            pass.await.map_err(anyhow::Error::from).with_context(|| format!("scoring prompt tokens {done}..{end}"))?;
        entries.extend(rows);
        cache = back;
        done = end;
    }
    Ok(Some((entries, cache)))
}

/// A token as the API shows it: its text (a part of a UTF-8 character shows as U+FFFD)
/// and its exact bytes.
fn token_text(tok: &Tokenizer, id: u32) -> (String, Vec<u8>) {
    let bytes = tok.token_bytes(id).unwrap_or_default();
    (String::from_utf8_lossy(&bytes).into_owned(), bytes)
}

/// Chat completions' `logprobs`: `{"content": [{token, logprob, bytes, top_logprobs}],
/// "refusal": null}`.
pub fn chat_object(tok: &Tokenizer, entries: &[TokenLogprob]) -> Value {
    let alt = |id: u32, logprob: f64| {
        let (token, bytes) = token_text(tok, id);
        json!({"token": token, "logprob": logprob, "bytes": bytes})
    };
    let content: Vec<Value> = entries
        .iter()
        .map(|e| {
            let mut v = alt(e.token, e.logprob);
            v["top_logprobs"] = e.top.iter().map(|&(id, lp)| alt(id, lp)).collect();
            v
        })
        .collect();
    json!({"content": content, "refusal": null})
}

/// Builds the legacy completions' `logprobs` (`tokens`, `token_logprobs`, `top_logprobs`,
/// `text_offset`), carrying the character offset into the answer's text from one streamed
/// chunk to the next.
pub struct LegacyLogprobs<'a> {
    tok: &'a Tokenizer,
    /// Characters of the text before the next token.
    chars: usize,
}

impl<'a> LegacyLogprobs<'a> {
    pub fn new(tok: &'a Tokenizer) -> LegacyLogprobs<'a> {
        LegacyLogprobs { tok, chars: 0 }
    }

    /// The object for `entries` (token id, and its scores unless it is the prompt's first
    /// token). Each `top_logprobs` dict holds the most likely tokens and the chosen one,
    /// as OpenAI's does (so up to `logprobs + 1` keys).
    pub fn object<'e>(&mut self, entries: impl IntoIterator<Item = (u32, Option<&'e TokenLogprob>)>) -> Value {
        let (mut tokens, mut logprobs, mut tops, mut offsets) = (vec![], vec![], vec![], vec![]);
        for (id, e) in entries {
            let (text, bytes) = token_text(self.tok, id);
            offsets.push(self.chars);
            // A character split between tokens counts where its first byte is.
            self.chars += bytes.iter().filter(|&&b| b & 0xc0 != 0x80).count();
            tokens.push(Value::String(text));
            match e {
                None => {
                    logprobs.push(Value::Null);
                    tops.push(Value::Null);
                }
                Some(e) => {
                    logprobs.push(json!(e.logprob));
                    let mut top = Map::new();
                    for &(alt, lp) in e.top.iter().chain([(e.token, e.logprob)].iter()) {
                        top.entry(token_text(self.tok, alt).0).or_insert(json!(lp));
                    }
                    tops.push(Value::Object(top));
                }
            }
        }
        json!({"tokens": tokens, "token_logprobs": logprobs, "top_logprobs": tops, "text_offset": offsets})
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_is_the_log_softmax_of_its_row() {
        let row = [2.0f32, 0.0, 1.0, -1.0];
        let e = TokenLogprob::of(&row, 1, 2).unwrap();
        let z: f64 = row.iter().map(|&x| (x as f64).exp()).sum::<f64>().ln();
        assert!((e.logprob - (0.0 - z)).abs() < 1e-12);
        assert_eq!(e.top.iter().map(|t| t.0).collect::<Vec<_>>(), vec![0, 2]);
        assert!((e.top[0].1 - (2.0 - z)).abs() < 1e-12);
        assert!(TokenLogprob::of(&row, 4, 1).is_err());
        assert!(TokenLogprob::of(&[f32::NAN, 0.0], 1, 1).is_err());
        assert!(TokenLogprob::of(&row, 0, 0).unwrap().top.is_empty());
    }
}
