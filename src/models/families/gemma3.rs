//! Gemma 3 (architecture `gemma3`): embeddings scaled by sqrt(hidden); RMSNorms before
//! and after attention and MLP, and over each query and key head; GELU-tanh gated MLP;
//! NEOX RoPE; every sixth layer global (base from the file), the others local (a sliding
//! window from the file, RoPE base 10000), as in the reference implementations. The GGUF
//! converter already adds Gemma's +1 to the stored norm weights (q/k norms included);
//! Hugging Face folders store `w` and set `rms_offset` to 1.

use crate::kernels::rope::RopeLayout;
use crate::models::config::{DecoderConfig, Meta};
use crate::models::decoder::RopeTables;
use crate::models::families::Family;
use crate::models::layers::{Activation, Attention, Block, Mlp, Norm, NormKind};
use crate::nn::Registry;
use crate::Result;

pub const GEMMA3: Family = Family { name: "gemma3", config, block };

/// One layer in this many attends globally (the last of each group).
const GLOBAL_EVERY: usize = 6;
/// RoPE base of the local (sliding-window) layers when the file does not give one
/// (`gemma3.rope.freq_base_swa`, written by newer converters).
const LOCAL_ROPE_BASE: f32 = 10_000.0;

fn config(meta: &Meta<'_>) -> Result<DecoderConfig> {
    let mut cfg = DecoderConfig::from_gguf(meta, RopeLayout::HalfSplit)?;
    cfg.embed_scale = Some((cfg.hidden as f32).sqrt());
    // Queries are scaled by 1/sqrt(query_pre_attn_scalar), which the converter leaves
    // out: it equals the head width in every Gemma 3 but the 27B.
    cfg.attn_scale = 1.0 / (cfg.head_dim as f32).sqrt();
    cfg.local_rope_theta = meta.opt_f32("rope.freq_base_swa")?.unwrap_or(LOCAL_ROPE_BASE);
    Ok(cfg)
}

fn block(reg: &Registry, cfg: &DecoderConfig, layer: usize, ropes: &mut RopeTables) -> Result<Block> {
    let global = (layer + 1).is_multiple_of(GLOBAL_EVERY);
    let rope = if global { ropes.default_table()? } else { ropes.get(cfg.local_rope_theta)? };
    let mut attn = Attention::separate(reg, cfg, rope, false).with_qk_norm(
        reg,
        cfg.norm_eps,
        NormKind::Rms { offset: cfg.rms_offset },
    );
    attn.window = if global { None } else { cfg.sliding_window };
    let mlp = Mlp::separate(reg, cfg.hidden, cfg.ffn_hidden, Activation::GeluTanh);
    let mut block = Block::new(reg, cfg, attn, mlp);
    block.post_attn_norm = Some(Norm::rms(&reg.child("post_attention_norm"), cfg));
    block.post_ffn_norm = Some(Norm::rms(&reg.child("post_ffw_norm"), cfg));
    Ok(block)
}
