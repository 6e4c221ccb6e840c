//! `out (+)= x · Wᵀ` for f32 activations `x` `[m, k]` and a weight `W` `[n, k]` stored in
//! 16 bits (bf16 or f16, as Hugging Face folders hold it). The weight is read in its own
//! width and widened in registers (or, from 32 activation rows on, 64 rows at a time into
//! a per-thread buffer that the `gemm` crate multiplies), never kept as an f32 copy, so a
//! 16-bit model takes half the memory and half the weight traffic of a widened one. Sums
//! are f32; knows nothing of tensors. Work is split over the current rayon pool by groups
//! of weight rows.
//!
//! Instruction sets, chosen at run time ([`Isa::best`]): a portable loop (the reference,
//! which the compiler vectorises), AVX2 + F16C and AVX-512F, both widening the weights in
//! registers and multiplying in f32. AVX-512 BF16's `vdpbf16ps` ([`Isa::Avx512Bf16`]) also
//! rounds the activations to bf16, a relative error of 1-2e-3 per output against 1e-7 (see
//! `BENCHMARKS.md`, "Native bf16/f16 weights"), so only the `--fast` precision takes it
//! ([`Isa::fast`]), as it takes 8-bit activations for quantised weights.

use std::cell::RefCell;

use rayon::prelude::*;

use crate::kernels::rows::{with_thread_buf, SharedOut};

/// How the 16-bit weights encode a number.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum HalfKind {
    /// bfloat16: the top half of an f32 (8 exponent bits, 7 mantissa bits).
    Bf16,
    /// IEEE 754 binary16 (5 exponent bits, 10 mantissa bits).
    F16,
}

impl HalfKind {
    /// One stored value as f32 (exact: both formats are subsets of f32).
    #[inline(always)]
    pub fn to_f32(self, bits: u16) -> f32 {
        match self {
            HalfKind::Bf16 => f32::from_bits((bits as u32) << 16),
            HalfKind::F16 => half::f16::from_bits(bits).to_f32(),
        }
    }

    /// Widen a run of stored values into `out` (same length).
    pub fn widen(self, src: &[u16], out: &mut [f32]) {
        assert_eq!(src.len(), out.len(), "widen: lengths differ");
        match self {
            HalfKind::Bf16 => out.iter_mut().zip(src).for_each(|(o, &b)| *o = f32::from_bits((b as u32) << 16)),
            HalfKind::F16 => {
                use half::slice::HalfFloatSliceExt;
                let src: &[half::f16] = bytemuck::cast_slice(src);
                src.convert_to_f32_slice(out);
            }
        }
    }
}

/// The instruction sets of this kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Isa {
    /// Plain Rust: widen a weight row once, then 8-lane dot products against every
    /// activation row (the reference).
    Portable,
    /// AVX2 + FMA + F16C: 8 weights widened per step.
    Avx2,
    /// AVX-512F: 16 weights widened per step.
    Avx512,
    /// AVX-512 BF16 (`vdpbf16ps`), bf16 weights only: activations rounded to bf16, 32
    /// products per instruction. Less exact than the others: chosen by `fast`, not `best`.
    Avx512Bf16,
}

impl Isa {
    /// The fastest exact instruction set this CPU runs for `kind`.
    pub fn best(kind: HalfKind) -> Isa {
        let _ = kind;
        #[cfg(target_arch = "x86_64")]
        {
            if Isa::Avx512.supported(kind) {
                return Isa::Avx512;
            }
            if Isa::Avx2.supported(kind) {
                return Isa::Avx2;
            }
        }
        Isa::Portable
    }

    /// The fastest instruction set for `kind` when the activations may be rounded to bf16
    /// (the `--fast` precision, as llama.cpp computes with bf16 weights): AVX-512 BF16 where
    /// the CPU has it, else [`Isa::best`].
    pub fn fast(kind: HalfKind) -> Isa {
        if Isa::Avx512Bf16.supported(kind) {
            Isa::Avx512Bf16
        } else {
            Isa::best(kind)
        }
    }

