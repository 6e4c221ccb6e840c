//! The LLaMA-family decoder (LLaMA 2/3, SmolLM, TinyLlama...) as `nn` modules named
//! like GGUF tensors (`token_embd`, `blk.N.attn_q`, `output_norm`, `output`): token
//! embedding, RMSNorm, RoPE, grouped-query attention over a KV cache, SwiGLU MLP, and a
//! tied or separate output head. It knows nothing of files: weights arrive by `load`.

use std::sync::Arc;

use crate::kernels::attention::{causal_attention, AttentionShape};
use crate::kernels::rope::{RopeLayout, RopeTable};
use crate::models::config::LlamaConfig;
use crate::models::kv_cache::KvCache;
use crate::nn::{self, Module, ModuleList, Registry};
use crate::params::ParameterFile;
use crate::tensor::ops::MatmulPrecision;
use crate::tensor::{DType, Tensor};
use crate::{Error, Result};

/// One transformer block.
#[derive(Clone)]
pub struct Block {
    reg: Registry,
    attn_norm: nn::RmsNorm,
    attn_q: nn::Linear,
    attn_k: nn::Linear,
    attn_v: nn::Linear,
    attn_output: nn::Linear,
    ffn_norm: nn::RmsNorm,
    ffn_gate: nn::Linear,
    ffn_up: nn::Linear,
    ffn_down: nn::Linear,
}

impl Block {
    fn new(reg: &Registry, c: &LlamaConfig) -> Block {
        let (h, kv, f) = (c.hidden, c.kv_dim(), c.ffn_hidden);
        Block {
            attn_norm: nn::RmsNorm::new(&reg.child("attn_norm"), h, c.rms_eps),
            attn_q: nn::Linear::no_bias(&reg.child("attn_q"), h, h),
            attn_k: nn::Linear::no_bias(&reg.child("attn_k"), h, kv),
            attn_v: nn::Linear::no_bias(&reg.child("attn_v"), h, kv),
            attn_output: nn::Linear::no_bias(&reg.child("attn_output"), h, h),
            ffn_norm: nn::RmsNorm::new(&reg.child("ffn_norm"), h, c.rms_eps),
            ffn_gate: nn::Linear::no_bias(&reg.child("ffn_gate"), h, f),
            ffn_up: nn::Linear::no_bias(&reg.child("ffn_up"), h, f),
            ffn_down: nn::Linear::no_bias(&reg.child("ffn_down"), f, h),
            reg: reg.clone(),
        }
    }

    /// `x` is `[T, hidden]` for positions `cache.len()..cache.len() + T`.
    fn forward_cached(
        &self,
        x: &Tensor,
        layer: usize,
        c: &LlamaConfig,
        rope: &RopeTable,
        cache: &mut KvCache,
        p: MatmulPrecision,
    ) -> Result<Tensor> {
        let t = x.dims()[0];
        let start = cache.len();
        let h = self.attn_norm.apply(x)?;
        let q = self.attn_q.apply_with(&h, p)?.reshape(&[t, c.n_heads, c.head_dim])?.rope(
            rope,
            start,
            RopeLayout::Interleaved,
        )?;
        let k = self.attn_k.apply_with(&h, p)?.reshape(&[t, c.n_kv_heads, c.head_dim])?.rope(
            rope,
            start,
            RopeLayout::Interleaved,
        )?;
        let v = self.attn_v.apply_with(&h, p)?.contiguous()?;
        let (k, q) = (k.contiguous()?, q.contiguous()?);
        cache.write(layer, k.as_slice::<f32>()?, v.as_slice::<f32>()?)?;
        let (kc, vc) = cache.layer(layer, start + t)?;
        let mut attn = Tensor::zeros(&[t, c.hidden], DType::F32)?;
        let shape = AttentionShape {
            n_queries: t,
            n_heads: c.n_heads,
            n_kv_heads: c.n_kv_heads,
            head_dim: c.head_dim,
            start_pos: start,
        };
        causal_attention(shape, q.as_slice::<f32>()?, kc, vc, attn.data_mut::<f32>()?);
        let x = x.add(&self.attn_output.apply_with(&attn, p)?)?;
        let h = self.ffn_norm.apply(&x)?;
        let gate = self.ffn_gate.apply_with(&h, p)?.silu()?;
        let up = self.ffn_up.apply_with(&h, p)?;
        x.add(&self.ffn_down.apply_with(&gate.mul(&up)?, p)?)
    }
}

impl Module for Block {
    fn registry(&self) -> &Registry {
        &self.reg
    }

    /// A block on its own has no cache: use [`Llama::forward_tokens`].
    fn forward(&self, _inputs: &[Tensor]) -> Result<Vec<Tensor>> {
        Err(Error::invalid(format!("{}: a transformer block runs inside Llama::forward_tokens", self.name())))
    }
}

/// A LLaMA-family language model.
#[derive(Clone)]
pub struct Llama {
    reg: Registry,
    cfg: LlamaConfig,
    token_embd: nn::Embedding,
    blocks: ModuleList<Block>,
    output_norm: nn::RmsNorm,
    output: nn::Linear,
    rope: Arc<RopeTable>,
    precision: MatmulPrecision,
}

