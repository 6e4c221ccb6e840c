//! Helpers the ops share for reading strided f32 views in place and for making fresh
//! f32 outputs. Internal to the tensor layer; no arithmetic here.

use crate::tensor::{DType, Tensor};
use crate::{Error, Result};

/// The whole storage of an f32 tensor as `f32`s (index it with the tensor's offset and
/// strides).
pub(crate) fn f32_storage<'a>(t: &'a Tensor, op: &'static str) -> Result<&'a [f32]> {
    if t.dtype() != DType::F32 {
        return Err(Error::dtype(op, t.dtype()));
    }
    bytemuck::try_cast_slice(t.storage.bytes())
        .map_err(|e| Error::invalid(format!("{op}: f32 storage is not aligned: {e}")))
}

/// Storage offset of the first element of row `r` (rows run over `outer`, the
/// dimensions before the last, in row-major order).
#[inline]
pub(crate) fn row_start(outer: &[usize], strides: &[usize], offset: usize, mut r: usize) -> usize {
    let mut pos = offset;
    for k in (0..outer.len()).rev() {
        pos += (r % outer[k]) * strides[k];
        r /= outer[k];
    }
    pos
}

/// A zero-filled f32 output of `dims` (fresh storage, so `data_mut` never copies).
pub(crate) fn f32_output(dims: &[usize]) -> Result<Tensor> {
    Tensor::zeros(dims, DType::F32)
}

/// `t` as contiguous f32, without a name, for an op to overwrite: `data_mut` on the
/// result copies only if the storage is still shared with `t` (copy on write).
pub(crate) fn f32_working_copy(t: &Tensor, op: &'static str) -> Result<Tensor> {
    let mut x = t.to_f32_contiguous(op)?;
    x.name = None;
    Ok(x)
}

/// The permutation that moves dimension `d` of a rank-`r` tensor to the end.
pub(crate) fn order_to_last(r: usize, d: usize) -> Vec<usize> {
    (0..r).filter(|&i| i != d).chain(std::iter::once(d)).collect()
}

/// The inverse of [`order_to_last`].
pub(crate) fn order_from_last(r: usize, d: usize) -> Vec<usize> {
    let fwd = order_to_last(r, d);
    let mut inv = vec![0; r];
    for (i, &f) in fwd.iter().enumerate() {
        inv[f] = i;
    }
    inv
}
