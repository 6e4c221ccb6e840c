//! Scaled-dot-product attention of new queries against a key/value cache, with
//! grouped-query heads: causal (decoders), or bidirectional over the first `n` keys
//! (encoders; keys past `n` are padding and masked). Work is cut into tiles of query rows that share one kv head (so
//! each cached key and value row is read once per tile) and, when there are few queries
//! (decode), into ranges of cache positions whose partial softmax sums are merged after
//! ("flash decoding"), so every thread gets work. The cache may hold f32 or f16 (half the
//! bytes to read per token). An AVX-512 kernel with a vectorised `exp` and a portable one
//! with the same phases; no heap allocation per call.

use std::cell::RefCell;

use half::f16;
use rayon::prelude::*;

use super::rows::{with_thread_buf, SharedOut};

/// Shapes of one attention call.
#[derive(Clone, Copy, Debug)]
pub struct AttentionShape {
    /// New query positions in this call.
    pub n_queries: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    /// Absolute position of the first query; query `i` sees cache rows `0..=start + i`
    /// (the last `window` of them with a sliding window).
    pub start_pos: usize,
    /// Multiplier of the scores (`1 / sqrt(head_dim)` in most models).
    pub scale: f32,
    /// Sliding-window attention: a query sees only itself and the `window - 1` positions
    /// before it. `None`: every earlier position.
    pub window: Option<usize>,
    /// `Some(n)`: bidirectional (an encoder): every query sees keys `0..n` whatever its
    /// position, and rows from `n` on (padding) get no weight; `start_pos` and `window`
    /// are ignored. `None`: causal.
    pub keys: Option<usize>,
}

impl AttentionShape {
    /// Plain causal attention with the usual `1 / sqrt(head_dim)` scale.
    pub fn causal(n_queries: usize, n_heads: usize, n_kv_heads: usize, head_dim: usize, start_pos: usize) -> Self {
        AttentionShape {
            n_queries,
            n_heads,
            n_kv_heads,
            head_dim,
            start_pos,
            scale: 1.0 / (head_dim as f32).sqrt(),
            window: None,
            keys: None,
        }
    }

    /// Bidirectional attention of `n_queries` rows over the first `n_keys` key rows (an
    /// encoder with a padding mask: rows past `n_keys` are padding), scale `1 / sqrt(d)`.
    pub fn bidirectional(n_queries: usize, n_heads: usize, head_dim: usize, n_keys: usize) -> Self {
        AttentionShape { keys: Some(n_keys), ..AttentionShape::causal(n_queries, n_heads, n_heads, head_dim, 0) }
    }
}

/// Query rows per tile (query positions × heads of one kv group).
const MAX_ROWS: usize = 16;
/// Cache positions scored at once (scores stay on the stack).
const CHUNK: usize = 64;
/// Below this many multiply-adds the call runs on the calling thread.
const PAR_MIN_WORK: usize = 1 << 15;

/// An element type of the key/value cache: `f32` or `half::f16`.
pub trait KvElem: Copy + Send + Sync + 'static {
    fn to_f32(self) -> f32;

    /// Sixteen values from `p` as f32.
    ///
    /// # Safety
    /// The CPU must support AVX-512F; 16 values must be readable at `p`.
    #[cfg(target_arch = "x86_64")]
    unsafe fn load16(p: *const Self) -> std::arch::x86_64::__m512;
}

impl KvElem for f32 {
    #[inline(always)]
    fn to_f32(self) -> f32 {
        self
    }

    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load16(p: *const f32) -> std::arch::x86_64::__m512 {
        // SAFETY: forwarded contract.
        unsafe { std::arch::x86_64::_mm512_loadu_ps(p) }
    }
}

impl KvElem for f16 {
    #[inline(always)]
    fn to_f32(self) -> f32 {
        f16::to_f32(self)
    }

    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load16(p: *const f16) -> std::arch::x86_64::__m512 {
        use std::arch::x86_64::*;
        // SAFETY: forwarded contract (`vcvtph2ps` on 512 bits is AVX-512F).
        unsafe { _mm512_cvtph_ps(_mm256_loadu_si256(p.cast())) }
    }
}

