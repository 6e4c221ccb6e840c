//! Decoder hyperparameters, read from a model file's metadata (never hard-coded for one
//! checkpoint), and the typed metadata look-ups the family files use to read them.

use std::collections::BTreeMap;

use crate::kernels::rope::RopeLayout;
use crate::params::MetaValue;
use crate::{Error, Result};

/// Hyperparameters of a decoder-only transformer, whatever its family.
#[derive(Clone, Debug, PartialEq)]
pub struct DecoderConfig {
    /// The family's name (`llama`, `qwen2`, ...), as in `general.architecture`.
    pub arch: String,
    pub vocab_size: usize,
    pub hidden: usize,
    pub ffn_hidden: usize,
    pub n_layers: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    /// Width of one attention head (not always hidden / heads: Qwen3, Gemma).
    pub head_dim: usize,
    /// Dimensions of each head that RoPE rotates (the rest pass through).
    pub rope_dims: usize,
    pub rope_theta: f32,
    /// Where the two values of each rotated pair sit (GGUF llama files: interleaved).
    pub rope_layout: RopeLayout,
    /// Linear RoPE scaling factor (1: none).
    pub rope_scale: f32,
    pub norm_eps: f32,
    /// Longest context the model was trained for.
    pub context_length: usize,
    /// Sliding-window attention span, when the model uses one.
    pub sliding_window: Option<usize>,
    /// Multiplier of the attention scores (default `1 / sqrt(head_dim)`).
    pub attn_scale: f32,
    /// Added to every stored RMSNorm weight (Gemma stores `w - 1`); 0 elsewhere.
    pub rms_offset: f32,
    /// Multiplier of the token embeddings (Gemma: sqrt(hidden)).
    pub embed_scale: Option<f32>,
    /// RoPE base of the sliding-window layers of models that mix local and global
    /// layers (Gemma 3); the global ones use `rope_theta`.
    pub local_rope_theta: f32,
}

impl DecoderConfig {
    /// Width of the key/value projections.
    pub fn kv_dim(&self) -> usize {
        self.n_kv_heads * self.head_dim
    }

    /// Width of the query projection (and of the attention output).
    pub fn q_dim(&self) -> usize {
        self.n_heads * self.head_dim
    }

    /// The keys every decoder family shares (`<arch>.embedding_length` and so on), with
    /// `rope_layout` the family's RoPE convention. Families adjust the result.
    pub fn from_gguf(meta: &Meta<'_>, rope_layout: RopeLayout) -> Result<DecoderConfig> {
        let hidden = meta.usize("embedding_length")?;
        let n_heads = meta.usize("attention.head_count")?;
        let n_kv_heads = meta.opt_usize("attention.head_count_kv")?.unwrap_or(n_heads);
        if n_heads == 0 || n_kv_heads == 0 || n_heads % n_kv_heads != 0 {
            return Err(Error::invalid(format!(
                "model metadata: {n_heads} heads are not a multiple of {n_kv_heads} kv heads"
            )));
        }
        let head_dim = match meta.opt_usize("attention.key_length")? {
            Some(d) => d,
            None if hidden % n_heads == 0 => hidden / n_heads,
            None => {
                return Err(Error::invalid(format!(
                    "model metadata: {n_heads} heads do not divide hidden size {hidden} and no {} is given",
                    meta.key("attention.key_length")
                )))
            }
        };
        if let Some(v) = meta.opt_usize("attention.value_length")? {
            if v != head_dim {
                return Err(Error::invalid(format!(
                    "model metadata: value heads of {v} differ from key heads of {head_dim} (not supported)"
                )));
            }
        }
        let vocab_size = match meta.opt_usize("vocab_size")? {
            Some(v) => v,
            None => match meta.map.get("tokenizer.ggml.tokens") {
                Some(MetaValue::Array(a)) => a.len(),
                _ => return Err(Error::invalid("model metadata: no vocabulary size")),
            },
        };
        let rope_dims = meta.opt_usize("rope.dimension_count")?.unwrap_or(head_dim);
        if rope_dims > head_dim || rope_dims % 2 != 0 || rope_dims == 0 {
            return Err(Error::invalid(format!(
                "model metadata: rope dims {rope_dims} do not fit head dim {head_dim}"
            )));
        }
        let rope_scale = match meta.opt_str("rope.scaling.type")? {
            None | Some("none") => 1.0,
            Some("linear") => meta.opt_f32("rope.scaling.factor")?.unwrap_or(1.0),
            Some(other) => {
                return Err(Error::invalid(format!(
                    "RoPE scaling '{other}' ({}) is not supported (supported: none, linear)",
                    meta.key("rope.scaling.type")
                )))
            }
        };
        let norm_eps = match meta.opt_f32("attention.layer_norm_rms_epsilon")? {
            Some(e) => e,
            None => meta.f32("attention.layer_norm_epsilon")?,
        };
        let cfg = DecoderConfig {
            arch: meta.arch.to_string(),
            vocab_size,
            hidden,
            ffn_hidden: meta.usize("feed_forward_length")?,
            n_layers: meta.usize("block_count")?,
            n_heads,
            n_kv_heads,
            head_dim,
            rope_dims,
            rope_theta: meta.opt_f32("rope.freq_base")?.unwrap_or(10_000.0),
            rope_layout,
            rope_scale,
            norm_eps,
            context_length: meta.usize("context_length")?,
            sliding_window: meta.opt_usize("attention.sliding_window")?.filter(|&w| w > 0),
            attn_scale: 1.0 / (head_dim as f32).sqrt(),
            rms_offset: 0.0,
            embed_scale: None,
            local_rope_theta: 10_000.0,
        };
        if cfg.n_layers == 0 || cfg.vocab_size == 0 || cfg.ffn_hidden == 0 || cfg.context_length == 0 || hidden == 0 {
            return Err(Error::invalid(format!("model metadata: degenerate config {cfg:?}")));
        }
        Ok(cfg)
    }
}

