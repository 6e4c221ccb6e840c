//! Hugging Face model folders (`config.json`, `model.safetensors` or shards with their
//! index, `tokenizer.json`, `tokenizer_config.json`, `generation_config.json`) as decoder
//! models. The folder is translated into what a GGUF file of the same model holds: its
//! tensors under GGUF names and its hyperparameters as GGUF metadata keys, so every family
//! reads one description. What GGUF converters change in the weights themselves is applied
//! to the configuration instead: RoPE rotates the two halves of each head (the converter
//! permutes LLaMA's q/k rows for interleaved pairs), and Gemma's RMSNorm weights are
//! stored as `w`, not `1 + w`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde_json::Value;

use crate::kernels::quant::WeightFormat;
use crate::params::{MetaValue, ParameterFile};
use crate::tensor::{DType, MemType, Tensor};
use crate::{Error, Result};

/// The model types this loader knows and the family each maps to.
const MODEL_TYPES: [(&str, &str); 6] = [
    ("llama", "llama"),
    ("mistral", "llama"),
    ("qwen2", "qwen2"),
    ("qwen3", "qwen3"),
    ("phi3", "phi3"),
    ("gemma3_text", "gemma3"),
];

/// What the folder's configuration says beyond GGUF's keys.
#[derive(Clone, Debug, PartialEq)]
pub struct FolderConfig {
    /// The family (`general.architecture` of the translated metadata).
    pub arch: &'static str,
    /// Added to stored RMSNorm weights (Gemma: 1).
    pub rms_offset: f32,
    /// Query scale `1 / sqrt(query_pre_attn_scalar)` when the config gives one.
    pub attn_scale: Option<f32>,
}

/// A decoder folder read as a GGUF-named parameter file.
pub struct Folder {
    pub file: ParameterFile,
    pub config: FolderConfig,
}

fn read_json(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(format!("{}: cannot read", path.display()), e))?;
    serde_json::from_str(&text).map_err(|e| Error::format(path.display().to_string(), format!("invalid JSON: {e}")))
}

/// `path`'s JSON, or `None` when the file does not exist.
pub(crate) fn read_json_opt(path: &Path) -> Result<Option<Value>> {
    if path.exists() {
        read_json(path).map(Some)
    } else {
        Ok(None)
    }
}

/// Whether `dir` looks like a Hugging Face model folder.
pub fn is_folder(dir: &Path) -> bool {
    dir.is_dir() && dir.join("config.json").is_file()
}

/// Typed reads of `config.json`, with errors naming the key.
struct Config<'a> {
    v: &'a Value,
}

impl Config<'_> {
    fn err(&self, msg: impl std::fmt::Display) -> Error {
        Error::invalid(format!("config.json: {msg}"))
    }

    fn opt_u64(&self, key: &str) -> Result<Option<u64>> {
        match self.v.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(x) => x.as_u64().map(Some).ok_or_else(|| self.err(format!("'{key}' is {x}, not a count"))),
        }
    }

    fn u64(&self, key: &str) -> Result<u64> {
        self.opt_u64(key)?.ok_or_else(|| self.err(format!("missing '{key}'")))
    }

    fn opt_f64(&self, key: &str) -> Result<Option<f64>> {
        opt_f64(self.v, key).map_err(|m| self.err(m))
    }
}

fn opt_f64(v: &Value, key: &str) -> std::result::Result<Option<f64>, String> {
    match v.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(x) => x.as_f64().map(Some).ok_or_else(|| format!("'{key}' is {x}, not a number")),
    }
}

