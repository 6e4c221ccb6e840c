//! The BERT encoder family (BERT, MiniLM, BGE, E5 folders): word + absolute position +
//! token type embeddings, post-norm blocks of bidirectional attention and a GELU MLP, all
//! on the shared `Linear` and `Norm` layers. Parameters carry the checkpoint's own names
//! (`encoder.layer.0.attention.self.query.weight`), so loading is a walk. Knows nothing of
//! tokenizers or pooling (`encoder::EmbeddingModel` does).

use std::sync::{Arc, RwLock};

use rayon::prelude::*;
use serde_json::Value;

use crate::kernels::attention::{attention, AttentionShape};
use crate::kernels::elementwise::{gelu_erf_in_place, gelu_tanh_one};
use crate::kernels::half_matmul::HalfKind;
use crate::models::layers::{Norm, NormKind};
use crate::nn::{self, Accepts, Module, ModuleList, Param, Registry};
use crate::params::ParameterFile;
use crate::tensor::ops::MatmulPrecision;
use crate::tensor::{aligned_half, half_kind, half_slice, DType, Tensor, WeightOptions};
use crate::{Error, Result};

/// The MLP's activation (`hidden_act`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EncoderActivation {
    /// `"gelu"`: exact, with the Gaussian CDF (erf).
    Gelu,
    /// `"gelu_new"`, `"gelu_pytorch_tanh"`: the tanh approximation.
    GeluTanh,
    Relu,
}

/// Hyperparameters of a BERT encoder, from its `config.json`.
#[derive(Clone, Debug, PartialEq)]
pub struct BertConfig {
    pub vocab_size: usize,
    pub hidden: usize,
    pub n_layers: usize,
    pub n_heads: usize,
    pub ffn_hidden: usize,
    /// Rows of the absolute position table: the longest input.
    pub max_positions: usize,
    pub type_vocab_size: usize,
    pub norm_eps: f32,
    pub act: EncoderActivation,
    pub pad_token_id: u32,
}

impl BertConfig {
    /// Read from a parsed `config.json`; errors name the key.
    pub fn from_json(v: &Value) -> Result<BertConfig> {
        let num = |k: &str| -> Result<usize> {
            v.get(k)
                .and_then(Value::as_u64)
                .map(|n| n as usize)
                .ok_or_else(|| Error::invalid(format!("config.json: '{k}' is missing or not a whole number")))
        };
        let model_type = v.get("model_type").and_then(Value::as_str).unwrap_or("");
        if model_type != "bert" {
            return Err(Error::invalid(format!(
                "config.json: model_type '{model_type}' is not an encoder this engine runs (supported: bert)"
            )));
        }
        if let Some(p) = v.get("position_embedding_type").and_then(Value::as_str) {
            if p != "absolute" {
                return Err(Error::invalid(format!(
                    "config.json: position_embedding_type '{p}' is not supported (only 'absolute')"
                )));
            }
        }
        let act = match v.get("hidden_act").and_then(Value::as_str).unwrap_or("gelu") {
            "gelu" => EncoderActivation::Gelu,
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => EncoderActivation::GeluTanh,
            "relu" => EncoderActivation::Relu,
            other => return Err(Error::invalid(format!("config.json: hidden_act '{other}' is not supported"))),
        };
        let cfg = BertConfig {
            vocab_size: num("vocab_size")?,
            hidden: num("hidden_size")?,
            n_layers: num("num_hidden_layers")?,
            n_heads: num("num_attention_heads")?,
            ffn_hidden: num("intermediate_size")?,
            max_positions: num("max_position_embeddings")?,
            type_vocab_size: v.get("type_vocab_size").and_then(Value::as_u64).unwrap_or(2) as usize,
            norm_eps: v.get("layer_norm_eps").and_then(Value::as_f64).unwrap_or(1e-12) as f32,
            act,
            pad_token_id: v.get("pad_token_id").and_then(Value::as_u64).unwrap_or(0) as u32,
        };
        if cfg.n_heads == 0 || cfg.hidden == 0 || !cfg.hidden.is_multiple_of(cfg.n_heads) {
            return Err(Error::invalid(format!(
                "config.json: hidden_size {} is not a multiple of num_attention_heads {}",
                cfg.hidden, cfg.n_heads
            )));
        }
        if cfg.type_vocab_size == 0 || cfg.vocab_size == 0 || cfg.max_positions == 0 {
            return Err(Error::invalid(
                "config.json: vocab_size, type_vocab_size and max_position_embeddings must be at least 1",
            ));
        }
        Ok(cfg)
    }

