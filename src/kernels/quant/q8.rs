//! Activation quantisers for the fast matmul: f32 rows → 8-bit blocks of 32 ([`Q8Acts`],
//! scale and block sum kept, laid out for the SIMD kernels) and of 256 ([`BlockQ8_K`], for
//! the K-quants). Plain slices only; the dot kernels that read them live beside this file.
//! A block holding a NaN or an infinity gets a NaN scale: rounding to 8 bits would turn
//! it into a finite quant (0, or -128 in the AVX-512 conversion) and hide it, while a NaN
//! scale carries it into every product with the block, up to the logits, where it is seen.

use bytemuck::{Pod, Zeroable};

use super::QK_K;

/// Values per activation block (the block length of Q4_0, Q4_1 and Q8_0).
pub const QK8: usize = 32;

/// Copies of each block's scale and sum stored side by side, so that an AVX2 register
/// (one block) or an AVX-512 register (two blocks) loads them with one instruction.
pub const Q8_LANES: usize = 8;

/// Rows of activations quantised to signed 8 bits in blocks of 32 (like GGML's Q8_1, with
/// f32 scale and sum): value `i` of block `b` is `d[b] * qs[32b + i]`, `|qs| <= 127`.
/// Buffers only grow, so one `Q8Acts` reused across calls allocates nothing in steady state.
#[derive(Debug, Default, Clone)]
pub struct Q8Acts {
    rows: usize,
    k: usize,
    qs: Vec<i8>,
    /// Per row and block, the scale `d` repeated [`Q8_LANES`] times.
    d: Vec<f32>,
    /// Per row and block, `d * Σ qs / Q8_LANES` repeated [`Q8_LANES`] times: summing the
    /// lanes of a block gives the block's sum, which the kernels use for weight offsets.
    s: Vec<f32>,
    /// Per row and block, `d * Σ qs` (the same sums, one per block).
    sums: Vec<f32>,
    /// Per row and block, `Σ qs` (exact, for integer weight offsets).
    isums: Vec<i32>,
    /// Per row and block, `Σ qs` of each half (16 values): two per block.
    hsums: Vec<i32>,
}

/// One quantised activation row (see [`Q8Acts`]).
#[derive(Clone, Copy, Debug)]
pub struct Q8Row<'a> {
    pub qs: &'a [i8],
    pub d: &'a [f32],
    pub s: &'a [f32],
    pub sums: &'a [f32],
    pub isums: &'a [i32],
    pub hsums: &'a [i32],
}

impl Q8Row<'_> {
    /// Number of 32-value blocks.
    pub fn blocks(&self) -> usize {
        self.qs.len() / QK8
    }

    /// Scale of block `b`.
    pub fn scale(&self, b: usize) -> f32 {
        self.d[b * Q8_LANES]
    }

    /// `scale(b) * Σ qs` of block `b` (exact: the lane share times a power of two).
    pub fn sum(&self, b: usize) -> f32 {
        self.s[b * Q8_LANES] * Q8_LANES as f32
    }
}