/// RoPE settings of one kind of layer: (base, linear scaling factor), from transformers
/// 5's `rope_parameters` (flat, or per layer type) or 4's `rope_theta` + `rope_scaling`.
fn rope_of(c: &Config<'_>, layer_type: &str) -> Result<(Option<f64>, f64, Option<f64>)> {
    let params = match c.v.get("rope_parameters") {
        Some(p) if p.get(layer_type).is_some() => p.get(layer_type),
        Some(p) if p.is_object() => Some(p),
        _ => None,
    };
    let scaling = params.or_else(|| c.v.get("rope_scaling").filter(|s| !s.is_null()));
    let theta = match params.map(|p| opt_f64(p, "rope_theta")).transpose().map_err(|m| c.err(m))?.flatten() {
        Some(t) => Some(t),
        None => c.opt_f64("rope_theta")?,
    };
    let partial = match params.map(|p| opt_f64(p, "partial_rotary_factor")).transpose().map_err(|m| c.err(m))?.flatten()
    {
        Some(f) => Some(f),
        None => c.opt_f64("partial_rotary_factor")?,
    };
    let mut factor = 1.0;
    if let Some(s) = scaling {
        let kind = s.get("rope_type").or_else(|| s.get("type")).and_then(Value::as_str).unwrap_or("default");
        match kind {
            "default" => {}
            "linear" => factor = opt_f64(s, "factor").map_err(|m| c.err(m))?.unwrap_or(1.0),
            other => return Err(c.err(format!("RoPE scaling '{other}' is not supported (supported: default, linear)"))),
        }
    }
    Ok((theta, factor, partial))
}

/// GGUF metadata of a decoder's `config.json`, and what GGUF keys cannot say.
pub fn translate_config(v: &Value) -> Result<(BTreeMap<String, MetaValue>, FolderConfig)> {
    let c = Config { v };
    let model_type = v.get("model_type").and_then(Value::as_str).ok_or_else(|| c.err("missing 'model_type'"))?;
    if model_type == "gemma3" {
        return Err(c.err(
            "model_type 'gemma3' is the multimodal Gemma 3 (text_config inside): only its text-only \
             form ('gemma3_text', Gemma3ForCausalLM) is supported",
        ));
    }
    let Some(&(_, arch)) = MODEL_TYPES.iter().find(|(t, _)| *t == model_type) else {
        let known: Vec<&str> = MODEL_TYPES.iter().map(|(t, _)| *t).collect();
        return Err(c.err(format!("model_type '{model_type}' is not supported (supported: {})", known.join(", "))));
    };
    let mut m = BTreeMap::new();
    let mut put = |k: &str, v: MetaValue| {
        let key = if k.starts_with("general.") { k.to_string() } else { format!("{arch}.{k}") };
        m.insert(key, v);
    };
    put("general.architecture", MetaValue::Str(arch.into()));
    let hidden = c.u64("hidden_size")?;
    let heads = c.u64("num_attention_heads")?;
    put("embedding_length", MetaValue::UInt(hidden));
    put("feed_forward_length", MetaValue::UInt(c.u64("intermediate_size")?));
    put("block_count", MetaValue::UInt(c.u64("num_hidden_layers")?));
    put("attention.head_count", MetaValue::UInt(heads));
    put("attention.head_count_kv", MetaValue::UInt(c.opt_u64("num_key_value_heads")?.unwrap_or(heads)));
    put("vocab_size", MetaValue::UInt(c.u64("vocab_size")?));
    put("context_length", MetaValue::UInt(c.u64("max_position_embeddings")?));
    let head_dim = c.opt_u64("head_dim")?;
    if let Some(d) = head_dim {
        put("attention.key_length", MetaValue::UInt(d));
        put("attention.value_length", MetaValue::UInt(d));
    }
    let eps = c.opt_f64("rms_norm_eps")?.ok_or_else(|| c.err("missing 'rms_norm_eps'"))?;
    put("attention.layer_norm_rms_epsilon", MetaValue::Float(eps));
    let main = if arch == "gemma3" { "full_attention" } else { "" };
    let (theta, factor, partial) = rope_of(&c, main)?;
    if let Some(t) = theta {
        put("rope.freq_base", MetaValue::Float(t));
    }
    if factor != 1.0 {
        put("rope.scaling.type", MetaValue::Str("linear".into()));
        put("rope.scaling.factor", MetaValue::Float(factor));
    }
    if let Some(f) = partial.filter(|&f| f != 1.0) {
        let d = head_dim.unwrap_or(hidden / heads.max(1)) as f64;
        put("rope.dimension_count", MetaValue::UInt((d * f).round() as u64));
    }
    // Qwen2 writes a window it does not use unless `use_sliding_window`.
    let window_used = v.get("use_sliding_window").and_then(Value::as_bool).unwrap_or(true);
    if let Some(w) = c.opt_u64("sliding_window")?.filter(|_| window_used) {
        put("attention.sliding_window", MetaValue::UInt(w));
    }
    let mut cfg = FolderConfig { arch, rms_offset: 0.0, attn_scale: None };
    if arch == "gemma3" {
        let local = match v.get("rope_local_base_freq") {
            Some(_) => c.opt_f64("rope_local_base_freq")?,
            None => rope_of(&c, "sliding_attention")?.0,
        };
        if let Some(t) = local {
            put("rope.freq_base_swa", MetaValue::Float(t));
        }
        if let Some(layers) = v.get("layer_types").and_then(Value::as_array) {
            // The family wires the pattern every Gemma 3 checkpoint has: five local
            // layers, then a global one.
            let expected = |i: usize| if (i + 1).is_multiple_of(6) { "full_attention" } else { "sliding_attention" };
            if let Some(i) = (0..layers.len()).find(|&i| layers[i].as_str() != Some(expected(i))) {
                return Err(c.err(format!(
                    "layer_types[{i}] is {}; only the pattern of five sliding-window layers and one \
                     global layer is supported",
                    layers[i]
                )));
            }
        }
        cfg.rms_offset = 1.0;
        cfg.attn_scale = c.opt_f64("query_pre_attn_scalar")?.map(|s| 1.0 / (s as f32).sqrt());
    }
    Ok((m, cfg))
}

