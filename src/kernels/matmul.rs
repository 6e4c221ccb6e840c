//! Dense f32 matrix multiplication on the `gemm` crate, which picks AVX-512/AVX2/NEON
//! at run time and splits work over the current rayon pool.

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

/// Below this many multiply-adds a single thread is faster than splitting.
const PARALLEL_FROM_FLOPS: usize = 1 << 18;

/// `out = a @ b` (+ `out` if `accumulate`), with `out` row-major `a.rows x b.cols`.
/// Threads: the current rayon pool when the product is large enough.
pub fn matmul_f32(a: MatRef<'_>, b: MatRef<'_>, out: &mut [f32], accumulate: bool) {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    assert_eq!(b.rows, k, "matmul_f32: inner dimensions differ");
    assert!(out.len() >= m * n, "matmul_f32: output too small");
    assert!(a.data.len() >= a.extent() && b.data.len() >= b.extent(), "matmul_f32: operand too small");
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            out[..m * n].fill(0.0);
        }
        return;
    }
    let par = if m * n * k >= PARALLEL_FROM_FLOPS && rayon::current_num_threads() > 1 {
        gemm::Parallelism::Rayon(rayon::current_num_threads())
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: the asserts above guarantee that every index gemm computes from these
    // dimensions and strides lies inside `a.data`, `b.data` and `out`; `out` is
    // borrowed mutably, so it does not alias the inputs.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            out.as_mut_ptr(),
            1,
            n as isize,
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
    fn gemm_matches_reference_on_odd_and_transposed_shapes() {
        for &(m, k, n) in &[(1, 1, 1), (3, 5, 7), (17, 33, 9), (64, 128, 65), (1, 576, 1536)] {
            let a = random(m * k, 1);
            let bt = random(n * k, 2); // stored as n x k: use its transpose
            let b = MatRef::row_major(&bt, n, k).t();
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