/// `q` is `[n_queries, n_heads, head_dim]`; `k` and `v` are cache rows
/// `[>= start_pos + n_queries, n_kv_heads, head_dim]` of f32 or f16; `out` is like `q`.
/// Parallel on the current rayon pool when large enough.
pub fn causal_attention<T: KvElem>(s: AttentionShape, q: &[f32], k: &[T], v: &[T], out: &mut [f32]) {
    attention_with(s, q, k, v, out, Kernel::best(s.head_dim))
}

/// Attention with the mask `s` describes (causal, or bidirectional over `s.keys` rows);
/// `k` and `v` hold at least as many rows as the mask reaches.
pub fn attention<T: KvElem>(s: AttentionShape, q: &[f32], k: &[T], v: &[T], out: &mut [f32]) {
    attention_with(s, q, k, v, out, Kernel::best(s.head_dim))
}

/// Which row kernel runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kernel {
    Portable,
    #[cfg(target_arch = "x86_64")]
    Avx512,
}

impl Kernel {
    fn best(head_dim: usize) -> Kernel {
        #[cfg(target_arch = "x86_64")]
        if head_dim.is_multiple_of(16)
            && head_dim <= 16 * MAX_D16
            && is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("fma")
        {
            return Kernel::Avx512;
        }
        let _ = head_dim;
        Kernel::Portable
    }
}

/// One unit of work: query rows `q_rows` (offsets into `q`, one kv head), cache positions
/// `p_lo..p_hi`, row `r` seeing positions `first[r]..limit[r]`.
#[derive(Clone, Copy)]
struct Tile {
    n: usize,
    q_rows: [usize; MAX_ROWS],
    limit: [usize; MAX_ROWS],
    first: [usize; MAX_ROWS],
    kv_off: usize,
    p_lo: usize,
    p_hi: usize,
}

/// Unnormalised partial results of a tile: `o[r]` = Σ exp(s - m[r]) v, `l[r]` = Σ exp(s - m[r]).
struct Partial<'a> {
    o: &'a mut [f32],
    m: &'a mut [f32],
    l: &'a mut [f32],
}

/// Shared, read-only inputs of every tile.
#[derive(Clone, Copy)]
struct Inputs<'a, T> {
    q: &'a [f32],
    k: &'a [T],
    v: &'a [T],
    d: usize,
    kv_stride: usize,
    scale: f32,
}

