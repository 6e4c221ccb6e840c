//! The layers every decoder family is built from, on plain f32 rows: norms, attention
//! (separate or fused q|k|v, optional biases and per-head q/k norms, RoPE layout, base,
//! partial rotary dims, scale, sliding window), gated MLP (SiLU or GELU-tanh, separate or
//! fused gate|up) and the transformer block that wires them. Each layer declares its
//! parameters under the file's names; `prepare` turns them into compute-ready weights.
//! One forward path serves every family, precision and batch shape.

use std::sync::{Arc, RwLock};

use rayon::prelude::*;

use crate::kernels::attention::{causal_attention, AttentionShape};
use crate::kernels::elementwise::{geglu_rows, swiglu_rows};
use crate::kernels::norm::{layer_norm, rms_norm};
use crate::kernels::rope::{rope_row_with, RopeLayout, RopeTable};
use crate::models::config::DecoderConfig;
use crate::models::kv_cache::{KvCache, KvLayer, KvRows};
use crate::models::workspace::Workspace;
use crate::nn::{self, Accepts, Module, Param, Registry};
use crate::tensor::ops::MatmulPrecision;
use crate::tensor::{Tensor, WeightOptions};
use crate::{Error, Result};

/// A value computed once after loading and shared by clones of the layer.
#[derive(Clone)]
struct Slot<T>(Arc<RwLock<Option<Arc<T>>>>);

impl<T> Default for Slot<T> {
    fn default() -> Self {
        Slot(Arc::new(RwLock::new(None)))
    }
}

impl<T> Slot<T> {
    fn set(&self, v: T) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(v));
    }

    fn get(&self, what: &str) -> Result<Arc<T>> {
        self.0
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .ok_or_else(|| Error::invalid(format!("{what} is not prepared (load the model, then prepare it)")))
    }
}

/// Which normalisation a [`Norm`] computes.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum NormKind {
    /// `x * w / rms(x)`; `offset` is added to every stored weight (Gemma stores `w - 1`).
    Rms { offset: f32 },
    /// `(x - mean) / std * w + b`.
    Layer,
}

/// A normalisation over rows of `dim` values: parameters `<name>.weight` (and `.bias`
/// for LayerNorm).
#[derive(Clone)]
pub struct Norm {
    reg: Registry,
    kind: NormKind,
    eps: f32,
    weight: Param,
    bias: Option<Param>,
    /// Weight (offset applied) and bias as f32.
    ready: Slot<(Vec<f32>, Option<Vec<f32>>)>,
}

impl Norm {
    pub fn new(reg: &Registry, dim: usize, eps: f32, kind: NormKind) -> Norm {
        Norm {
            weight: reg.param("weight", &[dim], Accepts::Float),
            bias: (kind == NormKind::Layer).then(|| reg.param("bias", &[dim], Accepts::Float)),
            reg: reg.clone(),
            kind,
            eps,
            ready: Slot::default(),
        }
    }

    /// RMSNorm over the hidden size as the model's config describes it (eps, offset).
    pub fn rms(reg: &Registry, cfg: &DecoderConfig) -> Norm {
        Norm::new(reg, cfg.hidden, cfg.norm_eps, NormKind::Rms { offset: cfg.rms_offset })
    }

    pub fn prepare(&self) -> Result<()> {
        let mut w = self.weight.get()?.to_f32_vec()?;
        if let NormKind::Rms { offset } = self.kind {
            w.iter_mut().for_each(|v| *v += offset);
        }
        let b = self.bias.as_ref().map(|b| b.get()?.to_f32_vec()).transpose()?;
        self.ready.set((w, b));
        Ok(())
    }

    /// Normalise rows of `x` into `out` (same length).
    pub fn apply(&self, x: &[f32], out: &mut [f32]) -> Result<()> {
        let ready = self.ready.get(self.reg.path())?;
        let (w, b) = &*ready;
        if x.len() != out.len() || !x.len().is_multiple_of(w.len().max(1)) {
            return Err(Error::shape(
                "norm",
                format!("{}: {} values are not rows of {}", self.reg.path(), x.len(), w.len()),
            ));
        }
        match self.kind {
            NormKind::Rms { .. } => rms_norm(x, w, self.eps, out),
            NormKind::Layer => layer_norm(x, w, b.as_deref(), self.eps, out),
        }
        Ok(())
    }
}

/// The gated MLP's activation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    /// `silu(gate) * up` (LLaMA, Qwen, Mistral, Phi-3).
    Silu,
    /// `gelu_tanh(gate) * up` (Gemma).
    GeluTanh,
}

/// `down(act(gate(x)) * up(x))`, with gate and up one stacked (or fused) matmul.
#[derive(Clone)]
pub struct Mlp {
    pub gate_up: nn::Linear,
    pub down: nn::Linear,
    pub act: Activation,
    ffn: usize,
}