/// The GGUF name of a decoder tensor's Hugging Face name, `None` for tensors a decoder
/// does not use (RoPE's precomputed frequencies in old checkpoints).
pub fn gguf_name(hf: &str, arch: &str) -> Option<String> {
    if hf.ends_with("rotary_emb.inv_freq") {
        return None;
    }
    let name = hf.strip_prefix("model.").unwrap_or(hf);
    let top = match name {
        "embed_tokens.weight" => Some("token_embd.weight"),
        "norm.weight" => Some("output_norm.weight"),
        "lm_head.weight" => Some("output.weight"),
        _ => None,
    };
    if let Some(t) = top {
        return Some(t.to_string());
    }
    let rest = name.strip_prefix("layers.")?;
    let (layer, part) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let (module, suffix) = part.rsplit_once('.')?;
    let gemma = arch == "gemma3";
    let mapped = match module {
        "input_layernorm" => "attn_norm",
        "post_attention_layernorm" if gemma => "post_attention_norm",
        "post_attention_layernorm" => "ffn_norm",
        "pre_feedforward_layernorm" if gemma => "ffn_norm",
        "post_feedforward_layernorm" if gemma => "post_ffw_norm",
        "self_attn.q_proj" => "attn_q",
        "self_attn.k_proj" => "attn_k",
        "self_attn.v_proj" => "attn_v",
        "self_attn.qkv_proj" => "attn_qkv",
        "self_attn.o_proj" => "attn_output",
        "self_attn.q_norm" => "attn_q_norm",
        "self_attn.k_norm" => "attn_k_norm",
        "mlp.gate_proj" => "ffn_gate",
        "mlp.up_proj" => "ffn_up",
        "mlp.gate_up_proj" => "ffn_up",
        "mlp.down_proj" => "ffn_down",
        _ => return Some(format!("unmapped:{hf}")),
    };
    Some(format!("blk.{layer}.{mapped}.{suffix}"))
}

