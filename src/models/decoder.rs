//! [`Decoder`]: a decoder-only language model of any supported family: token embedding,
//! a stack of [`Block`]s, a final norm and an output head (tied to the embedding or its
//! own), over per-sequence KV caches. The family (chosen from `general.architecture`)
//! only names the tensors and wires each block; this file runs them all the same way:
//! one forward path for one sequence, many sequences batched, exact or fast matmuls.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::kernels::quant::WeightFormat;
use crate::kernels::rope::{RopeLayout, RopeTable};
use crate::models::config::{DecoderConfig, Meta};
use crate::models::families::{self, Family};
use crate::models::kv_cache::KvCache;
use crate::models::layers::{Block, Norm, NormKind, SeqStep};
use crate::models::workspace::Workspace;
use crate::nn::{self, Module, ModuleList, Registry};
use crate::params::ParameterFile;
use crate::tensor::ops::MatmulPrecision;
use crate::tensor::{DType, Tensor, Weight, WeightOptions};
use crate::{Error, Result};

/// RoPE tables of one model, one per distinct base (layers may differ: Gemma3).
pub struct RopeTables {
    cfg: DecoderConfig,
    tables: HashMap<u32, Arc<RopeTable>>,
}

impl RopeTables {
    fn new(cfg: &DecoderConfig) -> RopeTables {
        RopeTables { cfg: cfg.clone(), tables: HashMap::new() }
    }

    /// The table for base `theta` (the config's rotary dims, context and scaling).
    pub fn get(&mut self, theta: f32) -> Result<Arc<RopeTable>> {
        if let Some(t) = self.tables.get(&theta.to_bits()) {
            return Ok(t.clone());
        }
        let c = &self.cfg;
        let t = Arc::new(RopeTable::with_linear_scaling(c.rope_dims, c.context_length, theta, c.rope_scale)?);
        self.tables.insert(theta.to_bits(), t.clone());
        Ok(t)
    }

    /// The table for the config's own base.
    pub fn default_table(&mut self) -> Result<Arc<RopeTable>> {
        self.get(self.cfg.rope_theta)
    }
}

/// A decoder-only language model.
#[derive(Clone)]
pub struct Decoder {
    reg: Registry,
    cfg: Arc<DecoderConfig>,
    family: &'static Family,
    token_embd: nn::Embedding,
    blocks: ModuleList<Block>,
    output_norm: Norm,
    output: nn::Linear,
    /// The head is the token embedding: rows are read from the head's weight.
    tied: bool,
    /// The embedding table as a (never packed) weight, when not tied.
    table: Option<Arc<Weight>>,
    precision: MatmulPrecision,
    /// Work buffers of finished passes, reused by the next ones.
    workspaces: Arc<Mutex<Vec<Workspace>>>,
}

impl Decoder {
    /// Declare a `family` model's parameters. With `tied_output` the head reads the token
    /// embedding (`token_embd.weight`), as small models do; else `output.weight`.
    pub fn new(cfg: DecoderConfig, family: &'static Family, tied_output: bool) -> Result<Decoder> {
        let reg = Registry::new("");
        let mut ropes = RopeTables::new(&cfg);
        let mut blocks = Vec::with_capacity(cfg.n_layers);
        let blk = reg.child("blk");
        for l in 0..cfg.n_layers {
            blocks.push((family.block)(&blk.child(l), &cfg, l, &mut ropes)?);
        }
        let mut blocks = blocks.into_iter();
        let blocks = ModuleList::new(&blk, cfg.n_layers, |_, _| blocks.next().expect("one block per layer"));
        let head = if tied_output { "token_embd" } else { "output" };
        Ok(Decoder {
            token_embd: nn::Embedding::new(&reg.child("token_embd"), cfg.vocab_size, cfg.hidden),
            output_norm: Norm::new(
                &reg.child("output_norm"),
                cfg.hidden,
                cfg.norm_eps,
                NormKind::Rms { offset: cfg.rms_offset },
            ),
            output: nn::Linear::no_bias(&reg.child(head), cfg.hidden, cfg.vocab_size),
            tied: tied_output,
            table: None,
            blocks,
            cfg: Arc::new(cfg),
            family,
            reg,
            precision: MatmulPrecision::default(),
            workspaces: Arc::default(),
        })
    }

