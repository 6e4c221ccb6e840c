//! Dense f32 matrix multiplication on the `gemm` crate, which picks AVX-512/AVX2/NEON
//! at run time. Threads: the output's columns are cut into one block per thread for
//! products of few rows (gemm's own split is slower there), gemm splits larger ones.

use rayon::prelude::*;

use super::loop_isa::LoopIsa;
use super::rows::SharedOut;

/// A row-major or strided matrix view: element (r, c) is at `data[r * rs + c * cs]`.
#[derive(Clone, Copy, Debug)]
pub struct MatRef<'a> {
    pub data: &'a [f32],
    pub rows: usize,
    pub cols: usize,
    pub rs: usize,
    pub cs: usize,
}

impl<'a> MatRef<'a> {
    /// A row-major `rows x cols` matrix.
    pub fn row_major(data: &'a [f32], rows: usize, cols: usize) -> Self {
        MatRef { data, rows, cols, rs: cols, cs: 1 }
    }

    /// The transpose, as a view (no copy).
    pub fn t(self) -> Self {
        MatRef { data: self.data, rows: self.cols, cols: self.rows, rs: self.cs, cs: self.rs }
    }

    /// Largest index touched, plus one (0 for an empty matrix).
    fn extent(&self) -> usize {
        if self.rows == 0 || self.cols == 0 {
            0
        } else {
            (self.rows - 1) * self.rs + (self.cols - 1) * self.cs + 1
        }
    }
}

/// A thread takes at least this many multiply-adds of a split product: below about
/// 2^17 (some 30 µs of work) waking the pool costs more than it gains.
const MIN_MACS_PER_THREAD: usize = 1 << 17;

/// Up to this many rows the threads take column blocks of the output, each block one
/// single-threaded gemm call; above, gemm's own split. Measured on 2 threads (AVX-512,
/// `benches/matmul_threads.rs`, BENCHMARKS.md "f32 matmul threading"): gemm's split of a
/// 20-row product gains at most 1.4x over one thread and can be 1.4x *slower* (it packs
/// the whole weight on one thread first), and it never splits a single-row product (its
/// matrix-vector path is serial), while column blocks gain 1.3-2x on both. At 640 rows the
/// two splits are within noise. A single row against a `[k, n]` weight takes neither (see
/// [`FEW_ROWS`]).
const COLUMN_SPLIT_MAX_ROWS: usize = 256;

/// How many column blocks (threads) an `m x k x n` product is cut into: 1 for no split.
fn column_blocks(m: usize, k: usize, n: usize, threads: usize) -> usize {
    if m > COLUMN_SPLIT_MAX_ROWS {
        return 1;
    }
    // Blocks of whole 16-float vectors, so no block ends in a partial register.
    let by_width = n / 16;
    let by_work = m.saturating_mul(k).saturating_mul(n) / MIN_MACS_PER_THREAD;
    threads.min(by_width).min(by_work).max(1)
}