/// Typed look-ups of one architecture's metadata keys (`<arch>.<name>`), with errors
/// that name the key.
pub struct Meta<'a> {
    pub map: &'a BTreeMap<String, MetaValue>,
    pub arch: &'a str,
}

impl<'a> Meta<'a> {
    /// The metadata of a GGUF file, keyed by its `general.architecture`.
    pub fn new(map: &'a BTreeMap<String, MetaValue>) -> Result<Meta<'a>> {
        Ok(Meta { arch: get_str(map, "general.architecture")?, map })
    }

    /// `<arch>.<name>`.
    pub fn key(&self, name: &str) -> String {
        format!("{}.{name}", self.arch)
    }

    pub fn usize(&self, name: &str) -> Result<usize> {
        get_usize(self.map, &self.key(name))
    }

    pub fn f32(&self, name: &str) -> Result<f32> {
        get_f32(self.map, &self.key(name))
    }

    pub fn opt_usize(&self, name: &str) -> Result<Option<usize>> {
        let k = self.key(name);
        self.map.get(&k).map(|_| get_usize(self.map, &k)).transpose()
    }

    pub fn opt_f32(&self, name: &str) -> Result<Option<f32>> {
        let k = self.key(name);
        self.map.get(&k).map(|_| get_f32(self.map, &k)).transpose()
    }

    pub fn opt_str(&self, name: &str) -> Result<Option<&'a str>> {
        let k = self.key(name);
        self.map.get(&k).map(|_| get_str(self.map, &k)).transpose()
    }
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

    fn read(m: &BTreeMap<String, MetaValue>) -> Result<DecoderConfig> {
        DecoderConfig::from_gguf(&Meta::new(m)?, RopeLayout::Interleaved)
    }

    #[test]
    fn reads_every_hyperparameter_from_metadata() {
        let c = read(&smollm_like()).unwrap();
        assert_eq!((c.hidden, c.n_heads, c.n_kv_heads, c.head_dim, c.kv_dim()), (576, 9, 3, 64, 192));
        assert_eq!(
            (c.n_layers, c.ffn_hidden, c.vocab_size, c.context_length, c.rope_dims),
            (30, 1536, 49152, 8192, 64)
        );
        assert_eq!((c.rope_theta, c.norm_eps, c.rope_scale, c.sliding_window), (100000.0, 1e-5, 1.0, None));
        assert_eq!(c.attn_scale, 0.125);
        // Qwen3-style heads wider than hidden / heads.
        let mut m = smollm_like();
        m.insert("llama.attention.key_length".into(), MetaValue::UInt(128));
        let c = read(&m).unwrap();
        assert_eq!((c.head_dim, c.q_dim(), c.kv_dim()), (128, 1152, 384));
    }

    #[test]
    fn bad_metadata_is_named() {
        let mut m = smollm_like();
        m.remove("llama.block_count");
        assert!(read(&m).unwrap_err().to_string().contains("llama.block_count"));
        let mut m = smollm_like();
        m.insert("llama.attention.head_count_kv".into(), MetaValue::UInt(4));
        assert!(read(&m).unwrap_err().to_string().contains("kv heads"));
        let mut m = smollm_like();
        m.insert("llama.embedding_length".into(), MetaValue::Str("big".into()));
        assert!(read(&m).unwrap_err().to_string().contains("not a size"));
        let mut m = smollm_like();
        m.insert("llama.rope.scaling.type".into(), MetaValue::Str("yarn".into()));
        let e = read(&m).unwrap_err().to_string();
        assert!(e.contains("yarn") && e.contains("llama.rope.scaling.type"), "{e}");
        let mut m = smollm_like();
        m.insert("llama.attention.value_length".into(), MetaValue::UInt(32));
        assert!(read(&m).unwrap_err().to_string().contains("value heads"));
    }
}
