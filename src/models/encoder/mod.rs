//! Sentence embeddings: an encoder model ([`EmbeddingModel`]) loaded from a Hugging Face /
//! sentence-transformers folder (config.json, model.safetensors, tokenizer.json, modules.json,
//! the pooling config, sentence_bert_config.json), its tokenizer with truncation, and the
//! pooling and normalisation modules. Beside [`TextModel`](crate::models::TextModel), never
//! inside the decoder.

pub mod bert;
pub mod pooling;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use tokenizers::{TruncationParams, TruncationStrategy};

pub use bert::{BatchLayout, Bert, BertConfig, EncoderInput, HiddenStates};
pub use pooling::{Pooling, PoolingMode};

use crate::nn::fork;
use crate::params::ParameterFile;
use crate::task::{wait, wait_many, Task};
use crate::tensor::Tensor;
use crate::{Error, Result};

/// How the inputs of one call share the compute pool.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Batching {
    /// One pass over all inputs' rows back to back (no padding; each attends over its own
    /// rows). The default: fastest measured (BENCHMARKS.md).
    Packed,
    /// One pass with every input padded to the longest (padding keys masked).
    Padded,
    /// One forked task per input (`nn::fork` of the encoder), waited on together.
    Forked,
}

/// Rows in one pass at most; more inputs are cut into several passes.
const MAX_PASS_ROWS: usize = 8192;

/// One embedded input: its vector and how many tokens (after truncation) it had.
#[derive(Clone, Debug, PartialEq)]
pub struct Embedded {
    pub vector: Vec<f32>,
    pub tokens: usize,
}

/// A sentence-embedding model ready to use. Cheap to clone (weights are shared).
#[derive(Clone)]
pub struct EmbeddingModel {
    pub encoder: Bert,
    tokenizer: Arc<tokenizers::Tokenizer>,
    pub pooling: Pooling,
    /// Longest input in tokens (special tokens included); longer inputs are truncated.
    pub max_seq_length: usize,
    /// Lower-case texts before tokenizing (`do_lower_case` of sentence_bert_config.json).
    pub lowercase: bool,
    /// The special tokens the tokenizer puts around a text (`[CLS]` and `[SEP]` for BERT).
    pub specials: SpecialTokens,
    pub batching: Batching,
    pub path: PathBuf,
    pub load_time: Duration,
}

/// The special tokens a tokenizer adds before and after one text, read from what its
/// post-processor does to a probe text (so BERT's `[CLS] $A [SEP]`, RoBERTa's
/// `<s> $A </s>` or none at all are found the same way).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SpecialTokens {
    pub prefix: Vec<u32>,
    pub suffix: Vec<u32>,
}

impl SpecialTokens {
    fn of(tokenizer: &tokenizers::Tokenizer) -> Result<SpecialTokens> {
        let enc = tokenizer
            .encode("hello", true)
            .map_err(|e| Error::invalid(format!("cannot tokenize a probe text: {e}")))?;
        let (ids, special) = (enc.get_ids(), enc.get_special_tokens_mask());
        let Some(first) = special.iter().position(|&s| s == 0) else {
            return Ok(SpecialTokens::default());
        };
        let end = special.iter().rposition(|&s| s == 0).map_or(ids.len(), |i| i + 1);
        Ok(SpecialTokens { prefix: ids[..first].to_vec(), suffix: ids[end..].to_vec() })
    }

    /// Caller-given ids as the model expects them, at most `max_len` long (`max_len` is
    /// more than the special tokens). Ids that start with the prefix were made with special
    /// tokens (as `tokenizer(text)` makes them in transformers) and are kept as given, cut
    /// to `max_len` before a closing suffix; other ids get the prefix and suffix around
    /// their first `max_len - specials` ids, exactly as a text's tokens do.
    pub fn apply(&self, ids: &[u32], max_len: usize) -> Vec<u32> {
        let (pre, suf) = (&self.prefix[..], &self.suffix[..]);
        let given = pre.is_empty() || ids.starts_with(pre);
        if given && ids.len() <= max_len {
            return ids.to_vec();
        }
        let (body, suf) = if !given {
            (ids, suf)
        } else if !suf.is_empty() && ids.len() >= pre.len() + suf.len() && ids.ends_with(suf) {
            (&ids[pre.len()..ids.len() - suf.len()], suf)
        } else {
            // Given without a closing suffix (or there is none): a plain cut.
            return ids[..max_len].to_vec();
        };
        let keep = body.len().min(max_len.saturating_sub(pre.len() + suf.len()));
        [pre, &body[..keep], suf].concat()
    }
}

/// Whether `path` is a folder holding an encoder this module loads (config.json with a
/// supported `model_type`).
pub fn is_encoder_folder(path: &Path) -> bool {
    path.is_dir()
        && pooling::read_json(&path.join("config.json"))
            .ok()
            .and_then(|v| v.get("model_type").and_then(Value::as_str).map(|t| t == "bert"))
            .unwrap_or(false)
}