fn attention_with<T: KvElem>(s: AttentionShape, q: &[f32], k: &[T], v: &[T], out: &mut [f32], kernel: Kernel) {
    let AttentionShape { n_queries, n_heads, n_kv_heads, head_dim: d, start_pos, scale, window, keys } = s;
    assert!(window != Some(0), "attention: a sliding window of 0 positions");
    let kv_stride = n_kv_heads * d;
    let kv_len = keys.unwrap_or(start_pos + n_queries);
    assert!(n_kv_heads > 0 && n_heads % n_kv_heads == 0, "attention: heads must be a multiple of kv heads");
    assert_eq!(q.len(), n_queries * n_heads * d, "attention: q size");
    assert_eq!(out.len(), q.len(), "attention: out size");
    assert!(k.len() >= kv_len * kv_stride && v.len() >= kv_len * kv_stride, "attention: cache too short");
    if q.is_empty() {
        return;
    }
    let group = n_heads / n_kv_heads;
    let inputs = Inputs { q, k, v, d, kv_stride, scale };
    // Tiles: `tq` query positions × the `group` heads of one kv head (a group larger than a
    // tile is cut into several tiles of heads).
    let heads_per_tile = group.min(MAX_ROWS);
    let tq = (MAX_ROWS / heads_per_tile).max(1).min(n_queries);
    let head_tiles = group.div_ceil(heads_per_tile);
    let q_tiles = n_queries.div_ceil(tq);
    let base_jobs = q_tiles * n_kv_heads * head_tiles;
    let threads = rayon::current_num_threads();
    let work = n_queries * n_heads * kv_len * d;
    let parallel = threads > 1 && work >= PAR_MIN_WORK;
    // Few tiles (decode): also split the cache positions so that each thread has work.
    let splits = if parallel && base_jobs < 2 * threads {
        (2 * threads).div_ceil(base_jobs).min(kv_len / CHUNK).max(1)
    } else {
        1
    };
    let tile = |job: usize| -> Tile {
        let split = job % splits;
        let rest = job / splits;
        let ht = rest % head_tiles;
        let kvh = (rest / head_tiles) % n_kv_heads;
        let qt = rest / (head_tiles * n_kv_heads);
        let (i0, i1) = (qt * tq, ((qt + 1) * tq).min(n_queries));
        let (g0, g1) = (ht * heads_per_tile, ((ht + 1) * heads_per_tile).min(group));
        let mut t = Tile {
            n: 0,
            q_rows: [0; MAX_ROWS],
            limit: [0; MAX_ROWS],
            first: [0; MAX_ROWS],
            kv_off: kvh * d,
            p_lo: kv_len * split / splits,
            p_hi: kv_len * (split + 1) / splits,
        };
        for i in i0..i1 {
            for g in g0..g1 {
                t.q_rows[t.n] = (i * n_heads + kvh * group + g) * d;
                t.limit[t.n] = keys.unwrap_or(start_pos + i + 1);
                t.first[t.n] = match keys {
                    Some(_) => 0,
                    None => window.map_or(0, |w| (start_pos + i + 1).saturating_sub(w)),
                };
                t.n += 1;
            }
        }
        if keys.is_none() {
            t.p_hi = t.p_hi.min(start_pos + i1);
        }
        // Positions before every row's window are skipped (with one split per tile).
        if keys.is_none() && window.is_some() && t.n > 0 {
            t.p_lo = t.p_lo.max(t.first[..t.n].iter().copied().min().unwrap_or(0)).min(t.p_hi);
        }
        t
    };
    let n_jobs = base_jobs * splits;
    let out_ptr = SharedOut::new(out);
    with_thread_buf(&PARTIALS, |buf| {
        let per_job = MAX_ROWS * (d + 2);
        if buf.len() < n_jobs * per_job {
            buf.resize(n_jobs * per_job, 0.0);
        }
        let run = |(job, part): (usize, &mut [f32])| {
            let t = tile(job);
            let (o, ml) = part.split_at_mut(MAX_ROWS * d);
            let (m, l) = ml.split_at_mut(MAX_ROWS);
            let p = Partial { o: &mut o[..t.n * d], m: &mut m[..t.n], l: &mut l[..t.n] };
            run_tile(kernel, &inputs, &t, p);
            if splits == 1 {
                for r in 0..t.n {
                    // SAFETY: row `q_rows[r]` of `out` (d values) belongs to this job alone:
                    // each (query, head) pair is in exactly one tile, and with one split
                    // per tile one job; the offset is inside `out` (same shape as `q`).
                    let dst = unsafe { std::slice::from_raw_parts_mut(out_ptr.get().add(t.q_rows[r]), d) };
                    let inv = if l[r] > 0.0 { 1.0 / l[r] } else { 0.0 };
                    for (x, &y) in dst.iter_mut().zip(&o[r * d..(r + 1) * d]) {
                        *x = y * inv;
                    }
                }
            }
        };
        if parallel {
            buf[..n_jobs * per_job].par_chunks_mut(per_job).enumerate().for_each(run);
        } else {
            buf[..n_jobs * per_job].chunks_mut(per_job).enumerate().for_each(run);
        }
        if splits > 1 {
            merge_splits(&buf[..n_jobs * per_job], per_job, splits, d, base_jobs, &tile, out);
        }
    });
}

/// Combines the position splits of each tile: with `M` the largest partial max,
/// `out = Σ exp(m_s - M) o_s / Σ exp(m_s - M) l_s`.
fn merge_splits(
    parts: &[f32],
    per_job: usize,
    splits: usize,
    d: usize,
    base_jobs: usize,
    tile: &dyn Fn(usize) -> Tile,
    out: &mut [f32],
) {
    for b in 0..base_jobs {
        let t = tile(b * splits);
        for r in 0..t.n {
            let ml = |s: usize| {
                let part = &parts[(b * splits + s) * per_job..][..per_job];
                (part[MAX_ROWS * d + r], part[MAX_ROWS * d + MAX_ROWS + r])
            };
            let big = (0..splits).map(|s| ml(s).0).fold(f32::NEG_INFINITY, f32::max);
            let dst = &mut out[t.q_rows[r]..t.q_rows[r] + d];
            dst.fill(0.0);
            let mut total = 0.0;
            for s in 0..splits {
                let (m, l) = ml(s);
                if l == 0.0 {
                    continue;
                }
                let w = (m - big).exp();
                total += w * l;
                let o = &parts[(b * splits + s) * per_job + r * d..][..d];
                for (x, &y) in dst.iter_mut().zip(o) {
                    *x += w * y;
                }
            }
            let inv = if total > 0.0 { 1.0 / total } else { 0.0 };
            dst.iter_mut().for_each(|x| *x *= inv);
        }
    }
}