    pub fn head_dim(&self) -> usize {
        self.hidden / self.n_heads
    }
}

/// One input sequence: token ids and (optionally) their token type ids (0 when absent).
#[derive(Clone, Copy, Debug)]
pub struct EncoderInput<'a> {
    pub ids: &'a [u32],
    pub type_ids: Option<&'a [u32]>,
}

/// How several sequences share one pass.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BatchLayout {
    /// Rows of all sequences back to back; each attends over its own rows only.
    Packed,
    /// Every sequence padded to the longest; padding keys are masked out.
    Padded,
}

/// Where one sequence's rows sit in a pass: `rows` rows from `row0`, the first `len` real.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    pub row0: usize,
    pub rows: usize,
    pub len: usize,
}

/// The last hidden states of a pass: `[rows, hidden]` and each sequence's segment.
pub struct HiddenStates {
    pub data: Vec<f32>,
    pub hidden: usize,
    pub segments: Vec<Segment>,
}

impl HiddenStates {
    /// The real (unpadded) rows of sequence `i`, `[len, hidden]`.
    pub fn sequence(&self, i: usize) -> &[f32] {
        let s = self.segments[i];
        &self.data[s.row0 * self.hidden..(s.row0 + s.len) * self.hidden]
    }
}

/// One post-norm encoder block: `x = LN(x + attn(x))`, `x = LN(x + mlp(x))`.
#[derive(Clone)]
pub struct EncoderLayer {
    /// query | key | value with their biases, one matmul.
    pub qkv: nn::Linear,
    pub attn_output: nn::Linear,
    pub attn_norm: Norm,
    pub intermediate: nn::Linear,
    pub output: nn::Linear,
    pub output_norm: Norm,
}

impl EncoderLayer {
    fn new(reg: &Registry, cfg: &BertConfig) -> EncoderLayer {
        let (h, f) = (cfg.hidden, cfg.ffn_hidden);
        let attn = reg.child("attention");
        let this = attn.child("self");
        let (q, k, v) = (this.child("query"), this.child("key"), this.child("value"));
        let out = attn.child("output");
        EncoderLayer {
            qkv: nn::Linear::stacked(&this.child("qkv"), h, &[(&q, h), (&k, h), (&v, h)], true),
            attn_output: nn::Linear::new(&out.child("dense"), h, h),
            attn_norm: Norm::new(&out.child("LayerNorm"), h, cfg.norm_eps, NormKind::Layer),
            intermediate: nn::Linear::new(&reg.child("intermediate").child("dense"), h, f),
            output: nn::Linear::new(&reg.child("output").child("dense"), f, h),
            output_norm: Norm::new(&reg.child("output").child("LayerNorm"), h, cfg.norm_eps, NormKind::Layer),
        }
    }

    fn prepare(&self) -> Result<()> {
        for l in [&self.qkv, &self.attn_output, &self.intermediate, &self.output] {
            l.prepare(WeightOptions::default())?;
        }
        self.attn_norm.prepare()?;
        self.output_norm.prepare()
    }
}

/// The embedding tables as f32 (the file's own memory when it is f32 already), but for a
/// word table stored in f16/bf16, which stays so.
struct Tables {
    word: Tensor,
    position: Tensor,
    token_type: Tensor,
}