    /// Build from a GGUF parameter file: the family from `general.architecture`, its
    /// configuration from the metadata, then a checked load of every weight, repacked for
    /// the fast kernels.
    pub fn from_file(file: &ParameterFile) -> Result<Decoder> {
        Decoder::from_file_with(file, WeightOptions { pack: true, release_mapped: true })
    }

    /// [`Decoder::from_file`] with chosen weight options.
    pub fn from_file_with(file: &ParameterFile, opts: WeightOptions) -> Result<Decoder> {
        Decoder::build(file, opts, |_| {})
    }

    /// Build from a Hugging Face folder (`config.json`, safetensors, see [`hf`]): weights as
    /// stored (f16/bf16 matrices kept in 16 bits), or quantised on load to `quantize` and packed like
    /// a GGUF file's.
    ///
    /// [`hf`]: crate::models::hf
    pub fn from_folder(dir: &std::path::Path, quantize: Option<WeightFormat>) -> Result<Decoder> {
        let folder = crate::models::hf::open_decoder(dir, quantize)?;
        let fc = folder.config;
        Decoder::build(&folder.file, WeightOptions { pack: true, release_mapped: true }, |cfg| {
            // Transformers rotates the two halves of each head; Gemma's norms hold w, not 1 + w.
            cfg.rope_layout = RopeLayout::HalfSplit;
            cfg.rms_offset = fc.rms_offset;
            if let Some(s) = fc.attn_scale {
                cfg.attn_scale = s;
            }
        })
    }

    /// The family's configuration from `file`'s metadata, adjusted by `adjust`, then the
    /// model declared, loaded and prepared.
    fn build(file: &ParameterFile, opts: WeightOptions, adjust: impl FnOnce(&mut DecoderConfig)) -> Result<Decoder> {
        let meta = Meta::new(file.metadata())?;
        let family = families::for_arch(meta.arch)?;
        let mut cfg = (family.config)(&meta)?;
        adjust(&mut cfg);
        let mut model = Decoder::new(cfg, family, !file.contains("output.weight"))?;
        model.load(file)?;
        model.prepare(opts)?;
        Ok(model)
    }

    /// Turn the loaded parameters into compute-ready weights (once, after `load`):
    /// quantised matrices repacked for the fast kernels where their format allows
    /// (per matrix: one that cannot be packed keeps its own layout), q|k|v and gate|up
    /// stacked into one matmul each, norms in f32.
    pub fn prepare(&mut self, opts: WeightOptions) -> Result<()> {
        for b in self.blocks.iter() {
            b.prepare(opts)?;
        }
        self.output.prepare(opts)?;
        self.output_norm.prepare()?;
        if opts.release_mapped {
            // Reading a page maps its neighbours too (fault-around), some of them in
            // matrices packed and released before: one more pass drops those.
            for p in self.params() {
                if p.is_loaded() && p.name() != self.token_embd.weight().name() {
                    p.get()?.release_mapped_pages();
                }
            }
            if self.tied {
                self.token_embd.weight().get()?.release_mapped_pages();
            }
        }
        self.table = if self.tied {
            None
        } else {
            let t = self.token_embd.weight().get()?;
            // One row per token from here on: keep the OS from reading ahead around each.
            t.advise_random_access();
            Some(Arc::new(Weight::new(&[&t], "token_embd", WeightOptions { pack: false, release_mapped: false })?))
        };
        Ok(())
    }

    /// Whether every matmul weight is in the packed layout.
    pub fn is_packed(&self) -> bool {
        let packed = |l: &nn::Linear| l.prepared_weight().map(|w| w.is_packed()).unwrap_or(false);
        packed(&self.output) && self.blocks.iter().all(|b| packed(&b.attn.qkv) && packed(&b.mlp.gate_up))
    }

    /// The same model computing its matmuls (every layer and the output head) at
    /// `precision`; the default is [`MatmulPrecision::Precise`].
    pub fn with_precision(mut self, precision: MatmulPrecision) -> Self {
        self.precision = precision;
        let blocks: Vec<Block> = self.blocks.iter().map(|b| b.clone().with_precision(precision)).collect();
        let mut it = blocks.into_iter();
        self.blocks = ModuleList::new(self.blocks.registry(), self.blocks.len(), |_, _| it.next().expect("same count"));
        self
    }

    pub fn precision(&self) -> MatmulPrecision {
        self.precision
    }

    pub fn config(&self) -> &DecoderConfig {
        &self.cfg
    }

