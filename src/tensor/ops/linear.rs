//! Matrix products: `matmul` (batched, broadcasting leading dims) and `linear`
//! (`x @ W^T + b`, the layer every transformer is made of).

use crate::context::trace::Span;
use crate::kernels::half_matmul::{half_matmul_cols, HalfMatrix};
use crate::kernels::matmul::{matmul_f32, MatRef};
use crate::tensor::{aligned_half, half_kind, half_slice, DType, Tensor};
use crate::{Error, Result};

/// How a matmul with a block-quantised weight treats its activations.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum MatmulPrecision {
    /// f32 activations against the dequantised blocks: the same function as a reference
    /// that dequantises the weight, up to summation order (slow, scalar).
    Exact,
    /// Activations quantised on the fly to two 8-bit terms per value (the second holds
    /// what the first rounds away), integer dot products in SIMD: a relative error of
    /// about 1/254² per activation block, twice [`MatmulPrecision::Fast`]'s dot
    /// instructions for the same weight traffic (the two integer dots are combined before
    /// the f32 work, so that is not doubled): about 0.65x its prefill speed, 0.85x in decode.
    #[default]
    Precise,
    /// Activations quantised on the fly to one 8-bit term (as llama.cpp does): a relative
    /// error of about 1/254 per activation block; the fastest prefill.
    Fast,
}

impl Tensor {
    /// `x @ w^T + b` over the last dimension: `x` is `[..., in]`, `w` is `[out, in]`,
    /// `b` is `[out]`; the result is `[..., out]` in f32. Quantised weights use
    /// [`MatmulPrecision::Fast`]; see [`Tensor::linear_with`].
    pub fn linear(&self, w: &Tensor, b: Option<&Tensor>) -> Result<Tensor> {
        self.linear_with(w, b, MatmulPrecision::Fast)
    }

    /// [`Tensor::linear`] at a chosen precision (which only matters for quantised `w`;
    /// float weights always compute in f32, f16/bf16 ones read in their own width).
    pub fn linear_with(&self, w: &Tensor, b: Option<&Tensor>, precision: MatmulPrecision) -> Result<Tensor> {
        let _span = Span::new("op", || "linear".into());
        if w.rank() != 2 {
            return Err(Error::shape("linear", format!("weight must be [out, in], got {:?}", w.shape())));
        }
        let (n_out, n_in) = (w.dims()[0], w.dims()[1]);
        let k = *self.dims().last().ok_or_else(|| Error::shape("linear", "input is a scalar"))?;
        if k != n_in {
            return Err(Error::shape(
                "linear",
                format!("input {:?} does not end in {n_in} (weight {:?})", self.shape(), w.shape()),
            ));
        }
        if let Some(b) = b {
            if b.dims() != [n_out] {
                return Err(Error::shape("linear", format!("bias {:?} is not [{n_out}]", b.shape())));
            }
        }
        let x = self.to_f32_contiguous("linear")?;
        let m = x.elem_count() / k.max(1);
        let mut out_dims = self.dims().to_vec();
        *out_dims.last_mut().expect("rank >= 1") = n_out;
        let mut out = Tensor::zeros(&out_dims, DType::F32)?;
        let xs = x.as_slice::<f32>()?;
        let os = out.data_mut::<f32>()?;
        if let Some(b) = b {
            let bf = b.to_f32_contiguous("linear")?;
            let bs = bf.as_slice::<f32>()?;
            // On the pool when large: the first write of each fresh page faults it in.
            crate::kernels::rows::for_each_row(os, n_out, |_, row| row.copy_from_slice(bs));
        }
        if w.dtype().is_quantized() {
            // Work on the blocks: never dequantise the whole matrix per call.
            super::qlinear::quantized_matmul_t(xs, m, &w.contiguous()?, os, b.is_some(), precision)?;
        } else if half_kind(w.dtype()).is_some() {
            let w = aligned_half(w)?;
            let (kind, data) = half_slice(&w)?;
            half_matmul_cols(HalfMatrix { kind, data, rows: n_out, k }, xs, m, os, n_out, 0, b.is_some());
        } else {
            let wf = w.to_f32_contiguous("linear")?;
            let ws = wf.as_slice::<f32>()?;
            matmul_f32(MatRef::row_major(xs, m, k), MatRef::row_major(ws, n_out, k).t(), os, b.is_some());
        }
        Ok(out)
    }

