//! Text ↔ token ids for GGUF models: a byte-level BPE built from the file's
//! `tokenizer.ggml.*` metadata on the `tokenizers` crate, the chat template (Jinja,
//! on `minijinja`, rendered as HF transformers renders it: [`render_chat_template`]),
//! and a streaming decoder that only emits whole UTF-8 characters. Only the chat template
//! (and text the caller trusts, [`Tokenizer::encode`]) may produce control tokens: what a
//! user typed is encoded as text ([`Tokenizer::encode_chat`], [`Tokenizer::encode_literal`]).

use std::collections::BTreeMap;
use std::sync::OnceLock;

use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::BPE;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::{AddedToken, DecoderWrapper, PreTokenizerWrapper};

use crate::params::MetaValue;
use crate::{Error, Result};

/// GGUF token types (`tokenizer.ggml.token_type`).
const TOKEN_CONTROL: i64 = 3;
const TOKEN_USER_DEFINED: i64 = 4;

/// One chat message for [`Tokenizer::apply_chat_template`] and [`render_chat_template`].
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
    /// The strings the tokenizer turns into special tokens when it meets them in text.
    specials: SpecialStrings,
    /// `inner` with those strings encoded as text, built the first time text holds one.
    literal: OnceLock<tokenizers::Tokenizer>,
}

/// Finds special-token strings in text, leftmost first and longest at a position (as
/// the tokenizer's own added-vocabulary matching does).
#[derive(Clone, Default)]
struct SpecialStrings {
    /// (string, id), longest first.
    tokens: Vec<(String, u32)>,
    /// Bytes some special string starts with.
    starts: Vec<bool>,
}

impl SpecialStrings {
    fn of(inner: &tokenizers::Tokenizer) -> SpecialStrings {
        let mut tokens: Vec<(String, u32)> = inner
            .get_added_tokens_decoder()
            .into_iter()
            .filter(|(_, t)| t.special && !t.content.is_empty())
            .map(|(id, t)| (t.content, id))
            .collect();
        tokens.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then(a.1.cmp(&b.1)));
        let mut starts = vec![false; 256];
        for (t, _) in &tokens {
            starts[t.as_bytes()[0] as usize] = true;
        }
        SpecialStrings { tokens, starts }
    }

    /// The first special string in `text`: (start, end, id).
    fn find(&self, text: &str) -> Option<(usize, usize, u32)> {
        let bytes = text.as_bytes();
        for (i, &b) in bytes.iter().enumerate() {
            if !self.starts.get(b as usize).copied().unwrap_or(false) {
                continue;
            }
            if let Some((t, id)) = self.tokens.iter().find(|(t, _)| bytes[i..].starts_with(t.as_bytes())) {
                return Some((i, i + t.len(), *id));
            }
        }
        None
    }
}

/// Message text is passed through the chat template with each special-token string (and
/// each marker character, should a user type one) replaced by `OPEN index CLOSE`, an index
/// into a table of the replaced strings; the template's own special tokens are then the only
/// ones left in its output, and the table puts the user's strings back as text. Characters
/// of Unicode's last private-use plane, which no template uses.
const OPEN: char = '\u{10FFFD}';
const CLOSE: char = '\u{10FFFC}';

/// Replace special strings and marker characters in `text` by table references.
fn escape_specials(specials: &SpecialStrings, text: &str, table: &mut Vec<String>) -> String {
    let mut out = String::with_capacity(text.len());
    let mut refer = |s: &str, out: &mut String| {
        out.push(OPEN);
        out.push_str(&table.len().to_string());
        out.push(CLOSE);
        table.push(s.to_string());
    };
    let mut rest = text;
    while !rest.is_empty() {
        let special = specials.find(rest);
        let marker = rest.find([OPEN, CLOSE]);
        match (special, marker) {
            (Some((s, e, _)), m) if m.is_none_or(|m| s < m) => {
                out.push_str(&rest[..s]);
                refer(&rest[s..e], &mut out);
                rest = &rest[e..];
            }
            (_, Some(m)) => {
                let len = rest[m..].chars().next().map_or(1, char::len_utf8);
                out.push_str(&rest[..m]);
                refer(&rest[m..m + len], &mut out);
                rest = &rest[m + len..];
            }
            _ => {
                out.push_str(rest);
                break;
            }
        }
    }
    out
}

