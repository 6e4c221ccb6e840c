//! Kernels: the arithmetic on plain slices (matmul, elementwise, norms, quantised dot
//! products). They know nothing of tensors or modules; parallel kernels use the
//! current rayon pool, which is the context's pool whenever they are called by ops.

pub mod attention;
pub mod matmul;
pub mod quant;
