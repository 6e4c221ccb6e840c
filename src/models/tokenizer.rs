//! Text ↔ token ids for GGUF models: a byte-level BPE built from the file's
//! `tokenizer.ggml.*` metadata on the `tokenizers` crate, the chat template (Jinja,
//! on `minijinja`), and a streaming decoder that only emits whole UTF-8 characters.

use std::collections::BTreeMap;

use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::BPE;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::{AddedToken, PreTokenizerWrapper};

use crate::params::MetaValue;
use crate::{Error, Result};

/// GGUF token types (`tokenizer.ggml.token_type`).
const TOKEN_CONTROL: i64 = 3;
const TOKEN_USER_DEFINED: i64 = 4;

/// One chat message for [`Tokenizer::apply_chat_template`].
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

impl ChatMessage {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        ChatMessage { role: role.into(), content: content.into() }
    }
}

/// A model's tokenizer and chat template.
#[derive(Clone)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    bos_id: Option<u32>,
    eos_id: Option<u32>,
    add_bos: bool,
    chat_template: Option<String>,
    /// Ids that end a turn (EOS and, for ChatML, `<|im_end|>`).
    stop_ids: Vec<u32>,
    special_ids: Vec<bool>,
}

fn meta<'a>(m: &'a BTreeMap<String, MetaValue>, key: &str) -> Result<&'a MetaValue> {
    m.get(key).ok_or_else(|| Error::invalid(format!("tokenizer: missing metadata key '{key}'")))
}

fn meta_strings(m: &BTreeMap<String, MetaValue>, key: &str) -> Result<Vec<String>> {
    let bad = || Error::invalid(format!("tokenizer: '{key}' is not an array of strings"));
    let items = meta(m, key)?.as_array().ok_or_else(bad)?;
    items.iter().map(|v| v.as_str().map(str::to_string).ok_or_else(bad)).collect()
}

fn meta_id(m: &BTreeMap<String, MetaValue>, key: &str, vocab: usize) -> Result<Option<u32>> {
    match m.get(key) {
        None => Ok(None),
        Some(v) => match v.as_u64() {
            Some(i) if (i as usize) < vocab => Ok(Some(i as u32)),
            _ => Err(Error::invalid(format!("tokenizer: '{key}' = {v:?} is not a token id below {vocab}"))),
        },
    }
}

impl Tokenizer {
    /// Build from GGUF metadata (`tokenizer.ggml.model` must be `gpt2`: byte-level BPE).
    pub fn from_gguf_metadata(m: &BTreeMap<String, MetaValue>) -> Result<Tokenizer> {
        match meta(m, "tokenizer.ggml.model")? {
            MetaValue::Str(s) if s == "gpt2" => {}
            other => {
                return Err(Error::invalid(format!(
                    "tokenizer: model {other:?} is not supported (only byte-level BPE, 'gpt2')"
                )))
            }
        }
        let tokens = meta_strings(m, "tokenizer.ggml.tokens")?;
        let merges = meta_strings(m, "tokenizer.ggml.merges")?;
        let types: Vec<i64> = match m.get("tokenizer.ggml.token_type") {
            Some(MetaValue::Array(items)) => items.iter().map(|v| v.as_i64().unwrap_or(1)).collect(),
            _ => vec![1; tokens.len()],
        };
        let vocab: tokenizers::models::bpe::Vocab =
            tokens.iter().enumerate().map(|(i, t)| (t.clone(), i as u32)).collect();
        let merges: Vec<(String, String)> = merges
            .iter()
            .map(|s| {
                s.split_once(' ')
                    .map(|(a, b)| (a.to_string(), b.to_string()))
                    .ok_or_else(|| Error::invalid(format!("tokenizer: merge '{s}' is not two tokens")))
            })
            .collect::<Result<_>>()?;
        // Some vocabularies lack a few byte tokens (SmolLM2 has no token for the bytes
        // 0x04, 0x06, 0x13, 0x14, 0x16, 0x1d, 0xf1, 0xf2): such bytes become the unknown
        // token, when the file names one, instead of vanishing silently.
        let mut builder = BPE::builder().vocab_and_merges(vocab, merges);
        if let Some(unk) = meta_id(m, "tokenizer.ggml.unknown_token_id", tokens.len())? {
            builder = builder.unk_token(tokens[unk as usize].clone());
        }
        let bpe = builder.build().map_err(|e| Error::invalid(format!("tokenizer: cannot build BPE: {e}")))?;
        let mut inner = tokenizers::Tokenizer::new(bpe);
        let pre = match m.get("tokenizer.ggml.pre") {
            // SmolLM and StarCoder split digits one by one before the GPT-2 regex.
            Some(MetaValue::Str(p)) if p == "smollm" || p == "starcoder" || p == "refact" => {
                PreTokenizerWrapper::Sequence(Sequence::new(vec![
                    PreTokenizerWrapper::Digits(Digits::new(true)),
                    PreTokenizerWrapper::ByteLevel(ByteLevel::new(false, true, true)),
                ]))
            }
            _ => PreTokenizerWrapper::ByteLevel(ByteLevel::new(false, true, true)),
        };
        inner.with_pre_tokenizer(Some(pre));
        inner.with_decoder(Some(ByteLevelDecoder::default()));
        let mut special_ids = vec![false; tokens.len()];
        let specials: Vec<AddedToken> = tokens
            .iter()
            .zip(&types)
            .enumerate()
            .filter(|(_, (_, &t))| t == TOKEN_CONTROL || t == TOKEN_USER_DEFINED)
            .map(|(i, (s, &t))| {
                special_ids[i] = t == TOKEN_CONTROL;
                AddedToken::from(s.clone(), t == TOKEN_CONTROL)
            })
            .collect();
        inner.add_special_tokens(&specials);

        let n = tokens.len();
        let bos_id = meta_id(m, "tokenizer.ggml.bos_token_id", n)?;
        let eos_id = meta_id(m, "tokenizer.ggml.eos_token_id", n)?;
        let add_bos = matches!(m.get("tokenizer.ggml.add_bos_token"), Some(MetaValue::Bool(true)));
        let chat_template = match m.get("tokenizer.chat_template") {
            Some(MetaValue::Str(s)) => Some(s.clone()),
            _ => None,
        };
        let mut stop_ids: Vec<u32> = eos_id.into_iter().collect();
        for extra in ["tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id"] {
            stop_ids.extend(meta_id(m, extra, n)?);
        }
        if let Some(id) = tokens.iter().position(|t| t == "<|im_end|>") {
            stop_ids.push(id as u32);
        }
        stop_ids.sort_unstable();
        stop_ids.dedup();
        Ok(Tokenizer { inner, bos_id, eos_id, add_bos, chat_template, stop_ids, special_ids })
    }

