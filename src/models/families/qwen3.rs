//! Qwen3 dense models (architecture `qwen3`): no q/k/v biases, an RMSNorm over each query
//! and key head before RoPE (`attn_q_norm`, `attn_k_norm`), heads whose width comes from
//! `qwen3.attention.key_length` (not hidden / heads), NEOX RoPE.

use crate::kernels::rope::RopeLayout;
use crate::models::config::{DecoderConfig, Meta};
use crate::models::decoder::RopeTables;
use crate::models::families::Family;
use crate::models::layers::{Activation, Attention, Block, Mlp, NormKind};
use crate::nn::Registry;
use crate::Result;

pub const QWEN3: Family = Family { name: "qwen3", config, block };

fn config(meta: &Meta<'_>) -> Result<DecoderConfig> {
    DecoderConfig::from_gguf(meta, RopeLayout::HalfSplit)
}

fn block(reg: &Registry, cfg: &DecoderConfig, _layer: usize, ropes: &mut RopeTables) -> Result<Block> {
    let attn = Attention::separate(reg, cfg, ropes.default_table()?, false).with_qk_norm(
        reg,
        cfg.norm_eps,
        NormKind::Rms { offset: 0.0 },
    );
    let mlp = Mlp::separate(reg, cfg.hidden, cfg.ffn_hidden, Activation::Silu);
    Ok(Block::new(reg, cfg, attn, mlp))
}
