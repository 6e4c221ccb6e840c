//! Causal scaled-dot-product attention of new queries against a key/value cache, with
//! grouped-query heads: each cached key and value row is read once per group of query heads
//! sharing it. No allocation per call (online softmax over stack-sized chunks of rows).

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
/// Parallel over (query, kv head) pairs on the current rayon pool when large enough.
pub fn causal_attention(s: AttentionShape, q: &[f32], k: &[f32], v: &[f32], out: &mut [f32]) {
    attention_with(s, q, k, v, out, true)
}

/// [`causal_attention`], with the AVX2 build only when `simd` (tests cover both).
fn attention_with(s: AttentionShape, q: &[f32], k: &[f32], v: &[f32], out: &mut [f32], simd: bool) {
    let AttentionShape { n_queries, n_heads, n_kv_heads, head_dim, start_pos } = s;
    let kv_stride = n_kv_heads * head_dim;
    let kv_len = start_pos + n_queries;
    assert!(n_kv_heads > 0 && n_heads % n_kv_heads == 0, "attention: heads must be a multiple of kv heads");
    assert_eq!(q.len(), n_queries * n_heads * head_dim, "attention: q size");
    assert_eq!(out.len(), q.len(), "attention: out size");
    assert!(k.len() >= kv_len * kv_stride && v.len() >= kv_len * kv_stride, "attention: cache too short");
    if q.is_empty() {
        return;
    }
    let group = n_heads / n_kv_heads;
    let _ = simd; // only read on x86_64
    let one = |(idx, o): (usize, &mut [f32])| {
        // `o` holds the outputs of the `group` query heads that share kv head `kvh`.
        let (i, kvh) = (idx / n_kv_heads, idx % n_kv_heads);
        let qs = &q[(i * n_heads + kvh * group) * head_dim..][..group * head_dim];
        let job = GroupJob { qs, k, v, o, head_dim, kv_stride, kv_off: kvh * head_dim, seen: start_pos + i + 1 };
        #[cfg(target_arch = "x86_64")]
        if simd && is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            // SAFETY: AVX2 and FMA were just detected.
            return unsafe { attend_group_avx2(job) };
        }
        attend_group::<false>(job)
    };
    let work = n_queries * n_heads * kv_len * head_dim;
    if work >= 1 << 16 && rayon::current_num_threads() > 1 {
        out.par_chunks_mut(group * head_dim).enumerate().for_each(one);
    } else {
        out.chunks_mut(group * head_dim).enumerate().for_each(one);
    }
}

/// The query heads of one position that share a kv head.
struct GroupJob<'a> {
    /// `group` query rows of `head_dim`.
    qs: &'a [f32],
    k: &'a [f32],
    v: &'a [f32],
    /// Outputs, like `qs`.
    o: &'a mut [f32],
    head_dim: usize,
    kv_stride: usize,
    /// Offset of this kv head within a cache row.
    kv_off: usize,
    /// Cache rows this query attends to.
    seen: usize,
}

/// Scores kept on the stack per chunk of cache rows (over all heads of a group).
const SCORE_BUF: usize = 1024;

/// [`attend_group`] compiled for AVX2 + FMA.
///
/// # Safety
/// The CPU must support AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn attend_group_avx2(job: GroupJob<'_>) {
    attend_group::<true>(job)
}