impl Q8Acts {
    pub fn new() -> Q8Acts {
        Q8Acts::default()
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Values per row.
    pub fn k(&self) -> usize {
        self.k
    }

    /// Quantise `x` (`rows` rows of `k` values, `k` a multiple of 32), replacing the contents.
    pub fn quantize(&mut self, x: &[f32], rows: usize, k: usize) {
        self.quantize_with(x, rows, k, true)
    }

    /// Quantise `x` (`rows` rows of `k`) as two terms per row: rows `0..rows` hold `x`
    /// quantised as [`Q8Acts::quantize`] does, row `rows + i` what that leaves out of row
    /// `i` (`x - d·q`, at most half a step) in steps of exactly `d / 256`, so that the kernels
    /// can add the two integer dots as `256·dot₁ + dot₂` before converting them. The pair
    /// rounds activations to about 1/512 of the first term's step (1/65 000 of each block's
    /// largest value) instead of 1/2: nearly 16-bit precision from 8-bit dot instructions.
    pub fn quantize_two_term(&mut self, x: &[f32], rows: usize, k: usize) {
        self.quantize_two_term_with(x, rows, k, true)
    }

    fn quantize_two_term_with(&mut self, x: &[f32], rows: usize, k: usize, simd: bool) {
        self.quantize_with(x, rows, k, simd);
        let n = rows * k / QK8;
        grow(&mut self.qs, 2 * rows * k);
        grow(&mut self.d, 2 * n * Q8_LANES);
        grow(&mut self.s, 2 * n * Q8_LANES);
        grow(&mut self.sums, 2 * n);
        grow(&mut self.isums, 2 * n);
        grow(&mut self.hsums, 4 * n);
        let (q1, q2) = self.qs[..2 * rows * k].split_at_mut(rows * k);
        let (d1, d2) = self.d[..2 * n * Q8_LANES].split_at_mut(n * Q8_LANES);
        let s2 = &mut self.s[n * Q8_LANES..2 * n * Q8_LANES];
        let (sums2, isums2) = (&mut self.sums[n..2 * n], &mut self.isums[n..2 * n]);
        let hsums2 = &mut self.hsums[2 * n..4 * n];
        #[cfg(target_arch = "x86_64")]
        let done = simd && super::x86::has_avx512();
        #[cfg(not(target_arch = "x86_64"))]
        let done = false;
        #[cfg(target_arch = "x86_64")]
        if done {
            // SAFETY: AVX-512 F/BW/VL were detected; the slices hold `n` blocks each.
            unsafe { super::x86::residual_q8_avx512(x, q1, d1, q2, hsums2) };
        }
        if !done {
            for (((xs, q1), q2), d1) in x
                .chunks_exact(QK8)
                .zip(q1.chunks_exact(QK8))
                .zip(q2.chunks_exact_mut(QK8))
                .zip(d1.chunks_exact(Q8_LANES))
            {
                let d = d1[0];
                let inv = if d != 0.0 && d.is_finite() { 256.0 / d } else { 0.0 };
                for ((q2, &v), &q) in q2.iter_mut().zip(xs).zip(q1) {
                    // |v - d·q| <= d/2, so |rest| <= 128: only an exact half step is clamped.
                    *q2 = round_ties_even((v - d * q as f32) * inv).clamp(-127.0, 127.0) as i8;
                }
            }
            half_sums(q2, hsums2);
        }
        for (b, (isum, h)) in isums2.iter_mut().zip(hsums2.chunks_exact(2)).enumerate() {
            let step = d1[b * Q8_LANES] / 256.0;
            *isum = h[0] + h[1];
            sums2[b] = step * *isum as f32;
            d2[b * Q8_LANES..(b + 1) * Q8_LANES].fill(step);
            s2[b * Q8_LANES..(b + 1) * Q8_LANES].fill(sums2[b] / Q8_LANES as f32);
        }
        self.rows = 2 * rows;
    }

    /// [`Q8Acts::quantize`]; the SIMD build (same results) only when `simd`.
    pub(super) fn quantize_with(&mut self, x: &[f32], rows: usize, k: usize, simd: bool) {
        assert!(k.is_multiple_of(QK8), "quantize_q8: row length {k} is not a multiple of {QK8}");
        assert_eq!(x.len(), rows * k, "quantize_q8: {} values for {rows} rows of {k}", x.len());
        let nb = k / QK8;
        grow(&mut self.qs, rows * k);
        grow(&mut self.d, rows * nb * Q8_LANES);
        grow(&mut self.s, rows * nb * Q8_LANES);
        grow(&mut self.sums, rows * nb);
        grow(&mut self.isums, rows * nb);
        grow(&mut self.hsums, 2 * rows * nb);
        self.rows = rows;
        self.k = k;
        let n = rows * nb;
        #[cfg(target_arch = "x86_64")]
        if simd && super::x86::has_avx512() {
            let (qs, d, s, sums, hsums) = (
                &mut self.qs[..n * QK8],
                &mut self.d[..n * Q8_LANES],
                &mut self.s[..n * Q8_LANES],
                &mut self.sums[..n],
                &mut self.hsums[..2 * n],
            );
            // SAFETY: AVX-512 F/BW/VL were detected; the slices hold `n` blocks each.
            unsafe { super::x86::quantize_q8_avx512(x, qs, d, s, sums, hsums) };
            for (isum, h) in self.isums[..n].iter_mut().zip(self.hsums[..2 * n].chunks_exact(2)) {
                *isum = h[0] + h[1];
            }
            return;
        }
        let _ = simd;
        for (((((xs, qs), d), s), sums), isum) in x
            .chunks_exact(QK8)
            .zip(self.qs.chunks_exact_mut(QK8))
            .zip(self.d.chunks_exact_mut(Q8_LANES))
            .zip(self.s.chunks_exact_mut(Q8_LANES))
            .zip(self.sums.iter_mut())
            .zip(self.isums.iter_mut())
        {
            let (scale, sum) = quantize_block(xs, qs);
            *isum = sum;
            // (the half sums are added after the loop, from the stored quants)
            d.fill(scale);
            *sums = scale * sum as f32;
            s.fill(*sums / Q8_LANES as f32);
        }
        half_sums(&self.qs[..n * QK8], &mut self.hsums[..2 * n]);
    }

    /// Row `r`.
    pub fn row(&self, r: usize) -> Q8Row<'_> {
        assert!(r < self.rows, "Q8Acts: row {r} of {}", self.rows);
        let nb = self.k / QK8;
        let lanes = nb * Q8_LANES;
        Q8Row {
            qs: &self.qs[r * self.k..(r + 1) * self.k],
            d: &self.d[r * lanes..(r + 1) * lanes],
            s: &self.s[r * lanes..(r + 1) * lanes],
            sums: &self.sums[r * nb..(r + 1) * nb],
            isums: &self.isums[r * nb..(r + 1) * nb],
            hsums: &self.hsums[2 * r * nb..2 * (r + 1) * nb],
        }
    }
}