/// The safetensors files of the folder: `model.safetensors`, or the shards its index names
/// (every tensor of the index checked to be in its shard).
pub fn open_weights(dir: &Path) -> Result<ParameterFile> {
    let single = dir.join("model.safetensors");
    if single.is_file() {
        return ParameterFile::open(&single);
    }
    let index_path = dir.join("model.safetensors.index.json");
    let Some(index) = read_json_opt(&index_path)? else {
        let hint = if dir.join("pytorch_model.bin").exists() {
            " (PyTorch .bin checkpoints are not read: convert them to safetensors)"
        } else {
            ""
        };
        return Err(Error::invalid(format!(
            "{}: no model.safetensors and no model.safetensors.index.json{hint}",
            dir.display()
        )));
    };
    let bad = || Error::format(index_path.display().to_string(), "'weight_map' is not an object of file names");
    let map = index.get("weight_map").and_then(Value::as_object).ok_or_else(bad)?;
    let mut shards = BTreeSet::new();
    for f in map.values() {
        let f = f.as_str().ok_or_else(bad)?;
        if f.contains('/') || f.contains('\\') || f.starts_with('.') {
            return Err(Error::format(
                index_path.display().to_string(),
                format!("shard name '{f}' is not a file name"),
            ));
        }
        shards.insert(f.to_string());
    }
    let mut all = ParameterFile::create();
    for shard in &shards {
        let file = ParameterFile::open(dir.join(shard))?;
        for (name, t) in file.iter() {
            all.push(name, t.clone())?;
        }
    }
    for (name, shard) in map {
        if !all.contains(name) {
            return Err(Error::invalid(format!("{}: tensor '{name}' is not in {shard}", index_path.display())));
        }
    }
    Ok(all)
}

/// Quantise a matrix to `format`. Rows that do not hold whole 256-weight blocks of a K
/// format take Q8_0 instead (SmolLM2's 576-wide rows in Q4_K would otherwise stay in f32
/// and run 4x slower); rows that do not hold whole blocks of that either stay as they are.
fn quantized(t: &Tensor, format: WeightFormat, name: &str) -> Result<Tensor> {
    let dims = t.dims();
    let fits = |f: WeightFormat| dims.len() == 2 && dims[1].is_multiple_of(f.block_len());
    let Some(format) = [Some(format), small_block_fallback(format)].into_iter().flatten().find(|&f| fits(f)) else {
        return Ok(t.clone());
    };
    let x = t.to_f32_vec()?;
    // The stored copy is not read again: its pages of the mapped file go now, so that the
    // peak is one matrix of the file beside the quantised model, not the whole file.
    t.release_mapped_pages();
    let bytes = format.quantize(&x);
    let dtype = DType::of_weight_format(format);
    Ok(Tensor::from_bytes(&bytes, dtype, dims, MemType::ParamsNormal)?.with_name(name))
}

/// The 32-weight format a K format's matrices fall back to. llama.cpp's quantiser takes
/// Q5_0 for Q4_K, to keep files small; in memory the packed layout stores Q5_0's quants as
/// bytes (8.5 bits per weight, as Q8_0), so Q8_0 costs no more and rounds 8x finer
/// (SmolLM2 through Q4_K with Q5_0: mean logit error 0.70, with Q8_0: see tests/golden.rs).
fn small_block_fallback(format: WeightFormat) -> Option<WeightFormat> {
    format.is_k_quant().then_some(WeightFormat::Q8_0)
}