impl Mlp {
    /// `ffn_gate`, `ffn_up` and `ffn_down` under `block`.
    pub fn separate(block: &Registry, hidden: usize, ffn: usize, act: Activation) -> Mlp {
        let (gate, up) = (block.child("ffn_gate"), block.child("ffn_up"));
        Mlp {
            gate_up: nn::Linear::stacked(&block.child("ffn_gate_up"), hidden, &[(&gate, ffn), (&up, ffn)], false),
            down: nn::Linear::no_bias(&block.child("ffn_down"), ffn, hidden),
            act,
            ffn,
        }
    }

    /// One `ffn_up` of `2 * ffn` rows, gate first (Phi-3), and `ffn_down`.
    pub fn fused(block: &Registry, hidden: usize, ffn: usize, act: Activation) -> Mlp {
        Mlp {
            gate_up: nn::Linear::no_bias(&block.child("ffn_up"), hidden, 2 * ffn),
            down: nn::Linear::no_bias(&block.child("ffn_down"), ffn, hidden),
            act,
            ffn,
        }
    }

    fn prepare(&self, opts: WeightOptions) -> Result<()> {
        self.gate_up.prepare(opts)?;
        self.down.prepare(opts)
    }
}

/// Rows of `[gate (f), up (f)]` → `act(gate) * up`.
fn gated(act: Activation, gate_up: &[f32], f: usize, out: &mut [f32]) {
    match act {
        Activation::Silu => swiglu_rows(gate_up, f, out),
        Activation::GeluTanh => geglu_rows(gate_up, f, out),
    }
}

/// Grouped-query self-attention over a KV cache.
#[derive(Clone)]
pub struct Attention {
    /// q | k | v in one matmul (stacked from separate tensors or one fused tensor).
    pub qkv: nn::Linear,
    pub output: nn::Linear,
    /// Per-head RMSNorm of queries and keys before RoPE (Qwen3, Gemma3).
    pub q_norm: Option<Norm>,
    pub k_norm: Option<Norm>,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub rope_dims: usize,
    pub rope_layout: RopeLayout,
    pub rope: Arc<RopeTable>,
    pub scale: f32,
    pub window: Option<usize>,
}

impl Attention {
    fn with(cfg: &DecoderConfig, rope: Arc<RopeTable>, qkv: nn::Linear, output: nn::Linear) -> Attention {
        Attention {
            qkv,
            output,
            q_norm: None,
            k_norm: None,
            n_heads: cfg.n_heads,
            n_kv_heads: cfg.n_kv_heads,
            head_dim: cfg.head_dim,
            rope_dims: cfg.rope_dims,
            rope_layout: cfg.rope_layout,
            rope,
            scale: cfg.attn_scale,
            window: cfg.sliding_window,
        }
    }

    /// `attn_q`, `attn_k`, `attn_v` (with `.bias` each when `bias`) and `attn_output`.
    pub fn separate(block: &Registry, cfg: &DecoderConfig, rope: Arc<RopeTable>, bias: bool) -> Attention {
        let (q, k, v) = (block.child("attn_q"), block.child("attn_k"), block.child("attn_v"));
        let parts = [(&q, cfg.q_dim()), (&k, cfg.kv_dim()), (&v, cfg.kv_dim())];
        let qkv = nn::Linear::stacked(&block.child("attn_qkv"), cfg.hidden, &parts, bias);
        Attention::with(cfg, rope, qkv, nn::Linear::no_bias(&block.child("attn_output"), cfg.q_dim(), cfg.hidden))
    }

    /// One fused `attn_qkv` tensor (Phi-3) and `attn_output`.
    pub fn fused(block: &Registry, cfg: &DecoderConfig, rope: Arc<RopeTable>) -> Attention {
        let qkv = nn::Linear::no_bias(&block.child("attn_qkv"), cfg.hidden, cfg.q_dim() + 2 * cfg.kv_dim());
        Attention::with(cfg, rope, qkv, nn::Linear::no_bias(&block.child("attn_output"), cfg.q_dim(), cfg.hidden))
    }

    /// Per-head RMSNorms `attn_q_norm` and `attn_k_norm` (`[head_dim]` each).
    pub fn with_qk_norm(mut self, block: &Registry, eps: f32, kind: NormKind) -> Attention {
        self.q_norm = Some(Norm::new(&block.child("attn_q_norm"), self.head_dim, eps, kind));
        self.k_norm = Some(Norm::new(&block.child("attn_k_norm"), self.head_dim, eps, kind));
        self
    }

    fn prepare(&self, opts: WeightOptions) -> Result<()> {
        self.qkv.prepare(opts)?;
        self.output.prepare(opts)?;
        for n in self.q_norm.iter().chain(&self.k_norm) {
            n.prepare()?;
        }
        Ok(())
    }

