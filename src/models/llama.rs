//! The LLaMA-family decoder (LLaMA 2/3, SmolLM, TinyLlama...) as `nn` modules named
//! like GGUF tensors (`token_embd`, `blk.N.attn_q`, `output_norm`, `output`): token
//! embedding, RMSNorm, RoPE, grouped-query attention over a KV cache, SwiGLU MLP, and a
//! tied or separate output head. It knows nothing of files: weights arrive by `load`.

use std::sync::Arc;

use rayon::prelude::*;

use crate::kernels::attention::{causal_attention, AttentionShape};
use crate::kernels::elementwise::swiglu_rows;
use crate::kernels::norm::rms_norm;
use crate::kernels::rope::{rope_row, RopeLayout, RopeTable};
use crate::models::config::LlamaConfig;
use crate::models::kv_cache::{KvCache, KvRows};
use crate::nn::{self, Module, ModuleList, Registry};
use crate::params::ParameterFile;
use crate::tensor::ops::MatmulPrecision;
use crate::tensor::{DType, PackedLinear, Tensor};
use crate::{Error, Result};

/// Causal attention over one layer's cached rows, whatever their element type.
fn attend(shape: AttentionShape, q: &[f32], kv: KvRows<'_>, out: &mut [f32]) {
    match kv {
        KvRows::F32(k, v) => causal_attention(shape, q, k, v, out),
        KvRows::F16(k, v) => causal_attention(shape, q, k, v, out),
    }
}

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
        let kv = cache.layer(layer, start + t)?;
        let mut attn = Tensor::zeros(&[t, c.hidden], DType::F32)?;
        let shape = AttentionShape {
            n_queries: t,
            n_heads: c.n_heads,
            n_kv_heads: c.n_kv_heads,
            head_dim: c.head_dim,
            start_pos: start,
        };
        attend(shape, q.as_slice::<f32>()?, kv, attn.data_mut::<f32>()?);
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

/// One block's weights repacked for the fast kernels, with q|k|v and gate|up stacked so
/// that each pair or triple is one parallel matmul.
#[derive(Clone)]
struct PackedBlock {
    attn_norm: Vec<f32>,
    qkv: PackedLinear,
    o: PackedLinear,
    ffn_norm: Vec<f32>,
    gate_up: PackedLinear,
    down: PackedLinear,
}

/// All of a model's matmul weights repacked (see [`Llama::pack_weights`]).
struct PackedModel {
    blocks: Vec<PackedBlock>,
    output_norm: Vec<f32>,
    output: PackedLinear,
    /// The head is the token embedding (tied): embedding rows are read from `output`, so
    /// the mapped table is never touched again.
    tied: bool,
}