thread_local! {
    /// Per-thread partial results (grows to the largest call, then allocates nothing).
    static PARTIALS: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

fn run_tile<T: KvElem>(kernel: Kernel, x: &Inputs<'_, T>, t: &Tile, p: Partial<'_>) {
    match kernel {
        Kernel::Portable => tile_portable(x, t, p),
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `Kernel::best` only picks Avx512 when AVX-512F and FMA were detected and
        // `d` is a multiple of 16 up to 16 * MAX_D16; tests pick it under the same checks.
        Kernel::Avx512 => unsafe { avx512::tile(x, t, p) },
    }
}

/// Valid positions of row `r` in the chunk starting at `p0` with `n` positions: the
/// chunk's positions `skip..nv` (`skip > 0` only under a sliding window).
#[inline(always)]
fn valid(t: &Tile, r: usize, p0: usize, n: usize) -> (usize, usize) {
    let nv = t.limit[r].saturating_sub(p0).min(n);
    (t.first[r].saturating_sub(p0).min(nv), nv)
}

/// Masks the scores before a row's window (they get no weight).
#[inline(always)]
fn mask_before(sr: &mut [f32], skip: usize) {
    sr[..skip].fill(f32::NEG_INFINITY);
}

/// The portable kernel: per chunk of positions, scores, then the online-softmax update,
/// then the weighted sum of values; the reference the SIMD kernel is tested against.
fn tile_portable<T: KvElem>(x: &Inputs<'_, T>, t: &Tile, p: Partial<'_>) {
    let d = x.d;
    let mut s = [[0f32; CHUNK]; MAX_ROWS];
    p.m.fill(f32::NEG_INFINITY);
    p.l.fill(0.0);
    p.o.fill(0.0);
    let mut p0 = t.p_lo;
    while p0 < t.p_hi {
        let n = CHUNK.min(t.p_hi - p0);
        for (r, sr) in s.iter_mut().enumerate().take(t.n) {
            let (skip, nv) = valid(t, r, p0, n);
            if nv == skip {
                continue;
            }
            let qr = &x.q[t.q_rows[r]..][..d];
            for (j, sj) in sr[..nv].iter_mut().enumerate() {
                let kr = &x.k[(p0 + j) * x.kv_stride + t.kv_off..][..d];
                *sj = dot(qr, kr) * x.scale;
            }
            mask_before(sr, skip);
            let mx = sr[..nv].iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let m_new = p.m[r].max(mx);
            let corr = (p.m[r] - m_new).exp();
            let mut sum = 0.0;
            for sj in &mut sr[..nv] {
                *sj = (*sj - m_new).exp();
                sum += *sj;
            }
            p.l[r] = p.l[r] * corr + sum;
            p.m[r] = m_new;
            let o = &mut p.o[r * d..(r + 1) * d];
            if corr != 1.0 {
                o.iter_mut().for_each(|v| *v *= corr);
            }
            for (j, &w) in sr[..nv].iter().enumerate() {
                let vr = &x.v[(p0 + j) * x.kv_stride + t.kv_off..][..d];
                for (ov, &vv) in o.iter_mut().zip(vr) {
                    *ov += w * vv.to_f32();
                }
            }
        }
        p0 += n;
    }
}

#[inline(always)]
fn dot<T: KvElem>(a: &[f32], b: &[T]) -> f32 {
    // Sixteen partial sums let the compiler vectorise without reassociation flags.
    let mut acc = [0.0f32; 16];
    let (ca, cb) = (a.chunks_exact(16), b.chunks_exact(16));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for j in 0..16 {
            acc[j] += x[j] * y[j].to_f32();
        }
    }
    let mut s: f32 = acc.iter().sum();
    for (x, y) in ra.iter().zip(rb) {
        s += x * y.to_f32();
    }
    s
}

