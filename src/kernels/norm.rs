//! Row normalisations on f32 slices: RMSNorm (LLaMA family) and LayerNorm. A row is
//! `weight.len()` consecutive values; big inputs are split over rows on the pool.

use super::rows::for_each_row_pair;

const LANES: usize = 8;

/// Sum of `f(v)` over `xs` with eight independent accumulators: the compiler can keep
/// them in one SIMD register, and the rounding error grows more slowly than one chain.
#[inline]
fn lane_sum(xs: &[f32], f: impl Fn(f32) -> f32) -> f32 {
    let mut acc = [0.0f32; LANES];
    let chunks = xs.chunks_exact(LANES);
    let tail = chunks.remainder();
    for c in chunks {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a += f(v);
        }
    }
    let mut s: f32 = acc.iter().sum();
    for &v in tail {
        s += f(v);
    }
    s
}

fn check_rows(op: &str, x: &[f32], w: &[f32], out: &[f32]) {
    assert_eq!(x.len(), out.len(), "{op}: input and output lengths differ");
    assert!(
        if w.is_empty() { x.is_empty() } else { x.len().is_multiple_of(w.len()) },
        "{op}: {} values are not whole rows of {}",
        x.len(),
        w.len()
    );
}

/// RMSNorm of each row: `out = x * w / sqrt(mean(x^2) + eps)`.
pub fn rms_norm(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    check_rows("rms_norm", x, w, out);
    let d = w.len();
    for_each_row_pair(x, out, d, |row, o| {
        let ms = lane_sum(row, |v| v * v) / d as f32;
        let r = 1.0 / (ms + eps).sqrt();
        for ((o, &v), &g) in o.iter_mut().zip(row).zip(w) {
            *o = v * r * g;
        }
    });
}

/// LayerNorm of each row: `out = (x - mean) / sqrt(var + eps) * w + b`, with the
/// population variance (divided by the row length), as PyTorch does.
pub fn layer_norm(x: &[f32], w: &[f32], b: Option<&[f32]>, eps: f32, out: &mut [f32]) {
    check_rows("layer_norm", x, w, out);
    if let Some(b) = b {
        assert_eq!(b.len(), w.len(), "layer_norm: bias and weight lengths differ");
    }
    let d = w.len();
    for_each_row_pair(x, out, d, |row, o| {
        let mean = lane_sum(row, |v| v) / d as f32;
        // Two passes (mean first) avoid the cancellation of E[x^2] - E[x]^2.
        let var = lane_sum(row, |v| (v - mean) * (v - mean)) / d as f32;
        let r = 1.0 / (var + eps).sqrt();
        match b {
            Some(b) => {
                for (((o, &v), &g), &c) in o.iter_mut().zip(row).zip(w).zip(b) {
                    *o = (v - mean) * r * g + c;
                }
            }
            None => {
                for ((o, &v), &g) in o.iter_mut().zip(row).zip(w) {
                    *o = (v - mean) * r * g;
                }
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn random(n: usize, seed: u64) -> Vec<f32> {
        let mut r = rand::rngs::StdRng::seed_from_u64(seed);
        (0..n).map(|_| r.random_range(-3.0..3.0)).collect()
    }

    fn close(got: &[f32], want: &[f64], what: &str) {
        assert_eq!(got.len(), want.len());
        for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
            assert!((g as f64 - w).abs() <= 2e-5 * (1.0 + w.abs()), "{what}[{i}]: {g} vs {w}");
        }
    }

    #[test]
    fn norms_match_f64_reference() {
        for (rows, d) in [(1, 1), (3, 7), (5, 33), (2, 1000), (40, 1031)] {
            let x = random(rows * d, 1);
            let w = random(d, 2);
            let b = random(d, 3);
            let eps = 1e-5;
            let mut want_rms = vec![];
            let mut want_ln = vec![];
            for row in x.chunks(d) {
                let ms = row.iter().map(|&v| v as f64 * v as f64).sum::<f64>() / d as f64;
                want_rms.extend(row.iter().zip(&w).map(|(&v, &g)| v as f64 * g as f64 / (ms + eps as f64).sqrt()));
                let mean = row.iter().map(|&v| v as f64).sum::<f64>() / d as f64;
                let var = row.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / d as f64;
                want_ln.extend(
                    row.iter()
                        .zip(&w)
                        .zip(&b)
                        .map(|((&v, &g), &c)| (v as f64 - mean) / (var + eps as f64).sqrt() * g as f64 + c as f64),
                );
            }
            let mut got = vec![0.0; rows * d];
            rms_norm(&x, &w, eps, &mut got);
            close(&got, &want_rms, "rms_norm");
            layer_norm(&x, &w, Some(&b), eps, &mut got);
            close(&got, &want_ln, "layer_norm");
            layer_norm(&x, &w, None, eps, &mut got);
            let want_nb: Vec<f64> = want_ln.iter().enumerate().map(|(i, &v)| v - b[i % d] as f64).collect();
            close(&got, &want_nb, "layer_norm without bias");
        }
    }

    #[test]
    fn constant_row_stays_finite() {
        let x = vec![2.5f32; 64];
        let w = vec![1.0f32; 64];
        let mut out = vec![0.0; 64];
        layer_norm(&x, &w, None, 1e-5, &mut out);
        assert!(out.iter().all(|&v| v == 0.0));
        rms_norm(&vec![0.0; 64], &w, 1e-6, &mut out);
        assert!(out.iter().all(|&v| v == 0.0));
    }
}