/// The sum of each 16 quants (two per block).
fn half_sums(qs: &[i8], out: &mut [i32]) {
    for (h, o) in qs.chunks_exact(QK8 / 2).zip(out) {
        *o = h.iter().map(|&q| q as i32).sum();
    }
}

fn grow<T: Default + Clone>(v: &mut Vec<T>, n: usize) {
    if v.len() < n {
        v.resize(n, T::default());
    }
}

/// 0 if every value is finite, else NaN: `x * 0` is 0 for a finite `x` and NaN for a NaN
/// or an infinity, and a NaN survives any sum (one multiply-add per value; vectorises).
#[inline(always)]
fn non_finite_mark(xs: &[f32]) -> f32 {
    let mut m = [0f32; 8];
    for c in xs.chunks_exact(8) {
        for j in 0..8 {
            m[j] += c[j] * 0.0;
        }
    }
    m.iter().sum()
}

/// Quantise 32 values: scale `max|x| / 127`, quants rounded to nearest (ties to even); a
/// NaN scale if any value is not finite (see the module comment).
/// Returns the scale and the sum of the quants.
fn quantize_block(xs: &[f32], qs: &mut [i8]) -> (f32, i32) {
    // Eight running maxima keep the reduction vectorisable.
    let mut m = [0f32; 8];
    for c in xs.chunks_exact(8) {
        for j in 0..8 {
            m[j] = m[j].max(c[j].abs());
        }
    }
    let amax = m.iter().fold(0f32, |a, &v| a.max(v)) + non_finite_mark(xs);
    let d = amax / 127.0;
    if d.is_nan() {
        qs.fill(0);
        return (d, 0);
    }
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    let mut sum = 0i32;
    for (q, &v) in qs.iter_mut().zip(xs) {
        let r = round_ties_even(v * id).clamp(-127.0, 127.0) as i8;
        *q = r;
        sum += r as i32;
    }
    (d, sum)
}

/// `v.round_ties_even()` for |v| < 2^22 by adding and removing 1.5 x 2^23 (plain f32 adds
/// in the default rounding mode), which vectorises without SSE4.1 and needs no libm call.
#[inline(always)]
fn round_ties_even(v: f32) -> f32 {
    const MAGIC: f32 = 12_582_912.0;
    (v + MAGIC) - MAGIC
}

/// 256 activations quantised for the K-quant kernels: `x[i] = d * qs[i]`, with the sums
/// of each 16 quants precomputed (GGML's Q8_K layout, scale max|x| / 127).
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct BlockQ8_K {
    pub d: f32,
    pub qs: [i8; QK_K],
    pub bsums: [i16; QK_K / 16],
}

const _: () = assert!(std::mem::size_of::<BlockQ8_K>() == 292);