    fn shape(&self, n_queries: usize, start_pos: usize) -> AttentionShape {
        AttentionShape {
            scale: self.scale,
            window: self.window,
            ..AttentionShape::causal(n_queries, self.n_heads, self.n_kv_heads, self.head_dim, start_pos)
        }
    }

    /// Per-head norms and RoPE on one q|k|v row of the token at `pos` (`tmp`: room for
    /// the queries).
    fn position_row(&self, row: &mut [f32], pos: usize, tmp: &mut Vec<f32>) -> Result<()> {
        let (qd, kd, d) = (self.n_heads * self.head_dim, self.n_kv_heads * self.head_dim, self.head_dim);
        if let (Some(qn), Some(kn)) = (&self.q_norm, &self.k_norm) {
            tmp.resize(qd.max(kd), 0.0);
            let (q, k) = row[..qd + kd].split_at_mut(qd);
            tmp[..qd].copy_from_slice(q);
            qn.apply(&tmp[..qd], q)?;
            tmp[..kd].copy_from_slice(k);
            kn.apply(&tmp[..kd], k)?;
        }
        if pos >= self.rope.max_pos() {
            return Err(Error::invalid(format!(
                "position {pos} is beyond the model's context of {}",
                self.rope.max_pos()
            )));
        }
        // One position: its angles once, for every head of the row.
        let half = self.rope_dims / 2;
        tmp.resize(tmp.len().max(2 * half), 0.0);
        let (cos, rest) = tmp.split_at_mut(half);
        let sin = &mut rest[..half];
        self.rope.angles(pos, cos, sin);
        for head in row[..qd + kd].chunks_exact_mut(d) {
            rope_row_with(&mut head[..self.rope_dims], cos, sin, self.rope_layout);
        }
        Ok(())
    }
}

/// Causal attention over one layer's cached rows, whatever their element type; `shape`'s
/// `start_pos` is the first query's position in the sequence, made relative to the rows
/// the cache still holds.
fn attend(mut shape: AttentionShape, q: &[f32], kv: KvLayer<'_>, out: &mut [f32]) {
    shape.start_pos -= kv.first;
    match kv.rows {
        KvRows::F32(k, v) => causal_attention(shape, q, k, v, out),
        KvRows::F16(k, v) => causal_attention(shape, q, k, v, out),
    }
}

/// One sequence's part of a step: its new tokens and its cache (positions from
/// `cache.len()`; the cache advances after the last layer).
pub(crate) type SeqStep<'a> = (usize, &'a mut KvCache);

/// One transformer block: `x += attn(norm(x))`, `x += mlp(norm(x))`, with optional norms
/// of each branch's output before it is added (Gemma's "sandwich" norms).
#[derive(Clone)]
pub struct Block {
    reg: Registry,
    pub attn_norm: Norm,
    pub attn: Attention,
    pub post_attn_norm: Option<Norm>,
    pub ffn_norm: Norm,
    pub mlp: Mlp,
    pub post_ffn_norm: Option<Norm>,
    hidden: usize,
    precision: MatmulPrecision,
}

impl Block {
    /// The usual pre-norm block: `attn_norm`, attention, `ffn_norm`, MLP.
    pub fn new(reg: &Registry, cfg: &DecoderConfig, attn: Attention, mlp: Mlp) -> Block {
        Block {
            attn_norm: Norm::rms(&reg.child("attn_norm"), cfg),
            ffn_norm: Norm::rms(&reg.child("ffn_norm"), cfg),
            post_attn_norm: None,
            post_ffn_norm: None,
            attn,
            mlp,
            hidden: cfg.hidden,
            reg: reg.clone(),
            precision: MatmulPrecision::default(),
        }
    }

    pub fn prepare(&self, opts: WeightOptions) -> Result<()> {
        for n in [&self.attn_norm, &self.ffn_norm].into_iter().chain(&self.post_attn_norm).chain(&self.post_ffn_norm) {
            n.prepare()?;
        }
        self.attn.prepare(opts)?;
        self.mlp.prepare(opts)
    }

    /// The same block computing its matmuls at `precision`.
    pub fn with_precision(mut self, precision: MatmulPrecision) -> Block {
        self.precision = precision;
        self
    }