/// A BERT encoder. Cheap to clone (weights are shared), so it can be forked.
#[derive(Clone)]
pub struct Bert {
    reg: Registry,
    cfg: Arc<BertConfig>,
    word: Param,
    position: Param,
    token_type: Param,
    embed_norm: Norm,
    pub layers: ModuleList<EncoderLayer>,
    tables: Arc<RwLock<Option<Arc<Tables>>>>,
}

impl Bert {
    /// The module tree under `root` (`""`, or `"bert"` for checkpoints saved with a head).
    pub fn new(root: &str, cfg: BertConfig) -> Bert {
        let reg = Registry::new(root);
        let emb = reg.child("embeddings");
        let (h, float) = (cfg.hidden, Accepts::Float);
        Bert {
            word: emb.child("word_embeddings").param("weight", &[cfg.vocab_size, h], float),
            position: emb.child("position_embeddings").param("weight", &[cfg.max_positions, h], float),
            token_type: emb.child("token_type_embeddings").param("weight", &[cfg.type_vocab_size, h], float),
            embed_norm: Norm::new(&emb.child("LayerNorm"), h, cfg.norm_eps, NormKind::Layer),
            layers: ModuleList::new(&reg.child("encoder").child("layer"), cfg.n_layers, |r, _| {
                EncoderLayer::new(r, &cfg)
            }),
            cfg: Arc::new(cfg),
            tables: Default::default(),
            reg,
        }
    }

    /// Build from a loaded safetensors file: finds the root (`bert.` prefix or none),
    /// loads every declared parameter (errors list all problems) and prepares the weights.
    /// Tensors an encoder does not use (the pooler, `position_ids`, a pre-training head)
    /// are left in the file.
    pub fn from_file(file: &ParameterFile, cfg: BertConfig) -> Result<Bert> {
        let root = if file.contains("bert.embeddings.word_embeddings.weight") { "bert" } else { "" };
        let bert = Bert::new(root, cfg);
        let prefix = if root.is_empty() { String::new() } else { format!("{root}.") };
        let mut used = ParameterFile::create();
        for (name, t) in file.iter() {
            let Some(rest) = name.strip_prefix(&prefix) else { continue };
            if rest.starts_with("embeddings.") && !rest.ends_with("position_ids") || rest.starts_with("encoder.") {
                used.push(name, t.clone())?;
            }
        }
        bert.load(&used)?;
        bert.prepare()?;
        Ok(bert)
    }

    pub fn config(&self) -> &BertConfig {
        &self.cfg
    }

