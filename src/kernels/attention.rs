//! Causal scaled-dot-product attention of new queries against a key/value cache,
//! with grouped-query heads. Reads each cached key and value row once per query head.

use rayon::prelude::*;

/// Shapes of one attention call.
#[derive(Clone, Copy, Debug)]
pub struct AttentionShape {
    /// New query positions in this call.
    pub n_queries: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    /// Absolute position of the first query; query `i` sees cache rows `0..=start + i`.
    pub start_pos: usize,
}

/// `q` is `[n_queries, n_heads, head_dim]`; `k` and `v` are cache rows
/// `[>= start_pos + n_queries, n_kv_heads, head_dim]`; `out` is like `q`.
/// Parallel over (query, head) pairs on the current rayon pool when large enough.
pub fn causal_attention(s: AttentionShape, q: &[f32], k: &[f32], v: &[f32], out: &mut [f32]) {
    let AttentionShape { n_queries, n_heads, n_kv_heads, head_dim, start_pos } = s;
    let kv_stride = n_kv_heads * head_dim;
    let kv_len = start_pos + n_queries;
    assert!(n_kv_heads > 0 && n_heads % n_kv_heads == 0, "attention: heads must be a multiple of kv heads");
    assert_eq!(q.len(), n_queries * n_heads * head_dim, "attention: q size");
    assert_eq!(out.len(), q.len(), "attention: out size");
    assert!(k.len() >= kv_len * kv_stride && v.len() >= kv_len * kv_stride, "attention: cache too short");
    let group = n_heads / n_kv_heads;
    let scale = 1.0 / (head_dim as f32).sqrt();
    let one = |(idx, o): (usize, &mut [f32])| {
        let (i, h) = (idx / n_heads, idx % n_heads);
        let kvh = h / group;
        let qrow = &q[idx * head_dim..(idx + 1) * head_dim];
        let seen = start_pos + i + 1;
        let mut scores: Vec<f32> = (0..seen)
            .map(|p| {
                let krow = &k[p * kv_stride + kvh * head_dim..][..head_dim];
                dot(qrow, krow) * scale
            })
            .collect();
        let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let mut sum = 0.0;
        for s in &mut scores {
            *s = (*s - max).exp();
            sum += *s;
        }
        let inv = 1.0 / sum;
        o.fill(0.0);
        for (p, &w) in scores.iter().enumerate() {
            let vrow = &v[p * kv_stride + kvh * head_dim..][..head_dim];
            let w = w * inv;
            for (a, &b) in o.iter_mut().zip(vrow) {
                *a += w * b;
            }
        }
    };
    let work = n_queries * n_heads * kv_len * head_dim;
    if work >= 1 << 16 && rayon::current_num_threads() > 1 {
        out.par_chunks_mut(head_dim).enumerate().for_each(one);
    } else {
        out.chunks_mut(head_dim).enumerate().for_each(one);
    }
}

#[inline]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    // Eight partial sums let the compiler vectorise without reassociation flags.
    let mut acc = [0.0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for j in 0..8 {
            acc[j] += x[j] * y[j];
        }
    }
    let mut s: f32 = acc.iter().sum();
    for (x, y) in ra.iter().zip(rb) {
        s += x * y;
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// Attention written out directly in f64 from its definition.
    fn reference(s: AttentionShape, q: &[f32], k: &[f32], v: &[f32]) -> Vec<f64> {
        let d = s.head_dim;
        let kvs = s.n_kv_heads * d;
        let mut out = vec![0.0; q.len()];
        for i in 0..s.n_queries {
            for h in 0..s.n_heads {
                let kvh = h * s.n_kv_heads / s.n_heads;
                let qo = (i * s.n_heads + h) * d;
                let n = s.start_pos + i + 1;
                let sc: Vec<f64> = (0..n)
                    .map(|p| {
                        (0..d).map(|j| q[qo + j] as f64 * k[p * kvs + kvh * d + j] as f64).sum::<f64>()
                            / (d as f64).sqrt()
                    })
                    .collect();
                let m = sc.iter().cloned().fold(f64::MIN, f64::max);
                let z: f64 = sc.iter().map(|x| (x - m).exp()).sum();
                for p in 0..n {
                    let w = (sc[p] - m).exp() / z;
                    for j in 0..d {
                        out[qo + j] += w * v[p * kvs + kvh * d + j] as f64;
                    }
                }
            }
        }
        out
    }

    #[test]
    fn matches_definition_with_gqa_and_offsets() {
        let mut r = rand::rngs::StdRng::seed_from_u64(9);
        for &(nq, nh, nkv, d, start) in
            &[(1, 1, 1, 4, 0), (5, 9, 3, 64, 0), (1, 9, 3, 64, 17), (3, 4, 2, 12, 6), (40, 6, 3, 8, 2)]
        {
            let s = AttentionShape { n_queries: nq, n_heads: nh, n_kv_heads: nkv, head_dim: d, start_pos: start };
            let q: Vec<f32> = (0..nq * nh * d).map(|_| r.random_range(-2.0..2.0)).collect();
            let kv_len = start + nq + 3; // rows past the causal window must be ignored
            let k: Vec<f32> = (0..kv_len * nkv * d).map(|_| r.random_range(-2.0..2.0)).collect();
            let v: Vec<f32> = (0..kv_len * nkv * d).map(|_| r.random_range(-2.0..2.0)).collect();
            let mut out = vec![0.0; q.len()];
            causal_attention(s, &q, &k, &v, &mut out);
            let want = reference(s, &q, &k, &v);
            for (a, b) in out.iter().zip(&want) {
                assert!((*a as f64 - b).abs() < 1e-4, "{s:?}: {a} vs {b}");
            }
        }
    }
}