/// `out = a @ b` (+ `out` if `accumulate`), with `out` row-major `a.rows x b.cols`.
/// Threads: the current rayon pool when the product is large enough.
///
/// gemm reads `b` in place when it is row-major (`b.cs == 1`: `b` stored `k x n`); a
/// transposed view (`b.rs == 1`, a weight stored `[n, k]`) makes gemm repack all of `b` on
/// every call with more than one row, which costs as much as the product itself for the
/// few-row products of an encoder (so [`Weight`](crate::tensor::Weight) keeps f32 weights
/// transposed, see [`transpose`]).
pub fn matmul_f32(a: MatRef<'_>, b: MatRef<'_>, out: &mut [f32], accumulate: bool) {
    if !checked_nonempty(a, b, out, accumulate) {
        return;
    }
    let (m, k, n) = (a.rows, a.cols, b.cols);
    let threads = rayon::current_num_threads();
    let blocks = column_blocks(m, k, n, threads);
    if m <= FEW_ROWS && b.cs == 1 && blocks > 1 {
        few_rows(a, b, out, accumulate, blocks, LoopIsa::detect());
    } else if blocks > 1 {
        let width = n.div_ceil(blocks).next_multiple_of(16);
        let shared = SharedOut::new(out);
        (0..n.div_ceil(width)).into_par_iter().with_max_len(1).for_each(|i| {
            let j0 = i * width;
            let b_cols = MatRef { data: &b.data[j0 * b.cs..], cols: width.min(n - j0), ..b };
            // SAFETY: `out` holds `m` rows of `n` (asserted above); this task writes only
            // columns `j0..j0 + b_cols.cols` (< n) of them, and no other task touches those
            // columns (the blocks `i * width..` are disjoint).
            unsafe { gemm_into(a, b_cols, shared.get().add(j0), n, accumulate, gemm::Parallelism::None) };
        });
    } else {
        let par = if m * n * k >= 2 * MIN_MACS_PER_THREAD && threads > 1 {
            gemm::Parallelism::Rayon(threads)
        } else {
            gemm::Parallelism::None
        };
        // SAFETY: `out` holds `m` rows of `n` (asserted above), a unique borrow.
        unsafe { gemm_into(a, b, out.as_mut_ptr(), n, accumulate, par) };
    }
}

/// Up to this many rows, a product with a row-major `b` (`[k, n]`: how
/// [`Weight`](crate::tensor::Weight) keeps f32 matrices) is computed by [`few_rows`], not
/// gemm, whose matrix-vector path reads such a `b` far below memory speed. Measured on 2
/// threads, `b` read from memory (AMD Zen 5, `benches/matmul_threads.rs`, BENCHMARKS.md
/// "f32 decode on [k, n] weights"): 1 x 576 x 1536 192 -> 83 µs, 1 x 1536 x 576
/// 238 -> 85 µs; but at 2 rows gemm is ahead (80 against 105 µs), so only single rows,
/// and only split over threads: on one thread gemm's path was a little faster end to end.
const FEW_ROWS: usize = 1;

/// `out (+)= a @ b` for a few rows of `a` and a row-major `b`: each output row is the sum
/// over `p` of `a[i, p]` times row `p` of `b`. `b`'s rows are cut into `parts` ranges, one
/// task each, so each thread reads its part of `b` straight through, as it lies in memory
/// (column blocks would make every thread skip through all of `b`); the first part adds
/// into `out`, the others into buffers added at the end.
fn few_rows(a: MatRef<'_>, b: MatRef<'_>, out: &mut [f32], accumulate: bool, parts: usize, isa: LoopIsa) {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    debug_assert!(b.cs == 1 && out.len() >= m * n);
    let out = &mut out[..m * n];
    let parts = parts.clamp(1, k.max(1));
    if parts == 1 {
        few_rows_part(a, b, out, accumulate, isa);
        return;
    }
    let per = k.div_ceil(parts);
    let mut partial = vec![0f32; (parts - 1) * m * n];
    let mut dests: Vec<&mut [f32]> = std::iter::once(&mut *out).chain(partial.chunks_mut(m * n)).collect();
    dests.par_iter_mut().enumerate().with_max_len(1).for_each(|(t, dest)| {
        let (p0, p1) = (t * per, ((t + 1) * per).min(k));
        let a_part = MatRef { data: &a.data[(p0 * a.cs).min(a.data.len())..], cols: p1.saturating_sub(p0), ..a };
        let b_part = MatRef { data: &b.data[(p0 * b.rs).min(b.data.len())..], rows: p1.saturating_sub(p0), ..b };
        few_rows_part(a_part, b_part, dest, accumulate || t > 0, isa);
    });
    drop(dests);
    for p in partial.chunks(m * n) {
        for (o, &v) in out.iter_mut().zip(p) {
            *o += v;
        }
    }
}

