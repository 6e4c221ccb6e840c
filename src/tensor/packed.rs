//! [`PackedLinear`]: one or more block-quantised weight matrices (any dtype with a
//! [`WeightFormat`]: Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K) stacked along the
//! output dimension and repacked once into the kernels' 16-row interleaved layout, then
//! multiplied with activations quantised to one or two 8-bit terms. Stacking lets one call
//! compute e.g. q, k and v together; parts in different formats (as in "_M" files, where v
//! may be Q6_K and q Q4_K, or Q5_0 where rows are not whole 256-weight blocks) become
//! segments of the stack, each packed in its own.
//! Knows shapes and dtypes; the layout itself belongs to `kernels::quant`.

use crate::kernels::quant::{self, ActQuant, Isa, WeightFormat, PACK_ROWS};
use crate::tensor::{DType, MemType, Tensor};
use crate::{Error, Result};

/// Consecutive stacked rows of one format.
#[derive(Clone)]
struct Segment {
    fmt: WeightFormat,
    /// First output column (stacked row) and number of rows.
    col0: usize,
    rows: usize,
    data: Tensor,
}

/// Stacked, repacked quantised weights `[n_out, k]` (heap memory, `ParamsNormal`).
#[derive(Clone)]
pub struct PackedLinear {
    n_out: usize,
    k: usize,
    /// Output rows and dtype of each stacked matrix, in order.
    parts: Vec<(usize, DType)>,
    segments: Vec<Segment>,
}

impl std::fmt::Debug for PackedLinear {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PackedLinear")
            .field("n_out", &self.n_out)
            .field("k", &self.k)
            .field("parts", &self.parts)
            .finish()
    }
}