    /// Run the block on `x` (`[t, hidden]` rows of all sequences, in order) in place,
    /// writing keys and values to layer `layer` of each sequence's cache (not advanced).
    pub(crate) fn forward_rows(
        &self,
        x: &mut [f32],
        seqs: &mut [SeqStep<'_>],
        starts: &[usize],
        layer: usize,
        ws: &mut Workspace,
    ) -> Result<()> {
        let a = &self.attn;
        let (hd, t, p) = (self.hidden, x.len() / self.hidden, self.precision);
        let (qd, kvd) = (a.n_heads * a.head_dim, a.n_kv_heads * a.head_dim);
        let qkv_w = qd + 2 * kvd;
        let ffn = self.mlp.ffn;
        ws.fit(t, hd, qd, qkv_w, ffn);
        let Workspace { h, qkv, q, attn, gate_up, act, k_new, v_new, head, post } = ws;
        let (h, q) = (&mut h[..t * hd], &mut q[..t * qd]);
        self.attn_norm.apply(x, h)?;
        a.qkv.matmul_into(h, t, qkv, false, p)?;
        let mut r0 = 0;
        for ((n, cache), &start) in seqs.iter_mut().zip(starts) {
            k_new.resize(*n * kvd, 0.0);
            v_new.resize(*n * kvd, 0.0);
            for i in 0..*n {
                let row = &mut qkv[(r0 + i) * qkv_w..(r0 + i + 1) * qkv_w];
                a.position_row(row, start + i, head)?;
                q[(r0 + i) * qd..(r0 + i + 1) * qd].copy_from_slice(&row[..qd]);
                k_new[i * kvd..(i + 1) * kvd].copy_from_slice(&row[qd..qd + kvd]);
                v_new[i * kvd..(i + 1) * kvd].copy_from_slice(&row[qd + kvd..]);
            }
            cache.write(layer, k_new, v_new)?;
            r0 += *n;
        }
        if let [(n, cache)] = seqs {
            attend(a.shape(*n, starts[0]), q, cache.layer(layer, starts[0] + *n)?, attn);
        } else {
            // One parallel region over the sequences (each call may split further).
            let mut jobs = Vec::with_capacity(seqs.len());
            let (mut qs, mut outs): (&[f32], &mut [f32]) = (q, attn);
            for ((n, cache), &start) in seqs.iter().zip(starts) {
                let kv = cache.layer(layer, start + n)?;
                let (qh, qt) = qs.split_at(n * qd);
                let (oh, ot) = std::mem::take(&mut outs).split_at_mut(n * qd);
                jobs.push((a.shape(*n, start), qh, kv, oh));
                (qs, outs) = (qt, ot);
            }
            jobs.into_par_iter().for_each(|(s, qh, kv, oh)| attend(s, qh, kv, oh));
        }
        self.residual(&a.output, attn, self.post_attn_norm.as_ref(), x, (h, post))?;
        self.ffn_norm.apply(x, h)?;
        self.mlp.gate_up.matmul_into(h, t, gate_up, false, p)?;
        gated(self.mlp.act, gate_up, ffn, act);
        self.residual(&self.mlp.down, act, self.post_ffn_norm.as_ref(), x, (h, post))
    }

    /// `x += post_norm(w · input)`; without a post-norm the add is fused into the matmul.
    /// `bufs`: room for the branch's output and its normalised copy.
    fn residual(
        &self,
        w: &nn::Linear,
        input: &[f32],
        post_norm: Option<&Norm>,
        x: &mut [f32],
        bufs: (&mut [f32], &mut Vec<f32>),
    ) -> Result<()> {
        let (t, p) = (x.len() / self.hidden, self.precision);
        match post_norm {
            None => w.matmul_into(input, t, x, true, p),
            Some(norm) => {
                let (y, normed) = bufs;
                normed.resize(x.len(), 0.0);
                w.matmul_into(input, t, y, false, p)?;
                norm.apply(y, normed)?;
                x.iter_mut().zip(normed.iter()).for_each(|(a, b)| *a += b);
                Ok(())
            }
        }
    }
}

impl Module for Block {
    fn registry(&self) -> &Registry {
        &self.reg
    }

    /// `inputs[0]`: hidden states `[T, hidden]` of a whole sequence (positions `0..T`);
    /// returns the block's output, with attention over a cache of its own. A block of a
    /// loaded model is an ordinary module: it can be forked.
    fn forward(&self, inputs: &[Tensor]) -> Result<Vec<Tensor>> {
        let x =
            inputs.first().ok_or_else(|| Error::invalid(format!("{}: a block takes hidden states", self.name())))?;
        if x.rank() != 2 || x.dims()[1] != self.hidden {
            return Err(Error::shape(
                "block",
                format!("{}: input {:?} is not [T, {}]", self.name(), x.dims(), self.hidden),
            ));
        }
        let t = x.dims()[0];
        let mut out = x.to_f32_contiguous("block")?.to_vec::<f32>()?;
        let mut cache = KvCache::new(1, t.max(1), self.attn.n_kv_heads * self.attn.head_dim)?;
        let mut ws = Workspace::default();
        if t > 0 {
            self.forward_rows(&mut out, &mut [(t, &mut cache)], &[0], 0, &mut ws)?;
        }
        Ok(vec![Tensor::from_vec(out, &[t, self.hidden])?])
    }
}
