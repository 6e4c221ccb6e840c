//! SentencePiece-style tokenizers (`tokenizer.ggml.model` = `llama`: Gemma, LLaMA 1/2,
//! Mistral v0.1, Phi-3) from GGUF metadata, on the `tokenizers` crate, built as HF
//! transformers 5.24 builds them for a GGUF (`integrations/gguf/gguf_tokenizer_mapping.py`)
//! so that both give the same ids for the same file:
//!
//! - a BPE with byte fallback (`<0xNN>` tokens for characters outside the vocabulary) and
//!   fused unknowns. A GGUF of this kind holds no merges (when it does, they are used), so
//!   they are derived from the vocabulary as transformers' `generate_merges` does: every
//!   split of a token into two tokens is a merge, ranked by the token's score (Gemma: by
//!   its position in the file, earlier first, as Gemma's scores are all alike), ties
//!   broken by longer left part, then longer right part, then file order;
//! - by `general.architecture`: Gemma (`gemma`, `gemma2`, `gemma3`) replaces spaces by
//!   `▁` and adds no prefix space, and its whitespace-only tokens, which the file spells
//!   with real spaces, are respelled with `▁`; Phi-3 prepends `▁` to each piece of text
//!   between special tokens and replaces spaces; any other (LLaMA, Mistral, ...) uses
//!   `Metaspace` with a `▁` prepended to the start of the text only. As in transformers,
//!   `tokenizer.ggml.add_space_prefix` is not read;
//! - control tokens (type 3) and the named bos/eos/unk/pad tokens (plus the class defaults
//!   transformers adds: `<unk>`, `<bos>`, `<eos>`, `<pad>`, `<mask>` for Gemma, `<unk>`,
//!   `<s>`, `</s>` otherwise) are special added tokens, user-defined tokens (type 4) plain
//!   added tokens: all matched whole in the raw text before normalization;
//! - decoding: `▁` back to spaces, byte tokens to bytes, and (not Gemma) the first leading
//!   space stripped.
//!
//! No post-processor: the caller adds BOS.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashSet};

use rayon::prelude::*;

use tokenizers::decoders::byte_fallback::ByteFallback;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::decoders::sequence::Sequence as DecoderSequence;
use tokenizers::decoders::strip::Strip;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::normalizers::prepend::Prepend;
use tokenizers::normalizers::replace::Replace;
use tokenizers::normalizers::utils::Sequence as NormalizerSequence;
use tokenizers::pre_tokenizers::metaspace::{Metaspace, PrependScheme};
use tokenizers::pre_tokenizers::split::Split;
use tokenizers::{AddedToken, DecoderWrapper, NormalizerWrapper, PreTokenizerWrapper, SplitDelimiterBehavior};

use crate::params::MetaValue;
use crate::{Error, Result};

/// GGUF token types (`tokenizer.ggml.token_type`).
const TOKEN_CONTROL: i64 = 3;
const TOKEN_USER_DEFINED: i64 = 4;

/// SentencePiece's word-boundary mark, which stands for a space.
const METASPACE: char = '▁';

/// A built SentencePiece-style tokenizer.
pub(crate) struct SpmParts {
    pub tokenizer: tokenizers::Tokenizer,
    /// `special_ids[i]`: token `i` is a special added token (control tokens and the named
    /// bos/eos/unk/pad tokens), skipped when decoding with `skip_special_tokens`.
    pub special_ids: Vec<bool>,
}

/// How transformers shapes a sentencepiece vocabulary, chosen by `general.architecture`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Flavour {
    /// `LlamaTokenizer`: Metaspace pre-tokenizer prepending `▁` to the text's start.
    Llama,
    /// `GemmaTokenizer`: spaces replaced by `▁`, no prefix, merges in file order.
    Gemma,
    /// Phi-3: `▁` prepended (by a normalizer) to each piece between added tokens.
    Phi3,
}

impl Flavour {
    fn of(architecture: Option<&str>) -> Flavour {
        match architecture {
            Some("gemma" | "gemma2" | "gemma3") => Flavour::Gemma,
            Some("phi3") => Flavour::Phi3,
            _ => Flavour::Llama,
        }
    }