impl EmbeddingModel {
    /// Load a model folder: `config.json`, `model.safetensors` (mmap'd), `tokenizer.json`,
    /// and when present `modules.json` (+ the pooling config) and `sentence_bert_config.json`.
    pub fn load(dir: impl AsRef<Path>) -> Result<EmbeddingModel> {
        let t0 = Instant::now();
        let dir = dir.as_ref();
        if !dir.is_dir() {
            return Err(Error::invalid(format!("{} is not a model folder", dir.display())));
        }
        let cfg = BertConfig::from_json(&pooling::read_json(&dir.join("config.json"))?)
            .map_err(|e| Error::format(dir.display().to_string(), e.to_string()))?;
        let weights = dir.join("model.safetensors");
        if !weights.exists() {
            return Err(Error::invalid(format!(
                "{}: no model.safetensors (other weight formats are not supported)",
                dir.display()
            )));
        }
        let st = dir.join("sentence_bert_config.json");
        let st = if st.exists() { Some(pooling::read_json(&st)?) } else { None };
        let max_seq_length = st
            .as_ref()
            .and_then(|v| v.get("max_seq_length"))
            .and_then(Value::as_u64)
            .map_or(cfg.max_positions, |n| (n as usize).min(cfg.max_positions));
        if max_seq_length < 2 {
            return Err(Error::invalid(format!("{}: max_seq_length {max_seq_length} is too short", dir.display())));
        }
        let lowercase = st.as_ref().and_then(|v| v.get("do_lower_case")).and_then(Value::as_bool).unwrap_or(false);
        let tok_path = dir.join("tokenizer.json");
        let mut tokenizer = tokenizers::Tokenizer::from_file(&tok_path)
            .map_err(|e| Error::format(tok_path.display().to_string(), format!("cannot read the tokenizer: {e}")))?;
        tokenizer.with_padding(None);
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: max_seq_length,
                strategy: TruncationStrategy::LongestFirst,
                ..Default::default()
            }))
            .map_err(|e| Error::format(tok_path.display().to_string(), format!("cannot set truncation: {e}")))?;
        let specials =
            SpecialTokens::of(&tokenizer).map_err(|e| Error::format(tok_path.display().to_string(), e.to_string()))?;
        if specials.prefix.len() + specials.suffix.len() >= max_seq_length {
            return Err(Error::invalid(format!(
                "{}: max_seq_length {max_seq_length} leaves no room beside the special tokens",
                dir.display()
            )));
        }
        let pooling = Pooling::from_folder(dir)?;
        // Integer buffers (`position_ids`) are not weights: checked, not loaded.
        let file = ParameterFile::open_safetensors_skipping(&weights, &|n| n.ends_with("position_ids"))?;
        let encoder = Bert::from_file(&file, cfg)?;
        Ok(EmbeddingModel {
            encoder,
            tokenizer: Arc::new(tokenizer),
            pooling,
            max_seq_length,
            lowercase,
            specials,
            batching: Batching::Packed,
            path: dir.to_path_buf(),
            load_time: t0.elapsed(),
        })
    }

    /// Width of the embeddings.
    pub fn dim(&self) -> usize {
        self.pooling.dim(self.encoder.config().hidden)
    }

    /// Token ids of `text` as the model sees it: special tokens added, truncated to
    /// `max_seq_length`.
    pub fn tokenize(&self, text: &str) -> Result<Vec<u32>> {
        let lowered;
        let text = if self.lowercase {
            lowered = text.to_lowercase();
            &lowered
        } else {
            text
        };
        let enc = self.tokenizer.encode(text, true).map_err(|e| Error::invalid(format!("cannot tokenize: {e}")))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Token ids given by a caller (`input` as ids in `/v1/embeddings`), checked (not
    /// empty, inside the vocabulary) and made into what [`tokenize`](Self::tokenize) gives
    /// for the same text: ids without the tokenizer's special tokens get them (`[CLS] ...
    /// [SEP]` for BERT), and all are cut to `max_seq_length` keeping a closing `[SEP]`
    /// (see [`SpecialTokens::apply`]). So ids from `tokenizer(text)` in transformers, with or
    /// without `add_special_tokens`, embed as the text does. (llama.cpp's server and HF
    /// text-embeddings-inference take ids as given; an encoder fed no `[CLS]`/`[SEP]` gives
    /// vectors off the ones its text gives, which no caller wants.)
    pub fn check_ids(&self, ids: &[u32]) -> Result<Vec<u32>> {
        let vocab = self.encoder.config().vocab_size;
        if ids.is_empty() {
            return Err(Error::invalid("an input of token ids is empty"));
        }
        if let Some(&bad) = ids.iter().find(|&&i| i as usize >= vocab) {
            return Err(Error::invalid(format!("token id {bad} is outside the vocabulary (0..{vocab})")));
        }
        Ok(self.specials.apply(ids, self.max_seq_length))
    }

    /// Embed texts (all at once, as `self.batching` says).
    pub fn embed(&self, texts: &[&str]) -> Result<Vec<Embedded>> {
        let ids = texts.iter().map(|t| self.tokenize(t)).collect::<Result<Vec<_>>>()?;
        self.embed_ids(&ids)
    }

    /// Embed sequences of token ids (special tokens included, at most `max_seq_length`).
    pub fn embed_ids(&self, seqs: &[Vec<u32>]) -> Result<Vec<Embedded>> {
        self.embed_ids_with(seqs, self.batching)
    }

    /// [`embed_ids`](Self::embed_ids) with a chosen batching (benchmarks compare them).
    pub fn embed_ids_with(&self, seqs: &[Vec<u32>], batching: Batching) -> Result<Vec<Embedded>> {
        for (i, s) in seqs.iter().enumerate() {
            if s.len() > self.max_seq_length {
                return Err(Error::invalid(format!(
                    "input {i} has {} tokens, more than max_seq_length {}",
                    s.len(),
                    self.max_seq_length
                )));
            }
        }
        let hidden = self.encoder.config().hidden;
        let vectors = match batching {
            Batching::Forked => {
                let tasks = seqs
                    .iter()
                    .map(|s| {
                        let ids: Vec<i32> = s.iter().map(|&v| v as i32).collect();
                        Ok(fork(&self.encoder, vec![Tensor::from_vec(ids, &[s.len()])?]))
                    })
                    .collect::<Result<Vec<_>>>()?;
                let outs = wait_many(tasks)?;
                outs.iter()
                    .map(|o| Ok(self.pooling.apply(o[0].as_slice::<f32>()?, hidden)))
                    .collect::<Result<Vec<_>>>()?
            }
            Batching::Packed | Batching::Padded => {
                let layout = if batching == Batching::Padded { BatchLayout::Padded } else { BatchLayout::Packed };
                let (me, seqs) = (self.clone(), seqs.to_vec());
                wait(Task::lazy("embed batch", move || me.run_passes(&seqs, layout)))?
            }
        };
        Ok(vectors.into_iter().zip(seqs).map(|(vector, s)| Embedded { vector, tokens: s.len() }).collect())
    }

    /// Consecutive passes of at most [`MAX_PASS_ROWS`] rows; pooled vectors in input order.
    fn run_passes(&self, seqs: &[Vec<u32>], layout: BatchLayout) -> Result<Vec<Vec<f32>>> {
        let mut out = Vec::with_capacity(seqs.len());
        let mut start = 0;
        while start < seqs.len() {
            let (mut end, mut rows, mut longest) = (start, 0, 0);
            while end < seqs.len() {
                let l = seqs[end].len();
                let next = if layout == BatchLayout::Padded { longest.max(l) * (end - start + 1) } else { rows + l };
                if end > start && next > MAX_PASS_ROWS {
                    break;
                }
                (rows, longest, end) = (rows + l, longest.max(l), end + 1);
            }
            let inputs: Vec<EncoderInput<'_>> =
                seqs[start..end].iter().map(|s| EncoderInput { ids: s, type_ids: None }).collect();
            let hs = self.encoder.encode(&inputs, layout)?;
            out.extend((0..inputs.len()).map(|i| self.pooling.apply(hs.sequence(i), hs.hidden)));
            start = end;
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::SpecialTokens;

    #[test]
    fn special_tokens_are_added_once_and_survive_truncation() {
        let bert = SpecialTokens { prefix: vec![101], suffix: vec![102] };
        assert_eq!(bert.apply(&[7, 8], 6), [101, 7, 8, 102], "bare ids get [CLS] [SEP]");
        assert_eq!(bert.apply(&[101, 7, 8, 102], 6), [101, 7, 8, 102], "as given");
        assert_eq!(bert.apply(&[101, 7, 8], 6), [101, 7, 8], "given without [SEP]: kept");
        assert_eq!(bert.apply(&[1, 2, 3, 4, 5, 6, 7], 5), [101, 1, 2, 3, 102], "bare and long");
        assert_eq!(bert.apply(&[101, 1, 2, 3, 4, 5, 102], 5), [101, 1, 2, 3, 102], "given and long");
        assert_eq!(bert.apply(&[101, 1, 2, 3, 4, 5], 5), [101, 1, 2, 3, 4], "given, no [SEP], long");
        let none = SpecialTokens::default();
        assert_eq!(none.apply(&[1, 2, 3], 2), [1, 2]);
        let roberta = SpecialTokens { prefix: vec![0], suffix: vec![2, 2] };
        assert_eq!(roberta.apply(&[5, 6, 7], 5), [0, 5, 6, 2, 2]);
    }
}
