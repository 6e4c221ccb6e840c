//! LLaMA 2/3, SmolLM, TinyLlama, and Mistral as GGUF files store it (architecture
//! `llama`): separate q, k, v without biases, SwiGLU, RMSNorm. The GGUF converter permutes
//! the q/k rows so that RoPE rotates interleaved pairs. A sliding window, when the file
//! gives one (`llama.attention.sliding_window`), applies to every layer.

use crate::kernels::rope::RopeLayout;
use crate::models::config::{DecoderConfig, Meta};
use crate::models::decoder::RopeTables;
use crate::models::families::Family;
use crate::models::layers::{Activation, Attention, Block, Mlp};
use crate::nn::Registry;
use crate::Result;

pub const LLAMA: Family = Family { name: "llama", config, block };

fn config(meta: &Meta<'_>) -> Result<DecoderConfig> {
    DecoderConfig::from_gguf(meta, RopeLayout::Interleaved)
}

fn block(reg: &Registry, cfg: &DecoderConfig, _layer: usize, ropes: &mut RopeTables) -> Result<Block> {
    let attn = Attention::separate(reg, cfg, ropes.default_table()?, false);
    let mlp = Mlp::separate(reg, cfg.hidden, cfg.ffn_hidden, Activation::Silu);
    Ok(Block::new(reg, cfg, attn, mlp))
}
