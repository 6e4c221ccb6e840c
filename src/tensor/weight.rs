//! [`Weight`]: the one weight abstraction every linear layer multiplies through, whatever
//! the matrix is stored as: block-quantised and repacked for the fast kernels
//! ([`PackedLinear`]), block-quantised in the file's own layout, plain f32, or f16/bf16
//! kept in 16 bits (multiplied by [`half_matmul`](crate::kernels::half_matmul), which
//! widens in registers: half the memory and weight traffic of an f32 copy).
//! A weight may be a stack of matrices along the output dimension (q|k|v, gate|up):
//! packing is decided per matrix, and a matrix that cannot be packed keeps its own segment,
//! so a model never falls back as a whole. Model code calls [`Weight::matmul_into`] only.

use crate::kernels::half_matmul::{half_matmul_cols_with, HalfKind, HalfMatrix, Isa};
use crate::kernels::matmul::{matmul_f32, transpose_into, MatRef};
use crate::kernels::quant::ActQuant;
use crate::kernels::rows::store_cols;
use crate::tensor::ops::MatmulPrecision;
use crate::tensor::{DType, MemType, PackedLinear, Tensor};
use crate::{Error, Result};

/// How one run of stacked rows is stored.
#[derive(Clone)]
enum Storage {
    /// Repacked into the 16-row interleaved layout (the fast path).
    Packed(PackedLinear),
    /// Block-quantised in the file's layout (`[rows, k]`): formats or shapes the packed
    /// layout does not take.
    Blocks(Tensor),
    /// f32 stored transposed, `[k, rows]` row-major: gemm reads it in place, where the
    /// `[rows, k]` layout of the file would be repacked on every call of more than one row (a 20-row product: 1.7-3x slower, see
    /// `kernels::matmul`). A copy of the file's matrix, made once.
    FloatTransposed(Tensor),
    /// f16 or bf16 `[rows, k]` as stored (a mapped file's pages when it came from one),
    /// contiguous and 2-byte aligned.
    Half(Tensor),
}

/// Consecutive stacked rows stored one way, writing output columns `col0..col0 + rows`.
#[derive(Clone)]
struct Segment {
    col0: usize,
    rows: usize,
    storage: Storage,
}

/// Options for building a [`Weight`].
#[derive(Clone, Copy, Debug)]
pub struct WeightOptions {
    /// Repack block-quantised matrices for the fast kernels (default). Off: they stay in
    /// the file's layout (tests compare the two kernel families).
    pub pack: bool,
    /// Let the OS drop a mapped file's pages of each matrix once it is repacked (or, for
    /// f32, transposed; f16/bf16 matrices run on the file's pages as they are).
    pub release_mapped: bool,
}

impl Default for WeightOptions {
    fn default() -> Self {
        WeightOptions { pack: true, release_mapped: false }
    }
}

/// A matrix `[n_out, k]` (or a stack of them) ready for `x · Wᵀ`.
#[derive(Clone)]
pub struct Weight {
    n_out: usize,
    k: usize,
    /// Output rows and original dtype of each stacked matrix, in order.
    parts: Vec<(usize, DType)>,
    segments: Vec<Segment>,
}

impl std::fmt::Debug for Weight {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Weight").field("n_out", &self.n_out).field("k", &self.k).field("parts", &self.parts).finish()
    }
}

