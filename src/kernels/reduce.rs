//! Row reductions on f32 slices (sum, max): one output value per `row_len` inputs.

use super::rows::for_each_row;

fn reduce(x: &[f32], row_len: usize, out: &mut [f32], f: impl Fn(&[f32]) -> f32 + Sync + Send) {
    assert!(
        if row_len == 0 { out.is_empty() || x.is_empty() } else { x.len() == out.len() * row_len },
        "reduce: {} values do not make {} rows of {row_len}",
        x.len(),
        out.len()
    );
    if row_len == 0 {
        out.iter_mut().for_each(|o| *o = f(&[]));
        return;
    }
    // Rows here are single output values, so the parallel split is over outputs.
    for_each_row(out, 1, |i, o| o[0] = f(&x[i * row_len..(i + 1) * row_len]));
}

/// `out[i] = sum of row i` (accumulated in f64, so long rows lose nothing).
pub fn sum_rows(x: &[f32], row_len: usize, out: &mut [f32]) {
    reduce(x, row_len, out, |r| r.iter().map(|&v| v as f64).sum::<f64>() as f32)
}

/// `out[i] = max of row i` (`-inf` for empty rows; NaN values are skipped).
pub fn max_rows(x: &[f32], row_len: usize, out: &mut [f32]) {
    reduce(x, row_len, out, |r| r.iter().copied().fold(f32::NEG_INFINITY, f32::max))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_and_maxima() {
        let x: Vec<f32> = (0..12).map(|i| ((i * 7) % 12) as f32 - 5.0).collect();
        let mut out = vec![0.0; 3];
        sum_rows(&x, 4, &mut out);
        let want: Vec<f32> = x.chunks(4).map(|r| r.iter().sum()).collect();
        assert_eq!(out, want);
        max_rows(&x, 4, &mut out);
        let want: Vec<f32> = x.chunks(4).map(|r| r.iter().copied().fold(f32::MIN, f32::max)).collect();
        assert_eq!(out, want);
        let mut out = vec![1.0; 2];
        sum_rows(&[], 0, &mut out);
        assert_eq!(out, [0.0, 0.0]);
    }
}
