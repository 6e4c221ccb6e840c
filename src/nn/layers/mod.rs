//! The standard layers; each is a cheap-to-clone handle to its parameters.

mod embedding;
mod linear;
mod norm;

pub use embedding::Embedding;
pub use linear::Linear;
pub use norm::{LayerNorm, RmsNorm};