    /// Whether this CPU runs `self` for weights of `kind`.
    pub fn supported(self, kind: HalfKind) -> bool {
        let _ = kind;
        match self {
            Isa::Portable => true,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => {
                is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") && is_x86_feature_detected!("f16c")
            }
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => is_x86_feature_detected!("avx512f"),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512Bf16 => {
                kind == HalfKind::Bf16 && is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512bf16")
            }
            #[cfg(not(target_arch = "x86_64"))]
            _ => false,
        }
    }

    /// Every instruction set this CPU runs for `kind` (tests, benchmarks).
    pub fn all_supported(kind: HalfKind) -> Vec<Isa> {
        [Isa::Portable, Isa::Avx2, Isa::Avx512, Isa::Avx512Bf16].into_iter().filter(|i| i.supported(kind)).collect()
    }
}

/// A 16-bit weight matrix: `rows` × `k` values, row-major.
#[derive(Clone, Copy, Debug)]
pub struct HalfMatrix<'a> {
    pub kind: HalfKind,
    pub data: &'a [u16],
    pub rows: usize,
    pub k: usize,
}

/// Weight rows per SIMD tile (one accumulator per weight row and activation row).
const TILE_ROWS: usize = 4;

/// Activation rows per SIMD tile.
#[cfg(target_arch = "x86_64")]
const TILE_ACTS: usize = 4;

/// Below this many multiply-adds a call stays on the calling thread.
const PAR_MIN_WORK: usize = 1 << 17;

/// From this many activation rows on, the SIMD instruction sets widen panels of
/// [`PANEL_ROWS`] weight rows into a per-thread f32 buffer and multiply them with the
/// `gemm` crate, whose cache blocking beats the tiles once the work is compute-bound
/// (measured on MiniLM's shapes, AVX-512, one thread: tiles 60 GFLOP/s at 16 and 256
/// rows; gemm 34 at 16 rows, 85-149 at 256). The widened panel lives only in cache.
const GEMM_FROM_ACTS: usize = 32;

/// Weight rows widened at a time on the gemm route (64 × k f32: 96 KiB at k = 384).
const PANEL_ROWS: usize = 64;

thread_local! {
    static PANEL: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// `out[i, col0 + j] (+)= Σ_p x[i, p] · w[j, p]` with `x` `[m, k]` and `out` `[m, ldo]`,
/// on the best exact instruction set.
pub fn half_matmul_cols(w: HalfMatrix<'_>, x: &[f32], m: usize, out: &mut [f32], ldo: usize, col0: usize, acc: bool) {
    half_matmul_cols_with(Isa::best(w.kind), w, x, m, out, ldo, col0, acc)
}

/// [`half_matmul_cols`] on a chosen instruction set; panics if this CPU cannot run it.
#[allow(clippy::too_many_arguments)]
pub fn half_matmul_cols_with(
    isa: Isa,
    w: HalfMatrix<'_>,
    x: &[f32],
    m: usize,
    out: &mut [f32],
    ldo: usize,
    col0: usize,
    accumulate: bool,
) {
    let HalfMatrix { kind, data, rows: n, k } = w;
    assert!(isa.supported(kind), "half_matmul: {isa:?} does not run {kind:?} weights on this CPU");
    assert_eq!(data.len(), n * k, "half_matmul: weight is not {n} x {k}");
    assert_eq!(x.len(), m * k, "half_matmul: input is not {m} x {k}");
    assert_eq!(out.len(), m * ldo, "half_matmul: output is not {m} x {ldo}");
    assert!(col0 + n <= ldo, "half_matmul: columns {col0}..{} outside rows of {ldo}", col0 + n);
    if m == 0 || n == 0 {
        return;
    }
    let bf16_acts: Vec<u16>;
    let acts = if isa == Isa::Avx512Bf16 {
        bf16_acts = x.iter().map(|&v| half::bf16::from_f32(v).to_bits()).collect();
        Acts { x, bf16: &bf16_acts }
    } else {
        Acts { x, bf16: &[] }
    };
    let out_ptr = SharedOut::new(out);
    let job = Job { isa, w, acts, m, out: out_ptr, ldo, col0, accumulate };
    let threads = rayon::current_num_threads();
    if threads == 1 || m * n * k < PAR_MIN_WORK {
        return job.rows(0, n);
    }
    // Equal shares of whole tiles, at least two tasks per thread for balance.
    let tiles = n.div_ceil(TILE_ROWS);
    let tasks = (2 * threads).max(tiles.div_ceil(64)).next_multiple_of(threads).min(tiles);
    let per = tiles.div_ceil(tasks) * TILE_ROWS;
    (0..n.div_ceil(per)).into_par_iter().for_each(|t| job.rows(t * per, ((t + 1) * per).min(n)));
}

/// The activations, and their bf16 copy when the instruction set wants one.
#[derive(Clone, Copy)]
struct Acts<'a> {
    x: &'a [f32],
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    bf16: &'a [u16],
}

