//! `linear` with a block-quantised weight, on the blocks directly (no dequantised copy of
//! the matrix), split over output rows on the current pool. Two precisions: `Exact` keeps
//! f32 activations (scalar reference dots); `Fast` quantises them to 8 bits (SIMD kernels).

use rayon::prelude::*;

use super::MatmulPrecision;
use crate::kernels::quant::{self, WeightFormat};
use crate::tensor::{DType, Tensor};
use crate::{Error, Result};

/// `out[m, n] = x[m, :] · w[n, :]` (see [`quantized_matmul_exact`]) at `precision`.
pub(crate) fn quantized_matmul_t(
    x: &[f32],
    m: usize,
    w: &Tensor,
    out: &mut [f32],
    accumulate: bool,
    precision: MatmulPrecision,
) -> Result<()> {
    match precision {
        // The GGUF-layout kernels have no two-term path: these rare shapes stay exact.
        MatmulPrecision::Exact | MatmulPrecision::Precise => quantized_matmul_exact(x, m, w, out, accumulate),
        MatmulPrecision::Fast => {
            let fmt = weight_format(w.dtype())?;
            let (n_out, k) = (w.dims()[0], w.dims()[1]);
            if k % fmt.block_len() != 0 {
                return Err(Error::shape("linear", format!("weight row of {k} is not whole {fmt:?} blocks")));
            }
            quant::quantized_matmul(fmt, w.raw_bytes()?, n_out, k, x, m, out, accumulate);
            Ok(())
        }
    }
}

/// The kernels' format of a quantised weight's dtype.
fn weight_format(dtype: DType) -> Result<WeightFormat> {
    dtype.weight_format().ok_or_else(|| Error::dtype("quantized linear", dtype))
}

/// Output rows per parallel task.
const ROWS_PER_TASK: usize = 64;

/// `out[m, n] = x[m, :] · w[n, :]` for a quantised `w` `[n_out, k]` and contiguous f32
/// `x` `[m, k]`; `out` is `[m, n_out]` and is overwritten (or added to with `accumulate`).
/// The activations stay f32: the reference that tests/golden.rs holds to 2e-3.
fn quantized_matmul_exact(x: &[f32], m: usize, w: &Tensor, out: &mut [f32], accumulate: bool) -> Result<()> {
    let fmt = weight_format(w.dtype())?;
    let (n_out, k) = (w.dims()[0], w.dims()[1]);
    let row_bytes = w.dtype().bytes_for(k).ok_or_else(|| Error::shape("linear", "weight row is not whole blocks"))?;
    let wb = w.raw_bytes()?;
    // Parallel over blocks of output features; each task writes its columns of every row.
    let cols: Vec<(usize, Vec<f32>)> = (0..n_out.div_ceil(ROWS_PER_TASK))
        .into_par_iter()
        .map(|t| {
            let (j0, j1) = (t * ROWS_PER_TASK, ((t + 1) * ROWS_PER_TASK).min(n_out));
            let mut part = vec![0.0f32; m * (j1 - j0)];
            for j in j0..j1 {
                let wrow = &wb[j * row_bytes..(j + 1) * row_bytes];
                for i in 0..m {
                    part[i * (j1 - j0) + (j - j0)] = fmt.vec_dot_f32(wrow, &x[i * k..(i + 1) * k]);
                }
            }
            (j0, part)
        })
        .collect();
    for (j0, part) in cols {
        let width = part.len() / m.max(1);
        for i in 0..m {
            let dst = &mut out[i * n_out + j0..i * n_out + j0 + width];
            let src = &part[i * width..(i + 1) * width];
            if accumulate {
                dst.iter_mut().zip(src).for_each(|(d, s)| *d += s);
            } else {
                dst.copy_from_slice(src);
            }
        }
    }
    Ok(())
}
