//! Test helpers for the ops: seeded random tensors, non-contiguous views holding given
//! values, and comparison against f64 references.

use rand::{Rng, SeedableRng};

use crate::tensor::Tensor;

pub(crate) fn random_vec(n: usize, seed: u64, range: f32) -> Vec<f32> {
    let mut r = rand::rngs::StdRng::seed_from_u64(seed);
    (0..n).map(|_| r.random_range(-range..range)).collect()
}

pub(crate) fn random_tensor(dims: &[usize], seed: u64) -> Tensor {
    Tensor::from_vec(random_vec(dims.iter().product(), seed, 2.0), dims).unwrap()
}

/// A non-contiguous view (every stride doubled) whose row-major values are `values`.
pub(crate) fn strided(values: &[f32], dims: &[usize]) -> Tensor {
    let mut wide = Vec::with_capacity(values.len() * 2);
    for &v in values {
        wide.extend([v, f32::NAN]);
    }
    let mut wdims = dims.to_vec();
    wdims.push(2);
    let t = Tensor::from_vec(wide, &wdims).unwrap().narrow(-1, 0, 1).unwrap().squeeze(-1).unwrap();
    assert!(values.len() <= 1 || !t.is_contiguous());
    t
}

/// A view whose row-major values are `values` but whose storage holds the transpose
/// of the last two dimensions (rank >= 2).
pub(crate) fn transposed(values: &[f32], dims: &[usize]) -> Tensor {
    let r = dims.len();
    let t = Tensor::from_vec(values.to_vec(), dims).unwrap();
    let stored = t.transpose(-1, -2).unwrap().contiguous().unwrap();
    let back = stored.transpose(-1, -2).unwrap();
    assert_eq!(back.dims(), dims);
    assert!(dims[r - 1] == 1 || dims[r - 2] == 1 || !back.is_contiguous());
    back
}

/// `got` within `tol * (1 + |want|)` of `want`, element by element.
pub(crate) fn assert_close(got: &[f32], want: &[f64], tol: f64, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: lengths differ");
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        assert!((g as f64 - w).abs() <= tol * (1.0 + w.abs()), "{what}[{i}]: got {g}, want {w}");
    }
}

/// Row-major multi-index of flat index `i` in `dims`.
pub(crate) fn unravel(mut i: usize, dims: &[usize]) -> Vec<usize> {
    let mut idx = vec![0; dims.len()];
    for k in (0..dims.len()).rev() {
        idx[k] = i % dims[k];
        i /= dims[k];
    }
    idx
}

/// Flat row-major index of `idx` in `dims`.
pub(crate) fn ravel(idx: &[usize], dims: &[usize]) -> usize {
    idx.iter().zip(dims).fold(0, |acc, (&i, &d)| acc * d + i)
}