/// One call's operands, shared by its tasks.
#[derive(Clone, Copy)]
struct Job<'a> {
    isa: Isa,
    w: HalfMatrix<'a>,
    acts: Acts<'a>,
    m: usize,
    out: SharedOut,
    ldo: usize,
    col0: usize,
    accumulate: bool,
}

impl Job<'_> {
    /// Output columns `col0 + j0..col0 + j1` for every activation row.
    fn rows(&self, j0: usize, j1: usize) {
        let k = self.w.k;
        match self.isa {
            Isa::Portable => {
                let mut wrow = vec![0f32; k];
                for j in j0..j1 {
                    self.w.kind.widen(&self.w.data[j * k..(j + 1) * k], &mut wrow);
                    for i in 0..self.m {
                        let d = dot(&self.acts.x[i * k..(i + 1) * k], &wrow);
                        self.store(i, j, d);
                    }
                }
            }
            Isa::Avx2 | Isa::Avx512 if self.m >= GEMM_FROM_ACTS => with_thread_buf(&PANEL, |panel| {
                let mut j = j0;
                while j < j1 {
                    let p = PANEL_ROWS.min(j1 - j);
                    panel.resize(p * k, 0.0);
                    self.w.kind.widen(&self.w.data[j * k..(j + p) * k], panel);
                    self.gemm_panel(panel, j, p);
                    j += p;
                }
            }),
            #[cfg(target_arch = "x86_64")]
            _ => {
                let mut j = j0;
                while j < j1 {
                    let nr = TILE_ROWS.min(j1 - j);
                    let mut i = 0;
                    while i < self.m {
                        let mr = TILE_ACTS.min(self.m - i);
                        let sums = self.tile(i, mr, j, nr);
                        for (a, row) in sums.iter().enumerate().take(mr) {
                            for (b, &s) in row.iter().enumerate().take(nr) {
                                self.store(i + a, j + b, s);
                            }
                        }
                        i += mr;
                    }
                    j += nr;
                }
            }
            #[cfg(not(target_arch = "x86_64"))]
            _ => unreachable!("only the portable kernel exists off x86-64"),
        }
    }

    /// Sums of activation rows `i..i + mr` against weight rows `j..j + nr`.
    #[cfg(target_arch = "x86_64")]
    fn tile(&self, i: usize, mr: usize, j: usize, nr: usize) -> [[f32; TILE_ROWS]; TILE_ACTS] {
        let k = self.w.k;
        // Rows past the end repeat the last one (computed, never stored).
        let w: [*const u16; TILE_ROWS] = std::array::from_fn(|b| self.w.data[(j + b.min(nr - 1)) * k..].as_ptr());
        let x = self.acts.x[i * k..].as_ptr();
        let bf16 = self.w.kind == HalfKind::Bf16;
        // SAFETY: the instruction set was checked against this CPU when the call began;
        // each of the `mr` activation rows from `x` and each weight row in `w` holds `k`
        // values (asserted dimensions, `i + mr <= m`, clamped weight rows below `n`).
        unsafe {
            match (self.isa, bf16, mr) {
                (Isa::Avx512, true, 4) => x86::tile512::<true, 4>(x, w, k),
                (Isa::Avx512, true, 3) => x86::tile512::<true, 3>(x, w, k),
                (Isa::Avx512, true, 2) => x86::tile512::<true, 2>(x, w, k),
                (Isa::Avx512, true, _) => x86::tile512::<true, 1>(x, w, k),
                (Isa::Avx512, false, 4) => x86::tile512::<false, 4>(x, w, k),
                (Isa::Avx512, false, 3) => x86::tile512::<false, 3>(x, w, k),
                (Isa::Avx512, false, 2) => x86::tile512::<false, 2>(x, w, k),
                (Isa::Avx512, false, _) => x86::tile512::<false, 1>(x, w, k),
                (Isa::Avx2, true, 4) => x86::tile256::<true, 4>(x, w, k),
                (Isa::Avx2, true, 3) => x86::tile256::<true, 3>(x, w, k),
                (Isa::Avx2, true, 2) => x86::tile256::<true, 2>(x, w, k),
                (Isa::Avx2, true, _) => x86::tile256::<true, 1>(x, w, k),
                (Isa::Avx2, false, 4) => x86::tile256::<false, 4>(x, w, k),
                (Isa::Avx2, false, 3) => x86::tile256::<false, 3>(x, w, k),
                (Isa::Avx2, false, 2) => x86::tile256::<false, 2>(x, w, k),
                (Isa::Avx2, false, _) => x86::tile256::<false, 1>(x, w, k),
                (Isa::Avx512Bf16, _, _) => {
                    let xb = self.acts.bf16[i * k..].as_ptr();
                    match mr {
                        4 => x86::tile_dpbf16::<4>(xb, w, k),
                        3 => x86::tile_dpbf16::<3>(xb, w, k),
                        2 => x86::tile_dpbf16::<2>(xb, w, k),
                        _ => x86::tile_dpbf16::<1>(xb, w, k),
                    }
                }
                (Isa::Portable, _, _) => unreachable!("the portable kernel has no tiles"),
            }
        }
    }

    /// Output columns `col0 + j..col0 + j + p` from `panel`, weight rows `j..j + p` widened.
    fn gemm_panel(&self, panel: &[f32], j: usize, p: usize) {
        let (m, k) = (self.m, self.w.k);
        assert!(panel.len() == p * k && self.acts.x.len() == m * k);
        // SAFETY: gemm reads `x` as `m × k` (row stride k) and the panel as `k × p` (column
        // stride k), both inside their asserted lengths, and writes the `m × p` block at
        // row stride `ldo` from column `col0 + j`: inside the `[m, ldo]` output because
        // `col0 + j + p <= col0 + n <= ldo`. The tasks of one call own disjoint columns.
        unsafe {
            gemm::gemm(
                m,
                p,
                k,
                self.out.get().add(self.col0 + j),
                1,
                self.ldo as isize,
                self.accumulate,
                self.acts.x.as_ptr(),
                1,
                k as isize,
                panel.as_ptr(),
                k as isize,
                1,
                1.0,
                1.0,
                false,
                false,
                false,
                gemm::Parallelism::None,
            );
        }
    }

    #[inline]
    fn store(&self, i: usize, j: usize, v: f32) {
        // SAFETY: `i < m` and `col0 + j < col0 + n <= ldo`, so the index lies inside the
        // `[m, ldo]` output; the tasks of one call own disjoint column ranges.
        let o = unsafe { &mut *self.out.get().add(i * self.ldo + self.col0 + j) };
        *o = if self.accumulate { *o + v } else { v };
    }
}