/// `out (+)= a @ b` on the calling thread, `out` `a.rows x b.cols` exactly.
fn few_rows_part(a: MatRef<'_>, b: MatRef<'_>, out: &mut [f32], accumulate: bool, isa: LoopIsa) {
    if !accumulate {
        out.fill(0.0);
    }
    #[inline(always)]
    fn sums(a: MatRef<'_>, b: MatRef<'_>, out: &mut [f32]) {
        // `b` straight through; the output rows stay in L1 (or in L2 for a wide head, which
        // measured no slower than reading `b` in runs of 32 KiB with the rows in L1).
        let n = b.cols;
        for p in 0..a.cols {
            let brow = &b.data[p * b.rs..][..n];
            for (i, orow) in out.chunks_exact_mut(n).enumerate() {
                let x = a.data[i * a.rs + p * a.cs];
                for (o, &v) in orow.iter_mut().zip(brow) {
                    *o += x * v;
                }
            }
        }
    }
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,fma")]
    fn sums_avx512(a: MatRef<'_>, b: MatRef<'_>, out: &mut [f32]) {
        sums(a, b, out)
    }
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    fn sums_avx2(a: MatRef<'_>, b: MatRef<'_>, out: &mut [f32]) {
        sums(a, b, out)
    }
    match isa {
        LoopIsa::Baseline => sums(a, b, out),
        // SAFETY: `LoopIsa::detect` found AVX-512F and FMA (tests pass only detected ones).
        #[cfg(target_arch = "x86_64")]
        LoopIsa::Avx512 => unsafe { sums_avx512(a, b, out) },
        // SAFETY: as above, AVX2 and FMA.
        #[cfg(target_arch = "x86_64")]
        LoopIsa::Avx2 => unsafe { sums_avx2(a, b, out) },
    }
}

/// `out = a @ b` as one gemm call split by gemm's own threading over `threads` (none for
/// 1), never in column blocks: the baseline that benches/matmul_threads.rs measures
/// [`matmul_f32`]'s split against.
pub fn matmul_f32_gemm_threads(a: MatRef<'_>, b: MatRef<'_>, out: &mut [f32], threads: usize) {
    if !checked_nonempty(a, b, out, false) {
        return;
    }
    let par = if threads > 1 { gemm::Parallelism::Rayon(threads) } else { gemm::Parallelism::None };
    // SAFETY: `out` holds `a.rows` rows of `b.cols` (checked), a unique borrow.
    unsafe { gemm_into(a, b, out.as_mut_ptr(), b.cols, false, par) };
}

/// Panics unless `a`, `b` and `out` fit a product `a.rows x b.cols`; whether there is a
/// product to compute (an empty inner dimension has already set `out` to 0 unless
/// `accumulate`).
fn checked_nonempty(a: MatRef<'_>, b: MatRef<'_>, out: &mut [f32], accumulate: bool) -> bool {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    assert_eq!(b.rows, k, "matmul_f32: inner dimensions differ");
    assert!(out.len() >= m * n, "matmul_f32: output too small");
    assert!(a.data.len() >= a.extent() && b.data.len() >= b.extent(), "matmul_f32: operand too small");
    if m == 0 || n == 0 {
        return false;
    }
    if k == 0 {
        if !accumulate {
            out[..m * n].fill(0.0);
        }
        return false;
    }
    true
}

/// `dst = a @ b` (+ `dst` if `accumulate`), `dst` row-major `a.rows x b.cols` with rows
/// `ldo` apart.
///
/// # Safety
/// `a` and `b` lie inside their slices (checked by `matmul_f32`'s asserts on the whole
/// operands; a column block of `b` is inside them too); `dst` is valid for writes of
/// `a.rows` rows of `b.cols` values, `ldo` apart, that nothing else reads or writes while
/// this runs.
unsafe fn gemm_into(a: MatRef<'_>, b: MatRef<'_>, dst: *mut f32, ldo: usize, accumulate: bool, par: gemm::Parallelism) {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    // SAFETY: every index gemm derives from these dimensions and strides is inside `a`,
    // `b` and `dst` by the contract above; `dst` aliases neither input.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            1,
            ldo as isize,
            accumulate,
            a.data.as_ptr(),
            a.cs as isize,
            a.rs as isize,
            b.data.as_ptr(),
            b.cs as isize,
            b.rs as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            par,
        );
    }
}