    /// Token ids of `text`. Special-token strings (`<|im_start|>`) become their
    /// special tokens; a BOS is prepended if the model asks for one.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self.inner.encode_fast(text, false).map_err(|e| Error::invalid(format!("tokenizer: {e}")))?;
        let mut ids = Vec::with_capacity(enc.len() + 1);
        if self.add_bos {
            ids.extend(self.bos_id);
        }
        ids.extend_from_slice(enc.get_ids());
        Ok(ids)
    }

    /// Text of `ids` (special tokens included as their strings).
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        if let Some(&bad) = ids.iter().find(|&&i| i as usize >= self.vocab_size()) {
            return Err(Error::invalid(format!("tokenizer: token id {bad} is outside the vocabulary")));
        }
        self.inner.decode(ids, false).map_err(|e| Error::invalid(format!("tokenizer: {e}")))
    }

    pub fn vocab_size(&self) -> usize {
        self.special_ids.len()
    }

    pub fn bos_id(&self) -> Option<u32> {
        self.bos_id
    }

    pub fn eos_id(&self) -> Option<u32> {
        self.eos_id
    }

    /// Ids that end generation by default (EOS, end-of-turn).
    pub fn stop_ids(&self) -> &[u32] {
        &self.stop_ids
    }

    /// True for control tokens such as `<|im_start|>`.
    pub fn is_special(&self, id: u32) -> bool {
        self.special_ids.get(id as usize).copied().unwrap_or(false)
    }

    pub fn chat_template(&self) -> Option<&str> {
        self.chat_template.as_deref()
    }

    /// Render `messages` through the model's chat template. With
    /// `add_generation_prompt` the text ends where the assistant's answer begins.
    pub fn apply_chat_template(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> Result<String> {
        let template = self
            .chat_template
            .as_deref()
            .ok_or_else(|| Error::invalid("this model has no chat template (tokenizer.chat_template)"))?;
        let mut env = minijinja::Environment::new();
        env.add_function("raise_exception", |msg: String| -> std::result::Result<String, minijinja::Error> {
            Err(minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, msg))
        });
        env.add_template("chat", template).map_err(|e| Error::invalid(format!("chat template: {e}")))?;
        let tmpl = env.get_template("chat").map_err(|e| Error::invalid(format!("chat template: {e}")))?;
        let bos = self.bos_id.and_then(|i| self.inner.id_to_token(i)).unwrap_or_default();
        let eos = self.eos_id.and_then(|i| self.inner.id_to_token(i)).unwrap_or_default();
        tmpl.render(minijinja::context! {
            messages => messages,
            add_generation_prompt => add_generation_prompt,
            bos_token => bos,
            eos_token => eos,
        })
        .map_err(|e| Error::invalid(format!("chat template: {e}")))
    }

    /// A decoder for a stream of generated ids.
    pub fn stream(&self) -> TokenStream<'_> {
        TokenStream { tok: self, ids: Vec::new(), emitted: 0 }
    }
}

/// Turns generated ids into text pieces as they come, holding back bytes until they
/// form whole UTF-8 characters (a multi-byte character may span several tokens).
pub struct TokenStream<'a> {
    tok: &'a Tokenizer,
    ids: Vec<u32>,
    /// Length in bytes of the text already returned.
    emitted: usize,
}

impl TokenStream<'_> {
    /// Add one id; returns the newly completed text, if any.
    pub fn push(&mut self, id: u32) -> Result<Option<String>> {
        self.ids.push(id);
        let text = self.tok.decode(&self.ids)?;
        // An incomplete character decodes to U+FFFD at the end: wait for more ids.
        if text.ends_with('\u{FFFD}') || text.len() <= self.emitted || !text.is_char_boundary(self.emitted) {
            return Ok(None);
        }
        let piece = text[self.emitted..].to_string();
        self.emitted = text.len();
        // Keep the window short: decoding restarts from the last few ids.
        if self.ids.len() > 16 {
            let keep = self.ids.split_off(self.ids.len() - 4);
            self.ids = keep;
            self.emitted = self.tok.decode(&self.ids)?.len();
        }
        Ok(Some(piece))
    }

    /// Whatever is held back at the end of the stream (possibly with U+FFFD).
    pub fn finish(self) -> Result<String> {
        let text = self.tok.decode(&self.ids)?;
        Ok(text.get(self.emitted..).unwrap_or("").to_string())
    }
}