/// `Σ a[p] b[p]` in eight interleaved f32 sums (so the compiler can vectorise it).
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ac, bc) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ac.remainder().iter().zip(bc.remainder()).map(|(x, y)| x * y).sum();
    for (x, y) in ac.zip(bc) {
        for l in 0..8 {
            acc[l] += x[l] * y[l];
        }
    }
    acc.iter().sum::<f32>() + tail
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    //! The SIMD tiles: `TILE_ACTS` (or fewer) activation rows against `TILE_ROWS` weight
    //! rows, one vector accumulator per pair, the last `k % width` values in scalar code.

    use super::{HalfKind, TILE_ACTS, TILE_ROWS};
    use std::arch::x86_64::*;

    type Sums = [[f32; TILE_ROWS]; TILE_ACTS];

    /// The scalar tail `p0..k` of every pair, added to `sums`.
    ///
    /// # Safety
    /// `x` holds `MR` rows of `k` values, each `w[b]` a row of `k` values.
    #[inline(always)]
    unsafe fn tail<const MR: usize>(
        sums: &mut Sums,
        x: *const f32,
        w: [*const u16; TILE_ROWS],
        k: usize,
        p0: usize,
        kind: HalfKind,
    ) {
        for (a, row) in sums.iter_mut().enumerate().take(MR) {
            for (b, s) in row.iter_mut().enumerate() {
                for p in p0..k {
                    *s += *x.add(a * k + p) * kind.to_f32(*w[b].add(p));
                }
            }
        }
    }

    /// The four lanes `[Σa, Σb, Σc, Σd]` of four 8-lane vectors.
    #[inline]
    #[target_feature(enable = "avx2")]
    fn hsum4_256(v: [__m256; 4]) -> [f32; 4] {
        let ab = _mm256_hadd_ps(v[0], v[1]);
        let cd = _mm256_hadd_ps(v[2], v[3]);
        let abcd = _mm256_hadd_ps(ab, cd);
        let s = _mm_add_ps(_mm256_castps256_ps128(abcd), _mm256_extractf128_ps::<1>(abcd));
        let mut out = [0f32; 4];
        // SAFETY: `out` holds four f32.
        unsafe { _mm_storeu_ps(out.as_mut_ptr(), s) };
        out
    }

    /// Sixteen weights from `p` as f32.
    ///
    /// # Safety
    /// `p` points at 16 readable values.
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn widen16<const BF16: bool>(p: *const u16) -> __m512 {
        let raw = _mm256_loadu_si256(p as *const __m256i);
        if BF16 {
            _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(raw)))
        } else {
            _mm512_cvtph_ps(raw)
        }
    }

    /// Eight weights from `p` as f32.
    ///
    /// # Safety
    /// `p` points at 8 readable values.
    #[inline]
    #[target_feature(enable = "avx2,f16c")]
    unsafe fn widen8<const BF16: bool>(p: *const u16) -> __m256 {
        let raw = _mm_loadu_si128(p as *const __m128i);
        if BF16 {
            _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(raw)))
        } else {
            _mm256_cvtph_ps(raw)
        }
    }

    /// # Safety
    /// AVX-512F; `x` holds `MR` rows of `k` f32, each `w[b]` a row of `k` weights.
    #[target_feature(enable = "avx512f,avx2")]
    pub(super) unsafe fn tile512<const BF16: bool, const MR: usize>(
        x: *const f32,
        w: [*const u16; TILE_ROWS],
        k: usize,
    ) -> Sums {
        let mut acc = [[_mm512_setzero_ps(); TILE_ROWS]; MR];
        let kv = k / 16 * 16;
        let mut p = 0;
        while p < kv {
            let mut xs = [_mm512_setzero_ps(); MR];
            for (a, v) in xs.iter_mut().enumerate() {
                *v = _mm512_loadu_ps(x.add(a * k + p));
            }
            for b in 0..TILE_ROWS {
                let wv = widen16::<BF16>(w[b].add(p));
                for a in 0..MR {
                    acc[a][b] = _mm512_fmadd_ps(xs[a], wv, acc[a][b]);
                }
            }
            p += 16;
        }
        let mut sums = [[0f32; TILE_ROWS]; TILE_ACTS];
        for a in 0..MR {
            let half: [__m256; TILE_ROWS] = std::array::from_fn(|b| {
                let v = acc[a][b];
                _mm256_add_ps(
                    _mm512_castps512_ps256(v),
                    _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(v))),
                )
            });
            sums[a] = hsum4_256(half);
        }
        let kind = if BF16 { HalfKind::Bf16 } else { HalfKind::F16 };
        tail::<MR>(&mut sums, x, w, k, kv, kind);
        sums
    }

    /// # Safety
    /// AVX2, FMA and F16C; `x` holds `MR` rows of `k` f32, each `w[b]` a row of `k` weights.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn tile256<const BF16: bool, const MR: usize>(
        x: *const f32,
        w: [*const u16; TILE_ROWS],
        k: usize,
    ) -> Sums {
        let mut acc = [[_mm256_setzero_ps(); TILE_ROWS]; MR];
        let kv = k / 8 * 8;
        let mut p = 0;
        while p < kv {
            let mut xs = [_mm256_setzero_ps(); MR];
            for (a, v) in xs.iter_mut().enumerate() {
                *v = _mm256_loadu_ps(x.add(a * k + p));
            }
            for b in 0..TILE_ROWS {
                let wv = widen8::<BF16>(w[b].add(p));
                for a in 0..MR {
                    acc[a][b] = _mm256_fmadd_ps(xs[a], wv, acc[a][b]);
                }
            }
            p += 8;
        }
        let mut sums = [[0f32; TILE_ROWS]; TILE_ACTS];
        for a in 0..MR {
            sums[a] = hsum4_256(acc[a]);
        }
        let kind = if BF16 { HalfKind::Bf16 } else { HalfKind::F16 };
        tail::<MR>(&mut sums, x, w, k, kv, kind);
        sums
    }

    /// bf16 activations `xb` against bf16 weights, 32 products per `vdpbf16ps`.
    ///
    /// # Safety
    /// AVX-512F and AVX-512 BF16; `xb` holds `MR` rows of `k` bf16, each `w[b]` a row of
    /// `k` bf16 weights.
    #[target_feature(enable = "avx512f,avx512bf16,avx2")]
    pub(super) unsafe fn tile_dpbf16<const MR: usize>(xb: *const u16, w: [*const u16; TILE_ROWS], k: usize) -> Sums {
        let mut acc = [[_mm512_setzero_ps(); TILE_ROWS]; MR];
        let kv = k / 32 * 32;
        let mut p = 0;
        while p < kv {
            let mut xs = [_mm512_setzero_si512(); MR];
            for (a, v) in xs.iter_mut().enumerate() {
                *v = _mm512_loadu_si512(xb.add(a * k + p) as *const __m512i);
            }
            for b in 0..TILE_ROWS {
                let wv: __m512bh = std::mem::transmute(_mm512_loadu_si512(w[b].add(p) as *const __m512i));
                for a in 0..MR {
                    let xv: __m512bh = std::mem::transmute(xs[a]);
                    acc[a][b] = _mm512_dpbf16_ps(acc[a][b], xv, wv);
                }
            }
            p += 32;
        }
        let mut sums = [[0f32; TILE_ROWS]; TILE_ACTS];
        for a in 0..MR {
            let half: [__m256; TILE_ROWS] = std::array::from_fn(|b| {
                let v = acc[a][b];
                _mm256_add_ps(
                    _mm512_castps512_ps256(v),
                    _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(v))),
                )
            });
            sums[a] = hsum4_256(half);
        }
        for (a, row) in sums.iter_mut().enumerate().take(MR) {
            for (b, s) in row.iter_mut().enumerate() {
                for q in kv..k {
                    *s += HalfKind::Bf16.to_f32(*xb.add(a * k + q)) * HalfKind::Bf16.to_f32(*w[b].add(q));
                }
            }
        }
        sums
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn random_half(kind: HalfKind, n: usize, r: &mut impl Rng) -> Vec<u16> {
        (0..n)
            .map(|_| {
                let v: f32 = r.random_range(-1.0..1.0);
                match kind {
                    HalfKind::Bf16 => half::bf16::from_f32(v).to_bits(),
                    HalfKind::F16 => half::f16::from_f32(v).to_bits(),
                }
            })
            .collect()
    }

    /// `(Σ x w in f64, Σ |x w|)` for every output.
    fn reference(kind: HalfKind, w: &[u16], n: usize, k: usize, x: &[f32], m: usize) -> Vec<(f64, f64)> {
        let mut out = Vec::with_capacity(m * n);
        for i in 0..m {
            for j in 0..n {
                let (mut s, mut mag) = (0f64, 0f64);
                for p in 0..k {
                    let t = x[i * k + p] as f64 * kind.to_f32(w[j * k + p]) as f64;
                    s += t;
                    mag += t.abs();
                }
                out.push((s, mag));
            }
        }
        out
    }

    /// Every instruction set against the f64 sum of the same (widened) products, on odd
    /// shapes (tails of every length, partial tiles), writing only its own columns.
    #[test]
    fn every_isa_matches_the_f64_reference_on_random_inputs() {
        let mut r = rand::rngs::StdRng::seed_from_u64(11);
        for kind in [HalfKind::Bf16, HalfKind::F16] {
            for &(m, k, n) in &[
                (1, 1, 1),
                (1, 16, 4),
                (3, 33, 7),
                (5, 100, 9),
                (2, 384, 13),
                (9, 1536, 6),
                (17, 64, 33),
                (40, 50, 70),
            ] {
                let w = random_half(kind, n * k, &mut r);
                let x: Vec<f32> = (0..m * k).map(|_| r.random_range(-2.0..2.0)).collect();
                let want = reference(kind, &w, n, k, &x, m);
                let (ldo, col0) = (n + 3, 2);
                for isa in Isa::all_supported(kind) {
                    for accumulate in [false, true] {
                        let mut out: Vec<f32> = (0..m * ldo).map(|v| v as f32).collect();
                        let before = out.clone();
                        let mat = HalfMatrix { kind, data: &w, rows: n, k };
                        half_matmul_cols_with(isa, mat, &x, m, &mut out, ldo, col0, accumulate);
                        // f32 sums: a few ulps of the magnitude per product; bf16 activations:
                        // each product off by up to 2⁻⁸ of itself.
                        let rel = if isa == Isa::Avx512Bf16 { 1.0 / 256.0 } else { 1e-6 * (k as f64).sqrt() };
                        for i in 0..m {
                            for c in 0..ldo {
                                let (g, b) = (out[i * ldo + c] as f64, before[i * ldo + c] as f64);
                                if c < col0 || c >= col0 + n {
                                    assert_eq!(g, b, "{isa:?} wrote column {c}");
                                    continue;
                                }
                                let (s, mag) = want[i * n + c - col0];
                                let s = if accumulate { s + b } else { s };
                                assert!(
                                    (g - s).abs() <= rel * mag + 1e-6 * b.abs() + 1e-30,
                                    "{kind:?} {isa:?} {m}x{k}x{n} [{i},{c}] acc={accumulate}: {g} vs {s}"
                                );
                            }
                        }
                    }
                }
            }
        }
    }

    /// SIMD tiles against the portable kernel, large enough to split over threads.
    #[test]
    fn simd_paths_equal_the_portable_one_on_a_parallel_shape() {
        let mut r = rand::rngs::StdRng::seed_from_u64(12);
        for (m, k, n) in [(7, 384, 150), (33, 200, 150)] {
            for kind in [HalfKind::Bf16, HalfKind::F16] {
                let w = random_half(kind, n * k, &mut r);
                let x: Vec<f32> = (0..m * k).map(|_| r.random_range(-1.0..1.0)).collect();
                let mat = HalfMatrix { kind, data: &w, rows: n, k };
                let mut want = vec![0f32; m * n];
                half_matmul_cols_with(Isa::Portable, mat, &x, m, &mut want, n, 0, false);
                for isa in Isa::all_supported(kind).into_iter().filter(|&i| i != Isa::Avx512Bf16) {
                    let pool = rayon::ThreadPoolBuilder::new().num_threads(3).build().unwrap();
                    let mut got = vec![0f32; m * n];
                    pool.install(|| half_matmul_cols_with(isa, mat, &x, m, &mut got, n, 0, false));
                    for (g, w) in got.iter().zip(&want) {
                        assert!((g - w).abs() <= 1e-4 * (1.0 + w.abs()), "{kind:?} {isa:?}: {g} vs {w}");
                    }
                }
            }
        }
    }

    #[test]
    fn widening_is_exact() {
        let bits: Vec<u16> = (0..=u16::MAX).step_by(7).collect();
        for kind in [HalfKind::Bf16, HalfKind::F16] {
            let mut out = vec![0f32; bits.len()];
            kind.widen(&bits, &mut out);
            for (&b, &o) in bits.iter().zip(&out) {
                let want = match kind {
                    HalfKind::Bf16 => half::bf16::from_bits(b).to_f32(),
                    HalfKind::F16 => half::f16::from_bits(b).to_f32(),
                };
                assert!(o.to_bits() == want.to_bits() || (o.is_nan() && want.is_nan()), "{kind:?} {b:#x}");
                assert!(kind.to_f32(b).to_bits() == want.to_bits() || want.is_nan());
            }
        }
    }
}

