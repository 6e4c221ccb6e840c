//! [`PackedLinear`]: one or more block-quantised weight matrices (Q4_0, Q4_1, Q8_0) stacked
//! and repacked once into the kernels' 16-row interleaved layout, then multiplied with
//! 8-bit activations. Stacking lets one parallel matmul compute e.g. q, k and v together.
//! Knows shapes and dtypes; the layout itself belongs to `kernels::quant`.

use crate::kernels::quant::{self, WeightFormat, PACK_ROWS};
use crate::tensor::{DType, MemType, Tensor};
use crate::{Error, Result};

/// Stacked, repacked quantised weights `[n_out, k]` (heap memory, `ParamsNormal`).
#[derive(Clone)]
pub struct PackedLinear {
    fmt: WeightFormat,
    dtype: DType,
    n_out: usize,
    k: usize,
    /// Output rows of each stacked matrix, in order.
    parts: Vec<usize>,
    data: Tensor,
}

impl std::fmt::Debug for PackedLinear {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PackedLinear")
            .field("dtype", &self.dtype)
            .field("n_out", &self.n_out)
            .field("k", &self.k)
            .field("parts", &self.parts)
            .finish()
    }
}

fn weight_format(d: DType) -> Option<WeightFormat> {
    match d {
        DType::Q4_0 => Some(WeightFormat::Q4_0),
        DType::Q4_1 => Some(WeightFormat::Q4_1),
        DType::Q8_0 => Some(WeightFormat::Q8_0),
        _ => None,
    }
}

impl PackedLinear {
    /// Whether [`PackedLinear::pack`] accepts these weights: all 2-D, contiguous, of one
    /// packable dtype, with one row length and row counts that are multiples of 16.
    pub fn can_pack(weights: &[&Tensor]) -> bool {
        let Some(first) = weights.first() else { return false };
        weights.iter().all(|w| {
            w.rank() == 2
                && w.is_contiguous()
                && w.dtype() == first.dtype()
                && weight_format(w.dtype()).is_some()
                && w.dims()[1] == first.dims()[1]
                && w.dims()[1] % quant::QK8 == 0
                && w.dims()[0] % PACK_ROWS == 0
        })
    }

    /// Stack `weights` (each `[n_i, k]`) along the output dimension and repack them.
    /// `name` labels the copy in the memory report. Fails with a clear error when
    /// [`PackedLinear::can_pack`] does not hold.
    pub fn pack(weights: &[&Tensor], name: &str) -> Result<PackedLinear> {
        PackedLinear::pack_with(weights, name, false)
    }

    /// [`PackedLinear::pack`] that also lets the OS drop the weights' pages of a mapped
    /// file as soon as each slice of rows is packed (see [`Tensor::release_mapped_pages`]),
    /// so that loading never holds both copies of a large matrix.
    pub fn pack_releasing(weights: &[&Tensor], name: &str) -> Result<PackedLinear> {
        PackedLinear::pack_with(weights, name, true)
    }

    fn pack_with(weights: &[&Tensor], name: &str, release: bool) -> Result<PackedLinear> {
        if !PackedLinear::can_pack(weights) {
            let desc: Vec<String> = weights.iter().map(|w| format!("{} {:?}", w.dtype(), w.dims())).collect();
            return Err(Error::invalid(format!(
                "pack {name}: needs contiguous 2-D q4_0/q4_1/q8_0 weights of one dtype and row length with \
                 row counts divisible by {PACK_ROWS}; got [{}]",
                desc.join(", ")
            )));
        }
        let dtype = weights[0].dtype();
        let fmt = weight_format(dtype).expect("checked by can_pack");
        let k = weights[0].dims()[1];
        let parts: Vec<usize> = weights.iter().map(|w| w.dims()[0]).collect();
        let n_out: usize = parts.iter().sum();
        let bytes = dtype.bytes_for(n_out * k).ok_or_else(|| Error::Overflow(format!("pack {name}: {n_out} x {k}")))?;
        let mut data = Tensor::empty(&[bytes], DType::U8).mem_type(MemType::ParamsNormal).name(name).alloc()?;
        let dst = data.data_mut::<u8>()?;
        let row_bytes = dtype.bytes_for(k).ok_or_else(|| Error::Overflow(format!("pack {name}: row of {k}")))?;
        // Slices of about 1 MiB (whole groups of rows) between releases.
        let slice_rows = ((1 << 20) / row_bytes).max(1).next_multiple_of(PACK_ROWS);
        let mut at = 0;
        for w in weights {
            let rows = w.dims()[0];
            let mut r0 = 0;
            while r0 < rows {
                let n = slice_rows.min(rows - r0);
                let part = w.narrow(0, r0, n)?;
                let src = part.raw_bytes()?;
                quant::pack_rows(fmt, src, n, k, &mut dst[at..at + src.len()]);
                if release {
                    part.release_mapped_pages();
                }
                at += src.len();
                r0 += n;
            }
        }
        Ok(PackedLinear { fmt, dtype, n_out, k, parts, data })
    }

    /// The original dtype of the weights.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Total output features (all stacked matrices).
    pub fn out_features(&self) -> usize {
        self.n_out
    }

    pub fn in_features(&self) -> usize {
        self.k
    }

    /// Output features of each stacked matrix.
    pub fn parts(&self) -> &[usize] {
        &self.parts
    }