    /// Make the loaded weights compute-ready (called by `from_file`).
    pub fn prepare(&self) -> Result<()> {
        let f32_table = |p: &Param| -> Result<Tensor> {
            let t = p.get()?;
            if t.dtype() == DType::F32 && t.is_contiguous() {
                Ok(t)
            } else {
                Tensor::from_vec(t.to_f32_vec()?, t.dims())
            }
        };
        // The word table is most of a small encoder's weights: an f16/bf16 one stays as
        // stored and its rows are widened as they are looked up.
        let word = self.word.get()?;
        let word = if half_kind(word.dtype()).is_some() { aligned_half(&word)? } else { f32_table(&self.word)? };
        let tables = Tables { word, position: f32_table(&self.position)?, token_type: f32_table(&self.token_type)? };
        self.embed_norm.prepare()?;
        for l in &self.layers {
            l.prepare()?;
        }
        *self.tables.write().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(tables));
        Ok(())
    }

    fn tables(&self) -> Result<Arc<Tables>> {
        self.tables
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .ok_or_else(|| Error::invalid(format!("encoder '{}' is not prepared (load it first)", self.reg.path())))
    }

    /// Check one input: not empty, no longer than the position table, ids in range.
    fn check(&self, i: usize, s: &EncoderInput<'_>) -> Result<()> {
        let c = &self.cfg;
        if s.ids.is_empty() {
            return Err(Error::invalid(format!("encoder input {i} has no tokens")));
        }
        if s.ids.len() > c.max_positions {
            return Err(Error::invalid(format!(
                "encoder input {i} has {} tokens, more than the model's {} positions",
                s.ids.len(),
                c.max_positions
            )));
        }
        if let Some(&bad) = s.ids.iter().find(|&&id| id as usize >= c.vocab_size) {
            return Err(Error::invalid(format!(
                "encoder input {i}: token id {bad} is outside the vocabulary (0..{})",
                c.vocab_size
            )));
        }
        if let Some(t) = s.type_ids {
            if t.len() != s.ids.len() {
                return Err(Error::invalid(format!(
                    "encoder input {i}: {} token type ids for {} tokens",
                    t.len(),
                    s.ids.len()
                )));
            }
            if let Some(&bad) = t.iter().find(|&&x| x as usize >= c.type_vocab_size) {
                return Err(Error::invalid(format!(
                    "encoder input {i}: token type id {bad} is outside 0..{}",
                    c.type_vocab_size
                )));
            }
        }
        Ok(())
    }

    /// Run all `inputs` through the encoder in one pass laid out as `layout`.
    pub fn encode(&self, inputs: &[EncoderInput<'_>], layout: BatchLayout) -> Result<HiddenStates> {
        for (i, s) in inputs.iter().enumerate() {
            self.check(i, s)?;
        }
        let c = &*self.cfg;
        let (h, f) = (c.hidden, c.ffn_hidden);
        let longest = inputs.iter().map(|s| s.ids.len()).max().unwrap_or(0);
        let mut segments = Vec::with_capacity(inputs.len());
        let mut t = 0;
        for s in inputs {
            let rows = if layout == BatchLayout::Padded { longest } else { s.ids.len() };
            segments.push(Segment { row0: t, rows, len: s.ids.len() });
            t += rows;
        }
        let mut x = vec![0f32; t * h];
        let mut y = vec![0f32; t * h];
        self.embed(inputs, &segments, &mut y)?;
        self.embed_norm.apply(&y, &mut x)?;
        let mut qkv = vec![0f32; t * 3 * h];
        let mut ctx = vec![0f32; t * h];
        let mut ffn = vec![0f32; t * f];
        let prec = MatmulPrecision::default();
        for layer in &self.layers {
            layer.qkv.matmul_into(&x, t, &mut qkv, false, prec)?;
            self.attend(&qkv, &segments, &mut ctx);
            y.copy_from_slice(&x);
            layer.attn_output.matmul_into(&ctx, t, &mut y, true, prec)?;
            layer.attn_norm.apply(&y, &mut x)?;
            layer.intermediate.matmul_into(&x, t, &mut ffn, false, prec)?;
            activate(c.act, &mut ffn);
            y.copy_from_slice(&x);
            layer.output.matmul_into(&ffn, t, &mut y, true, prec)?;
            layer.output_norm.apply(&y, &mut x)?;
        }
        Ok(HiddenStates { data: x, hidden: h, segments })
    }

    /// Word + position + token type rows into `out` (padding rows: the pad token).
    fn embed(&self, inputs: &[EncoderInput<'_>], segments: &[Segment], out: &mut [f32]) -> Result<()> {
        let tables = self.tables()?;
        let (pos, ty) = (tables.position.as_slice::<f32>()?, tables.token_type.as_slice::<f32>()?);
        let word: Result<(Option<HalfKind>, &[u16], &[f32])> = match half_kind(tables.word.dtype()) {
            Some(_) => half_slice(&tables.word).map(|(k, d)| (Some(k), d, &[][..])),
            None => tables.word.as_slice::<f32>().map(|w| (None, &[][..], w)),
        };
        let (half, word16, word32) = word?;
        let h = self.cfg.hidden;
        let mut widened = vec![0f32; if half.is_some() { h } else { 0 }];
        for (s, seg) in inputs.iter().zip(segments) {
            for p in 0..seg.rows {
                let (id, tt) = if p < seg.len {
                    (s.ids[p] as usize, s.type_ids.map_or(0, |t| t[p] as usize))
                } else {
                    (self.cfg.pad_token_id as usize % self.cfg.vocab_size, 0)
                };
                let row = &mut out[(seg.row0 + p) * h..][..h];
                let w = match half {
                    Some(kind) => {
                        kind.widen(&word16[id * h..][..h], &mut widened);
                        &widened[..]
                    }
                    None => &word32[id * h..][..h],
                };
                let (q, e) = (&pos[p * h..][..h], &ty[tt * h..][..h]);
                for (((o, &a), &b), &c) in row.iter_mut().zip(w).zip(q).zip(e) {
                    *o = a + b + c;
                }
            }
        }
        Ok(())
    }

    /// Each sequence's heads attend over its own real rows; sequences run in parallel.
    fn attend(&self, qkv: &[f32], segments: &[Segment], ctx: &mut [f32]) {
        let (h, heads, d) = (self.cfg.hidden, self.cfg.n_heads, self.cfg.head_dim());
        let mut outs: Vec<(Segment, &mut [f32])> = Vec::with_capacity(segments.len());
        let mut rest = ctx;
        for &s in segments {
            let (mine, tail) = rest.split_at_mut(s.rows * h);
            outs.push((s, mine));
            rest = tail;
        }
        outs.into_par_iter().with_max_len(1).for_each(|(s, out)| {
            let rows = &qkv[s.row0 * 3 * h..(s.row0 + s.rows) * 3 * h];
            let mut q = Vec::with_capacity(s.rows * h);
            let mut k = Vec::with_capacity(s.len * h);
            let mut v = Vec::with_capacity(s.len * h);
            for (r, row) in rows.chunks_exact(3 * h).enumerate() {
                q.extend_from_slice(&row[..h]);
                if r < s.len {
                    k.extend_from_slice(&row[h..2 * h]);
                    v.extend_from_slice(&row[2 * h..]);
                }
            }
            attention(AttentionShape::bidirectional(s.rows, heads, d, s.len), &q, &k, &v, out);
        });
    }
}

/// The MLP's activation in place, split over the pool.
fn activate(act: EncoderActivation, x: &mut [f32]) {
    match act {
        EncoderActivation::Gelu => gelu_erf_in_place(x),
        EncoderActivation::GeluTanh => {
            x.par_chunks_mut(4096).for_each(|c| c.iter_mut().for_each(|v| *v = gelu_tanh_one(*v)))
        }
        EncoderActivation::Relu => x.par_chunks_mut(4096).for_each(|c| c.iter_mut().for_each(|v| *v = v.max(0.0))),
    }
}

impl Module for Bert {
    fn registry(&self) -> &Registry {
        &self.reg
    }

    /// Inputs: token ids (I32, `[len]`) and optionally token type ids (I32, `[len]`);
    /// output: the last hidden states `[len, hidden]`.
    fn forward(&self, inputs: &[Tensor]) -> Result<Vec<Tensor>> {
        let ids_of = |t: &Tensor, what: &str| -> Result<Vec<u32>> {
            if t.dtype() != DType::I32 || t.rank() != 1 {
                return Err(Error::invalid(format!(
                    "{}: {what} must be I32 [len], got {} {:?}",
                    self.name(),
                    t.dtype(),
                    t.dims()
                )));
            }
            t.to_vec::<i32>()?
                .into_iter()
                .map(|v| u32::try_from(v).map_err(|_| Error::invalid(format!("{}: negative {what} {v}", self.name()))))
                .collect()
        };
        let ids = ids_of(
            inputs.first().ok_or_else(|| Error::invalid(format!("{}: the encoder takes token ids", self.name())))?,
            "token ids",
        )?;
        let types = inputs.get(1).map(|t| ids_of(t, "token type ids")).transpose()?;
        let input = EncoderInput { ids: &ids, type_ids: types.as_deref() };
        let hs = self.encode(&[input], BatchLayout::Packed)?;
        Ok(vec![Tensor::from_vec(hs.data, &[ids.len(), hs.hidden])?])
    }
}