/// Quantise `x` (a multiple of 256 values) into `out` (one block per 256 values).
pub fn quantize_q8_k(x: &[f32], out: &mut [BlockQ8_K]) {
    assert!(x.len().is_multiple_of(QK_K), "quantize_q8_k: {} values are not whole 256-value blocks", x.len());
    assert_eq!(out.len(), x.len() / QK_K, "quantize_q8_k: output holds {} blocks", out.len());
    for (xs, b) in x.chunks_exact(QK_K).zip(out) {
        let amax = xs.iter().fold(0f32, |a, v| a.max(v.abs())) + non_finite_mark(xs);
        let d = amax / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        b.d = d;
        for (q, &v) in b.qs.iter_mut().zip(xs) {
            *q = if d.is_nan() { 0 } else { round_ties_even(v * id).clamp(-127.0, 127.0) as i8 };
        }
        for (s, qs) in b.bsums.iter_mut().zip(b.qs.chunks_exact(16)) {
            *s = qs.iter().map(|&q| q as i16).sum();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn simd_quantiser_equals_scalar() {
        let x: Vec<f32> = (0..7 * 96)
            .map(|i| {
                let v = ((i * 7919) % 1000) as f32 / 37.0 - 13.0;
                if i % 96 < 32 {
                    0.0
                } else if i % 50 == 3 {
                    v * 1e4
                } else {
                    v
                }
            })
            .collect();
        let (mut a, mut b) = (Q8Acts::new(), Q8Acts::new());
        a.quantize_with(&x, 7, 96, false);
        b.quantize_with(&x, 7, 96, true);
        for r in 0..7 {
            let (ra, rb) = (a.row(r), b.row(r));
            assert_eq!((ra.qs, ra.d, ra.s, ra.sums, ra.isums), (rb.qs, rb.d, rb.s, rb.sums, rb.isums), "row {r}");
            assert_eq!(ra.hsums, rb.hsums, "row {r}");
            for b in 0..3 {
                assert_eq!(ra.hsums[2 * b] + ra.hsums[2 * b + 1], ra.isums[b], "row {r} block {b}");
            }
        }
    }

    /// Row `i` is row `i` quantised alone; row `rows + i`, in steps of exactly 1/256 of the
    /// first term's, brings the error of the pair down to 1/512 of the first term's step
    /// (1/256 where a residual of exactly half a step is clamped), with outliers in the blocks.
    #[test]
    fn two_term_rows_hold_the_rounding_error() {
        let (rows, k) = (5, 96);
        let x: Vec<f32> = (0..rows * k)
            .map(|i| {
                let v = ((i * 7919) % 1000) as f32 / 37.0 - 13.0;
                if i % 41 == 3 {
                    v * 300.0
                } else if i % 96 < 32 {
                    0.0
                } else if i == 300 {
                    f32::NAN
                } else {
                    v
                }
            })
            .collect();
        let (mut one, mut two, mut scalar) = (Q8Acts::new(), Q8Acts::new(), Q8Acts::new());
        one.quantize(&x, rows, k);
        two.quantize_two_term(&x, rows, k);
        scalar.quantize_two_term_with(&x, rows, k, false);
        assert_eq!((two.rows(), two.k()), (2 * rows, k));
        for r in 0..rows {
            let (a, main, rest) = (one.row(r), two.row(r), two.row(rows + r));
            assert_eq!((a.qs, a.d, a.sums, a.hsums), (main.qs, main.d, main.sums, main.hsums), "row {r}: first term");
            let s = scalar.row(rows + r);
            assert_eq!((rest.qs, rest.d, rest.s, rest.sums, rest.isums), (s.qs, s.d, s.s, s.sums, s.isums), "row {r}");
            for b in 0..k / QK8 {
                assert_eq!(rest.scale(b), main.scale(b) / 256.0, "row {r} block {b}: residual step");
                assert_eq!(rest.hsums[2 * b] + rest.hsums[2 * b + 1], rest.isums[b], "row {r} block {b}");
            }
            for c in 0..k {
                let b = c / QK8;
                if main.scale(b).is_nan() {
                    // (the block of the NaN: both scales NaN, every quant 0)
                    assert!(rest.scale(b).is_nan() && rest.qs[b * QK8..(b + 1) * QK8].iter().all(|&q| q == 0));
                    continue;
                }
                let v = main.qs[c] as f32 * main.scale(b) + rest.qs[c] as f32 * rest.scale(b);
                let step = main.scale(b);
                let bound = if rest.qs[c].abs() == 127 { step / 256.0 } else { step / 512.0 };
                assert!((v - x[r * k + c]).abs() <= bound * 1.001 + 1e-6, "[{r},{c}] {v} vs {}", x[r * k + c]);
            }
        }
    }

    #[test]
    fn magic_rounding_is_round_ties_even() {
        for i in -300_000..300_000 {
            let v = i as f32 * 0.000_5;
            assert_eq!(round_ties_even(v), v.round_ties_even(), "{v}");
        }
        for v in [0.5f32, 1.5, 2.5, -0.5, -1.5, -2.5, 126.5, -126.5, 127.49] {
            assert_eq!(round_ties_even(v), v.round_ties_even(), "{v}");
        }
    }
}