    /// The family this model belongs to.
    pub fn family(&self) -> &'static Family {
        self.family
    }

    /// Bytes one single-token decode step reads from memory when `pos` positions are
    /// cached in `kv` (F32 or F16): every matmul weight as prepared (packed or not), the
    /// output head, and the keys and values each layer attends to (a sliding-window layer
    /// only its window). Decode is bound by this traffic: divided into the machine's read
    /// bandwidth it gives the fastest decode possible.
    pub fn decode_bytes(&self, pos: usize, kv: DType) -> Result<usize> {
        let mut bytes = self.output.prepared_weight()?.nbytes();
        let kv_row = self.cfg.kv_dim() * if kv == DType::F16 { 2 } else { 4 };
        for b in self.blocks.iter() {
            for l in [&b.attn.qkv, &b.attn.output, &b.mlp.gate_up, &b.mlp.down] {
                bytes += l.prepared_weight()?.nbytes();
            }
            let seen = b.attn.window.map_or(pos + 1, |w| (pos + 1).min(w));
            bytes += 2 * seen * kv_row;
        }
        Ok(bytes)
    }

    /// The transformer blocks (each an [`nn::Module`] that can be forked).
    pub fn blocks(&self) -> &ModuleList<Block> {
        &self.blocks
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
        let windows: Vec<Option<usize>> = self.blocks.iter().map(|b| b.attn.window).collect();
        KvCache::with_windows(&windows, capacity, self.cfg.kv_dim(), dtype)
    }

    /// Run `ids` (the next tokens of the sequence in `cache`) and return the logits
    /// `[vocab]` after the last one. The cache advances by `ids.len()`.
    pub fn forward_tokens(&self, ids: &[u32], cache: &mut KvCache) -> Result<Tensor> {
        self.check_step(ids, cache)?;
        let logits = self.forward_steps(ids, &mut [(ids.len(), cache)], true)?;
        logits.reshape(&[self.cfg.vocab_size])
    }

    /// Like [`Decoder::forward_tokens`] but returns logits for every position, `[T, vocab]`.
    pub fn forward_all_logits(&self, ids: &[u32], cache: &mut KvCache) -> Result<Tensor> {
        self.check_step(ids, cache)?;
        self.forward_steps(ids, &mut [(ids.len(), cache)], false)
    }

    /// One step of several independent sequences at once: `steps[i]` is the next tokens of
    /// the sequence in its cache (a prompt, or one generated token). Returns the logits
    /// after each sequence's last token, `[steps.len(), vocab]`; every cache advances.
    ///
    /// The sequences share each matmul (their rows stacked, so each weight is read once per
    /// step, not once per sequence) and run attention in one parallel region. Results
    /// equal separate [`Decoder::forward_tokens`] calls up to float summation order.
    pub fn forward_batch(&self, steps: &mut [(&[u32], &mut KvCache)]) -> Result<Tensor> {
        if steps.is_empty() {
            return Err(Error::invalid("forward_batch: no sequences"));
        }
        for (ids, cache) in steps.iter() {
            self.check_step(ids, cache)?;
        }
        let ids: Vec<u32> = steps.iter().flat_map(|(ids, _)| ids.iter().copied()).collect();
        let mut seqs: Vec<SeqStep<'_>> = steps.iter_mut().map(|(ids, c)| (ids.len(), &mut **c)).collect();
        self.forward_steps(&ids, &mut seqs, true)
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

    /// Embedding rows of `ids` into `x` (from the head's weight when tied).
    fn embed(&self, ids: &[u32], x: &mut [f32]) -> Result<()> {
        let table = match &self.table {
            Some(t) => t.clone(),
            None => self.output.prepared_weight()?,
        };
        for (&id, row) in ids.iter().zip(x.chunks_exact_mut(self.cfg.hidden)) {
            table.dequantize_row_into(id as usize, row)?;
        }
        if let Some(s) = self.cfg.embed_scale {
            x.iter_mut().for_each(|v| *v *= s);
        }
        Ok(())
    }

    /// Token embeddings of `ids` (scaled as the family does): `[T, hidden]`, the input of
    /// the first block.
    pub fn embed_tokens(&self, ids: &[u32]) -> Result<Tensor> {
        if let Some(&bad) = ids.iter().find(|&&i| i as usize >= self.cfg.vocab_size) {
            return Err(Error::invalid(format!("token id {bad} is outside the vocabulary ({})", self.cfg.vocab_size)));
        }
        let mut x = vec![0f32; ids.len() * self.cfg.hidden];
        self.embed(ids, &mut x)?;
        Tensor::from_vec(x, &[ids.len(), self.cfg.hidden])
    }

    /// The final norm and output head on hidden states `[T, hidden]`: logits `[T, vocab]`.
    pub fn head(&self, hidden: &Tensor) -> Result<Tensor> {
        let hd = self.cfg.hidden;
        if hidden.rank() != 2 || hidden.dims()[1] != hd {
            return Err(Error::shape("head", format!("hidden states {:?} are not [T, {hd}]", hidden.dims())));
        }
        let x = hidden.to_f32_contiguous("head")?;
        let t = hidden.dims()[0];
        let mut normed = vec![0f32; t * hd];
        self.output_norm.apply(x.as_slice::<f32>()?, &mut normed)?;
        let mut logits = Tensor::empty(&[t, self.cfg.vocab_size], DType::F32).alloc()?;
        self.output.matmul_into(&normed, t, logits.data_mut::<f32>()?, false, self.precision)?;
        Ok(logits)
    }

    /// The forward pass over plain buffers for one or more sequences (`seqs[i]`: its
    /// number of new tokens in `ids`, in order, and its cache). Per layer five parallel
    /// regions (q|k|v, attention, output projection + residual, gate|up, down +
    /// residual); the work buffers are reused across passes, so a decode step allocates
    /// only its hidden rows and logits. Returns the logits of each sequence's last row
    /// (`last_only`) or of every row.
    fn forward_steps(&self, ids: &[u32], seqs: &mut [SeqStep<'_>], last_only: bool) -> Result<Tensor> {
        let c = &*self.cfg;
        let (hd, t) = (c.hidden, ids.len());
        debug_assert_eq!(t, seqs.iter().map(|s| s.0).sum::<usize>());
        let mut x = vec![0f32; t * hd];
        self.embed(ids, &mut x)?;
        let starts: Vec<usize> = seqs.iter().map(|(_, cache)| cache.len()).collect();
        let mut ws = self.workspaces.lock().unwrap_or_else(|e| e.into_inner()).pop().unwrap_or_default();
        let result = (|| -> Result<Tensor> {
            for (l, b) in self.blocks.iter().enumerate() {
                b.forward_rows(&mut x, seqs, &starts, l, &mut ws)?;
            }
            for (n, cache) in seqs.iter_mut() {
                cache.advance(*n);
            }
            // The rows the head reads (each sequence's last, or all) and their norms, in the
            // work buffers: the logits are the step's only allocation of their size.
            let rows: &[f32] = if last_only {
                ws.q.resize(ws.q.len().max(seqs.len() * hd), 0.0);
                let mut r0 = 0;
                for (i, (n, _)) in seqs.iter().enumerate() {
                    r0 += *n;
                    ws.q[i * hd..(i + 1) * hd].copy_from_slice(&x[(r0 - 1) * hd..r0 * hd]);
                }
                &ws.q[..seqs.len() * hd]
            } else {
                &x
            };
            let m = rows.len() / hd;
            ws.h.resize(ws.h.len().max(rows.len()), 0.0);
            let normed = &mut ws.h[..rows.len()];
            self.output_norm.apply(rows, normed)?;
            let mut logits = Tensor::empty(&[m, c.vocab_size], DType::F32).alloc()?;
            self.output.matmul_into(normed, m, logits.data_mut::<f32>()?, false, self.precision)?;
            Ok(logits)
        })();
        self.workspaces.lock().unwrap_or_else(|e| e.into_inner()).push(ws);
        result
    }
}

impl Module for Decoder {
    fn registry(&self) -> &Registry {
        &self.reg
    }

    /// `inputs[0]`: token ids (I32, `[T]`); returns logits `[T, vocab]` computed with
    /// a fresh cache (a whole prompt at once).
    fn forward(&self, inputs: &[Tensor]) -> Result<Vec<Tensor>> {
        let ids = inputs.first().ok_or_else(|| Error::invalid("a decoder takes token ids as its input"))?;
        let ids: Vec<u32> = ids
            .to_vec::<i32>()?
            .into_iter()
            .map(|i| u32::try_from(i).map_err(|_| Error::invalid(format!("negative token id {i}"))))
            .collect::<Result<_>>()?;
        let mut cache = self.new_cache(ids.len())?;
        Ok(vec![self.forward_all_logits(&ids, &mut cache)?])
    }
}