    /// The special tokens the transformers class declares by default (added as special
    /// tokens when the vocabulary has them).
    fn default_specials(self) -> &'static [&'static str] {
        match self {
            Flavour::Gemma => &["<unk>", "<bos>", "<eos>", "<pad>", "<mask>"],
            Flavour::Llama | Flavour::Phi3 => &["<unk>", "<s>", "</s>"],
        }
    }
}

fn bad(msg: impl std::fmt::Display) -> Error {
    Error::invalid(format!("tokenizer: {msg}"))
}

fn meta_array<'a>(m: &'a BTreeMap<String, MetaValue>, key: &str) -> Result<Option<&'a [MetaValue]>> {
    match m.get(key) {
        None => Ok(None),
        Some(v) => v.as_array().map(Some).ok_or_else(|| bad(format_args!("'{key}' is not an array"))),
    }
}

fn meta_strings<'a>(m: &'a BTreeMap<String, MetaValue>, key: &str) -> Result<Option<Vec<&'a str>>> {
    let Some(items) = meta_array(m, key)? else { return Ok(None) };
    let strings = items
        .iter()
        .map(|v| v.as_str().ok_or_else(|| bad(format_args!("'{key}' is not an array of strings"))))
        .collect::<Result<_>>()?;
    Ok(Some(strings))
}