/// Largest head dimension / 16 the AVX-512 kernel handles (256).
#[cfg(target_arch = "x86_64")]
const MAX_D16: usize = 16;

#[cfg(target_arch = "x86_64")]
mod avx512 {
    // AVX-512 intrinsics are stable since Rust 1.89 (the crate's rust-version).
    #![allow(clippy::incompatible_msrv)]

    use std::arch::x86_64::*;

    use super::{mask_before, valid, Inputs, KvElem, Partial, Tile, CHUNK, MAX_D16, MAX_ROWS};
    use crate::kernels::vmath::exp512;

    /// One tile; see `tile_portable` for the phases.
    ///
    /// # Safety
    /// The CPU must support AVX-512F and FMA; `x.d` is a multiple of 16, at most
    /// `16 * MAX_D16`; the tile's rows and positions lie inside `q`, `k`, `v`.
    #[target_feature(enable = "avx512f,fma")]
    pub(super) unsafe fn tile<T: KvElem>(x: &Inputs<'_, T>, t: &Tile, p: Partial<'_>) {
        // SAFETY: forwarded contract; each `D16` instance handles `d = 16 * D16`.
        unsafe {
            match x.d / 16 {
                1 => tile_d::<T, 1>(x, t, p),
                2 => tile_d::<T, 2>(x, t, p),
                4 => tile_d::<T, 4>(x, t, p),
                8 => tile_d::<T, 8>(x, t, p),
                n => {
                    debug_assert!(n <= MAX_D16);
                    tile_d::<T, MAX_D16>(x, t, p)
                }
            }
        }
    }

    /// `D16` is an upper bound of `d / 16`: loops run over the actual `d / 16` vectors.
    #[inline(always)]
    unsafe fn tile_d<T: KvElem, const D16: usize>(x: &Inputs<'_, T>, t: &Tile, p: Partial<'_>) {
        let d = x.d;
        let dv = d / 16;
        // SAFETY: every pointer below addresses `d` values of a row the tile owns or reads:
        // query rows `q_rows[r]`, cache rows `p0 + j < p_hi <= kv_len` at `kv_off`, and
        // output row `r < t.n` of `p.o`; `dv <= D16`.
        unsafe {
            let mut s = [[0f32; CHUNK]; MAX_ROWS];
            p.m.fill(f32::NEG_INFINITY);
            p.l.fill(0.0);
            p.o.fill(0.0);
            let mut p0 = t.p_lo;
            while p0 < t.p_hi {
                let n = CHUNK.min(t.p_hi - p0);
                for (r, sr) in s.iter_mut().enumerate().take(t.n) {
                    let (skip, nv) = valid(t, r, p0, n);
                    if nv == skip {
                        continue;
                    }
                    let qp = x.q.as_ptr().add(t.q_rows[r]);
                    let mut qv = [_mm512_setzero_ps(); D16];
                    for (i, v) in qv.iter_mut().enumerate().take(dv) {
                        *v = _mm512_loadu_ps(qp.add(16 * i));
                    }
                    let kbase = x.k.as_ptr().add(p0 * x.kv_stride + t.kv_off);
                    // Sixteen positions at a time, their sums found together. (Plain loops and
                    // an inlined function, not closures: a closure would not inherit the
                    // target features and would call each intrinsic out of line.)
                    let mut j = 0;
                    while j + 16 <= nv {
                        let mut acc = [_mm512_setzero_ps(); 16];
                        for (jj, a) in acc.iter_mut().enumerate() {
                            *a = dot_row::<T, D16>(&qv, kbase.add((j + jj) * x.kv_stride), dv);
                        }
                        let sums = _mm512_mul_ps(hsum16(&acc), _mm512_set1_ps(x.scale));
                        _mm512_storeu_ps(sr.as_mut_ptr().add(j), sums);
                        j += 16;
                    }
                    for (jj, sj) in sr[j..nv].iter_mut().enumerate() {
                        let acc = dot_row::<T, D16>(&qv, kbase.add((j + jj) * x.kv_stride), dv);
                        *sj = _mm512_reduce_add_ps(acc) * x.scale;
                    }
                    mask_before(sr, skip);
                    // Online softmax over the chunk, 16 scores per vector.
                    let mut mx = _mm512_set1_ps(f32::NEG_INFINITY);
                    let mut j = 0;
                    while j < nv {
                        let mask = lanes(nv - j);
                        mx = _mm512_mask_max_ps(mx, mask, mx, _mm512_maskz_loadu_ps(mask, sr.as_ptr().add(j)));
                        j += 16;
                    }
                    let m_new = p.m[r].max(_mm512_reduce_max_ps(mx));
                    let corr = (p.m[r] - m_new).exp();
                    let mut sum = _mm512_setzero_ps();
                    let mut j = 0;
                    while j < nv {
                        let mask = lanes(nv - j);
                        let sv = _mm512_maskz_loadu_ps(mask, sr.as_ptr().add(j));
                        let e = _mm512_maskz_mov_ps(mask, exp512(_mm512_sub_ps(sv, _mm512_set1_ps(m_new))));
                        _mm512_mask_storeu_ps(sr.as_mut_ptr().add(j), mask, e);
                        sum = _mm512_add_ps(sum, e);
                        j += 16;
                    }
                    p.l[r] = p.l[r] * corr + _mm512_reduce_add_ps(sum);
                    p.m[r] = m_new;
                    let op = p.o.as_mut_ptr().add(r * d);
                    let cv = _mm512_set1_ps(corr);
                    let mut ov = [_mm512_setzero_ps(); D16];
                    for (i, v) in ov.iter_mut().enumerate().take(dv) {
                        *v = _mm512_mul_ps(_mm512_loadu_ps(op.add(16 * i)), cv);
                    }
                    let vbase = x.v.as_ptr().add(p0 * x.kv_stride + t.kv_off);
                    for (j, &w) in sr[..nv].iter().enumerate() {
                        let vp = vbase.add(j * x.kv_stride);
                        let wv = _mm512_set1_ps(w);
                        for (i, o) in ov.iter_mut().enumerate().take(dv) {
                            *o = _mm512_fmadd_ps(wv, T::load16(vp.add(16 * i)), *o);
                        }
                    }
                    for (i, o) in ov.iter().enumerate().take(dv) {
                        _mm512_storeu_ps(op.add(16 * i), *o);
                    }
                }
                p0 += n;
            }
        }
    }