/// Softmax attention of each query head in the group over rows `0..seen`, reading each key
/// and value row once for the whole group. Online softmax over chunks of rows keeps the
/// scores on the stack (no allocation) for any context length.
#[inline(always)]
fn attend_group<const FMA: bool>(job: GroupJob<'_>) {
    let GroupJob { qs, k, v, o, head_dim: d, kv_stride, kv_off, seen } = job;
    let group = qs.len() / d;
    let scale = 1.0 / (d as f32).sqrt();
    let chunk = (SCORE_BUF / group).max(1);
    let mut scores = [0f32; SCORE_BUF];
    let mut max = [f32::NEG_INFINITY; 64];
    let mut sum = [0f32; 64];
    let (max, sum) = if group <= 64 {
        (&mut max[..group], &mut sum[..group])
    } else {
        return attend_group_large::<FMA>(GroupJob { qs, k, v, o, head_dim: d, kv_stride, kv_off, seen });
    };
    o.fill(0.0);
    let mut p0 = 0;
    while p0 < seen {
        let n = chunk.min(seen - p0);
        for p in 0..n {
            let krow = &k[(p0 + p) * kv_stride + kv_off..][..d];
            for g in 0..group {
                scores[g * chunk + p] = dot::<FMA>(&qs[g * d..(g + 1) * d], krow) * scale;
            }
        }
        for g in 0..group {
            let sc = &mut scores[g * chunk..g * chunk + n];
            let m = sc.iter().copied().fold(max[g], f32::max);
            let correction = (max[g] - m).exp();
            max[g] = m;
            let mut total = 0.0;
            for s in sc.iter_mut() {
                *s = (*s - m).exp();
                total += *s;
            }
            sum[g] = sum[g] * correction + total;
            if correction != 1.0 {
                o[g * d..(g + 1) * d].iter_mut().for_each(|x| *x *= correction);
            }
        }
        for p in 0..n {
            let vrow = &v[(p0 + p) * kv_stride + kv_off..][..d];
            for g in 0..group {
                axpy::<FMA>(scores[g * chunk + p], vrow, &mut o[g * d..(g + 1) * d]);
            }
        }
        p0 += n;
    }
    for g in 0..group {
        let inv = 1.0 / sum[g];
        o[g * d..(g + 1) * d].iter_mut().for_each(|x| *x *= inv);
    }
}

/// Groups of more than 64 query heads per kv head (no model has them): one head at a time.
#[inline(always)]
fn attend_group_large<const FMA: bool>(job: GroupJob<'_>) {
    let GroupJob { qs, k, v, o, head_dim: d, kv_stride, kv_off, seen } = job;
    for (qh, oh) in qs.chunks_exact(d).zip(o.chunks_exact_mut(d)) {
        attend_group::<FMA>(GroupJob { qs: qh, k, v, o: oh, head_dim: d, kv_stride, kv_off, seen });
    }
}

#[inline(always)]
fn fmadd<const FMA: bool>(a: f32, b: f32, c: f32) -> f32 {
    if FMA {
        a.mul_add(b, c)
    } else {
        a * b + c
    }
}

#[inline(always)]
fn dot<const FMA: bool>(a: &[f32], b: &[f32]) -> f32 {
    // Sixteen partial sums let the compiler vectorise without reassociation flags.
    let mut acc = [0.0f32; 16];
    let (ca, cb) = (a.chunks_exact(16), b.chunks_exact(16));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for j in 0..16 {
            acc[j] = fmadd::<FMA>(x[j], y[j], acc[j]);
        }
    }
    let mut s: f32 = acc.iter().sum();
    for (x, y) in ra.iter().zip(rb) {
        s += x * y;
    }
    s
}

/// `o += w * x`.
#[inline(always)]
fn axpy<const FMA: bool>(w: f32, x: &[f32], o: &mut [f32]) {
    for (a, &b) in o.iter_mut().zip(x) {
        *a = fmadd::<FMA>(w, b, *a);
    }
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
        for &(nq, nh, nkv, d, start) in &[
            (1, 1, 1, 4, 0),
            (5, 9, 3, 64, 0),
            (1, 9, 3, 64, 17),
            (3, 4, 2, 12, 6),
            (40, 6, 3, 8, 2),
            (3, 8, 1, 20, 300),
            (2, 2, 2, 7, 1500),
            (1, 70, 1, 4, 5),
        ] {
            let s = AttentionShape { n_queries: nq, n_heads: nh, n_kv_heads: nkv, head_dim: d, start_pos: start };
            let q: Vec<f32> = (0..nq * nh * d).map(|_| r.random_range(-2.0..2.0)).collect();
            let kv_len = start + nq + 3; // rows past the causal window must be ignored
            let k: Vec<f32> = (0..kv_len * nkv * d).map(|_| r.random_range(-2.0..2.0)).collect();
            let v: Vec<f32> = (0..kv_len * nkv * d).map(|_| r.random_range(-2.0..2.0)).collect();
            let want = reference(s, &q, &k, &v);
            for simd in [false, true] {
                let mut out = vec![f32::NAN; q.len()];
                attention_with(s, &q, &k, &v, &mut out, simd);
                for (a, b) in out.iter().zip(&want) {
                    assert!((*a as f64 - b).abs() < 1e-4, "{s:?} simd={simd}: {a} vs {b}");
                }
            }
        }
    }
}
