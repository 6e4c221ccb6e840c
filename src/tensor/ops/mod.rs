//! Operations on tensors: shape checks and dispatch to the `kernels` layer. Every op
//! returns `Result`; errors name the op and the shapes involved.

mod activation;
mod binary;
mod cast;
mod concat;
pub(crate) mod convert;
mod embedding;
mod linear;
mod norm;
pub(crate) mod qlinear;
mod rope;
mod softmax;
mod strided;
#[cfg(test)]
pub(crate) mod test_util;

pub use linear::*;
pub use rope::{RopeLayout, RopeTable};