    /// Lane `j` of the result is the sum of the 16 lanes of `a[j]`: a transpose and add in
    /// three levels (within 128-bit lanes, then across them), 45 instructions for 16 sums
    /// where 16 separate reductions take about 130.
    #[inline(always)]
    pub(super) unsafe fn hsum16(a: &[__m512; 16]) -> __m512 {
        // SAFETY: only reached from functions compiled with AVX-512F.
        unsafe {
            // Level 1: b[i], per 128-bit lane: [a2i, a2i+1, a2i, a2i+1] partial sums.
            let mut b = [_mm512_setzero_ps(); 8];
            for (i, bi) in b.iter_mut().enumerate() {
                *bi = _mm512_add_ps(
                    _mm512_unpacklo_ps(a[2 * i], a[2 * i + 1]),
                    _mm512_unpackhi_ps(a[2 * i], a[2 * i + 1]),
                );
            }
            // Level 2: c[i], per 128-bit lane: the lane's sums of a4i .. a4i+3.
            let mut c = [_mm512_setzero_ps(); 4];
            for (i, ci) in c.iter_mut().enumerate() {
                *ci = _mm512_add_ps(
                    _mm512_shuffle_ps::<0x44>(b[2 * i], b[2 * i + 1]),
                    _mm512_shuffle_ps::<0xEE>(b[2 * i], b[2 * i + 1]),
                );
            }
            // Level 3: add the four 128-bit lanes, lane i of the result taking c[i]'s.
            let e01 = _mm512_add_ps(_mm512_shuffle_f32x4::<0x88>(c[0], c[1]), _mm512_shuffle_f32x4::<0xDD>(c[0], c[1]));
            let e23 = _mm512_add_ps(_mm512_shuffle_f32x4::<0x88>(c[2], c[3]), _mm512_shuffle_f32x4::<0xDD>(c[2], c[3]));
            _mm512_add_ps(_mm512_shuffle_f32x4::<0x88>(e01, e23), _mm512_shuffle_f32x4::<0xDD>(e01, e23))
        }
    }

