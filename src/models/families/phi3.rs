//! Phi-3 and Phi-3.5 mini (architecture `phi3`): one fused q|k|v tensor (`attn_qkv`), one
//! fused gate|up tensor (`ffn_up`, gate first), NEOX RoPE, a sliding window from the file.
//! The long-context variants' LongRoPE (per-dimension factors) is refused by name.

use crate::kernels::rope::RopeLayout;
use crate::models::config::{DecoderConfig, Meta};
use crate::models::decoder::RopeTables;
use crate::models::families::Family;
use crate::models::layers::{Activation, Attention, Block, Mlp};
use crate::nn::Registry;
use crate::{Error, Result};

pub const PHI3: Family = Family { name: "phi3", config, block };

fn config(meta: &Meta<'_>) -> Result<DecoderConfig> {
    // The converter writes `original_context_length` for every Phi-3; LongRoPE files
    // (the 128k variants) add an attention factor and per-dimension factor tensors.
    if meta.opt_f32("rope.scaling.attn_factor")?.is_some() {
        return Err(Error::invalid(format!(
            "RoPE scaling 'longrope' ({}: the 128k-context variants) is not supported",
            meta.key("rope.scaling.attn_factor")
        )));
    }
    DecoderConfig::from_gguf(meta, RopeLayout::HalfSplit)
}

fn block(reg: &Registry, cfg: &DecoderConfig, _layer: usize, ropes: &mut RopeTables) -> Result<Block> {
    let attn = Attention::fused(reg, cfg, ropes.default_table()?);
    let mlp = Mlp::fused(reg, cfg.hidden, cfg.ffn_hidden, Activation::Silu);
    Ok(Block::new(reg, cfg, attn, mlp))
}