impl Llama {
    /// Declare the model's parameters. With `tied_output` the output head reads the
    /// token embedding (`token_embd.weight`), as small models do; else `output.weight`.
    pub fn new(cfg: LlamaConfig, tied_output: bool) -> Result<Llama> {
        if cfg.rope_dims != cfg.head_dim {
            return Err(Error::invalid(format!(
                "partial rotary embeddings ({} of {} dims) are not supported yet",
                cfg.rope_dims, cfg.head_dim
            )));
        }
        let reg = Registry::new("");
        let rope = Arc::new(RopeTable::new(cfg.head_dim, cfg.context_length, cfg.rope_theta)?);
        let blocks = ModuleList::new(&reg.child("blk"), cfg.n_layers, |r, _| Block::new(r, &cfg));
        let head = if tied_output { "token_embd" } else { "output" };
        Ok(Llama {
            token_embd: nn::Embedding::new(&reg.child("token_embd"), cfg.vocab_size, cfg.hidden),
            output_norm: nn::RmsNorm::new(&reg.child("output_norm"), cfg.hidden, cfg.rms_eps),
            output: nn::Linear::no_bias(&reg.child(head), cfg.hidden, cfg.vocab_size),
            blocks,
            rope,
            cfg,
            reg,
            precision: MatmulPrecision::default(),
        })
    }

    /// Build from a GGUF parameter file: configuration from its metadata, then a
    /// checked load of every weight.
    pub fn from_file(file: &ParameterFile) -> Result<Llama> {
        let cfg = LlamaConfig::from_gguf_metadata(file.metadata())?;
        let model = Llama::new(cfg, !file.contains("output.weight"))?;
        model.load(file)?;
        Ok(model)
    }

    /// The same model computing its quantised matmuls (every layer and the output head)
    /// at `precision`; the default is [`MatmulPrecision::Fast`].
    pub fn with_precision(mut self, precision: MatmulPrecision) -> Self {
        self.precision = precision;
        self
    }

    pub fn precision(&self) -> MatmulPrecision {
        self.precision
    }

    pub fn config(&self) -> &LlamaConfig {
        &self.cfg
    }

    /// A KV cache with room for `capacity` positions.
    pub fn new_cache(&self, capacity: usize) -> Result<KvCache> {
        if capacity > self.cfg.context_length {
            return Err(Error::invalid(format!(
                "a context of {capacity} tokens exceeds the model's {}",
                self.cfg.context_length
            )));
        }
        KvCache::new(self.cfg.n_layers, capacity, self.cfg.kv_dim())
    }

    /// Run `ids` (the next tokens of the sequence in `cache`) and return the logits
    /// `[vocab]` after the last one. The cache advances by `ids.len()`.
    pub fn forward_tokens(&self, ids: &[u32], cache: &mut KvCache) -> Result<Tensor> {
        let logits = self.forward_hidden(ids, cache, true)?;
        logits.reshape(&[self.cfg.vocab_size])
    }

    /// Like [`Llama::forward_tokens`] but returns logits for every position, `[T, vocab]`.
    pub fn forward_all_logits(&self, ids: &[u32], cache: &mut KvCache) -> Result<Tensor> {
        self.forward_hidden(ids, cache, false)
    }

    fn forward_hidden(&self, ids: &[u32], cache: &mut KvCache, last_only: bool) -> Result<Tensor> {
        if ids.is_empty() {
            return Err(Error::invalid("forward: no tokens"));
        }
        if let Some(&bad) = ids.iter().find(|&&i| i as usize >= self.cfg.vocab_size) {
            return Err(Error::invalid(format!("token id {bad} is outside the vocabulary ({})", self.cfg.vocab_size)));
        }
        if cache.len() + ids.len() > cache.capacity() {
            return Err(Error::invalid(format!(
                "context full: {} cached + {} new tokens exceed the context of {}",
                cache.len(),
                ids.len(),
                cache.capacity()
            )));
        }
        let t = ids.len();
        let ids_t = Tensor::from_vec(ids.iter().map(|&i| i as i32).collect::<Vec<i32>>(), &[t])?;
        let mut x = self.token_embd.apply(&ids_t)?;
        for (l, block) in self.blocks.iter().enumerate() {
            x = block.forward_cached(&x, l, &self.cfg, &self.rope, cache, self.precision)?;
        }
        cache.advance(t);
        let x = if last_only { x.narrow(0, t - 1, 1)? } else { x };
        self.output.apply_with(&self.output_norm.apply(&x)?, self.precision)
    }
}

impl Module for Llama {
    fn registry(&self) -> &Registry {
        &self.reg
    }

    /// `inputs[0]`: token ids (I32, `[T]`); returns logits `[T, vocab]` computed with
    /// a fresh cache (a whole prompt at once).
    fn forward(&self, inputs: &[Tensor]) -> Result<Vec<Tensor>> {
        let ids = inputs.first().ok_or_else(|| Error::invalid("Llama takes token ids as its input"))?;
        let ids: Vec<u32> = ids
            .to_vec::<i32>()?
            .into_iter()
            .map(|i| u32::try_from(i).map_err(|_| Error::invalid(format!("negative token id {i}"))))
            .collect::<Result<_>>()?;
        let mut cache = self.new_cache(ids.len())?;
        Ok(vec![self.forward_all_logits(&ids, &mut cache)?])
    }
}