    /// Lane-wise products of the query `qv` (its first `dv` vectors) with the key at `kp`.
    #[inline(always)]
    unsafe fn dot_row<T: KvElem, const D16: usize>(qv: &[__m512; D16], kp: *const T, dv: usize) -> __m512 {
        // SAFETY: the caller guarantees `16 * dv` readable values at `kp` and AVX-512F.
        unsafe {
            let mut acc = _mm512_mul_ps(qv[0], T::load16(kp));
            for (i, &qi) in qv.iter().enumerate().take(dv).skip(1) {
                acc = _mm512_fmadd_ps(qi, T::load16(kp.add(16 * i)), acc);
            }
            acc
        }
    }

    /// Mask of the first `min(n, 16)` lanes.
    #[inline(always)]
    fn lanes(n: usize) -> __mmask16 {
        if n >= 16 {
            0xFFFF
        } else {
            ((1u32 << n) - 1) as __mmask16
        }
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
                let n = s.keys.unwrap_or(s.start_pos + i + 1);
                let first = if s.keys.is_some() { 0 } else { s.window.map_or(0, |w| n.saturating_sub(w)) };
                let sc: Vec<f64> = (first..n)
                    .map(|p| {
                        (0..d).map(|j| q[qo + j] as f64 * k[p * kvs + kvh * d + j] as f64).sum::<f64>() * s.scale as f64
                    })
                    .collect();
                let m = sc.iter().cloned().fold(f64::MIN, f64::max);
                let z: f64 = sc.iter().map(|x| (x - m).exp()).sum();
                for p in first..n {
                    let w = (sc[p - first] - m).exp() / z;
                    for j in 0..d {
                        out[qo + j] += w * v[p * kvs + kvh * d + j] as f64;
                    }
                }
            }
        }
        out
    }

    fn kernels(d: usize) -> Vec<Kernel> {
        let mut v = vec![Kernel::Portable];
        if Kernel::best(d) != Kernel::Portable {
            v.push(Kernel::best(d));
        }
        v
    }

    /// Every kernel, serial and on a 3-thread pool (tiles, position splits and their merge),
    /// against the f64 definition: GQA, MHA, groups larger than a tile, offsets past
    /// chunk boundaries, head sizes with and without an AVX-512 kernel.
    #[test]
    fn matches_definition_with_gqa_splits_and_offsets() {
        let mut r = rand::rngs::StdRng::seed_from_u64(9);
        let pool = rayon::ThreadPoolBuilder::new().num_threads(3).build().unwrap();
        for (c, window) in [
            (1, 1, 1, 4, 0),
            (5, 9, 3, 64, 0),
            (1, 9, 3, 64, 17),
            (1, 9, 3, 64, 700),
            (3, 4, 2, 12, 6),
            (40, 6, 3, 8, 2),
            (3, 8, 1, 32, 300),
            (2, 2, 2, 7, 1500),
            (1, 70, 1, 16, 5),
            (37, 9, 3, 64, 100),
            (2, 4, 4, 128, 200),
            (70, 2, 1, 16, 30),
            (1, 2, 1, 48, 129),
        ]
        .iter()
        .flat_map(|&c| [(c, None), (c, Some(1)), (c, Some(5)), (c, Some(70))])
        {
            let (nq, nh, nkv, d, start) = c;
            // Other scales than 1/sqrt(d) (Gemma's query scale) with windows.
            let scale = if window.is_some() { 0.3 / (d as f32).sqrt() } else { 1.0 / (d as f32).sqrt() };
            let s = AttentionShape { scale, window, ..AttentionShape::causal(nq, nh, nkv, d, start) };
            let q: Vec<f32> = (0..nq * nh * d).map(|_| r.random_range(-2.0..2.0)).collect();
            let kv_len = start + nq + 3; // rows past the causal window must be ignored
                                         // Values that f16 holds exactly, so one reference serves both cache types.
            let mut val = || f16::from_f32(r.random_range(-2.0f32..2.0)).to_f32();
            let k: Vec<f32> = (0..kv_len * nkv * d).map(|_| val()).collect();
            let v: Vec<f32> = (0..kv_len * nkv * d).map(|_| val()).collect();
            let (k16, v16): (Vec<f16>, Vec<f16>) =
                (k.iter().map(|&x| f16::from_f32(x)).collect(), v.iter().map(|&x| f16::from_f32(x)).collect());
            let want = reference(s, &q, &k, &v);
            for kernel in kernels(d) {
                for threads in [1, 3] {
                    for half in [false, true] {
                        let mut out = vec![f32::NAN; q.len()];
                        let run = |out: &mut [f32]| {
                            if half {
                                attention_with(s, &q, &k16, &v16, out, kernel)
                            } else {
                                attention_with(s, &q, &k, &v, out, kernel)
                            }
                        };
                        if threads == 1 {
                            run(&mut out);
                        } else {
                            pool.install(|| run(&mut out));
                        }
                        for (a, b) in out.iter().zip(&want) {
                            assert!(
                                (*a as f64 - b).abs() < 1e-4,
                                "{s:?} {kernel:?} threads={threads} f16={half}: {a} vs {b}"
                            );
                        }
                    }
                }
            }
        }
    }

    /// Bidirectional attention over the first `n_keys` rows (the rest padding, filled with
    /// huge values that must get no weight), every kernel, serial and on 3 threads,
    /// against the f64 definition: more queries than keys (padded queries), fewer, and
    /// lengths past a chunk.
    #[test]
    fn bidirectional_with_padding_matches_definition() {
        let mut r = rand::rngs::StdRng::seed_from_u64(11);
        let pool = rayon::ThreadPoolBuilder::new().num_threads(3).build().unwrap();
        for (nq, nh, d, n_keys, rows) in
            [(1, 1, 4, 1, 1), (7, 12, 32, 5, 7), (5, 12, 32, 5, 9), (130, 4, 16, 100, 130), (3, 2, 7, 70, 80)]
        {
            let s = AttentionShape::bidirectional(nq, nh, d, n_keys);
            let q: Vec<f32> = (0..nq * nh * d).map(|_| r.random_range(-2.0..2.0)).collect();
            let mut kv = |pad: f32| -> Vec<f32> {
                (0..rows * nh * d).map(|i| if i < n_keys * nh * d { r.random_range(-2.0..2.0) } else { pad }).collect()
            };
            let (k, v) = (kv(1e4), kv(1e6));
            let want = reference(s, &q, &k, &v);
            for kernel in kernels(d) {
                for threads in [1, 3] {
                    let mut out = vec![f32::NAN; q.len()];
                    if threads == 1 {
                        attention_with(s, &q, &k, &v, &mut out, kernel);
                    } else {
                        pool.install(|| attention_with(s, &q, &k, &v, &mut out, kernel));
                    }
                    for (a, b) in out.iter().zip(&want) {
                        assert!((*a as f64 - b).abs() < 1e-4, "{s:?} {kernel:?} threads={threads}: {a} vs {b}");
                    }
                }
            }
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn sixteen_sums_at_once_equal_separate_sums() {
        if !is_x86_feature_detected!("avx512f") {
            return;
        }
        use std::arch::x86_64::*;
        let v: Vec<f32> = (0..256).map(|i| ((i * 37 % 101) as f32 - 50.0) / 8.0).collect();
        let mut got = [0f32; 16];
        #[target_feature(enable = "avx512f,fma")]
        unsafe fn run(v: &[f32], out: &mut [f32; 16]) {
            // SAFETY: `v` holds 16 x 16 values; the caller checked AVX-512F.
            unsafe {
                let a: [__m512; 16] = std::array::from_fn(|j| _mm512_loadu_ps(v.as_ptr().add(16 * j)));
                _mm512_storeu_ps(out.as_mut_ptr(), avx512::hsum16(&a));
            }
        }
        // SAFETY: AVX-512F was detected above.
        unsafe { run(&v, &mut got) };
        for (j, g) in got.iter().enumerate() {
            let want: f32 = v[16 * j..16 * (j + 1)].iter().sum();
            assert!((g - want).abs() < 1e-4, "sum {j}: {g} vs {want}");
        }
    }
}
