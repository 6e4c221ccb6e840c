//! LLaMA-family hyperparameters, read from a model file's metadata (never hard-coded
//! for one checkpoint), and the typed metadata look-ups they need.

use std::collections::BTreeMap;

use crate::params::MetaValue;
use crate::{Error, Result};

/// Hyperparameters of a LLaMA-family decoder.
#[derive(Clone, Debug, PartialEq)]
pub struct LlamaConfig {
    pub vocab_size: usize,
    pub hidden: usize,
    pub ffn_hidden: usize,
    pub n_layers: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    /// Dimensions of each head that RoPE rotates (the rest pass through).
    pub rope_dims: usize,
    pub rope_theta: f32,
    pub rms_eps: f32,
    /// Longest context the model was trained for.
    pub context_length: usize,
}

pub(crate) fn get<'a>(m: &'a BTreeMap<String, MetaValue>, key: &str) -> Result<&'a MetaValue> {
    m.get(key).ok_or_else(|| Error::invalid(format!("model metadata: missing key '{key}'")))
}

pub(crate) fn get_usize(m: &BTreeMap<String, MetaValue>, key: &str) -> Result<usize> {
    let v = get(m, key)?;
    v.as_u64()
        .and_then(|u| usize::try_from(u).ok())
        .ok_or_else(|| Error::invalid(format!("model metadata: '{key}' is a {}, not a size", v.type_name())))
}

pub(crate) fn get_f32(m: &BTreeMap<String, MetaValue>, key: &str) -> Result<f32> {
    let v = get(m, key)?;
    v.as_f64()
        .map(|f| f as f32)
        .ok_or_else(|| Error::invalid(format!("model metadata: '{key}' is a {}, not a number", v.type_name())))
}

pub(crate) fn get_str<'a>(m: &'a BTreeMap<String, MetaValue>, key: &str) -> Result<&'a str> {
    let v = get(m, key)?;
    v.as_str().ok_or_else(|| Error::invalid(format!("model metadata: '{key}' is a {}, not a string", v.type_name())))
}

impl LlamaConfig {
    /// Read from GGUF metadata (`general.architecture` and `<arch>.*` keys).
    pub fn from_gguf_metadata(m: &BTreeMap<String, MetaValue>) -> Result<LlamaConfig> {
        let arch = get_str(m, "general.architecture")?;
        if arch != "llama" {
            return Err(Error::invalid(format!("architecture '{arch}' is not supported (supported: llama)")));
        }
        let k = |s: &str| format!("{arch}.{s}");
        let hidden = get_usize(m, &k("embedding_length"))?;
        let n_heads = get_usize(m, &k("attention.head_count"))?;
        let n_kv_heads = match m.get(&k("attention.head_count_kv")) {
            Some(_) => get_usize(m, &k("attention.head_count_kv"))?,
            None => n_heads,
        };
        if n_heads == 0 || hidden % n_heads != 0 || n_kv_heads == 0 || n_heads % n_kv_heads != 0 {
            return Err(Error::invalid(format!(
                "model metadata: {n_heads} heads / {n_kv_heads} kv heads do not divide hidden size {hidden}"
            )));
        }
        let head_dim = hidden / n_heads;
        let vocab_size = match m.get(&k("vocab_size")) {
            Some(_) => get_usize(m, &k("vocab_size"))?,
            None => match get(m, "tokenizer.ggml.tokens")? {
                MetaValue::Array(a) => a.len(),
                _ => return Err(Error::invalid("model metadata: no vocabulary size")),
            },
        };
        let rope_dims = match m.get(&k("rope.dimension_count")) {
            Some(_) => get_usize(m, &k("rope.dimension_count"))?,
            None => head_dim,
        };
        if rope_dims > head_dim || rope_dims % 2 != 0 {
            return Err(Error::invalid(format!(
                "model metadata: rope dims {rope_dims} do not fit head dim {head_dim}"
            )));
        }
        let cfg = LlamaConfig {
            vocab_size,
            hidden,
            ffn_hidden: get_usize(m, &k("feed_forward_length"))?,
            n_layers: get_usize(m, &k("block_count"))?,
            n_heads,
            n_kv_heads,
            head_dim,
            rope_dims,
            rope_theta: match m.get(&k("rope.freq_base")) {
                Some(_) => get_f32(m, &k("rope.freq_base"))?,
                None => 10_000.0,
            },
            rms_eps: get_f32(m, &k("attention.layer_norm_rms_epsilon"))?,
            context_length: get_usize(m, &k("context_length"))?,
        };
        if cfg.n_layers == 0 || cfg.vocab_size == 0 || cfg.ffn_hidden == 0 || cfg.context_length == 0 {
            return Err(Error::invalid(format!("model metadata: degenerate config {cfg:?}")));
        }
        Ok(cfg)
    }

    /// Width of the key/value projections.
    pub fn kv_dim(&self) -> usize {
        self.n_kv_heads * self.head_dim
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn smollm_like() -> BTreeMap<String, MetaValue> {
        let mut m = BTreeMap::new();
        let mut put = |k: &str, v: MetaValue| {
            m.insert(k.to_string(), v);
        };
        put("general.architecture", MetaValue::Str("llama".into()));
        put("llama.embedding_length", MetaValue::UInt(576));
        put("llama.attention.head_count", MetaValue::UInt(9));
        put("llama.attention.head_count_kv", MetaValue::UInt(3));
        put("llama.vocab_size", MetaValue::UInt(49152));
        put("llama.feed_forward_length", MetaValue::UInt(1536));
        put("llama.block_count", MetaValue::UInt(30));
        put("llama.rope.freq_base", MetaValue::Float(100000.0));
        put("llama.attention.layer_norm_rms_epsilon", MetaValue::Float(1e-5));
        put("llama.context_length", MetaValue::UInt(8192));
        m
    }

    #[test]
    fn reads_every_hyperparameter_from_metadata() {
        let c = LlamaConfig::from_gguf_metadata(&smollm_like()).unwrap();
        assert_eq!((c.hidden, c.n_heads, c.n_kv_heads, c.head_dim, c.kv_dim()), (576, 9, 3, 64, 192));
        assert_eq!(
            (c.n_layers, c.ffn_hidden, c.vocab_size, c.context_length, c.rope_dims),
            (30, 1536, 49152, 8192, 64)
        );
        assert_eq!((c.rope_theta, c.rms_eps), (100000.0, 1e-5));
    }

    #[test]
    fn bad_metadata_is_named() {
        let mut m = smollm_like();
        m.remove("llama.block_count");
        assert!(LlamaConfig::from_gguf_metadata(&m).unwrap_err().to_string().contains("llama.block_count"));
        let mut m = smollm_like();
        m.insert("llama.attention.head_count_kv".into(), MetaValue::UInt(4));
        assert!(LlamaConfig::from_gguf_metadata(&m).unwrap_err().to_string().contains("kv heads"));
        let mut m = smollm_like();
        m.insert("llama.embedding_length".into(), MetaValue::Str("big".into()));
        assert!(LlamaConfig::from_gguf_metadata(&m).unwrap_err().to_string().contains("not a size"));
        let mut m = smollm_like();
        m.insert("general.architecture".into(), MetaValue::Str("mamba".into()));
        assert!(LlamaConfig::from_gguf_metadata(&m).unwrap_err().to_string().contains("mamba"));
    }
}