/// Put the table's strings back (a marker that is not a well-formed reference stays).
fn unescape_specials(text: &str, table: &[String]) -> String {
    if !text.contains(OPEN) {
        return text.to_string();
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find(OPEN) {
        out.push_str(&rest[..at]);
        let after = &rest[at + OPEN.len_utf8()..];
        let reference = after.split_once(CLOSE).and_then(|(digits, tail)| {
            let i: usize = digits.parse().ok().filter(|_| digits.bytes().all(|b| b.is_ascii_digit()))?;
            Some((table.get(i)?, tail))
        });
        match reference {
            Some((s, tail)) => {
                out.push_str(s);
                rest = tail;
            }
            None => {
                out.push(OPEN);
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// `<0xNN>`: a SentencePiece byte-fallback token.
fn byte_fallback(piece: &str) -> Option<u8> {
    let hex = piece.strip_prefix("<0x")?.strip_suffix('>')?;
    (hex.len() == 2).then(|| u8::from_str_radix(hex, 16).ok()).flatten()
}

/// Whether a decoder maps byte-level BPE characters back to bytes.
fn is_byte_level(d: Option<&DecoderWrapper>) -> bool {
    match d {
        Some(DecoderWrapper::ByteLevel(_)) => true,
        Some(DecoderWrapper::Sequence(s)) => s.get_decoders().iter().any(|d| is_byte_level(Some(d))),
        _ => false,
    }
}

/// The byte a byte-level BPE character stands for (GPT-2's alphabet): the printable bytes
/// `!`..=`~`, `¡`..=`¬` and `®`..=`ÿ` are their own characters; the other 68 bytes, in
/// order, are U+0100 onwards.
fn byte_of_char(c: char) -> Option<u8> {
    let printable = |b: u32| (0x21..=0x7e).contains(&b) || (0xa1..=0xac).contains(&b) || (0xae..=0xff).contains(&b);
    let c = c as u32;
    if c < 0x100 {
        return printable(c).then_some(c as u8);
    }
    let n = c - 0x100;
    (0u32..0x100).filter(|&b| !printable(b)).nth(n as usize).map(|b| b as u8)
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

/// The byte-level BPE (`tokenizer.ggml.model` = `gpt2`) and which ids are control tokens.
fn build_gpt2(m: &BTreeMap<String, MetaValue>) -> Result<(tokenizers::Tokenizer, Vec<bool>)> {
    let tokens = meta_strings(m, "tokenizer.ggml.tokens")?;
    let merges = meta_strings(m, "tokenizer.ggml.merges")?;
    let types: Vec<i64> = match m.get("tokenizer.ggml.token_type") {
        Some(MetaValue::Array(items)) => items.iter().map(|v| v.as_i64().unwrap_or(1)).collect(),
        _ => vec![1; tokens.len()],
    };
    let vocab: tokenizers::models::bpe::Vocab = tokens.iter().enumerate().map(|(i, t)| (t.clone(), i as u32)).collect();
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
    Ok((inner, special_ids))
}

impl Tokenizer {
    /// Build from GGUF metadata (`tokenizer.ggml.model` must be `gpt2`: byte-level BPE).
    pub fn from_gguf_metadata(m: &BTreeMap<String, MetaValue>) -> Result<Tokenizer> {
        let (inner, special_ids) = match meta(m, "tokenizer.ggml.model")? {
            MetaValue::Str(s) if s == "gpt2" => build_gpt2(m)?,
            MetaValue::Str(s) if s == "llama" => {
                let spm = crate::models::spm::build_spm(m)?;
                (spm.tokenizer, spm.special_ids)
            }
            other => {
                return Err(Error::invalid(format!(
                    "tokenizer: model {other:?} is not supported (supported: 'gpt2' byte-level BPE, \
                     'llama' SentencePiece)"
                )))
            }
        };
        let n = special_ids.len();
        let bos_id = meta_id(m, "tokenizer.ggml.bos_token_id", n)?;
        let eos_id = meta_id(m, "tokenizer.ggml.eos_token_id", n)?;
        // Without the key, SentencePiece files add a BOS (as llama.cpp and transformers do).
        let add_bos = match m.get("tokenizer.ggml.add_bos_token") {
            Some(v) => matches!(v, MetaValue::Bool(true)),
            None => matches!(m.get("tokenizer.ggml.model"), Some(MetaValue::Str(s)) if s == "llama"),
        };
        let chat_template = match m.get("tokenizer.chat_template") {
            Some(MetaValue::Str(s)) => Some(s.clone()),
            _ => None,
        };
        let mut stop_ids: Vec<u32> = eos_id.into_iter().collect();
        for extra in ["tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id"] {
            stop_ids.extend(meta_id(m, extra, n)?);
        }
        // End-of-turn markers of the chat formats (ChatML, Gemma).
        for marker in ["<|im_end|>", "<end_of_turn>"] {
            stop_ids.extend(inner.token_to_id(marker));
        }
        stop_ids.sort_unstable();
        stop_ids.dedup();
        let specials = SpecialStrings::of(&inner);
        Ok(Tokenizer {
            inner,
            bos_id,
            eos_id,
            add_bos,
            chat_template,
            stop_ids,
            special_ids,
            specials,
            literal: OnceLock::new(),
        })
    }

    /// Build from a Hugging Face folder: `tokenizer.json` (any model the `tokenizers` crate
    /// reads), special tokens and the chat template from `tokenizer_config.json` (or
    /// `chat_template.jinja`), end-of-sequence ids from `generation_config.json` too.
    pub fn from_folder(dir: &std::path::Path) -> Result<Tokenizer> {
        use crate::models::hf::read_json_opt;
        use serde_json::Value;
        let path = dir.join("tokenizer.json");
        if !path.is_file() {
            return Err(Error::invalid(format!("{}: no tokenizer.json", dir.display())));
        }
        let inner = tokenizers::Tokenizer::from_file(&path)
            .map_err(|e| Error::format(path.display().to_string(), format!("cannot read the tokenizer: {e}")))?;
        let n = inner.get_vocab_size(true);
        let mut special_ids = vec![false; n];
        for (id, t) in inner.get_added_tokens_decoder() {
            if t.special && (id as usize) < n {
                special_ids[id as usize] = true;
            }
        }
        let config = read_json_opt(&dir.join("tokenizer_config.json"))?.unwrap_or(Value::Null);
        let generation = read_json_opt(&dir.join("generation_config.json"))?.unwrap_or(Value::Null);
        // A token given as its text, or as {"content": text}.
        let token_id = |key: &str| -> Option<u32> {
            let v = config.get(key)?;
            let text = v.as_str().or_else(|| v.get("content").and_then(Value::as_str))?;
            inner.token_to_id(text)
        };
        let ids_of = |v: Option<&Value>| -> Vec<u32> {
            match v {
                Some(Value::Array(a)) => a.iter().filter_map(Value::as_u64).map(|i| i as u32).collect(),
                Some(x) => x.as_u64().map(|i| i as u32).into_iter().collect(),
                None => vec![],
            }
        };
        let in_vocab = |i: &u32| (*i as usize) < n;
        let bos_id = token_id("bos_token").or_else(|| ids_of(generation.get("bos_token_id")).first().copied());
        let gen_eos = ids_of(generation.get("eos_token_id"));
        let eos_id = token_id("eos_token").or_else(|| gen_eos.first().copied()).filter(in_vocab);
        let add_bos = match config.get("add_bos_token").and_then(Value::as_bool) {
            Some(b) => b,
            // Else as the tokenizer's own post-processor does it.
            None => bos_id.is_some_and(|b| {
                let with = inner.encode_fast("a", true).map(|e| e.get_ids().first() == Some(&b));
                let without = inner.encode_fast("a", false).map(|e| e.get_ids().first() == Some(&b));
                matches!((with, without), (Ok(true), Ok(false)))
            }),
        };
        let chat_template = match config.get("chat_template") {
            Some(Value::String(t)) => Some(t.clone()),
            // Named templates: the default one.
            Some(Value::Array(list)) => list
                .iter()
                .find(|t| t.get("name").and_then(Value::as_str) == Some("default"))
                .and_then(|t| t.get("template")?.as_str().map(str::to_string)),
            _ => {
                let jinja = dir.join("chat_template.jinja");
                match std::fs::read_to_string(&jinja) {
                    Ok(t) => Some(t),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                    Err(e) => return Err(Error::io(format!("{}: cannot read", jinja.display()), e)),
                }
            }
        };
        let mut stop_ids: Vec<u32> = eos_id.into_iter().chain(gen_eos).filter(in_vocab).collect();
        for marker in ["<|im_end|>", "<end_of_turn>", "<|end|>", "<|eot_id|>"] {
            stop_ids.extend(inner.token_to_id(marker).filter(|&i| special_ids.get(i as usize) == Some(&true)));
        }
        stop_ids.sort_unstable();
        stop_ids.dedup();
        let specials = SpecialStrings::of(&inner);
        Ok(Tokenizer {
            inner,
            bos_id: bos_id.filter(in_vocab),
            eos_id,
            add_bos,
            chat_template,
            stop_ids,
            special_ids,
            specials,
            literal: OnceLock::new(),
        })
    }

    /// Token ids of `text`, which the caller trusts: special-token strings (`<|im_start|>`)
    /// become their special tokens; a BOS is prepended if the model asks for one. For text
    /// from users use [`Tokenizer::encode_literal`] or [`Tokenizer::encode_chat`].
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self.inner.encode_fast(text, false).map_err(|e| Error::invalid(format!("tokenizer: {e}")))?;
        let mut ids = Vec::with_capacity(enc.len() + 1);
        if self.add_bos {
            ids.extend(self.bos_id);
        }
        ids.extend_from_slice(enc.get_ids());
        Ok(ids)
    }

    /// Token ids of `text` with special-token strings encoded as ordinary text (what a user
    /// typed: `<|im_start|>` is then a few plain tokens); a BOS as in [`Tokenizer::encode`].
    pub fn encode_literal(&self, text: &str) -> Result<Vec<u32>> {
        let mut ids = Vec::new();
        if self.add_bos {
            ids.extend(self.bos_id);
        }
        self.push_literal(text, &mut ids)?;
        Ok(ids)
    }

    fn push_literal(&self, text: &str, ids: &mut Vec<u32>) -> Result<()> {
        if text.is_empty() {
            return Ok(());
        }
        // Text without special strings encodes the same either way; the literal tokenizer
        // (a second copy of the vocabulary) is built only when some text needs it.
        let tok = if self.specials.find(text).is_none() {
            &self.inner
        } else {
            self.literal.get_or_init(|| {
                let mut t = self.inner.clone();
                t.set_encode_special_tokens(true);
                t
            })
        };
        let enc = tok.encode_fast(text, false).map_err(|e| Error::invalid(format!("tokenizer: {e}")))?;
        ids.extend_from_slice(enc.get_ids());
        Ok(())
    }

    /// Token ids of `messages` through the chat template (see [`Tokenizer::apply_chat_template`]):
    /// the template's special tokens are special tokens, while the messages' text is text,
    /// whatever it contains; a BOS as in [`Tokenizer::encode`]. For text without special
    /// strings the ids equal `encode(apply_chat_template(..))`.
    pub fn encode_chat(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> Result<Vec<u32>> {
        let mut table = Vec::new();
        let escaped: Vec<ChatMessage> = messages
            .iter()
            .map(|m| {
                ChatMessage::new(
                    escape_specials(&self.specials, &m.role, &mut table),
                    escape_specials(&self.specials, &m.content, &mut table),
                )
            })
            .collect();
        let rendered = self.apply_chat_template(&escaped, add_generation_prompt)?;
        let mut ids = Vec::new();
        // Templates that write `{{ bos_token }}` themselves (Llama 3, Gemma) already start
        // with it: adding another would give the model two (transformers adds none here).
        let bos_text = self.bos_id.and_then(|i| self.inner.id_to_token(i)).filter(|t| !t.is_empty());
        let template_wrote_bos = bos_text.is_some_and(|t| rendered.starts_with(t.as_str()));
        if self.add_bos && !template_wrote_bos {
            ids.extend(self.bos_id);
        }
        let mut rest = rendered.as_str();
        // Every special string left was written by the template.
        while let Some((start, end, id)) = self.specials.find(rest) {
            self.push_literal(&unescape_specials(&rest[..start], &table), &mut ids)?;
            ids.push(id);
            rest = &rest[end..];
        }
        self.push_literal(&unescape_specials(rest, &table), &mut ids)?;
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

    /// The exact bytes token `id` adds to the text (OpenAI's `bytes` of a log-probability
    /// entry): a byte-level BPE token's characters mapped back to the bytes they stand for,
    /// a byte-fallback token `<0xNN>` its byte, SentencePiece's `▁` a space, a control
    /// token its string. A token may hold only part of a UTF-8 character, which
    /// [`Tokenizer::decode`] would turn into U+FFFD.
    pub fn token_bytes(&self, id: u32) -> Result<Vec<u8>> {
        let piece = self
            .inner
            .id_to_token(id)
            .ok_or_else(|| Error::invalid(format!("tokenizer: token id {id} is outside the vocabulary")))?;
        if self.is_special(id) {
            return Ok(piece.into_bytes());
        }
        if let Some(b) = byte_fallback(&piece) {
            return Ok(vec![b]);
        }
        if is_byte_level(self.inner.get_decoder()) {
            // A token spelled outside the byte alphabet (an added token) is its own text.
            if let Some(bytes) = piece.chars().map(byte_of_char).collect::<Option<Vec<u8>>>() {
                return Ok(bytes);
            }
            return Ok(piece.into_bytes());
        }
        Ok(piece.replace('\u{2581}', " ").into_bytes())
    }

    /// Whether [`Tokenizer::encode`] starts with a BOS token.
    pub fn adds_bos(&self) -> bool {
        self.add_bos && self.bos_id.is_some()
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

    /// Render `messages` through the model's chat template (see [`render_chat_template`]).
    /// With `add_generation_prompt` the text ends where the assistant's answer begins.
    pub fn apply_chat_template(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> Result<String> {
        let template = self
            .chat_template
            .as_deref()
            .ok_or_else(|| Error::invalid("this model has no chat template (tokenizer.chat_template)"))?;
        let bos = self.bos_id.and_then(|i| self.inner.id_to_token(i)).unwrap_or_default();
        let eos = self.eos_id.and_then(|i| self.inner.id_to_token(i)).unwrap_or_default();
        render_chat_template(template, messages, add_generation_prompt, &bos, &eos)
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

// ---------------------------------------------------------------------------------------
// Chat templates
// ---------------------------------------------------------------------------------------

/// Render a chat template (Jinja) as HF transformers' `apply_chat_template(messages,
/// tokenize=False, add_generation_prompt=...)` does, without needing a tokenizer.
///
/// The template sees `messages` (maps with `role` and `content`), `add_generation_prompt`,
/// `bos_token`, `eos_token`, and `tools` / `documents` set to none. As in transformers:
/// blocks are rendered with `trim_blocks` and `lstrip_blocks`; `raise_exception(msg)`
/// fails the rendering with `msg`; `tojson` is Python's `json.dumps` (no ASCII or HTML
/// escaping unless asked: `ensure_ascii`, `indent`, `separators`, `sort_keys`);
/// `strftime_now(fmt)` formats the local time (on Unix); strings, maps and lists have
/// Python's methods (`startswith`, `split`, `strip`, `items`, ...); `{% generation %}`
/// tags are accepted. An empty conversation is an error, as there.
pub fn render_chat_template(
    template: &str,
    messages: &[ChatMessage],
    add_generation_prompt: bool,
    bos_token: &str,
    eos_token: &str,
) -> Result<String> {
    if messages.is_empty() {
        return Err(Error::invalid("chat template: cannot render an empty conversation (no messages)"));
    }
    let env = chat_environment();
    let template = without_generation_tags(template);
    let tmpl = env.template_from_str(&template).map_err(|e| Error::invalid(format!("chat template: {e}")))?;
    tmpl.render(minijinja::context! {
        messages => messages,
        add_generation_prompt => add_generation_prompt,
        bos_token => bos_token,
        eos_token => eos_token,
        tools => (),
        documents => (),
    })
    .map_err(|e| Error::invalid(format!("chat template: {e}")))
}

/// A minijinja environment set up like transformers' chat-template sandbox.
fn chat_environment() -> minijinja::Environment<'static> {
    let mut env = minijinja::Environment::new();
    env.set_trim_blocks(true);
    env.set_lstrip_blocks(true);
    env.set_unknown_method_callback(py_method);
    env.add_function("raise_exception", |msg: String| -> std::result::Result<String, minijinja::Error> {
        Err(minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, msg))
    });
    #[cfg(unix)]
    env.add_function("strftime_now", strftime_now);
    env.add_filter("tojson", tojson);
    // Jinja2's `undefined|length` is 0 (minijinja: an error).
    let length = |value: &minijinja::Value| -> std::result::Result<usize, minijinja::Error> {
        if value.is_undefined() {
            Ok(0)
        } else {
            minijinja::filters::length(value)
        }
    };
    env.add_filter("length", length);
    env.add_filter("count", length);
    // Python's `iter(x)` succeeds: none, booleans and numbers are not iterable (minijinja
    // iterates none as empty), undefined is (as an empty sequence).
    env.add_test("iterable", |value: &minijinja::Value| -> bool {
        use minijinja::value::ValueKind;
        match value.kind() {
            ValueKind::Undefined => true,
            ValueKind::None | ValueKind::Bool | ValueKind::Number => false,
            _ => value.try_iter().is_ok(),
        }
    });
    // Jinja2's `trim` is Python's `str.strip`.
    env.add_filter("trim", |value: &minijinja::Value, chars: Option<String>| -> String {
        match value.as_str() {
            Some(s) => py_strip(s, chars.as_deref(), true, true).to_string(),
            None => py_strip(&value.to_string(), chars.as_deref(), true, true).to_string(),
        }
    });
    env
}

/// transformers' `{% generation %}...{% endgeneration %}` tags only mark assistant text
/// (for training masks) and render their body unchanged; minijinja has no such tag, so
/// they become `{% if true %}...{% endif %}` (whitespace control marks kept as written).
fn without_generation_tags(template: &str) -> std::borrow::Cow<'_, str> {
    if !template.contains("generation") {
        return std::borrow::Cow::Borrowed(template);
    }
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(start) = rest.find("{%") {
        let (before, tag) = rest.split_at(start);
        out.push_str(before);
        let body = &tag[2..];
        let body = body.strip_prefix(['-', '+']).unwrap_or(body);
        let lead = tag.len() - body.len();
        let trimmed = body.trim_start();
        let word_at = lead + (body.len() - trimmed.len());
        let word_len = trimmed.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(trimmed.len());
        let after = trimmed[word_len..].trim_start();
        let closes = after.starts_with("%}") || after.starts_with("-%}") || after.starts_with("+%}");
        let replacement = match &trimmed[..word_len] {
            "generation" if closes => Some("if true"),
            "endgeneration" if closes => Some("endif"),
            _ => None,
        };
        match replacement {
            Some(r) => {
                out.push_str(&tag[..word_at]);
                out.push_str(r);
                rest = &tag[word_at + word_len..];
            }
            None => {
                out.push_str("{%");
                rest = &tag[2..];
            }
        }
    }
    out.push_str(rest);
    std::borrow::Cow::Owned(out)
}

/// Python's `str.isspace` for one character (Rust's `is_whitespace` lacks U+001C..U+001F).
fn py_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// Python's `str.strip` / `lstrip` / `rstrip`: `chars` None strips whitespace.
fn py_strip<'a>(s: &'a str, chars: Option<&str>, left: bool, right: bool) -> &'a str {
    let strip = |c: char| match chars {
        Some(set) => set.contains(c),
        None => py_space(c),
    };
    let s = if left { s.trim_start_matches(strip) } else { s };
    if right {
        s.trim_end_matches(strip)
    } else {
        s
    }
}

/// Python's `str.split()` with no separator: runs of whitespace split, ends ignored.
fn py_split_whitespace(s: &str, maxsplit: Option<i64>) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = s.trim_start_matches(py_space);
    while !rest.is_empty() {
        if maxsplit.is_some_and(|m| m >= 0 && out.len() as i64 >= m) {
            out.push(rest);
            break;
        }
        match rest.find(py_space) {
            Some(i) => {
                out.push(&rest[..i]);
                rest = rest[i..].trim_start_matches(py_space);
            }
            None => {
                out.push(rest);
                break;
            }
        }
    }
    out
}

/// Python methods on values (`minijinja-contrib`'s pycompat), with `strip` / `lstrip` /
/// `rstrip` / `split()` using Python's notion of whitespace.
fn py_method(
    state: &minijinja::State,
    value: &minijinja::Value,
    method: &str,
    args: &[minijinja::Value],
) -> std::result::Result<minijinja::Value, minijinja::Error> {
    use minijinja::value::from_args;
    if let Some(s) = value.as_str() {
        match method {
            "strip" | "lstrip" | "rstrip" => {
                let (chars,): (Option<&str>,) = from_args(args)?;
                return Ok(minijinja::Value::from(py_strip(s, chars, method != "rstrip", method != "lstrip")));
            }
            "split" if args.first().is_none_or(|a| a.is_none()) => {
                let (_, maxsplit): (Option<minijinja::Value>, Option<i64>) = from_args(args)?;
                return Ok(py_split_whitespace(s, maxsplit).into_iter().map(minijinja::Value::from).collect());
            }
            _ => {}
        }
    }
    minijinja_contrib::pycompat::unknown_method_callback(state, value, method, args)
}

/// transformers' `strftime_now(format)`: `datetime.now().strftime(format)`, local time.
#[cfg(unix)]
fn strftime_now(format: String) -> std::result::Result<String, minijinja::Error> {
    // SAFETY: `time` with a null pointer only returns the current time.
    let now = unsafe { libc::time(std::ptr::null_mut()) };
    // SAFETY: `tm` is plain data (integers and a pointer the C library sets); zero is a
    // valid value for all of it, and `localtime_r` fills it in.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    // SAFETY: both pointers point to live, properly aligned values of the right types;
    // `localtime_r` is the thread-safe variant and keeps no reference to them.
    if unsafe { libc::localtime_r(&now, &mut tm) }.is_null() {
        return Err(minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, "strftime_now: no local time"));
    }
    strftime_tm(&format, &tm)
}

/// C `strftime` of `tm` (the C library's, as Python's `strftime` uses, in the "C" locale
/// unless the program changed it).
#[cfg(unix)]
fn strftime_tm(format: &str, tm: &libc::tm) -> std::result::Result<String, minijinja::Error> {
    let bad = |msg: &str| minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, format!("strftime_now: {msg}"));
    let cfmt = std::ffi::CString::new(format).map_err(|_| bad("embedded null character in the format"))?;
    // Like Python: grow the buffer until the text fits, up to 256 bytes per format byte.
    let limit = 256 * format.len().max(1);
    let mut size = 1024.min(limit);
    loop {
        let mut buf = vec![0u8; size];
        // SAFETY: `buf` has `size` writable bytes; `cfmt` is NUL-terminated; `tm` is a
        // valid `struct tm`. `strftime` writes at most `size` bytes (with the NUL) and
        // returns how many it wrote before the NUL, or 0 if they did not fit.
        let n = unsafe { libc::strftime(buf.as_mut_ptr().cast(), size, cfmt.as_ptr(), tm) };
        if n > 0 || size >= limit {
            buf.truncate(n);
            return String::from_utf8(buf).map_err(|_| bad("the C library returned text that is not UTF-8"));
        }
        size = (size * 4).min(limit);
    }
}

/// transformers' `tojson` filter: `json.dumps(x, ensure_ascii=False, indent=None,
/// separators=None, sort_keys=False)`. Positional arguments are `ensure_ascii`, `indent`.
fn tojson(
    value: &minijinja::Value,
    ensure_ascii: Option<minijinja::Value>,
    indent: Option<minijinja::Value>,
    kwargs: minijinja::value::Kwargs,
) -> std::result::Result<minijinja::Value, minijinja::Error> {
    use minijinja::value::ValueKind;
    let bad = |msg: String| minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, format!("tojson: {msg}"));
    let ensure_ascii = match kwargs.get::<Option<minijinja::Value>>("ensure_ascii")? {
        Some(v) => Some(v),
        None => ensure_ascii,
    };
    let indent = match kwargs.get::<Option<minijinja::Value>>("indent")? {
        Some(v) => Some(v),
        None => indent,
    };
    let separators: Option<minijinja::Value> = kwargs.get("separators")?;
    let sort_keys: Option<minijinja::Value> = kwargs.get("sort_keys")?;
    kwargs.assert_all_used()?;

    let indent = match indent {
        None => None,
        Some(v) if v.is_none() => None,
        Some(v) => match v.kind() {
            ValueKind::String => Some(v.as_str().unwrap_or_default().to_string()),
            ValueKind::Number if v.is_integer() => Some(" ".repeat(v.as_i64().unwrap_or(0).max(0) as usize)),
            _ => return Err(bad(format!("indent must be an integer or a string, not {v}"))),
        },
    };
    let (item_sep, key_sep) = match separators {
        Some(v) if !v.is_none() => {
            let parts: Vec<minijinja::Value> = v.try_iter()?.collect();
            match (parts.first().and_then(|p| p.as_str()), parts.get(1).and_then(|p| p.as_str()), parts.len()) {
                (Some(a), Some(b), 2) => (a.to_string(), b.to_string()),
                _ => return Err(bad("separators must be a pair of strings".to_string())),
            }
        }
        _ if indent.is_some() => (",".to_string(), ": ".to_string()),
        _ => (", ".to_string(), ": ".to_string()),
    };
    let opts = JsonOpts {
        ensure_ascii: ensure_ascii.is_some_and(|v| v.is_true()),
        sort_keys: sort_keys.is_some_and(|v| v.is_true()),
        indent,
        item_sep,
        key_sep,
    };
    let mut out = String::new();
    json_value(&mut out, value, &opts, 0)?;
    Ok(minijinja::Value::from(out))
}

struct JsonOpts {
    ensure_ascii: bool,
    sort_keys: bool,
    indent: Option<String>,
    item_sep: String,
    key_sep: String,
}

/// Python's `json.dumps` of one value.
fn json_value(
    out: &mut String,
    value: &minijinja::Value,
    opts: &JsonOpts,
    level: usize,
) -> std::result::Result<(), minijinja::Error> {
    use minijinja::value::ValueKind;
    let not_serializable = || {
        minijinja::Error::new(
            minijinja::ErrorKind::InvalidOperation,
            format!("tojson: a value of kind {} is not JSON serializable", value.kind()),
        )
    };
    match value.kind() {
        ValueKind::None => out.push_str("null"),
        ValueKind::Bool => out.push_str(if value.is_true() { "true" } else { "false" }),
        ValueKind::Number => out.push_str(&json_number(value)?),
        ValueKind::String => json_string(out, value.as_str().unwrap_or_default(), opts.ensure_ascii),
        ValueKind::Seq | ValueKind::Iterable => {
            let items: Vec<minijinja::Value> = value.try_iter()?.collect();
            json_container(out, '[', ']', items.len(), opts, level, |out, i| {
                json_value(out, &items[i], opts, level + 1)
            })?;
        }
        ValueKind::Map => {
            let mut items = Vec::new();
            for key in value.try_iter()? {
                let item = value.get_item(&key)?;
                let key = match key.kind() {
                    ValueKind::String => key.as_str().unwrap_or_default().to_string(),
                    ValueKind::Number => json_number(&key)?,
                    ValueKind::Bool | ValueKind::None => {
                        let mut s = String::new();
                        json_value(&mut s, &key, opts, level)?;
                        s
                    }
                    _ => {
                        return Err(minijinja::Error::new(
                            minijinja::ErrorKind::InvalidOperation,
                            format!("tojson: keys must be str, int, float, bool or None, not {}", key.kind()),
                        ))
                    }
                };
                items.push((key, item));
            }
            if opts.sort_keys {
                items.sort_by(|a, b| a.0.cmp(&b.0));
            }
            json_container(out, '{', '}', items.len(), opts, level, |out, i| {
                json_string(out, &items[i].0, opts.ensure_ascii);
                out.push_str(&opts.key_sep);
                json_value(out, &items[i].1, opts, level + 1)
            })?;
        }
        _ => return Err(not_serializable()),
    }
    Ok(())
}

/// `[a, b]` / `{...}` with Python's indentation rules (`indent` None: one line).
fn json_container(
    out: &mut String,
    open: char,
    close: char,
    len: usize,
    opts: &JsonOpts,
    level: usize,
    mut item: impl FnMut(&mut String, usize) -> std::result::Result<(), minijinja::Error>,
) -> std::result::Result<(), minijinja::Error> {
    out.push(open);
    if len == 0 {
        out.push(close);
        return Ok(());
    }
    let newline = |out: &mut String, depth: usize| {
        if let Some(ind) = &opts.indent {
            out.push('\n');
            for _ in 0..depth {
                out.push_str(ind);
            }
        }
    };
    for i in 0..len {
        if i > 0 {
            out.push_str(&opts.item_sep);
        }
        newline(out, level + 1);
        item(out, i)?;
    }
    newline(out, level);
    out.push(close);
    Ok(())
}

/// A number as Python's `json.dumps` writes it (integers exactly, floats as `repr`).
fn json_number(value: &minijinja::Value) -> std::result::Result<String, minijinja::Error> {
    if value.is_integer() {
        return Ok(value.to_string());
    }
    let f = f64::try_from(value.clone())?;
    Ok(py_float_repr(f))
}

/// Python's `repr(float)` (as `json.dumps` writes floats; NaN and infinities as JSON5).
fn py_float_repr(f: f64) -> String {
    if f.is_nan() {
        return "NaN".to_string();
    }
    if f.is_infinite() {
        return if f > 0.0 { "Infinity" } else { "-Infinity" }.to_string();
    }
    // Shortest round-trip digits, as Python's repr picks them; only the layout differs.
    let sci = format!("{f:e}");
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let (sign, mantissa) = match mantissa.strip_prefix('-') {
        Some(m) => ("-", m),
        None => ("", mantissa),
    };
    let digits: String = mantissa.chars().filter(|c| c.is_ascii_digit()).collect();
    if (-4..16).contains(&exp) {
        // Fixed notation, at least one digit after the point.
        let point = exp + 1;
        let (int, frac) = if point <= 0 {
            ("0".to_string(), format!("{}{}", "0".repeat((-point) as usize), digits))
        } else if point as usize >= digits.len() {
            (format!("{digits}{}", "0".repeat(point as usize - digits.len())), String::new())
        } else {
            (digits[..point as usize].to_string(), digits[point as usize..].to_string())
        };
        let frac = if frac.is_empty() { "0".to_string() } else { frac };
        format!("{sign}{int}.{frac}")
    } else {
        let (first, rest) = digits.split_at(1);
        let rest = if rest.is_empty() { String::new() } else { format!(".{rest}") };
        let esign = if exp < 0 { '-' } else { '+' };
        format!("{sign}{first}{rest}e{esign}{:02}", exp.abs())
    }
}

/// A JSON string literal as Python writes it (`ensure_ascii`: non-ASCII as `\uXXXX`).
fn json_string(out: &mut String, s: &str, ensure_ascii: bool) {
    use std::fmt::Write;
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 || (ensure_ascii && (c as u32) > 0x7e) => {
                let mut units = [0u16; 2];
                for u in c.encode_utf16(&mut units) {
                    let _ = write!(out, "\\u{u:04x}");
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(template: &str) -> String {
        render_chat_template(template, &[ChatMessage::new("user", "hi")], false, "<s>", "</s>").unwrap()
    }

    #[test]
    fn token_characters_map_back_to_bytes() {
        // GPT-2's alphabet: every byte has exactly one character, and back.
        let mut seen = vec![false; 256];
        for c in (0u32..0x200).filter_map(char::from_u32) {
            if let Some(b) = byte_of_char(c) {
                assert!(!seen[b as usize], "byte {b} twice");
                seen[b as usize] = true;
            }
        }
        assert!(seen.iter().all(|&s| s));
        assert_eq!(byte_of_char('A'), Some(b'A'));
        assert_eq!(byte_of_char('\u{120}'), Some(b' ')); // Ġ
        assert_eq!(byte_of_char('\u{10a}'), Some(b'\n')); // Ċ
        assert_eq!(byte_of_char('\u{143}'), Some(0xad));
        assert_eq!(byte_of_char(' '), None);
        assert_eq!(byte_of_char('\u{144}'), None);
        assert_eq!(byte_fallback("<0xE2>"), Some(0xe2));
        assert_eq!(byte_fallback("<0x1>"), None);
        assert_eq!(byte_fallback("<0xZZ>"), None);
        assert_eq!(byte_fallback("0xE2"), None);
    }

    #[test]
    fn float_repr_matches_python() {
        // Python: [repr(x) for x in ...]
        let cases = [
            (1.0, "1.0"),
            (-0.0, "-0.0"),
            (0.1, "0.1"),
            (1.5, "1.5"),
            (-2.25, "-2.25"),
            (123456789.125, "123456789.125"),
            (1e15, "1000000000000000.0"),
            (1e16, "1e+16"),
            (1.5e16, "1.5e+16"),
            (1e20, "1e+20"),
            (0.0001, "0.0001"),
            (0.00012, "0.00012"),
            (1e-5, "1e-05"),
            (1.5e-7, "1.5e-07"),
            (5e-324, "5e-324"),
            (1.7976931348623157e308, "1.7976931348623157e+308"),
            (f64::NAN, "NaN"),
            (f64::INFINITY, "Infinity"),
            (f64::NEG_INFINITY, "-Infinity"),
        ];
        for (x, want) in cases {
            assert_eq!(py_float_repr(x), want, "repr({x:e})");
        }
    }

    #[test]
    fn json_strings_match_python() {
        let dumps = |s: &str, ascii: bool| {
            let mut out = String::new();
            json_string(&mut out, s, ascii);
            out
        };
        // json.dumps(s, ensure_ascii=False) / json.dumps(s)
        assert_eq!(
            dumps("a\"b\\c\n\r\t\u{8}\u{c}\u{1}\u{7f}é🦀", false),
            "\"a\\\"b\\\\c\\n\\r\\t\\b\\f\\u0001\u{7f}é🦀\""
        );
        assert_eq!(dumps("\u{7f}é🦀<&>'", true), "\"\\u007f\\u00e9\\ud83e\\udd80<&>'\"");
    }

    #[test]
    fn tojson_filter_options() {
        let t = r#"{{ {"a": [1, 2.0, none, true, "x"], "b": {}} | tojson }}|{{ [] | tojson(indent=2) }}|{{ {"a": [1]} | tojson(indent=1) }}|{{ "é" | tojson(ensure_ascii=true) }}|{{ [1, {"k": "v"}] | tojson(separators=(",", ":")) }}|{{ "x" | tojson(indent="\t") }}"#;
        assert_eq!(
            render(t),
            "{\"a\": [1, 2.0, null, true, \"x\"], \"b\": {}}|[]|{\n \"a\": [\n  1\n ]\n}|\"\\u00e9\"|[1,{\"k\":\"v\"}]|\"x\""
        );
        assert!(render_chat_template("{{ x | tojson }}", &[ChatMessage::new("user", "hi")], false, "", "").is_err());
        assert!(render_chat_template("{{ 1 | tojson(bogus=1) }}", &[ChatMessage::new("user", "hi")], false, "", "")
            .is_err());
    }

    #[test]
    fn python_whitespace() {
        assert_eq!(py_strip("\u{1f} a b\u{3000}\n", None, true, true), "a b");
        assert_eq!(py_strip("\u{1f} a b\u{3000}\n", None, true, false), "a b\u{3000}\n");
        assert_eq!(py_strip("xxaxx", Some("x"), false, true), "xxa");
        assert_eq!(py_strip(" a ", Some(""), true, true), " a ");
        assert_eq!(py_split_whitespace("  a b\u{1c}\u{1c}c  ", None), ["a", "b", "c"]);
        assert_eq!(py_split_whitespace("  a b  c ", Some(1)), ["a", "b  c "]);
        assert_eq!(py_split_whitespace("a  ", Some(1)), ["a"]);
        assert_eq!(py_split_whitespace("a b", Some(0)), ["a b"]);
        assert_eq!(py_split_whitespace("   ", None), Vec::<&str>::new());
        assert_eq!(
            render("{{ '  a  b '.split() }}|{{ 'a,b'.split(',') }}|{{ ' x '.strip() }}|{{ ' x ' | trim }}"),
            "[\"a\", \"b\"]|[\"a\", \"b\"]|x|x"
        );
    }

    #[test]
    fn generation_tags_render_their_body() {
        assert_eq!(without_generation_tags("{% if x %}a{% endif %}"), "{% if x %}a{% endif %}");
        assert_eq!(
            without_generation_tags("a {%- generation -%} b {%+endgeneration%} {% generation_x %}"),
            "a {%- if true -%} b {%+endif%} {% generation_x %}"
        );
        assert_eq!(
            render("{% for m in messages %}[{% generation %}{{ m.content }}{% endgeneration %}]{% endfor %}"),
            "[hi]"
        );
    }

    #[test]
    fn jinja2_semantics() {
        assert_eq!(render("{{ none }} {{ true }} {{ tools is none }} {{ documents is none }}"), "None True True True");
        assert_eq!(
            render("{{ none is iterable }} {{ 1 is iterable }} {{ 'a' is iterable }} {{ nope is iterable }}"),
            "False False True True"
        );
        assert_eq!(render("{{ nope | length }} {{ 'abc' | length }} {{ messages | count }}"), "0 3 1");
        // trim_blocks and lstrip_blocks
        assert_eq!(render("a\n  {% if true %}\nb\n  {% endif %}\nc"), "a\nb\nc");
        assert_eq!(render("{{ bos_token }}{{ eos_token }}{{ add_generation_prompt }}"), "<s></s>False");
    }

    #[test]
    fn errors() {
        let msgs = [ChatMessage::new("user", "hi")];
        let err = render_chat_template("{{ raise_exception('no way') }}", &msgs, false, "", "").unwrap_err();
        assert!(err.to_string().contains("no way"), "{err}");
        assert!(render_chat_template("hi", &[], false, "", "").is_err());
        assert!(render_chat_template("{% if %}", &msgs, false, "", "").is_err());
    }

    #[cfg(unix)]
    #[test]
    fn strftime_formats_like_c() {
        // SAFETY: `tm` is plain data; zero is valid for every field.
        let mut tm: libc::tm = unsafe { std::mem::zeroed() };
        tm.tm_year = 2024 - 1900;
        tm.tm_mon = 6;
        tm.tm_mday = 26;
        tm.tm_wday = 5;
        tm.tm_yday = 207;
        tm.tm_hour = 9;
        tm.tm_min = 5;
        assert_eq!(strftime_tm("%d %b %Y", &tm).unwrap(), "26 Jul 2024");
        assert_eq!(strftime_tm("%A %B %-d, %H:%M (%%)", &tm).unwrap(), "Friday July 26, 09:05 (%)");
        assert_eq!(strftime_tm("", &tm).unwrap(), "");
        assert!(strftime_tm("a\0b", &tm).is_err());
        let today = render("{{ strftime_now('%Y-%m-%d') }}");
        assert!(today.len() == 10 && today.as_bytes()[4] == b'-', "{today}");
    }
}