/// A LLaMA-family language model.
#[derive(Clone)]
pub struct Llama {
    packed: Option<Arc<PackedModel>>,
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
            packed: None,
        })
    }

    /// Build from a GGUF parameter file: configuration from its metadata, then a
    /// checked load of every weight.
    pub fn from_file(file: &ParameterFile) -> Result<Llama> {
        let cfg = LlamaConfig::from_gguf_metadata(file.metadata())?;
        let mut model = Llama::new(cfg, !file.contains("output.weight"))?;
        model.load(file)?;
        model.pack_weights()?;
        Ok(model)
    }

    /// Repack every matmul weight (once, after `load`) into the fast kernels' layout, with
    /// q|k|v and gate|up stacked, letting the OS drop the original pages of a mapped file
    /// as it goes (so resident memory holds one copy). Returns false, changing nothing, when some
    /// weight's dtype or shape has no packed layout (then the block kernels are used).
    /// [`MatmulPrecision::Fast`] passes use the packed weights; `Exact` ones the originals.
    pub fn pack_weights(&mut self) -> Result<bool> {
        let get = |l: &nn::Linear| l.weight().get();
        let norm = |n: &nn::RmsNorm| -> Result<Vec<f32>> { n.weight().get()?.to_f32_vec() };
        let mut blocks = Vec::with_capacity(self.blocks.len());
        for (l, b) in self.blocks.iter().enumerate() {
            let (q, k, v, o) = (get(&b.attn_q)?, get(&b.attn_k)?, get(&b.attn_v)?, get(&b.attn_output)?);
            let (g, u, d) = (get(&b.ffn_gate)?, get(&b.ffn_up)?, get(&b.ffn_down)?);
            if ![&[&q, &k, &v][..], &[&o], &[&g, &u], &[&d]].iter().all(|ws| PackedLinear::can_pack(ws)) {
                return Ok(false);
            }
            blocks.push(PackedBlock {
                attn_norm: norm(&b.attn_norm)?,
                qkv: PackedLinear::pack_releasing(&[&q, &k, &v], &format!("blk.{l}.attn_qkv.packed"))?,
                o: PackedLinear::pack_releasing(&[&o], &format!("blk.{l}.attn_output.packed"))?,
                ffn_norm: norm(&b.ffn_norm)?,
                gate_up: PackedLinear::pack_releasing(&[&g, &u], &format!("blk.{l}.ffn_gate_up.packed"))?,
                down: PackedLinear::pack_releasing(&[&d], &format!("blk.{l}.ffn_down.packed"))?,
            });
        }
        let head = self.output.weight().get()?;
        if !PackedLinear::can_pack(&[&head]) {
            return Ok(false);
        }
        let output = PackedLinear::pack_releasing(&[&head], &format!("{}.packed", self.output.weight().name()))?;
        // Reading a page maps its neighbours too (fault-around), some of them in matrices
        // packed and released before: one more pass drops those.
        for b in self.blocks.iter() {
            for l in [&b.attn_q, &b.attn_k, &b.attn_v, &b.attn_output, &b.ffn_gate, &b.ffn_up, &b.ffn_down] {
                l.weight().get()?.release_mapped_pages();
            }
        }
        head.release_mapped_pages();
        let tied = self.token_embd.weight().name() == self.output.weight().name();
        if !tied {
            // One row per token from here on: keep the OS from reading ahead around each.
            self.token_embd.weight().get()?.advise_random_access();
        }
        let output_norm = self.output_norm.weight().get()?.to_f32_vec()?;
        self.packed = Some(Arc::new(PackedModel { blocks, output_norm, output, tied }));
        Ok(true)
    }

    /// Whether [`Llama::pack_weights`] has repacked the weights.
    pub fn is_packed(&self) -> bool {
        self.packed.is_some()
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

    /// An f32 KV cache with room for `capacity` positions.
    pub fn new_cache(&self, capacity: usize) -> Result<KvCache> {
        self.new_cache_with(capacity, DType::F32)
    }

    /// A KV cache storing `dtype` (F32 or F16). F16 halves the cache's memory and the bytes
    /// decode attention reads per token (llama.cpp's default) but rounds keys and values;
    /// measured here it is slower for prefill (converting in attention), so F32 is the
    /// default (BENCHMARKS.md). Both paths accept either.
    pub fn new_cache_with(&self, capacity: usize, dtype: DType) -> Result<KvCache> {
        if capacity > self.cfg.context_length {
            return Err(Error::invalid(format!(
                "a context of {capacity} tokens exceeds the model's {}",
                self.cfg.context_length
            )));
        }
        KvCache::with_dtype(self.cfg.n_layers, capacity, self.cfg.kv_dim(), dtype)
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

    /// Checks one sequence's new tokens against the vocabulary and its cache.
    fn check_step(&self, ids: &[u32], cache: &KvCache) -> Result<()> {
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
        Ok(())
    }

    fn forward_hidden(&self, ids: &[u32], cache: &mut KvCache, last_only: bool) -> Result<Tensor> {
        self.check_step(ids, cache)?;
        let t = ids.len();
        if let (MatmulPrecision::Fast, Some(p)) = (self.precision, &self.packed) {
            let x = self.embed_packed(p, ids)?;
            return self.forward_packed(p, x, &mut [(t, cache)], last_only);
        }
        let ids_t = Tensor::from_vec(ids.iter().map(|&i| i as i32).collect::<Vec<i32>>(), &[t])?;
        let mut x = self.token_embd.apply(&ids_t)?;
        for (l, block) in self.blocks.iter().enumerate() {
            x = block.forward_cached(&x, l, &self.cfg, &self.rope, cache, self.precision)?;
        }
        cache.advance(t);
        let x = if last_only { x.narrow(0, t - 1, 1)? } else { x };
        self.output.apply_with(&self.output_norm.apply(&x)?, self.precision)
    }

    /// One step of several independent sequences at once: `steps[i]` is the next tokens of
    /// the sequence in its cache (a prompt, or one generated token). Returns the logits
    /// after each sequence's last token, `[steps.len(), vocab]`; every cache advances.
    ///
    /// On packed weights the sequences share each matmul (their rows stacked, so each
    /// weight is read once per step, not once per sequence) and run attention in one
    /// parallel region; otherwise they run one after another. Results equal separate
    /// [`Llama::forward_tokens`] calls up to float summation order.
    pub fn forward_batch(&self, steps: &mut [(&[u32], &mut KvCache)]) -> Result<Tensor> {
        if steps.is_empty() {
            return Err(Error::invalid("forward_batch: no sequences"));
        }
        for (ids, cache) in steps.iter() {
            self.check_step(ids, cache)?;
        }
        if let (MatmulPrecision::Fast, Some(p)) = (self.precision, &self.packed) {
            let ids: Vec<u32> = steps.iter().flat_map(|(ids, _)| ids.iter().copied()).collect();
            let x = self.embed_packed(p, &ids)?;
            let mut seqs: Vec<(usize, &mut KvCache)> = steps.iter_mut().map(|(ids, c)| (ids.len(), &mut **c)).collect();
            return self.forward_packed(p, x, &mut seqs, true);
        }
        let mut rows = Vec::with_capacity(steps.len() * self.cfg.vocab_size);
        for (ids, cache) in steps.iter_mut() {
            rows.extend_from_slice(self.forward_tokens(ids, cache)?.as_slice::<f32>()?);
        }
        Tensor::from_vec(rows, &[steps.len(), self.cfg.vocab_size])
    }

    /// Embedding rows of `ids` for the packed path (from the packed head when tied).
    fn embed_packed(&self, p: &PackedModel, ids: &[u32]) -> Result<Vec<f32>> {
        if p.tied {
            let mut x = vec![0f32; ids.len() * self.cfg.hidden];
            for (&id, row) in ids.iter().zip(x.chunks_exact_mut(self.cfg.hidden)) {
                p.output.dequantize_row_into(id as usize, row)?;
            }
            Ok(x)
        } else {
            let ids_t = Tensor::from_vec(ids.iter().map(|&i| i as i32).collect::<Vec<i32>>(), &[ids.len()])?;
            self.token_embd.apply(&ids_t)?.to_vec::<f32>()
        }
    }
}

impl Llama {
    /// The forward pass on packed weights over plain buffers, for one or more sequences
    /// (`seqs[i]`: its number of new rows in `x`, in order, and its cache). Per layer five
    /// parallel regions (q|k|v, attention, output projection + residual, gate|up, down +
    /// residual); norms, RoPE and SwiGLU in place; the first sequence's scratch buffers are
    /// reused, so a decode step allocates only its logits and a few row-sized vectors.
    /// Returns the logits of each
    /// sequence's last row (`last_only`) or of every row.
    fn forward_packed(
        &self,
        p: &PackedModel,
        mut x: Vec<f32>,
        seqs: &mut [(usize, &mut KvCache)],
        last_only: bool,
    ) -> Result<Tensor> {
        let c = &self.cfg;
        let (hd, kvd, f, d) = (c.hidden, c.kv_dim(), c.ffn_hidden, c.head_dim);
        let t = x.len() / hd;
        debug_assert_eq!(t, seqs.iter().map(|s| s.0).sum::<usize>());
        let starts: Vec<usize> = seqs.iter().map(|(_, cache)| cache.len()).collect();
        let qkv_w = hd + 2 * kvd;
        let mut scratch = std::mem::take(&mut seqs[0].1.scratch);
        let [h, qkv, q, attn, gu, act, kbuf, vbuf] = &mut scratch.bufs;
        for (buf, n) in
            [(&mut *h, hd), (&mut *qkv, qkv_w), (&mut *q, hd), (&mut *attn, hd), (&mut *gu, 2 * f), (&mut *act, f)]
        {
            buf.resize(t * n, 0.0);
        }
        let shape = |n_queries: usize, start_pos: usize| AttentionShape {
            n_queries,
            n_heads: c.n_heads,
            n_kv_heads: c.n_kv_heads,
            head_dim: d,
            start_pos,
        };
        let result = (|| -> Result<()> {
            for (l, b) in p.blocks.iter().enumerate() {
                rms_norm(&x, &b.attn_norm, c.rms_eps, h);
                b.qkv.matmul_into(h, t, qkv, false)?;
                let mut r0 = 0;
                for ((n, cache), &start) in seqs.iter_mut().zip(&starts) {
                    kbuf.resize(*n * kvd, 0.0);
                    vbuf.resize(*n * kvd, 0.0);
                    for i in 0..*n {
                        let row = &mut qkv[(r0 + i) * qkv_w..(r0 + i + 1) * qkv_w];
                        for head in row[..hd + kvd].chunks_exact_mut(d) {
                            rope_row(head, &self.rope, start + i, RopeLayout::Interleaved);
                        }
                        q[(r0 + i) * hd..(r0 + i + 1) * hd].copy_from_slice(&row[..hd]);
                        kbuf[i * kvd..(i + 1) * kvd].copy_from_slice(&row[hd..hd + kvd]);
                        vbuf[i * kvd..(i + 1) * kvd].copy_from_slice(&row[hd + kvd..]);
                    }
                    cache.write(l, kbuf, vbuf)?;
                    r0 += *n;
                }
                if let [(n, cache)] = seqs {
                    attend(shape(*n, starts[0]), q, cache.layer(l, starts[0] + *n)?, attn);
                } else {
                    // One parallel region over the sequences (each call may split further).
                    let mut jobs = Vec::with_capacity(seqs.len());
                    let (mut qs, mut outs): (&[f32], &mut [f32]) = (q, attn);
                    for ((n, cache), &start) in seqs.iter().zip(&starts) {
                        let kv = cache.layer(l, start + n)?;
                        let (qh, qt) = qs.split_at(n * hd);
                        let (oh, ot) = std::mem::take(&mut outs).split_at_mut(n * hd);
                        jobs.push((shape(*n, start), qh, kv, oh));
                        (qs, outs) = (qt, ot);
                    }
                    jobs.into_par_iter().for_each(|(s, qh, kv, oh)| attend(s, qh, kv, oh));
                }
                b.o.matmul_into(attn, t, &mut x, true)?;
                rms_norm(&x, &b.ffn_norm, c.rms_eps, h);
                b.gate_up.matmul_into(h, t, gu, false)?;
                swiglu_rows(gu, f, act);
                b.down.matmul_into(act, t, &mut x, true)?;
            }
            Ok(())
        })();
        let logits = result.and_then(|()| {
            for (n, cache) in seqs.iter_mut() {
                cache.advance(*n);
            }
            // The rows the head reads (each sequence's last, or all) and their norms, in the
            // scratch buffers: the logits are the step's only allocation of its size.
            let rows: &[f32] = if last_only {
                let mut r0 = 0;
                for (i, (n, _)) in seqs.iter().enumerate() {
                    r0 += n;
                    q[i * hd..(i + 1) * hd].copy_from_slice(&x[(r0 - 1) * hd..r0 * hd]);
                }
                &q[..seqs.len() * hd]
            } else {
                &x
            };
            let m = rows.len() / hd;
            let normed = &mut h[..rows.len()];
            rms_norm(rows, &p.output_norm, c.rms_eps, normed);
            let mut logits = Tensor::empty(&[m, c.vocab_size], DType::F32).alloc()?;
            p.output.matmul_into(normed, m, logits.data_mut::<f32>()?, false)?;
            Ok(logits)
        });
        seqs[0].1.scratch = scratch;
        logits
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
