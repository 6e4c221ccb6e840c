//! Qwen2 and Qwen2.5 (architecture `qwen2`): LLaMA's block with biases on q, k and v, and
//! RoPE on the two halves of each head (GGML's NEOX layout; the converter does not permute).

use crate::kernels::rope::RopeLayout;
use crate::models::config::{DecoderConfig, Meta};
use crate::models::decoder::RopeTables;
use crate::models::families::Family;
use crate::models::layers::{Activation, Attention, Block, Mlp};
use crate::nn::Registry;
use crate::Result;

pub const QWEN2: Family = Family { name: "qwen2", config, block };

fn config(meta: &Meta<'_>) -> Result<DecoderConfig> {
    DecoderConfig::from_gguf(meta, RopeLayout::HalfSplit)
}

fn block(reg: &Registry, cfg: &DecoderConfig, _layer: usize, ropes: &mut RopeTables) -> Result<Block> {
    let attn = Attention::separate(reg, cfg, ropes.default_table()?, true);
    let mlp = Mlp::separate(reg, cfg.hidden, cfg.ffn_hidden, Activation::Silu);
    Ok(Block::new(reg, cfg, attn, mlp))
}