/// Build the tokenizer of a GGUF file whose `tokenizer.ggml.model` is `llama`.
pub(crate) fn build_spm(m: &BTreeMap<String, MetaValue>) -> Result<SpmParts> {
    match m.get("tokenizer.ggml.model").and_then(MetaValue::as_str) {
        Some("llama") => {}
        other => return Err(bad(format_args!("model {other:?} is not a sentencepiece ('llama') vocabulary"))),
    }
    let flavour = Flavour::of(m.get("general.architecture").and_then(MetaValue::as_str));
    let file_tokens =
        meta_strings(m, "tokenizer.ggml.tokens")?.ok_or_else(|| bad("missing metadata key 'tokenizer.ggml.tokens'"))?;
    let n = file_tokens.len();
    if n == 0 || n > u32::MAX as usize {
        return Err(bad(format_args!("a vocabulary of {n} tokens")));
    }
    let types: Vec<i64> = match meta_array(m, "tokenizer.ggml.token_type")? {
        Some(items) if items.len() == n => items.iter().map(|v| v.as_i64().unwrap_or(1)).collect(),
        Some(items) => {
            return Err(bad(format_args!("{} token types for {n} tokens", items.len())));
        }
        None => vec![1; n],
    };

    // Gemma files spell the tokens made of two or more spaces with real spaces, the
    // tokenizer looks them up as `▁▁`...: respell any whitespace-only token with a space.
    let tokens: Vec<Cow<str>> = file_tokens
        .iter()
        .map(|&t| {
            if flavour == Flavour::Gemma && t.contains(' ') && t.chars().all(py_is_space) {
                Cow::Owned(METASPACE.to_string().repeat(t.chars().count()))
            } else {
                Cow::Borrowed(t)
            }
        })
        .collect();
    // As a Python dict: a token listed twice keeps its last id (`first`: where it is
    // listed first).
    let mut vocab = Vocab::default();
    vocab.reserve(n);
    let first: Vec<bool> =
        tokens.iter().enumerate().map(|(i, t)| vocab.insert(t.to_string(), i as u32).is_none()).collect();

    let merges = match meta_strings(m, "tokenizer.ggml.merges")? {
        Some(merges) => merges
            .iter()
            .map(|s| {
                s.split_once(' ')
                    .map(|(a, b)| (a.to_string(), b.to_string()))
                    .ok_or_else(|| bad(format_args!("merge '{s}' is not two tokens")))
            })
            .collect::<Result<Vec<_>>>()?,
        None => {
            let score_of: Vec<f64> = if flavour == Flavour::Gemma {
                // Gemma's scores do not follow its merge order; the file order does.
                (0..n).map(|i| -(i as f64)).collect()
            } else {
                let items = meta_array(m, "tokenizer.ggml.scores")?
                    .ok_or_else(|| bad("no 'tokenizer.ggml.merges' and no 'tokenizer.ggml.scores' to derive them"))?;
                if items.len() != n {
                    return Err(bad(format_args!("{} scores for {n} tokens", items.len())));
                }
                items
                    .iter()
                    .map(|v| v.as_f64().ok_or_else(|| bad("'tokenizer.ggml.scores' is not an array of numbers")))
                    .collect::<Result<_>>()?
            };
            derive_merges(&tokens, &first, &vocab, &score_of)
        }
    };

    let mut builder = BPE::builder().vocab_and_merges(vocab, merges).byte_fallback(true).fuse_unk(true);
    if flavour == Flavour::Gemma {
        // GemmaTokenizer's default, whatever the file names.
        builder = builder.unk_token("<unk>".to_string());
    }
    let bpe = builder.build().map_err(|e| bad(format_args!("cannot build BPE: {e}")))?;
    let mut tokenizer = tokenizers::Tokenizer::new(bpe);

    let replace_spaces = || -> Result<Replace> {
        Replace::new(" ", METASPACE.to_string()).map_err(|e| bad(format_args!("normalizer: {e}")))
    };
    let mut decoders = vec![
        DecoderWrapper::Replace(
            Replace::new(METASPACE.to_string(), " ").map_err(|e| bad(format_args!("decoder: {e}")))?,
        ),
        DecoderWrapper::ByteFallback(ByteFallback::new()),
        DecoderWrapper::Fuse(Fuse::new()),
    ];
    match flavour {
        Flavour::Gemma => {
            tokenizer.with_normalizer(Some(NormalizerWrapper::Replace(replace_spaces()?)));
            // As in GemmaTokenizer; there are no spaces left after the normalizer.
            let split = Split::new(" ", SplitDelimiterBehavior::MergedWithPrevious, false)
                .map_err(|e| bad(format_args!("pre-tokenizer: {e}")))?;
            tokenizer.with_pre_tokenizer(Some(PreTokenizerWrapper::Split(split)));
        }
        Flavour::Llama => {
            let metaspace = Metaspace::new(METASPACE, PrependScheme::First, false);
            tokenizer.with_pre_tokenizer(Some(PreTokenizerWrapper::Metaspace(metaspace)));
            decoders.push(DecoderWrapper::Strip(Strip::new(' ', 1, 0)));
        }
        Flavour::Phi3 => {
            tokenizer.with_normalizer(Some(NormalizerWrapper::Sequence(NormalizerSequence::new(vec![
                NormalizerWrapper::Prepend(Prepend::new(METASPACE.to_string())),
                NormalizerWrapper::Replace(replace_spaces()?),
            ]))));
            decoders.push(DecoderWrapper::Strip(Strip::new(' ', 1, 0)));
        }
    }
    tokenizer.with_decoder(Some(DecoderWrapper::Sequence(DecoderSequence::new(decoders))));

    // Added tokens. Ids come from the vocabulary (transformers would append an id for a
    // named token the vocabulary lacks; we leave such a name out).
    let in_vocab = |t: &str| tokenizer.token_to_id(t).is_some();
    let mut special_ids = vec![false; n];
    let mut specials: Vec<String> = Vec::new();
    let mut is_special = HashSet::new();
    let mut add_special = |t: &str, specials: &mut Vec<String>| {
        if !t.is_empty() && is_special.insert(t.to_string()) {
            specials.push(t.to_string());
        }
    };
    for name in flavour.default_specials() {
        if in_vocab(name) {
            add_special(name, &mut specials);
        }
    }
    for (i, (&t, &ty)) in file_tokens.iter().zip(&types).enumerate() {
        if ty == TOKEN_CONTROL && in_vocab(t) {
            special_ids[i] = true;
            add_special(t, &mut specials);
        }
    }
    for key in [
        "tokenizer.ggml.bos_token_id",
        "tokenizer.ggml.eos_token_id",
        "tokenizer.ggml.unknown_token_id",
        "tokenizer.ggml.padding_token_id",
    ] {
        match m.get(key).map(|v| v.as_u64()) {
            None => {}
            Some(Some(id)) if (id as usize) < n => add_special(file_tokens[id as usize], &mut specials),
            Some(_) => return Err(bad(format_args!("'{key}' is not a token id below {n}"))),
        }
    }
    let user_defined: Vec<AddedToken> = file_tokens
        .iter()
        .zip(&types)
        .filter(|(&t, &ty)| ty == TOKEN_USER_DEFINED && in_vocab(t) && !is_special.contains(t))
        .map(|(&t, _)| AddedToken::from(t, false).normalized(false))
        .collect();
    for t in &specials {
        if let Some(id) = tokenizer.token_to_id(t) {
            special_ids[id as usize] = true;
        }
    }
    let specials: Vec<AddedToken> = specials.into_iter().map(|t| AddedToken::from(t, true)).collect();
    tokenizer.add_special_tokens(&specials);
    tokenizer.add_tokens(&user_defined);
    Ok(SpmParts { tokenizer, special_ids })
}