    /// Matrix product over the last two dimensions, broadcasting the leading ones:
    /// `[..., m, k] @ [..., k, n] -> [..., m, n]` in f32. Transposed views are read in
    /// place (no copy).
    pub fn matmul(&self, rhs: &Tensor) -> Result<Tensor> {
        let _span = Span::new("op", || "matmul".into());
        if self.rank() < 2 || rhs.rank() < 2 {
            return Err(Error::shape(
                "matmul",
                format!("need rank >= 2, got {:?} and {:?}", self.shape(), rhs.shape()),
            ));
        }
        let (m, k) = (self.dims()[self.rank() - 2], self.dims()[self.rank() - 1]);
        let (k2, n) = (rhs.dims()[rhs.rank() - 2], rhs.dims()[rhs.rank() - 1]);
        if k != k2 {
            return Err(Error::shape(
                "matmul",
                format!("{:?} @ {:?}: inner dimensions differ", self.shape(), rhs.shape()),
            ));
        }
        let batch =
            broadcast_dims(&self.dims()[..self.rank() - 2], &rhs.dims()[..rhs.rank() - 2]).ok_or_else(|| {
                Error::shape(
                    "matmul",
                    format!("batch dims of {:?} and {:?} do not broadcast", self.shape(), rhs.shape()),
                )
            })?;
        let a = self.to_f32("matmul")?;
        let b = rhs.to_f32("matmul")?;
        let mut a_dims = batch.clone();
        a_dims.extend([m, k]);
        let mut b_dims = batch.clone();
        b_dims.extend([k, n]);
        let a = a.broadcast_as(&a_dims)?;
        let b = b.broadcast_as(&b_dims)?;
        let mut out_dims = batch.clone();
        out_dims.extend([m, n]);
        let mut out = Tensor::zeros(&out_dims, DType::F32)?;
        let n_batch: usize = batch.iter().product();
        let a_store = a.storage.bytes();
        let b_store = b.storage.bytes();
        let a_all: &[f32] = bytemuck::try_cast_slice(a_store).map_err(|e| Error::invalid(format!("matmul: {e}")))?;
        let b_all: &[f32] = bytemuck::try_cast_slice(b_store).map_err(|e| Error::invalid(format!("matmul: {e}")))?;
        let os = out.data_mut::<f32>()?;
        let r = batch.len();
        let mut idx = vec![0usize; r];
        for bi in 0..n_batch {
            let a_off = a.offset + idx.iter().zip(&a.strides).map(|(i, s)| i * s).sum::<usize>();
            let b_off = b.offset + idx.iter().zip(&b.strides).map(|(i, s)| i * s).sum::<usize>();
            let am = MatRef { data: &a_all[a_off..], rows: m, cols: k, rs: a.strides[r], cs: a.strides[r + 1] };
            let bm = MatRef { data: &b_all[b_off..], rows: k, cols: n, rs: b.strides[r], cs: b.strides[r + 1] };
            matmul_f32(am, bm, &mut os[bi * m * n..(bi + 1) * m * n], false);
            for d in (0..r).rev() {
                idx[d] += 1;
                if idx[d] < batch[d] {
                    break;
                }
                idx[d] = 0;
            }
        }
        Ok(out)
    }

    /// This tensor as f32 (converting F16/BF16; views kept as they are).
    pub fn to_f32(&self, op: &'static str) -> Result<Tensor> {
        match self.dtype() {
            DType::F32 => Ok(self.clone()),
            d if d.is_float() => Tensor::from_vec(self.to_f32_vec()?, self.dims()),
            d => Err(Error::dtype(op, d)),
        }
    }

    /// This tensor as contiguous f32.
    pub fn to_f32_contiguous(&self, op: &'static str) -> Result<Tensor> {
        self.to_f32(op)?.contiguous()
    }
}

/// NumPy broadcasting of two dimension lists, or `None` if they do not fit.
pub fn broadcast_dims(a: &[usize], b: &[usize]) -> Option<Vec<usize>> {
    let r = a.len().max(b.len());
    let mut out = vec![0; r];
    for i in 0..r {
        let da = if i + a.len() >= r { a[i + a.len() - r] } else { 1 };
        let db = if i + b.len() >= r { b[i + b.len() - r] } else { 1 };
        out[i] = match (da, db) {
            (x, y) if x == y => x,
            (1, y) => y,
            (x, 1) => x,
            _ => return None,
        };
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensor::ops::test_util::random_tensor;

    /// An f16 or bf16 weight (read in 16 bits) gives the product of its widened values.
    #[test]
    fn half_weights_equal_their_widened_copy() {
        let x = random_tensor(&[2, 5, 48], 1);
        let b = random_tensor(&[33], 2);
        for dtype in [DType::BF16, DType::F16] {
            let w = random_tensor(&[33, 48], 3).to_dtype(dtype).unwrap();
            let wide = w.to_dtype(DType::F32).unwrap();
            for bias in [None, Some(&b)] {
                let got = x.linear(&w, bias).unwrap();
                let want = x.linear(&wide, bias).unwrap();
                assert_eq!(got.dims(), [2, 5, 33]);
                for (g, w) in got.to_vec::<f32>().unwrap().iter().zip(want.to_vec::<f32>().unwrap()) {
                    assert!((g - w).abs() <= 1e-5 * (1.0 + w.abs()), "{dtype}: {g} vs {w}");
                }
            }
        }
    }
}