impl Weight {
    /// Stack `parts` (each `[n_i, k]`, float or block-quantised) along the output
    /// dimension. `name` labels packed copies in the memory report.
    pub fn new(parts: &[&Tensor], name: &str, opts: WeightOptions) -> Result<Weight> {
        let Some(first) = parts.first() else {
            return Err(Error::invalid(format!("weight {name}: no matrices")));
        };
        let k = *first.dims().get(1).unwrap_or(&0);
        for w in parts {
            if w.rank() != 2 || w.dims()[1] != k {
                let got: Vec<String> = parts.iter().map(|w| format!("{} {:?}", w.dtype(), w.dims())).collect();
                return Err(Error::shape(
                    "weight",
                    format!("{name}: stacked matrices must be 2-D with one row length, got [{}]", got.join(", ")),
                ));
            }
            if !(w.dtype().is_float() || w.dtype().is_quantized()) {
                return Err(Error::dtype("weight", w.dtype()));
            }
        }
        let packable = |w: &Tensor| opts.pack && PackedLinear::can_pack(&[w]);
        let mut segments = Vec::new();
        let mut col0 = 0;
        let mut i = 0;
        while i < parts.len() {
            let (storage, used) = if packable(parts[i]) {
                // Every following packable matrix joins the stack: its activations are
                // quantised once for all of them.
                let n = parts[i..].iter().take_while(|w| packable(w)).count();
                let run = &parts[i..i + n];
                let label = if parts.len() == n { name.to_string() } else { format!("{name}.{}", segments.len()) };
                let packed = if opts.release_mapped {
                    PackedLinear::pack_releasing(run, &label)?
                } else {
                    PackedLinear::pack(run, &label)?
                };
                (Storage::Packed(packed), n)
            } else if parts[i].dtype().is_quantized() {
                if !k.is_multiple_of(parts[i].dtype().block_len()) {
                    return Err(Error::shape(
                        "weight",
                        format!("{name}: rows of {k} are not whole {} blocks", parts[i].dtype()),
                    ));
                }
                (Storage::Blocks(parts[i].contiguous()?), 1)
            } else if half_kind(parts[i].dtype()).is_some() {
                (Storage::Half(aligned_half(parts[i])?), 1)
            } else {
                let rows = parts[i].dims()[0];
                let w = parts[i].to_f32_contiguous("weight")?;
                let mut t = Tensor::empty(&[k, rows], DType::F32).mem_type(MemType::ParamsNormal).name(name).alloc()?;
                transpose_into(w.as_slice::<f32>()?, rows, k, t.data_mut::<f32>()?);
                if opts.release_mapped {
                    // The copy is what runs: the file's pages need not stay resident.
                    parts[i].release_mapped_pages();
                }
                (Storage::FloatTransposed(t), 1)
            };
            let rows: usize = parts[i..i + used].iter().map(|w| w.dims()[0]).sum();
            segments.push(Segment { col0, rows, storage });
            col0 += rows;
            i += used;
        }
        let parts = parts.iter().map(|w| (w.dims()[0], w.dtype())).collect();
        Ok(Weight { n_out: col0, k, parts, segments })
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

    /// Whether every row is in the packed layout.
    pub fn is_packed(&self) -> bool {
        self.segments.iter().all(|s| matches!(s.storage, Storage::Packed(_)))
    }

    /// Bytes this weight holds in its own memory (packed copies; mapped or shared
    /// tensors count too).
    pub fn nbytes(&self) -> usize {
        self.segments
            .iter()
            .map(|s| match &s.storage {
                Storage::Packed(p) => p.nbytes(),
                Storage::Blocks(t) | Storage::FloatTransposed(t) | Storage::Half(t) => t.nbytes(),
            })
            .sum()
    }

    /// `out[m, n_out] (+)= x[m, k] · Wᵀ` on plain slices: the model's hot path.
    /// For quantised matrices [`MatmulPrecision::Precise`] quantises the activations to
    /// two 8-bit terms, `Fast` to one, and `Exact` keeps them in f32 against the decoded
    /// weights. Matrices the packed layout refuses (rare shapes) run `Precise` as `Exact`.
    pub fn matmul_into(
        &self,
        x: &[f32],
        m: usize,
        out: &mut [f32],
        accumulate: bool,
        precision: MatmulPrecision,
    ) -> Result<()> {
        if x.len() != m * self.k || out.len() != m * self.n_out {
            return Err(Error::shape(
                "linear",
                format!(
                    "input of {} values and output of {} for {m} rows of {} -> {}",
                    x.len(),
                    out.len(),
                    self.k,
                    self.n_out
                ),
            ));
        }
        let ldo = self.n_out;
        for s in &self.segments {
            match &s.storage {
                Storage::Packed(p) => match precision {
                    MatmulPrecision::Fast => p.matmul_cols(x, m, out, ldo, s.col0, accumulate, ActQuant::Q8)?,
                    MatmulPrecision::Precise => p.matmul_cols(x, m, out, ldo, s.col0, accumulate, ActQuant::TwoTerm)?,
                    MatmulPrecision::Exact => p.matmul_exact_cols(x, m, out, ldo, s.col0, accumulate)?,
                },
                Storage::Blocks(w) => {
                    let mut tmp = vec![0f32; m * s.rows];
                    let precision = if precision == MatmulPrecision::Fast { precision } else { MatmulPrecision::Exact };
                    crate::tensor::ops::qlinear::quantized_matmul_t(x, m, w, &mut tmp, false, precision)?;
                    store_cols(&tmp, s.rows, out, ldo, s.col0, accumulate);
                }
                Storage::Half(w) => {
                    let (kind, data) = half_slice(w)?;
                    let mat = HalfMatrix { kind, data, rows: s.rows, k: self.k };
                    let isa = if precision == MatmulPrecision::Fast { Isa::fast(kind) } else { Isa::best(kind) };
                    half_matmul_cols_with(isa, mat, x, m, out, ldo, s.col0, accumulate);
                }
                Storage::FloatTransposed(wt) if self.segments.len() == 1 => {
                    let ws = wt.as_slice::<f32>()?;
                    matmul_f32(MatRef::row_major(x, m, self.k), MatRef::row_major(ws, self.k, s.rows), out, accumulate);
                }
                Storage::FloatTransposed(wt) => {
                    let ws = wt.as_slice::<f32>()?;
                    let mut tmp = vec![0f32; m * s.rows];
                    matmul_f32(MatRef::row_major(x, m, self.k), MatRef::row_major(ws, self.k, s.rows), &mut tmp, false);
                    store_cols(&tmp, s.rows, out, ldo, s.col0, accumulate);
                }
            }
        }
        Ok(())
    }

    /// Row `row` of the stacked matrix, decoded into `out` (`in_features` values): an
    /// embedding lookup when this is a tied output head.
    pub fn dequantize_row_into(&self, row: usize, out: &mut [f32]) -> Result<()> {
        let seg = self.segments.iter().find(|s| row >= s.col0 && row < s.col0 + s.rows);
        let Some(s) = seg.filter(|_| out.len() == self.k) else {
            return Err(Error::invalid(format!(
                "weight: row {row} of {} into {} values (rows have {})",
                self.n_out,
                out.len(),
                self.k
            )));
        };
        let r = row - s.col0;
        match &s.storage {
            Storage::Packed(p) => p.dequantize_row_into(r, out),
            Storage::Blocks(w) | Storage::Half(w) => {
                let t = w.narrow(0, r, 1)?;
                out.copy_from_slice(&crate::tensor::ops::convert::bytes_to_f32(t.raw_bytes()?, w.dtype())?);
                Ok(())
            }
            Storage::FloatTransposed(wt) => {
                // Row `r` of the matrix is column `r` of the stored transpose.
                let ws = wt.as_slice::<f32>()?;
                out.iter_mut().zip(ws[r..].iter().step_by(s.rows)).for_each(|(o, &v)| *o = v);
                Ok(())
            }
        }
    }
}

/// The 16-bit encoding of `dtype`, if it is F16 or BF16.
pub(crate) fn half_kind(dtype: DType) -> Option<HalfKind> {
    match dtype {
        DType::BF16 => Some(HalfKind::Bf16),
        DType::F16 => Some(HalfKind::F16),
        _ => None,
    }
}

/// `t` (F16 or BF16) contiguous and 2-byte aligned: itself when it already is (a mapped
/// safetensors file's tensors are), else a copy.
pub(crate) fn aligned_half(t: &Tensor) -> Result<Tensor> {
    let t = t.contiguous()?;
    if bytemuck::try_cast_slice::<u8, u16>(t.raw_bytes()?).is_ok() {
        return Ok(t);
    }
    let copy = Tensor::from_bytes(t.raw_bytes()?, t.dtype(), t.dims(), t.mem_type())?;
    Ok(match t.name() {
        Some(n) => copy.with_name(n),
        None => copy,
    })
}

/// The stored values of an [`aligned_half`] tensor.
pub(crate) fn half_slice(t: &Tensor) -> Result<(HalfKind, &[u16])> {
    let kind = half_kind(t.dtype()).ok_or_else(|| Error::dtype("half matmul", t.dtype()))?;
    let data = bytemuck::try_cast_slice(t.raw_bytes()?)
        .map_err(|e| Error::invalid(format!("half matmul: {} storage not 2-byte aligned: {e}", t.dtype())))?;
    Ok((kind, data))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::quant;
    use rand::{Rng, SeedableRng};

    fn q8(n: usize, k: usize, r: &mut impl Rng) -> Tensor {
        let w: Vec<f32> = (0..n * k).map(|_| r.random_range(-1.0..1.0)).collect();
        Tensor::from_bytes(&quant::quantize_q8_0(&w), DType::Q8_0, &[n, k], MemType::ParamsNormal).unwrap()
    }

    /// A stack of a packable matrix, one whose row count the packed layout refuses, and
    /// an f32 one: each in its own segment, together equal to the dequantised product.
    #[test]
    fn mixed_stack_matches_the_dequantised_product_at_both_precisions() {
        let mut r = rand::rngs::StdRng::seed_from_u64(9);
        let k = 64;
        let a = q8(32, k, &mut r);
        let odd = q8(8, k, &mut r);
        let f =
            Tensor::from_vec((0..5 * k).map(|_| r.random_range(-1.0f32..1.0)).collect::<Vec<_>>(), &[5, k]).unwrap();
        let w = Weight::new(&[&a, &odd, &f], "w", WeightOptions::default()).unwrap();
        assert_eq!((w.out_features(), w.in_features(), w.segments.len()), (45, k, 3));
        assert!(!w.is_packed());
        let m = 3;
        let x: Vec<f32> = (0..m * k).map(|_| r.random_range(-2.0..2.0)).collect();
        let rows: Vec<f32> = [&a, &odd, &f].iter().flat_map(|t| t.to_f32_vec().unwrap()).collect();
        for precision in [MatmulPrecision::Exact, MatmulPrecision::Precise, MatmulPrecision::Fast] {
            let mut out = vec![1.0f32; m * 45];
            w.matmul_into(&x, m, &mut out, true, precision).unwrap();
            for i in 0..m {
                for j in 0..45 {
                    let want: f32 = 1.0 + (0..k).map(|c| x[i * k + c] * rows[j * k + c]).sum::<f32>();
                    let mag: f32 = (0..k).map(|c| (x[i * k + c] * rows[j * k + c]).abs()).sum();
                    // 8-bit activations: about 1/254 of each block's largest value per product;
                    // two terms: 1/508 of that.
                    let tol = match precision {
                        MatmulPrecision::Exact => 1e-4,
                        MatmulPrecision::Precise => 1e-4 * mag + 1e-4,
                        MatmulPrecision::Fast => 0.01 * mag + 1e-4,
                    };
                    assert!(
                        (out[i * 45 + j] - want).abs() <= tol,
                        "{precision:?} [{i},{j}]: {} vs {want}",
                        out[i * 45 + j]
                    );
                }
            }
        }
        let mut row = vec![0f32; k];
        for j in [0, 31, 32, 39, 40, 44] {
            w.dequantize_row_into(j, &mut row).unwrap();
            assert_eq!(row, rows[j * k..(j + 1) * k], "row {j}");
        }
        assert!(w.dequantize_row_into(45, &mut row).is_err());
        assert!(w.matmul_into(&x[..k], 2, &mut vec![0.0; 90], false, MatmulPrecision::Fast).is_err());
    }

    /// bf16 and f16 matrices stay 16-bit in a stack (beside an f32 one), multiply as
    /// their widened values do, and decode rows exactly.
    #[test]
    fn half_matrices_stay_16_bit_and_equal_their_widened_values() {
        let mut r = rand::rngs::StdRng::seed_from_u64(13);
        let k = 70;
        let rand_t = |n: usize, r: &mut rand::rngs::StdRng| {
            Tensor::from_vec((0..n * k).map(|_| r.random_range(-1.0f32..1.0)).collect::<Vec<_>>(), &[n, k]).unwrap()
        };
        let b = rand_t(9, &mut r).to_dtype(DType::BF16).unwrap();
        let h = rand_t(6, &mut r).to_dtype(DType::F16).unwrap();
        let f = rand_t(5, &mut r);
        let w = Weight::new(&[&b, &h, &f], "w", WeightOptions::default()).unwrap();
        assert_eq!(w.nbytes(), (9 + 6) * k * 2 + 5 * k * 4);
        let rows: Vec<f32> = [&b, &h, &f].iter().flat_map(|t| t.to_f32_vec().unwrap()).collect();
        for m in [1, 3, 40] {
            let x: Vec<f32> = (0..m * k).map(|_| r.random_range(-2.0..2.0)).collect();
            let mut out = vec![0.5f32; m * 20];
            w.matmul_into(&x, m, &mut out, true, MatmulPrecision::Precise).unwrap();
            for i in 0..m {
                for j in 0..20 {
                    let want: f64 = 0.5 + (0..k).map(|c| x[i * k + c] as f64 * rows[j * k + c] as f64).sum::<f64>();
                    assert!(
                        (out[i * 20 + j] as f64 - want).abs() < 1e-4,
                        "m={m} [{i},{j}]: {} vs {want}",
                        out[i * 20 + j]
                    );
                }
            }
        }
        let mut row = vec![0f32; k];
        for j in [0, 8, 9, 14, 15, 19] {
            w.dequantize_row_into(j, &mut row).unwrap();
            assert_eq!(row, rows[j * k..(j + 1) * k], "row {j}");
        }
    }

    #[test]
    fn packing_can_be_turned_off_and_bad_stacks_are_refused() {
        let mut r = rand::rngs::StdRng::seed_from_u64(10);
        let a = q8(32, 64, &mut r);
        let w = Weight::new(&[&a], "a", WeightOptions::default()).unwrap();
        assert!(w.is_packed());
        let b = Weight::new(&[&a], "a", WeightOptions { pack: false, ..Default::default() }).unwrap();
        assert!(!b.is_packed());
        let x: Vec<f32> = (0..64).map(|_| r.random_range(-1.0..1.0)).collect();
        let (mut ya, mut yb) = (vec![0f32; 32], vec![0f32; 32]);
        w.matmul_into(&x, 1, &mut ya, false, MatmulPrecision::Fast).unwrap();
        b.matmul_into(&x, 1, &mut yb, false, MatmulPrecision::Fast).unwrap();
        for (p, q) in ya.iter().zip(&yb) {
            assert!((p - q).abs() <= 1e-4 * (1.0 + q.abs()), "{p} vs {q}");
        }
        let other = q8(16, 96, &mut r);
        let e = Weight::new(&[&a, &other], "qkv", WeightOptions::default()).unwrap_err().to_string();
        assert!(e.contains("qkv") && e.contains("one row length"), "{e}");
        assert!(Weight::new(&[], "none", WeightOptions::default()).is_err());
        let ints = Tensor::zeros(&[4, 4], DType::I32).unwrap();
        assert!(Weight::new(&[&ints], "i", WeightOptions::default()).is_err());
    }
}
