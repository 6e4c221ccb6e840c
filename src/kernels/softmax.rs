//! Row-wise softmax on f32 slices, numerically stable (the row maximum is subtracted
//! before `exp`). Which axis a "row" is, is the caller's business.

use super::rows::{for_each_row, for_each_row_pair};

/// Softmax of one row in place. A row whose values are all `-inf` (fully masked)
/// becomes all zeros rather than NaN.
pub fn softmax_row(row: &mut [f32]) {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    if max == f32::NEG_INFINITY {
        row.fill(0.0);
        return;
    }
    let mut sum = 0.0f32;
    for v in row.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    // sum >= 1 (the maximum contributes exp(0)), so the division is safe.
    let inv = 1.0 / sum;
    for v in row.iter_mut() {
        *v *= inv;
    }
}

/// Softmax of each `row_len`-long row of `x` into `out`.
pub fn softmax(x: &[f32], row_len: usize, out: &mut [f32]) {
    assert!(
        row_len == 0 || x.len().is_multiple_of(row_len),
        "softmax: {} values are not whole rows of {row_len}",
        x.len()
    );
    for_each_row_pair(x, out, row_len, |r, o| {
        o.copy_from_slice(r);
        softmax_row(o);
    });
}

/// Softmax of each `row_len`-long row of `data`, in place.
pub fn softmax_in_place(data: &mut [f32], row_len: usize) {
    assert!(
        row_len == 0 || data.len().is_multiple_of(row_len),
        "softmax: {} values are not whole rows of {row_len}",
        data.len()
    );
    for_each_row(data, row_len, |_, r| softmax_row(r));
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    #[test]
    fn softmax_matches_f64_reference() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for (rows, d) in [(1, 1), (3, 7), (9, 33), (2, 1000), (50, 1024)] {
            // Large offsets: a naive exp without the max shift would overflow.
            let x: Vec<f32> = (0..rows * d).map(|_| rng.random_range(-20.0..20.0) + 500.0).collect();
            let mut got = vec![0.0; x.len()];
            softmax(&x, d, &mut got);
            let mut inplace = x.clone();
            softmax_in_place(&mut inplace, d);
            assert_eq!(inplace, got);
            for (row, g) in x.chunks(d).zip(got.chunks(d)) {
                let m = row.iter().map(|&v| v as f64).fold(f64::NEG_INFINITY, f64::max);
                let s: f64 = row.iter().map(|&v| (v as f64 - m).exp()).sum();
                for (&v, &gv) in row.iter().zip(g) {
                    let want = (v as f64 - m).exp() / s;
                    assert!((gv as f64 - want).abs() <= 1e-5 * want + 1e-9, "{gv} vs {want}");
                }
            }
        }
    }

    #[test]
    fn masked_rows() {
        let mut r = [f32::NEG_INFINITY, 0.0, f32::NEG_INFINITY, 0.0];
        softmax_row(&mut r);
        assert_eq!(r, [0.0, 0.5, 0.0, 0.5]);
        let mut r = [f32::NEG_INFINITY; 3];
        softmax_row(&mut r);
        assert_eq!(r, [0.0; 3]);
    }
}