    /// `out[m, n_out] (+)= x[m, k] · W^T` on plain slices (the model's hot path).
    pub fn matmul_into(&self, x: &[f32], m: usize, out: &mut [f32], accumulate: bool) -> Result<()> {
        if x.len() != m * self.k || out.len() != m * self.n_out {
            return Err(Error::shape(
                "packed linear",
                format!(
                    "input of {} values and output of {} for {m} rows of {} -> {}",
                    x.len(),
                    out.len(),
                    self.k,
                    self.n_out
                ),
            ));
        }
        quant::packed_matmul(self.fmt, self.data.as_slice::<u8>()?, self.n_out, self.k, x, m, out, accumulate);
        Ok(())
    }

    /// `x [..., k]` → `[..., n_out]` (all stacked outputs side by side).
    pub fn apply(&self, x: &Tensor) -> Result<Tensor> {
        let dims = x.dims();
        if dims.last() != Some(&self.k) {
            return Err(Error::shape("packed linear", format!("input {dims:?} does not end in {}", self.k)));
        }
        let x = x.to_f32_contiguous("packed linear")?;
        let m = x.elem_count() / self.k.max(1);
        let mut out_dims = dims.to_vec();
        *out_dims.last_mut().expect("rank >= 1") = self.n_out;
        let mut out = Tensor::empty(&out_dims, DType::F32).alloc()?;
        self.matmul_into(x.as_slice::<f32>()?, m, out.data_mut::<f32>()?, false)?;
        Ok(out)
    }

    /// Row `row` of the stacked matrix, dequantised.
    pub fn dequantize_row(&self, row: usize) -> Result<Vec<f32>> {
        let mut out = vec![0f32; self.k];
        self.dequantize_row_into(row, &mut out)?;
        Ok(out)
    }

    /// Row `row` of the stacked matrix, dequantised into `out` (`in_features` values): an
    /// embedding lookup when the matrix is a tied output head.
    pub fn dequantize_row_into(&self, row: usize, out: &mut [f32]) -> Result<()> {
        if row >= self.n_out || out.len() != self.k {
            return Err(Error::invalid(format!(
                "packed linear: row {row} of {} into {} values (rows have {})",
                self.n_out,
                out.len(),
                self.k
            )));
        }
        quant::dequantize_packed_row(self.fmt, self.data.as_slice::<u8>()?, self.n_out, self.k, row, out);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensor::ops::MatmulPrecision;
    use rand::{Rng, SeedableRng};

    fn q_weight(dtype: DType, n: usize, k: usize, r: &mut impl Rng) -> Tensor {
        let w: Vec<f32> = (0..n * k).map(|_| r.random_range(-1.0..1.0)).collect();
        let bytes = match dtype {
            DType::Q4_0 => quant::quantize_q4_0(&w),
            DType::Q4_1 => quant::quantize_q4_1(&w),
            _ => quant::quantize_q8_0(&w),
        };
        Tensor::from_bytes(&bytes, dtype, &[n, k], MemType::ParamsNormal).unwrap()
    }

    #[test]
    fn stacked_packed_equals_separate_fast_linears() {
        let mut r = rand::rngs::StdRng::seed_from_u64(5);
        for dtype in [DType::Q4_0, DType::Q4_1, DType::Q8_0] {
            let (a, b) = (q_weight(dtype, 32, 64, &mut r), q_weight(dtype, 16, 64, &mut r));
            let p = PackedLinear::pack(&[&a, &b], "ab").unwrap();
            assert_eq!((p.out_features(), p.in_features(), p.parts()), (48, 64, &[32usize, 16][..]));
            let x = Tensor::from_vec((0..3 * 64).map(|_| r.random_range(-2.0f32..2.0)).collect::<Vec<_>>(), &[3, 64])
                .unwrap();
            let got = p.apply(&x).unwrap().to_vec::<f32>().unwrap();
            let ya = x.linear_with(&a, None, MatmulPrecision::Fast).unwrap().to_vec::<f32>().unwrap();
            let yb = x.linear_with(&b, None, MatmulPrecision::Fast).unwrap().to_vec::<f32>().unwrap();
            for i in 0..3 {
                let want: Vec<f32> =
                    ya[i * 32..(i + 1) * 32].iter().chain(&yb[i * 16..(i + 1) * 16]).copied().collect();
                for (g, w) in got[i * 48..(i + 1) * 48].iter().zip(&want) {
                    assert!((g - w).abs() <= 1e-4 * (1.0 + w.abs()), "{dtype}: {g} vs {w}");
                }
            }
            let row = p.dequantize_row(40).unwrap();
            assert_eq!(row, b.to_f32_vec().unwrap()[8 * 64..9 * 64]);
        }
    }

    #[test]
    fn refuses_what_it_cannot_pack() {
        let mut r = rand::rngs::StdRng::seed_from_u64(6);
        let a = q_weight(DType::Q4_1, 32, 64, &mut r);
        let odd = q_weight(DType::Q4_1, 8, 64, &mut r);
        let other = q_weight(DType::Q8_0, 16, 64, &mut r);
        let f = Tensor::zeros(&[16, 64], DType::F32).unwrap();
        for bad in [vec![&a, &odd], vec![&a, &other], vec![&f], vec![]] {
            assert!(!PackedLinear::can_pack(&bad));
            let e = PackedLinear::pack(&bad, "w").unwrap_err().to_string();
            assert!(e.contains("pack w"), "{e}");
        }
        let x = Tensor::zeros(&[2, 63], DType::F32).unwrap();
        assert!(PackedLinear::pack(&[&a], "a").unwrap().apply(&x).is_err());
    }
}
