//! Kernels: the arithmetic on plain slices (matmul, elementwise, norms, quantised dot
//! products). They know nothing of tensors or modules; parallel kernels use the
//! current rayon pool, which is the context's pool whenever they are called by ops.

pub mod attention;
pub mod elementwise;
pub mod half_matmul;
pub(crate) mod loop_isa;
pub mod matmul;
pub mod norm;
pub mod quant;
pub mod reduce;
pub mod rope;
pub mod rows;
pub mod softmax;
#[cfg(target_arch = "x86_64")]
pub(crate) mod vmath;