/// Read a decoder folder: weights renamed to GGUF names (quantised to `quantize` when
/// given: every matrix whose rows hold whole blocks), metadata from `config.json`.
pub fn open_decoder(dir: &Path, quantize: Option<WeightFormat>) -> Result<Folder> {
    let config = read_json(&dir.join("config.json"))?;
    let (metadata, cfg) = translate_config(&config)?;
    let weights = open_weights(dir)?;
    let mut file = ParameterFile::create();
    let mut unmapped = Vec::new();
    for (hf, t) in weights.iter() {
        let Some(name) = gguf_name(hf, cfg.arch) else { continue };
        if name.starts_with("unmapped:") {
            unmapped.push(hf.to_string());
            continue;
        }
        if !matches!(t.dtype(), DType::F32 | DType::F16 | DType::BF16) {
            return Err(Error::invalid(format!("tensor '{hf}' is {}; expected f32, f16 or bf16", t.dtype())));
        }
        let t = match quantize {
            Some(f) if name.ends_with(".weight") => quantized(t, f, &name)?,
            _ => t.clone(),
        };
        file.push(name, t)?;
    }
    if !unmapped.is_empty() {
        unmapped.truncate(5);
        return Err(Error::invalid(format!(
            "{}: tensors a '{}' decoder does not have: {}",
            dir.display(),
            cfg.arch,
            unmapped.join(", ")
        )));
    }
    for (k, v) in metadata {
        file.set_metadata(k, v);
    }
    Ok(Folder { file, config: cfg })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn k_formats_fall_back_to_q8_0_for_rows_of_partial_blocks() {
        let t = |k: usize| Tensor::from_vec((0..4 * k).map(|i| (i as f32).sin()).collect(), &[4, k]).unwrap();
        let q = |k: usize, f: WeightFormat| quantized(&t(k), f, "w").unwrap().dtype();
        assert_eq!(q(512, WeightFormat::Q4_K), DType::Q4_K);
        assert_eq!(q(576, WeightFormat::Q4_K), DType::Q8_0);
        assert_eq!(q(576, WeightFormat::Q4_0), DType::Q4_0);
        assert_eq!(q(100, WeightFormat::Q4_K), DType::F32);
        assert_eq!(q(100, WeightFormat::Q8_0), DType::F32);
    }

    #[test]
    fn names_map_to_gguf_names() {
        assert_eq!(gguf_name("model.embed_tokens.weight", "llama").unwrap(), "token_embd.weight");
        assert_eq!(gguf_name("model.layers.3.self_attn.q_proj.bias", "qwen2").unwrap(), "blk.3.attn_q.bias");
        assert_eq!(
            gguf_name("model.layers.0.post_attention_layernorm.weight", "llama").unwrap(),
            "blk.0.ffn_norm.weight"
        );
        assert_eq!(
            gguf_name("model.layers.0.post_attention_layernorm.weight", "gemma3").unwrap(),
            "blk.0.post_attention_norm.weight"
        );
        assert_eq!(gguf_name("model.layers.1.mlp.gate_up_proj.weight", "phi3").unwrap(), "blk.1.ffn_up.weight");
        assert_eq!(gguf_name("model.layers.1.self_attn.rotary_emb.inv_freq", "llama"), None);
        assert!(gguf_name("model.layers.1.mlp.experts.weight", "llama").unwrap().starts_with("unmapped:"));
    }

    #[test]
    fn config_errors_name_the_key() {
        let bad = |v: Value, needle: &str| {
            let e = translate_config(&v).unwrap_err().to_string();
            assert!(e.contains(needle) && e.contains("config.json"), "{e}");
        };
        bad(serde_json::json!({}), "model_type");
        bad(serde_json::json!({"model_type": "bert"}), "'bert' is not supported");
        bad(serde_json::json!({"model_type": "gemma3"}), "text-only");
        bad(serde_json::json!({"model_type": "llama", "hidden_size": "big"}), "'hidden_size'");
        let mut ok = serde_json::json!({"model_type": "llama", "hidden_size": 64, "num_attention_heads": 4,
            "intermediate_size": 128, "num_hidden_layers": 2, "vocab_size": 10, "max_position_embeddings": 32,
            "rms_norm_eps": 1e-5, "rope_scaling": {"rope_type": "yarn", "factor": 4.0}});
        bad(ok.clone(), "'yarn' is not supported");
        ok["rope_scaling"] = serde_json::json!({"type": "linear", "factor": 4.0});
        let (m, _) = translate_config(&ok).unwrap();
        assert_eq!(m["llama.rope.scaling.factor"], MetaValue::Float(4.0));
    }
}
