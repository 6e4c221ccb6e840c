//! The decoder families: each file maps one architecture's tensor names and
//! hyperparameters onto the shared layers (`models::layers`) and says how a block is
//! wired. Adding an architecture is adding a file here and a line to [`FAMILIES`].

use crate::models::config::{DecoderConfig, Meta};
use crate::models::decoder::RopeTables;
use crate::models::layers::Block;
use crate::nn::Registry;
use crate::{Error, Result};

mod gemma3;
mod llama;
mod phi3;
mod qwen2;
mod qwen3;

/// One architecture: how to read its configuration and build its blocks.
pub struct Family {
    /// The family's name, as `general.architecture` spells it.
    pub name: &'static str,
    /// Hyperparameters from the file's metadata.
    pub config: fn(&Meta<'_>) -> Result<DecoderConfig>,
    /// Block `layer`, its parameters declared under `reg` (`blk.N`).
    pub block: fn(reg: &Registry, cfg: &DecoderConfig, layer: usize, ropes: &mut RopeTables) -> Result<Block>,
}

impl std::fmt::Debug for Family {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Family({})", self.name)
    }
}

/// Every supported decoder family.
pub const FAMILIES: &[&Family] = &[&llama::LLAMA, &qwen2::QWEN2, &qwen3::QWEN3, &phi3::PHI3, &gemma3::GEMMA3];

/// The family of a GGUF file's `general.architecture`.
pub fn for_arch(arch: &str) -> Result<&'static Family> {
    FAMILIES.iter().copied().find(|f| f.name == arch).ok_or_else(|| {
        let names: Vec<&str> = FAMILIES.iter().map(|f| f.name).collect();
        Error::invalid(format!("architecture '{arch}' is not supported (supported: {})", names.join(", ")))
    })
}