#[cfg(test)]
mod measure {
    //! Numbers for choosing an instruction set (`cargo test --release --lib half_matmul::measure
    //! -- --ignored --nocapture`): error against f64 and time per call.
    use super::*;
    use rand::{Rng, SeedableRng};

    #[test]
    #[ignore]
    fn report_error_and_speed() {
        let mut r = rand::rngs::StdRng::seed_from_u64(5);
        // MLLM_HALF_SHAPES="m,k,n;m,k,n" measures other shapes.
        let from_env: Option<Vec<(usize, usize, usize)>> = std::env::var("MLLM_HALF_SHAPES").ok().map(|v| {
            v.split(';')
                .map(|s| {
                    let d: Vec<usize> = s.split(',').map(|x| x.trim().parse().expect("m,k,n")).collect();
                    (d[0], d[1], d[2])
                })
                .collect()
        });
        for &(m, k, n) in from_env.as_deref().unwrap_or(&[
            (1, 384, 1536),
            (16, 384, 1536),
            (31, 384, 1536),
            (32, 384, 1536),
            (64, 384, 1536),
            (256, 384, 1536),
            (1, 1536, 384),
            (256, 1536, 384),
            (1, 576, 1536),
            (1, 4096, 4096),
        ]) {
            for kind in [HalfKind::Bf16, HalfKind::F16] {
                let w: Vec<u16> = (0..n * k)
                    .map(|_| {
                        let v: f32 = r.random_range(-0.1..0.1);
                        if kind == HalfKind::Bf16 {
                            half::bf16::from_f32(v).to_bits()
                        } else {
                            half::f16::from_f32(v).to_bits()
                        }
                    })
                    .collect();
                // Activations like a transformer's: mostly small, a few large.
                let x: Vec<f32> = (0..m * k)
                    .map(|_| {
                        let v: f32 = r.random_range(-1.0..1.0);
                        if r.random_range(0..100) == 0 {
                            v * 20.0
                        } else {
                            v
                        }
                    })
                    .collect();
                let wf: Vec<f32> = w.iter().map(|&b| kind.to_f32(b)).collect();
                let mut refv = vec![0f64; m * n];
                for i in 0..m {
                    for j in 0..n {
                        refv[i * n + j] = (0..k).map(|p| x[i * k + p] as f64 * wf[j * k + p] as f64).sum();
                    }
                }
                let norm = refv.iter().map(|v| v * v).sum::<f64>().sqrt();
                let mut line = format!("{kind:?} m={m} k={k} n={n}:");
                let mut isas: Vec<Option<Isa>> = Isa::all_supported(kind).into_iter().map(Some).collect();
                isas.push(None);
                for isa in isas {
                    let mut out = vec![0f32; m * n];
                    let run = |out: &mut [f32]| match isa {
                        Some(isa) => half_matmul_cols_with(
                            isa,
                            HalfMatrix { kind, data: &w, rows: n, k },
                            &x,
                            m,
                            out,
                            n,
                            0,
                            false,
                        ),
                        None => crate::kernels::matmul::matmul_f32(
                            crate::kernels::matmul::MatRef::row_major(&x, m, k),
                            crate::kernels::matmul::MatRef::row_major(&wf, n, k).t(),
                            out,
                            false,
                        ),
                    };
                    run(&mut out);
                    let reps = (2e9 / (m * n * k) as f64).clamp(3.0, 2000.0) as usize;
                    let mut times = Vec::new();
                    for _ in 0..5 {
                        let t = std::time::Instant::now();
                        for _ in 0..reps {
                            run(&mut out);
                        }
                        times.push(t.elapsed().as_secs_f64() / reps as f64);
                    }
                    times.sort_by(f64::total_cmp);
                    let err = out.iter().zip(&refv).map(|(g, w)| (*g as f64 - w).powi(2)).sum::<f64>().sqrt() / norm;
                    let gf = 2.0 * (m * n * k) as f64 / times[2] / 1e9;
                    line += &format!(
                        "  {}: {:.0} GF/s err {err:.1e}",
                        isa.map_or("gemm-f32".to_string(), |i| format!("{i:?}")),
                        gf
                    );
                }
                println!("{line}");
            }
        }
    }
}