/// `src` (`rows x cols`, row-major) transposed into a new `cols x rows` row-major vector.
pub fn transpose(src: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0f32; rows * cols];
    transpose_into(src, rows, cols, &mut out);
    out
}

/// `src` (`rows x cols`, row-major) transposed into `out` (`cols x rows`), in tiles so that
/// both sides are read and written a cache line at a time, on the pool.
pub fn transpose_into(src: &[f32], rows: usize, cols: usize, out: &mut [f32]) {
    assert_eq!(src.len(), rows * cols, "transpose: {} values for {rows} x {cols}", src.len());
    assert_eq!(out.len(), rows * cols, "transpose: output of {} for {rows} x {cols}", out.len());
    const TILE: usize = 32;
    if rows == 0 || cols == 0 {
        return;
    }
    // Each task writes `TILE` whole output rows (input columns `c0..c0 + TILE`).
    out.par_chunks_mut(TILE * rows).enumerate().for_each(|(t, dst)| {
        let c0 = t * TILE;
        let c_len = dst.len() / rows;
        for r in 0..rows {
            let row = &src[r * cols + c0..r * cols + c0 + c_len];
            for (c, &v) in row.iter().enumerate() {
                dst[c * rows + r] = v;
            }
        }
    });
}

/// Plain triple loop, the reference the fast path is tested against.
pub fn matmul_f32_reference(a: MatRef<'_>, b: MatRef<'_>, out: &mut [f32], accumulate: bool) {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    for i in 0..m {
        for j in 0..n {
            let mut acc = 0.0f64;
            for p in 0..k {
                acc += a.data[i * a.rs + p * a.cs] as f64 * b.data[p * b.rs + j * b.cs] as f64;
            }
            let o = &mut out[i * n + j];
            *o = if accumulate { *o + acc as f32 } else { acc as f32 };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn random(n: usize, seed: u64) -> Vec<f32> {
        let mut r = rand::rngs::StdRng::seed_from_u64(seed);
        (0..n).map(|_| r.random_range(-1.0..1.0)).collect()
    }

    #[test]
    fn transpose_moves_every_value() {
        for &(r, c) in &[(0, 3), (1, 1), (3, 5), (33, 70), (64, 32)] {
            let src: Vec<f32> = (0..r * c).map(|i| i as f32).collect();
            let t = transpose(&src, r, c);
            for i in 0..r {
                for j in 0..c {
                    assert_eq!(t[j * r + i], src[i * c + j], "{r}x{c} at ({i}, {j})");
                }
            }
        }
    }

    #[test]
    fn column_blocks_need_rows_width_and_work() {
        assert_eq!(column_blocks(20, 384, 1152, 2), 2);
        assert_eq!(column_blocks(1, 576, 1536, 2), 2);
        assert_eq!(column_blocks(1, 576, 1536, 1), 1);
        assert_eq!(column_blocks(1, 64, 64, 2), 1, "too little work");
        assert_eq!(column_blocks(64, 1024, 16, 2), 1, "one vector wide");
        assert_eq!(column_blocks(COLUMN_SPLIT_MAX_ROWS + 1, 384, 1536, 2), 1, "gemm splits tall products");
    }

    /// Both layouts of `b` and both threading paths (column blocks, gemm's own split) on
    /// a two-thread pool, against the reference.
    #[test]
    fn gemm_matches_reference_on_odd_and_transposed_shapes() {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
        pool.install(gemm_matches_reference);
        gemm_matches_reference();
    }

    fn gemm_matches_reference() {
        let shapes =
            [(1, 1, 1), (3, 5, 7), (17, 33, 9), (64, 128, 65), (1, 576, 1536), (20, 384, 1000), (300, 64, 600)];
        for &(m, k, n) in &shapes {
            let a = random(m * k, 1);
            let w = random(n * k, 2);
            let wt = transpose(&w, n, k);
            for b in [MatRef::row_major(&w, n, k).t(), MatRef::row_major(&wt, k, n)] {
                for acc in [false, true] {
                    let mut got = random(m * n, 3);
                    let mut want = got.clone();
                    matmul_f32(MatRef::row_major(&a, m, k), b, &mut got, acc);
                    matmul_f32_reference(MatRef::row_major(&a, m, k), b, &mut want, acc);
                    for (g, w) in got.iter().zip(&want) {
                        assert!((g - w).abs() <= 1e-4 * (k as f32).sqrt(), "{m}x{k}x{n}: {g} vs {w}");
                    }
                }
            }
        }
    }

    /// A transposed (column-major) `a`, as `Tensor::matmul` passes for transposed views.
    /// The few-row path on every instruction set this CPU runs and in 1 to 3 parts (more
    /// parts than rows of `b` too), `a` row-major or transposed, against the reference.
    #[test]
    fn few_rows_match_reference_on_every_isa() {
        for &(m, k, n) in &[(1, 1, 1), (1, 2, 33), (2, 64, 100), (3, 5, 17), (4, 576, 1536), (1, 1536, 577)] {
            let at = random(k * m, 1);
            let a_rows = random(m * k, 1);
            let b = random(k * n, 2);
            let b = MatRef::row_major(&b, k, n);
            for a in [MatRef::row_major(&a_rows, m, k), MatRef::row_major(&at, k, m).t()] {
                for isa in LoopIsa::detected() {
                    for blocks in 1..=3 {
                        for acc in [false, true] {
                            let mut got = random(m * n, 3);
                            let mut want = got.clone();
                            few_rows(a, b, &mut got, acc, blocks, isa);
                            matmul_f32_reference(a, b, &mut want, acc);
                            for (g, w) in got.iter().zip(&want) {
                                let tol = 1e-4 * (k as f32).sqrt();
                                assert!((g - w).abs() <= tol, "{isa:?} {blocks} blocks {m}x{k}x{n}: {g} vs {w}");
                            }
                        }
                    }
                }
            }
        }
        // A NaN in the weight reaches every row, even where the activation is 0.
        let b = [1.0, f32::NAN, 2.0, 3.0];
        let mut out = [0f32; 4];
        few_rows(
            MatRef::row_major(&[0.0, 1.0, 1.0, 0.0], 2, 2),
            MatRef::row_major(&b, 2, 2),
            &mut out,
            false,
            1,
            LoopIsa::detect(),
        );
        assert!(out[1].is_nan() && out[3].is_nan() && out[0] == 2.0 && out[2] == 1.0, "{out:?}");
    }

    #[test]
    fn gemm_matches_reference_on_a_transposed_lhs() {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
        for &(m, k, n) in &[(3, 5, 7), (20, 384, 1000)] {
            let at = random(k * m, 1);
            let a = MatRef::row_major(&at, k, m).t();
            let b = random(k * n, 2);
            let b = MatRef::row_major(&b, k, n);
            let mut got = vec![0f32; m * n];
            let mut want = got.clone();
            pool.install(|| matmul_f32(a, b, &mut got, false));
            matmul_f32_reference(a, b, &mut want, false);
            for (g, w) in got.iter().zip(&want) {
                assert!((g - w).abs() <= 1e-4 * (k as f32).sqrt(), "{m}x{k}x{n}: {g} vs {w}");
            }
        }
    }
}
