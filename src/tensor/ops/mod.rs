//! Operations on tensors: shape checks and dispatch to the `kernels` layer. Every op
//! returns `Result`; errors name the op and the shapes involved.

pub(crate) mod convert;
mod linear;
mod qlinear;

pub use linear::*;