impl PackedLinear {
    /// Whether [`PackedLinear::pack`] accepts these weights: all 2-D, contiguous, of
    /// block-quantised dtypes, with one row length (whole blocks of each dtype) and row
    /// counts that are multiples of 16.
    pub fn can_pack(weights: &[&Tensor]) -> bool {
        let Some(first) = weights.first() else { return false };
        weights.iter().all(|w| {
            w.rank() == 2
                && w.is_contiguous()
                && w.dtype().weight_format().is_some_and(|f| w.dims()[1] % f.block_len() == 0)
                && w.dims()[1] == first.dims()[1]
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
            let dtypes: Vec<&str> = WeightFormat::ALL.iter().map(|&f| DType::from(f).as_str()).collect();
            return Err(Error::invalid(format!(
                "pack {name}: needs contiguous 2-D block-quantised weights ({}) with one row length and row \
                 counts divisible by {PACK_ROWS}; got [{}]",
                dtypes.join(", "),
                desc.join(", ")
            )));
        }
        let k = weights[0].dims()[1];
        let parts: Vec<(usize, DType)> = weights.iter().map(|w| (w.dims()[0], w.dtype())).collect();
        let n_out = parts.iter().map(|p| p.0).sum();
        // Runs of one dtype become one segment.
        let mut runs: Vec<Vec<&Tensor>> = Vec::new();
        for w in weights {
            match runs.last_mut() {
                Some(run) if run[0].dtype() == w.dtype() => run.push(w),
                _ => runs.push(vec![w]),
            }
        }
        let mut segments = Vec::with_capacity(runs.len());
        let mut col0 = 0;
        for (s, run) in runs.iter().enumerate() {
            let fmt = run[0].dtype().weight_format().expect("checked by can_pack");
            let rows: usize = run.iter().map(|w| w.dims()[0]).sum();
            let label = if runs.len() == 1 { name.to_string() } else { format!("{name}.{s}") };
            let len = quant::packed_len(fmt, rows, k);
            let mut data = Tensor::empty(&[len], DType::U8).mem_type(MemType::ParamsNormal).name(&label).alloc()?;
            let dst = data.data_mut::<u8>()?;
            let row_bytes =
                run[0].dtype().bytes_for(k).ok_or_else(|| Error::Overflow(format!("pack {name}: row of {k}")))?;
            // Slices of about 1 MiB (whole groups of rows) between releases.
            let slice_rows = ((1 << 20) / row_bytes).max(1).next_multiple_of(PACK_ROWS);
            let mut at = 0;
            for w in run {
                let total = w.dims()[0];
                let mut r0 = 0;
                while r0 < total {
                    let n = slice_rows.min(total - r0);
                    let part = w.narrow(0, r0, n)?;
                    let len = quant::packed_len(fmt, n, k);
                    quant::pack_rows(fmt, part.raw_bytes()?, n, k, &mut dst[at..at + len]);
                    if release {
                        part.release_mapped_pages();
                    }
                    at += len;
                    r0 += n;
                }
            }
            segments.push(Segment { fmt, col0, rows, data });
            col0 += rows;
        }
        Ok(PackedLinear { n_out, k, parts, segments })
    }

    /// Total output features (all stacked matrices).
    pub fn out_features(&self) -> usize {
        self.n_out
    }

    pub fn in_features(&self) -> usize {
        self.k
    }

    /// Output features and original dtype of each stacked matrix.
    pub fn parts(&self) -> &[(usize, DType)] {
        &self.parts
    }

    /// Bytes of the packed copy.
    pub fn nbytes(&self) -> usize {
        self.segments.iter().map(|s| s.data.nbytes()).sum()
    }

    /// `out[m, n_out] (+)= x[m, k] · W^T` on plain slices, 8-bit activations.
    pub fn matmul_into(&self, x: &[f32], m: usize, out: &mut [f32], accumulate: bool) -> Result<()> {
        self.matmul_cols(x, m, out, self.n_out, 0, accumulate, ActQuant::Q8)
    }

    /// Checks that `x` is `m` rows of `k` and `out` `m` rows of `ldo` with room for this
    /// matrix's columns from `col0`.
    fn check_cols(&self, x: &[f32], m: usize, out: &[f32], ldo: usize, col0: usize) -> Result<()> {
        if x.len() != m * self.k || out.len() != m * ldo || col0 + self.n_out > ldo {
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
        Ok(())
    }

    /// [`PackedLinear::matmul_into`] writing columns `col0..col0 + n_out` of `out`, which
    /// is `[m, ldo]`, with activations quantised as `quant` says.
    #[allow(clippy::too_many_arguments)]
    pub fn matmul_cols(
        &self,
        x: &[f32],
        m: usize,
        out: &mut [f32],
        ldo: usize,
        col0: usize,
        accumulate: bool,
        quant: ActQuant,
    ) -> Result<()> {
        self.check_cols(x, m, out, ldo, col0)?;
        let parts = self
            .segments
            .iter()
            .map(|s| {
                Ok(quant::PackedPart { fmt: s.fmt, w: s.data.as_slice::<u8>()?, rows: s.rows, col0: col0 + s.col0 })
            })
            .collect::<Result<Vec<_>>>()?;
        quant::packed_matmul_parts(Isa::best(), &parts, self.k, x, m, out, ldo, accumulate, quant);
        Ok(())
    }

    /// [`PackedLinear::matmul_cols`] with f32 activations against the decoded rows (the
    /// exact path: no activation rounding; slow).
    pub fn matmul_exact_cols(
        &self,
        x: &[f32],
        m: usize,
        out: &mut [f32],
        ldo: usize,
        col0: usize,
        accumulate: bool,
    ) -> Result<()> {
        use rayon::prelude::*;
        self.check_cols(x, m, out, ldo, col0)?;
        let k = self.k;
        // Groups of decoded rows on the pool; each returns its block of results.
        let blocks: Vec<(usize, Vec<f32>)> = (0..self.n_out.div_ceil(PACK_ROWS))
            .into_par_iter()
            .map(|g| -> Result<(usize, Vec<f32>)> {
                let (j0, j1) = (g * PACK_ROWS, ((g + 1) * PACK_ROWS).min(self.n_out));
                let mut row = vec![0f32; k];
                let mut res = vec![0f32; m * (j1 - j0)];
                for j in j0..j1 {
                    self.dequantize_row_into(j, &mut row)?;
                    for i in 0..m {
                        res[i * (j1 - j0) + j - j0] = dot_f32(&x[i * k..(i + 1) * k], &row);
                    }
                }
                Ok((j0, res))
            })
            .collect::<Result<_>>()?;
        for (j0, res) in blocks {
            let n = res.len() / m.max(1);
            crate::kernels::rows::store_cols(&res, n, out, ldo, col0 + j0, accumulate);
        }
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
        let seg = self.segments.iter().find(|s| row >= s.col0 && row < s.col0 + s.rows);
        let Some(s) = seg.filter(|_| out.len() == self.k) else {
            return Err(Error::invalid(format!(
                "packed linear: row {row} of {} into {} values (rows have {})",
                self.n_out,
                out.len(),
                self.k
            )));
        };
        quant::dequantize_packed_row(s.fmt, s.data.as_slice::<u8>()?, s.rows, self.k, row - s.col0, out);
        Ok(())
    }
}

/// f32 dot product in blocks of 32 (the quantisation block), like the block kernels'
/// exact reference sums.
fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    a.chunks(32).zip(b.chunks(32)).map(|(x, y)| x.iter().zip(y).map(|(p, q)| p * q).sum::<f32>()).sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensor::ops::MatmulPrecision;
    use rand::{Rng, SeedableRng};

    fn q_weight(dtype: DType, n: usize, k: usize, r: &mut impl Rng) -> Tensor {
        let w: Vec<f32> = (0..n * k).map(|_| r.random_range(-1.0..1.0)).collect();
        let bytes = dtype.weight_format().expect("a quantised dtype").quantize(&w);
        Tensor::from_bytes(&bytes, dtype, &[n, k], MemType::ParamsNormal).unwrap()
    }

    #[test]
    fn stacked_packed_equals_separate_fast_linears() {
        let mut r = rand::rngs::StdRng::seed_from_u64(5);
        for dtype in [DType::Q4_0, DType::Q4_1, DType::Q5_0, DType::Q5_1, DType::Q8_0] {
            let (a, b) = (q_weight(dtype, 32, 64, &mut r), q_weight(dtype, 16, 64, &mut r));
            let p = PackedLinear::pack(&[&a, &b], "ab").unwrap();
            assert_eq!((p.out_features(), p.in_features(), p.parts()), (48, 64, &[(32, dtype), (16, dtype)][..]));
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

    /// A stack of five formats (as in a Q4_K_M file, which adds Q5_0 where rows are not
    /// whole 256-weight blocks) against the exact f32 product of the
    /// dequantised weights: the 8-bit activations bound the error.
    #[test]
    fn mixed_format_stack_matches_the_dequantised_product() {
        let mut r = rand::rngs::StdRng::seed_from_u64(7);
        let k = 512;
        let ws = [
            q_weight(DType::Q4_K, 32, k, &mut r),
            q_weight(DType::Q6_K, 16, k, &mut r),
            q_weight(DType::Q5_K, 16, k, &mut r),
            q_weight(DType::Q5_0, 16, k, &mut r),
            q_weight(DType::Q5_1, 32, k, &mut r),
        ];
        let p = PackedLinear::pack(&ws.iter().collect::<Vec<_>>(), "mixed").unwrap();
        let n = 112;
        assert_eq!(p.out_features(), n);
        let x =
            Tensor::from_vec((0..2 * k).map(|_| r.random_range(-1.0f32..1.0)).collect::<Vec<_>>(), &[2, k]).unwrap();
        let got = p.apply(&x).unwrap().to_vec::<f32>().unwrap();
        let xs = x.to_vec::<f32>().unwrap();
        let rows: Vec<f32> = ws.iter().flat_map(|w| w.to_f32_vec().unwrap()).collect();
        for i in 0..2 {
            for j in 0..n {
                let wr = &rows[j * k..(j + 1) * k];
                let want: f32 = wr.iter().zip(&xs[i * k..(i + 1) * k]).map(|(a, b)| a * b).sum();
                let mag: f32 = wr.iter().zip(&xs[i * k..(i + 1) * k]).map(|(a, b)| (a * b).abs()).sum();
                // 8-bit activations: about 1/254 of each block's largest value per product.
                assert!((got[i * n + j] - want).abs() <= 0.01 * mag + 1e-4, "[{i},{j}] {} vs {want}", got[i * n + j]);
            }
        }
        for row in [0, 31, 32, 47, 48, 63, 64, 79, 80, 111] {
            assert_eq!(p.dequantize_row(row).unwrap(), rows[row * k..(row + 1) * k], "row {row}");
        }
        assert!(p.dequantize_row(n).is_err());
    }

    #[test]
    fn refuses_what_it_cannot_pack() {
        let mut r = rand::rngs::StdRng::seed_from_u64(6);
        let a = q_weight(DType::Q4_1, 32, 64, &mut r);
        let odd = q_weight(DType::Q4_1, 8, 64, &mut r);
        let other = q_weight(DType::Q8_0, 16, 96, &mut r);
        let short_k = q_weight(DType::Q4_K, 16, 256, &mut r);
        let f = Tensor::zeros(&[16, 64], DType::F32).unwrap();
        for bad in [vec![&a, &odd], vec![&a, &other], vec![&f], vec![], vec![&a, &short_k]] {
            assert!(!PackedLinear::can_pack(&bad));
            let e = PackedLinear::pack(&bad, "w").unwrap_err().to_string();
            assert!(e.contains("pack w"), "{e}");
        }
        let x = Tensor::zeros(&[2, 63], DType::F32).unwrap();
        let p = PackedLinear::pack(&[&a], "a").unwrap();
        assert!(p.apply(&x).is_err());
        // Slices that do not match m rows of k in and n_out out.
        let mut out = vec![0f32; 2 * 32];
        assert!(p.matmul_into(&[0.0; 2 * 64], 2, &mut out, false).is_ok());
        assert!(p.matmul_into(&[0.0; 2 * 63], 2, &mut out, false).is_err());
        assert!(p.matmul_into(&[0.0; 2 * 64], 2, &mut out[..63], false).is_err());
        assert!(p.dequantize_row_into(0, &mut [0.0; 63]).is_err());
    }
}