/// Python's `str.isspace` for one character (Rust's `is_whitespace` lacks U+001C..U+001F).
fn py_is_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// One derived merge, before it is spelled out.
#[derive(Clone, Copy)]
struct Candidate {
    score: f64,
    /// Lengths of the two parts in characters (Python's `len`).
    len_left: u32,
    len_right: u32,
    left: u32,
    right: u32,
}

/// The merges a vocabulary implies, best first: transformers' `generate_merges(vocab,
/// scores)`. Every token, in file order (a repeated token once, where it is `first`
/// listed, with the score of its last listing), yields a merge for each way to cut it into
/// two tokens, those ordered by the parts' ids; then all are sorted, stably, by score,
/// length of the left part and length of the right part, each descending. Called on a
/// rayon pool's thread, runs on that pool (else on the calling thread alone: loading a
/// model should not start rayon's global pool beside the context's).
fn derive_merges(tokens: &[Cow<str>], first: &[bool], vocab: &Vocab, score_of: &[f64]) -> Vec<(String, String)> {
    const CHUNK: usize = 8192;
    let cut = |start: usize, chunk: &[Cow<str>]| -> Vec<Candidate> {
        let mut out = Vec::with_capacity(2 * chunk.len());
        let mut local: Vec<Candidate> = Vec::new();
        for (i, token) in chunk.iter().enumerate() {
            if !first[start + i] {
                continue;
            }
            let Some(&id) = vocab.get(token.as_ref()) else { continue };
            let score = score_of[id as usize];
            let chars = token.chars().count() as u32;
            for (k, (at, _)) in token.char_indices().enumerate().skip(1) {
                let (l, r) = token.split_at(at);
                let Some(&left) = vocab.get(l) else { continue };
                let Some(&right) = vocab.get(r) else { continue };
                local.push(Candidate { score, len_left: k as u32, len_right: chars - k as u32, left, right });
            }
            local.sort_unstable_by_key(|c| (c.left, c.right));
            out.append(&mut local);
        }
        out
    };
    let order = |a: &Candidate, b: &Candidate| {
        b.score
            .partial_cmp(&a.score)
            .unwrap_or(std::cmp::Ordering::Equal)
            .then(b.len_left.cmp(&a.len_left))
            .then(b.len_right.cmp(&a.len_right))
    };
    // Sorts stable, as Python's `sorted`.
    let candidates = if rayon::current_thread_index().is_some() {
        let parts: Vec<Vec<Candidate>> =
            tokens.par_chunks(CHUNK).enumerate().map(|(c, chunk)| cut(c * CHUNK, chunk)).collect();
        let mut candidates = parts.concat();
        candidates.par_sort_by(order);
        candidates
    } else {
        let mut candidates = cut(0, tokens);
        candidates.sort_by(order);
        candidates
    };
    candidates.iter().map(|c| (tokens[c.left as usize].to_string(), tokens[c.right as usize].to_string())).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small vocabulary: `<unk>`, `<s>`, `</s>`, the 256 byte tokens, then `pieces`
    /// (with types), scored by rank (`-i`).
    fn meta(arch: &str, pieces: &[(&str, i64)]) -> BTreeMap<String, MetaValue> {
        let mut tokens: Vec<(String, i64)> = vec![("<unk>".into(), 2), ("<s>".into(), 3), ("</s>".into(), 3)];
        tokens.extend((0..=255u8).map(|b| (format!("<0x{b:02X}>"), 6)));
        tokens.extend(pieces.iter().map(|&(t, ty)| (t.to_string(), ty)));
        let mut m = BTreeMap::new();
        let s = |v: &str| MetaValue::Str(v.to_string());
        m.insert("general.architecture".into(), s(arch));
        m.insert("tokenizer.ggml.model".into(), s("llama"));
        m.insert("tokenizer.ggml.tokens".into(), MetaValue::Array(tokens.iter().map(|(t, _)| s(t)).collect()));
        m.insert(
            "tokenizer.ggml.scores".into(),
            MetaValue::Array((0..tokens.len()).map(|i| MetaValue::Float(-(i as f64))).collect()),
        );
        m.insert(
            "tokenizer.ggml.token_type".into(),
            MetaValue::Array(tokens.iter().map(|&(_, ty)| MetaValue::Int(ty)).collect()),
        );
        m.insert("tokenizer.ggml.unknown_token_id".into(), MetaValue::UInt(0));
        m.insert("tokenizer.ggml.bos_token_id".into(), MetaValue::UInt(1));
        m.insert("tokenizer.ggml.eos_token_id".into(), MetaValue::UInt(2));
        m
    }

    const PIECES: &[(&str, i64)] = &[
        ("▁", 1),
        ("h", 1),
        ("e", 1),
        ("l", 1),
        ("o", 1),
        ("w", 1),
        ("r", 1),
        ("d", 1),
        ("ll", 1),
        ("▁h", 1),
        ("▁w", 1),
        ("he", 1),
        ("el", 1),
        ("lo", 1),
        ("llo", 1),
        ("or", 1),
        ("▁he", 1),
        ("ld", 1),
        ("▁wor", 1),
        ("▁hello", 1),
        ("▁world", 1),
        ("<start_of_turn>", 3),
        ("<end_of_turn>", 3),
        ("<think>", 4),
        ("▁▁", 1),
    ];

    fn ids_of(parts: &SpmParts, text: &str) -> Vec<String> {
        let enc = parts.tokenizer.encode_fast(text, false).unwrap();
        enc.get_ids().iter().map(|&i| parts.tokenizer.id_to_token(i).unwrap()).collect()
    }

    fn decode(parts: &SpmParts, text: &str) -> String {
        let enc = parts.tokenizer.encode_fast(text, false).unwrap();
        parts.tokenizer.decode(enc.get_ids(), false).unwrap()
    }

    #[test]
    fn merges_follow_scores_then_lengths_then_ids() {
        // transformers: generate_merges({t: i}, {t: score}) on these tokens.
        let tokens: Vec<Cow<str>> =
            ["a", "b", "c", "ab", "bc", "abc", "cab", "ca", "x", "xx", "xxxx", "xxx"].map(Cow::Borrowed).into();
        let vocab: Vocab = tokens.iter().enumerate().map(|(i, t)| (t.to_string(), i as u32)).collect();
        let scores = [0.0, 0.0, 0.0, -1.0, -2.0, -3.0, -3.0, -4.0, 0.0, -5.0, -5.0, -5.0];
        let merges = derive_merges(&tokens, &[true; 12], &vocab, &scores);
        let pairs: Vec<(&str, &str)> = merges.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
        // >>> generate_merges(vocab, dict(zip(tokens, scores)))
        assert_eq!(
            pairs,
            [
                ("a", "b"),
                ("b", "c"),
                ("ab", "c"),
                ("ca", "b"),
                ("a", "bc"),
                ("c", "ab"),
                ("c", "a"),
                ("xxx", "x"),
                ("xx", "xx"),
                ("xx", "x"),
                ("x", "xxx"),
                ("x", "xx"),
                ("x", "x"),
            ]
        );
    }

    // The expected tokens below are those of transformers 5.24 (`convert_gguf_tokenizer`
    // on the same vocabulary).

    #[test]
    fn scores_drive_the_merges() {
        let parts = build_spm(&meta("llama", PIECES)).unwrap();
        assert_eq!(ids_of(&parts, "hello world"), ["▁hello", "▁world"]);
        // "▁h" ranks before "he", "he" before "el" (no `▁` after a special token).
        assert_eq!(ids_of(&parts, "hel"), ["▁h", "el"]);
        assert_eq!(ids_of(&parts, "<s>hel"), ["<s>", "he", "l"]);
        // With the ranks of "he" and "el" swapped, e-l merges first.
        let swapped: Vec<(&str, i64)> = PIECES
            .iter()
            .map(|&(t, ty)| {
                (
                    if t == "he" {
                        "el"
                    } else if t == "el" {
                        "he"
                    } else {
                        t
                    },
                    ty,
                )
            })
            .collect();
        let parts = build_spm(&meta("llama", &swapped)).unwrap();
        assert_eq!(ids_of(&parts, "<s>hel"), ["<s>", "h", "el"]);
    }

    #[test]
    fn byte_fallback_for_unknown_characters() {
        let parts = build_spm(&meta("llama", PIECES)).unwrap();
        assert_eq!(ids_of(&parts, "hé"), ["▁h", "<0xC3>", "<0xA9>"]);
        assert_eq!(ids_of(&parts, "🦀"), ["▁", "<0xF0>", "<0x9F>", "<0xA6>", "<0x80>"]);
        assert_eq!(
            ids_of(&parts, "hé 🦀!"),
            ["▁h", "<0xC3>", "<0xA9>", "▁", "<0xF0>", "<0x9F>", "<0xA6>", "<0x80>", "<0x21>"]
        );
    }

    #[test]
    fn spaces_become_metaspace() {
        let llama = build_spm(&meta("llama", PIECES)).unwrap();
        // Only the start of the text gets a `▁`; text already starting with a space none.
        assert_eq!(ids_of(&llama, "hello  world"), ["▁hello", "▁", "▁world"]);
        assert_eq!(ids_of(&llama, " hello"), ["▁hello"]);
        assert_eq!(ids_of(&llama, "  hello"), ["▁", "▁hello"]);
        let gemma = build_spm(&meta("gemma3", PIECES)).unwrap();
        assert_eq!(ids_of(&gemma, "hello world"), ["he", "llo", "▁world"]);
        assert_eq!(ids_of(&gemma, " hello"), ["▁hello"]);
        let phi3 = build_spm(&meta("phi3", PIECES)).unwrap();
        assert_eq!(ids_of(&phi3, " hello"), ["▁", "▁hello"]);
    }

    #[test]
    fn gemma_respells_whitespace_tokens() {
        let pieces: Vec<(&str, i64)> = PIECES.iter().copied().filter(|&(t, _)| t != "▁▁").chain([("  ", 4)]).collect();
        let parts = build_spm(&meta("gemma3", &pieces)).unwrap();
        let id = 3 + 256 + pieces.len() as u32 - 1;
        assert_eq!(parts.tokenizer.token_to_id("▁▁"), Some(id));
        assert_eq!(parts.tokenizer.token_to_id("  "), None);
        assert_eq!(ids_of(&parts, "  hello  world "), ["▁", "▁hello", "▁", "▁world", "▁"]);
        assert_eq!(decode(&parts, "  hello  world "), "  hello  world ");
        // Not respelled for other architectures.
        assert!(build_spm(&meta("llama", &pieces)).unwrap().tokenizer.token_to_id("  ").is_some());
    }

    #[test]
    fn control_and_user_tokens_match_whole() {
        let parts = build_spm(&meta("gemma3", PIECES)).unwrap();
        assert_eq!(
            ids_of(&parts, "<start_of_turn>hello<think> world<end_of_turn></s>"),
            ["<start_of_turn>", "he", "llo", "<think>", "▁world", "<end_of_turn>", "</s>"]
        );
        let llama = build_spm(&meta("llama", PIECES)).unwrap();
        assert_eq!(ids_of(&llama, "<s>hello"), ["<s>", "he", "llo"]);
        assert_eq!(ids_of(&llama, "<unk>"), ["<unk>"]);
        let t = &parts.tokenizer;
        let id = |s: &str| t.token_to_id(s).unwrap() as usize;
        // `<unk>` (type 2, unknown) is special by name.
        for special in ["<unk>", "<s>", "</s>", "<start_of_turn>", "<end_of_turn>"] {
            assert!(parts.special_ids[id(special)], "{special}");
        }
        for plain in ["<think>", "▁hello", "<0x41>"] {
            assert!(!parts.special_ids[id(plain)], "{plain}");
        }
    }

    #[test]
    fn decodes_as_transformers() {
        let cases = [
            ("hello world", ["hello world"; 3]),
            ("héllo  wörld\n", ["héllo  wörld\n"; 3]),
            (" hello", ["hello", " hello", " hello"]),
            (
                "<start_of_turn>user\nhi<end_of_turn>",
                [
                    "<start_of_turn>user\nhi<end_of_turn>",
                    "<start_of_turn>user\nhi<end_of_turn>",
                    "<start_of_turn> user\nhi<end_of_turn>",
                ],
            ),
            ("a\tb 🦀", ["a\tb 🦀"; 3]),
            ("", [""; 3]),
        ];
        for (k, arch) in ["llama", "gemma3", "phi3"].into_iter().enumerate() {
            let parts = build_spm(&meta(arch, PIECES)).unwrap();
            for (text, want) in &cases {
                assert_eq!(decode(&parts, text), want[k], "{arch}: {text:?}");
            }
        }
    }

    /// Ids of transformers 5.24 for the Gemma 3 270M GGUF's vocabulary, as Gemma
    /// (`gemma3`) and as LLaMA / Phi-3 files would carry it (see the fixture's note).
    #[test]
    fn matches_transformers_on_gemma3() {
        use crate::models::fetch::{ensure, GEMMA3_270M_Q4_K_M};
        let path = ensure(&GEMMA3_270M_Q4_K_M, &mut |_| {}).unwrap();
        let file = crate::ParameterFile::open(&path).unwrap();
        let fixture = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/gemma3-tokenizer.json");
        let fixture: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(fixture).unwrap()).unwrap();
        let variants = fixture["variants"].as_object().unwrap();
        assert_eq!(variants.len(), 4);
        let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
        for (name, variant) in variants {
            let mut m = file.metadata().clone();
            let arch = variant["architecture"].as_str().unwrap();
            m.insert("general.architecture".into(), MetaValue::Str(arch.into()));
            if variant["scores"] == "-index" {
                let n = m["tokenizer.ggml.tokens"].as_array().unwrap().len();
                let scores = (0..n).map(|i| MetaValue::Float(-(i as f64))).collect();
                m.insert("tokenizer.ggml.scores".into(), MetaValue::Array(scores));
            }
            // Two of them on a pool (merges derived in parallel), two on this thread.
            let on_pool = name == "gemma3" || name == "llama_tied";
            let start = std::time::Instant::now();
            let parts = if on_pool { pool.install(|| build_spm(&m)) } else { build_spm(&m) }.unwrap();
            let ms = start.elapsed().as_secs_f64() * 1e3;
            eprintln!("{name}: built the {arch} tokenizer in {ms:.0} ms{}", if on_pool { " on a pool" } else { "" });
            let tok = &parts.tokenizer;
            let ids = |v: &serde_json::Value| -> Vec<u32> {
                v.as_array().unwrap().iter().map(|i| i.as_u64().unwrap() as u32).collect()
            };
            let cases = variant["cases"].as_array().unwrap();
            assert!(cases.len() > 100);
            for case in cases {
                let text = case["text"].as_str().unwrap();
                let got = tok.encode_fast(text, false).unwrap().get_ids().to_vec();
                assert_eq!(got, ids(&case["ids"]), "{name}: {text:?}");
                let decoded = tok.decode(&got, false).unwrap();
                assert_eq!(decoded, case["decoded"].as_str().unwrap(), "{name}: decoding {text:?}");
            }
            let bos = m["tokenizer.ggml.bos_token_id"].as_u64().unwrap() as u32;
            for case in variant["with_bos"].as_array().unwrap() {
                let text = case["text"].as_str().unwrap();
                let mut got = vec![bos];
                got.extend_from_slice(tok.encode_fast(text, false).unwrap().get_ids());
                assert_eq!(got, ids(&case["ids"]), "{name} with BOS: {text:?}");
            }
            // Gemma: control tokens only (a few named ones are control tokens too).
            if name == "gemma3" {
                let types = m["tokenizer.ggml.token_type"].as_array().unwrap();
                for (i, t) in types.iter().enumerate() {
                    assert_eq!(parts.special_ids[i], t.as_i64() == Some(TOKEN_CONTROL), "token {i}");
                }
            }
        }
    }

    #[test]
    fn rejects_bad_metadata() {
        let mut m = meta("llama", PIECES);
        m.insert("tokenizer.ggml.model".into(), MetaValue::Str("gpt2".into()));
        assert!(build_spm(&m).is_err());
        let mut m = meta("llama", PIECES);
        m.remove("tokenizer.ggml.scores");
        assert!(build_spm(&m).is_err());
        // Gemma does not need scores.
        let mut m = meta("gemma3", PIECES);
        m.remove("tokenizer.ggml.scores");
        assert!(build_spm(&m).is_ok());
        let mut m = meta("llama", PIECES);
        m.insert("tokenizer.ggml.eos_token_id".into(), MetaValue::UInt(100_000));
        assert!(build_spm(&m).is_err());
    }
}
