//! x86_64 panels for Q4_0, Q4_1 and Q8_0 weights × Q8 activations: AVX2 (one block per
//! register) and AVX-512 (two blocks per register, VNNI `vpdpbusd` or `vpmaddubsw`). Tiles of
//! activation rows × weight rows reuse each unpacked weight block; tested against dot_q8.rs.

// The AVX-512 intrinsics are stable since Rust 1.89: the workspace's `rust-version` (1.85)
// must be raised to 1.89 for this file (the toolchain here is 1.95).
#![allow(clippy::incompatible_msrv)]

use std::arch::x86_64::*;

use super::q8::{Q8Row, Q8_LANES, QK8};
use super::qmatmul::Panel;
use super::WeightFormat;

// The panels' const-generic `F` is a `WeightFormat` id: Q4_0, Q4_1 or Q8_0.
const Q4_0: WeightFormat = WeightFormat::Q4_0;
const Q4_1: WeightFormat = WeightFormat::Q4_1;
const Q8_0: WeightFormat = WeightFormat::Q8_0;

/// Raw pointers to one activation row.
#[derive(Clone, Copy)]
struct RowPtr {
    qs: *const i8,
    d: *const f32,
    s: *const f32,
    sums: *const f32,
}

impl RowPtr {
    fn of(r: Q8Row<'_>) -> RowPtr {
        RowPtr { qs: r.qs.as_ptr(), d: r.d.as_ptr(), s: r.s.as_ptr(), sums: r.sums.as_ptr() }
    }
}

/// Loops over tiles of `R` activation rows × `C` weight rows (single rows × `C1` weight
/// rows for the remaining activation rows, single weight rows at the right edge) and stores
/// each tile's results; `tile(w, row_bytes, nb, x)` computes one tile.
macro_rules! panel_loops {
    ($p:ident, $tile:ident, $R:literal, $C:literal, $C1:literal) => {{
        let rows = $p.x.rows();
        let cols = $p.out.cols();
        let mut r0 = 0;
        while r0 < rows {
            if rows - r0 >= $R {
                panel_loops!(@cols $p, $tile, r0, cols, $R, $C);
                r0 += $R;
            } else {
                panel_loops!(@cols $p, $tile, r0, cols, 1, $C1);
                r0 += 1;
            }
        }
    }};
    (@cols $p:ident, $tile:ident, $r0:ident, $cols:ident, $R:literal, $C:literal) => {{
        let x: [RowPtr; $R] = std::array::from_fn(|i| RowPtr::of($p.x.row($r0 + i)));
        let mut c0 = 0;
        while c0 < $cols {
            // SAFETY (for the tile): the panel's sizes were checked by `Panel::new`, so the
            // weight rows c0.. and the activation rows r0.. hold `nb` blocks each.
            let w = unsafe { $p.w.as_ptr().add(c0 * $p.row_bytes) };
            if $cols - c0 >= $C {
                let v = unsafe { $tile::<F, VNNI, $R, $C>(w, $p.row_bytes, $p.nb, &x) };
                for (r, vr) in v.iter().enumerate() {
                    for (c, &vc) in vr.iter().enumerate() {
                        $p.put($r0 + r, c0 + c, vc);
                    }
                }
                c0 += $C;
            } else {
                let v = unsafe { $tile::<F, VNNI, $R, 1>(w, $p.row_bytes, $p.nb, &x) };
                for (r, vr) in v.iter().enumerate() {
                    $p.put($r0 + r, c0, vr[0]);
                }
                c0 += 1;
            }
        }
    }};
}

// ---------------------------------------------------------------- AVX-512 (two blocks)

/// How many tiles ahead the weight rows are prefetched.
const PREFETCH_TILES: usize = 4;

/// `Σ_groups-of-4 u8 × i8` per 32-bit lane.
#[inline(always)]
unsafe fn dot512<const VNNI: bool>(u: __m512i, s: __m512i) -> __m512i {
    // SAFETY: only reached from functions compiled with AVX-512 F/BW (and VNNI when `VNNI`).
    unsafe {
        if VNNI {
            _mm512_dpbusd_epi32(_mm512_setzero_si512(), u, s)
        } else {
            // |u| <= 128 and |s| <= 127: a pair sums to at most 32512, no i16 saturation.
            _mm512_madd_epi16(_mm512_maddubs_epi16(u, s), _mm512_set1_epi16(1))
        }
    }
}

/// One step over blocks `b` and `b + 1` (only `b` when `TAIL`) for an `R` × `C` tile. The
/// weight offsets of Q4_0/Q4_1 (m per block, times the activation block sums) are not
/// applied here: each step puts its two m values into lanes `2j`, `2j + 1` of `mpack[c]`,
/// and [`flush_offsets`] multiplies 16 blocks' worth at once.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn step512<const F: u8, const VNNI: bool, const R: usize, const C: usize, const TAIL: bool>(
    w: *const u8,
    row_bytes: usize,
    b: usize,
    j: u32,
    x: &[RowPtr; R],
    acc: &mut [[__m512; C]; R],
    mpack: &mut [__m512; C],
) {
    let fmt = const { WeightFormat::from_id(F) };
    let (bb, qo) = (fmt.block_bytes(), fmt.qs_offset());
    // SAFETY: the caller guarantees `C` weight rows of `row_bytes` from `w` and `R`
    // activation rows holding block `b` (and `b + 1` unless `TAIL`): every unmasked read
    // below is inside them; the tail's activation reads are masked to block `b`.
    unsafe {
        let mut wq = [_mm512_setzero_si512(); C];
        let mut neg = [0 as __mmask64; C];
        let mut dw = [_mm512_setzero_ps(); C];
        let mut mw = [_mm512_setzero_ps(); C];
        for c in 0..C {
            let p0 = w.add(c * row_bytes + b * bb);
            let p1 = p0.wrapping_add(bb);
            // Stream the next tile's rows in ahead of use (hardware prefetchers stop at
            // page boundaries); prefetching past the end of the weights is harmless.
            let ahead = p0.wrapping_add(PREFETCH_TILES * C * row_bytes);
            _mm_prefetch::<_MM_HINT_T0>(ahead.cast());
            if 2 * bb > 64 {
                _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(64).cast());
            }
            if fmt == Q4_1 {
                // [d, m] pairs: lanes 0..8 from block b, 8..16 from block b + 1.
                let dm0 = _mm_set1_epi32(p0.cast::<i32>().read_unaligned());
                let dm1 = if TAIL { _mm_setzero_si128() } else { _mm_set1_epi32(p1.cast::<i32>().read_unaligned()) };
                let f = _mm512_cvtph_ps(_mm256_inserti128_si256::<1>(_mm256_castsi128_si256(dm0), dm1));
                dw[c] = _mm512_moveldup_ps(f);
                mw[c] = _mm512_movehdup_ps(f);
            } else {
                let d0 = _mm_set1_epi16(p0.cast::<i16>().read_unaligned());
                let d1 = if TAIL { _mm_setzero_si128() } else { _mm_set1_epi16(p1.cast::<i16>().read_unaligned()) };
                dw[c] = _mm512_cvtph_ps(_mm256_inserti128_si256::<1>(_mm256_castsi128_si256(d0), d1));
                if fmt == Q4_0 {
                    // w = d (q - 8): the offset is -8 d times the activation block's sum.
                    mw[c] = _mm512_mul_ps(dw[c], _mm512_set1_ps(-8.0));
                }
            }
            if fmt != Q8_0 {
                // lane 2j takes m of block b (lane 0 of mw), lane 2j + 1 that of b + 1 (lane 8)
                let idx = _mm512_setr_epi32(0, 8, 0, 8, 0, 8, 0, 8, 0, 8, 0, 8, 0, 8, 0, 8);
                mpack[c] = _mm512_mask_permutexvar_ps(mpack[c], 0b11 << (2 * j), idx, mw[c]);
            }
            if fmt == Q8_0 {
                let lo = _mm256_loadu_si256(p0.add(qo).cast());
                let v = if TAIL {
                    _mm512_zextsi256_si512(lo)
                } else {
                    _mm512_inserti64x4::<1>(_mm512_castsi256_si512(lo), _mm256_loadu_si256(p1.add(qo).cast()))
                };
                // Signed × signed through u8 × i8: |w| times x with w's sign.
                wq[c] = _mm512_abs_epi8(v);
                neg[c] = _mm512_movepi8_mask(v);
            } else {
                let a0 = _mm_loadu_si128(p0.add(qo).cast());
                let a = if TAIL {
                    _mm256_zextsi128_si256(a0)
                } else {
                    _mm256_inserti128_si256::<1>(_mm256_castsi128_si256(a0), _mm_loadu_si128(p1.add(qo).cast()))
                };
                let hi = _mm256_srli_epi16::<4>(a);
                // Low nibbles are weights 0..16 of a block, high nibbles 16..32.
                let idx = _mm512_setr_epi64(0, 1, 8, 9, 2, 3, 10, 11);
                let z = _mm512_permutex2var_epi64(_mm512_castsi256_si512(a), idx, _mm512_castsi256_si512(hi));
                wq[c] = _mm512_and_si512(z, _mm512_set1_epi8(0x0F));
            }
        }
        for r in 0..R {
            let (xq, dx) = if TAIL {
                (
                    _mm512_maskz_loadu_epi8(0xFFFF_FFFF, x[r].qs.add(b * QK8)),
                    _mm512_maskz_loadu_ps(0x00FF, x[r].d.add(b * Q8_LANES)),
                )
            } else {
                (_mm512_loadu_si512(x[r].qs.add(b * QK8).cast()), _mm512_loadu_ps(x[r].d.add(b * Q8_LANES)))
            };
            for c in 0..C {
                let xs = if fmt == Q8_0 { _mm512_mask_sub_epi8(xq, neg[c], _mm512_setzero_si512(), xq) } else { xq };
                let dp = dot512::<VNNI>(wq[c], xs);
                acc[r][c] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dp), _mm512_mul_ps(dw[c], dx), acc[r][c]);
            }
        }
    }
}

/// Adds the weight offsets of blocks `g0..g0 + n` (`n <= 16`, packed in `mpack`) times the
/// activation block sums to the accumulators, and clears `mpack`.
#[inline(always)]
unsafe fn flush_offsets<const R: usize, const C: usize>(
    g0: usize,
    n: usize,
    x: &[RowPtr; R],
    acc: &mut [[__m512; C]; R],
    mpack: &mut [__m512; C],
) {
    // SAFETY: the rows hold blocks `g0..g0 + n` (caller), and the load is masked to them.
    unsafe {
        let mask = ((1u32 << n) - 1) as __mmask16;
        for r in 0..R {
            let sums = _mm512_maskz_loadu_ps(mask, x[r].sums.add(g0));
            for c in 0..C {
                acc[r][c] = _mm512_fmadd_ps(mpack[c], sums, acc[r][c]);
            }
        }
        *mpack = [_mm512_setzero_ps(); C];
    }
}

/// Dot products of `R` activation rows with `C` weight rows (from `w`, `row_bytes` apart).
#[inline(always)]
unsafe fn tile512<const F: u8, const VNNI: bool, const R: usize, const C: usize>(
    w: *const u8,
    row_bytes: usize,
    nb: usize,
    x: &[RowPtr; R],
) -> [[f32; C]; R] {
    let fmt = const { WeightFormat::from_id(F) };
    // SAFETY: as for `step512` and `flush_offsets`, which only touch blocks below `nb`.
    unsafe {
        let mut acc = [[_mm512_setzero_ps(); C]; R];
        let mut mpack = [_mm512_setzero_ps(); C];
        let mut g0 = 0;
        while g0 < nb {
            // groups of 16 blocks: 8 pairs, the last group maybe shorter (and odd)
            let g1 = (g0 + 16).min(nb);
            let (mut b, mut j) = (g0, 0);
            while b + 2 <= g1 {
                step512::<F, VNNI, R, C, false>(w, row_bytes, b, j, x, &mut acc, &mut mpack);
                b += 2;
                j += 1;
            }
            if b < g1 {
                step512::<F, VNNI, R, C, true>(w, row_bytes, b, j, x, &mut acc, &mut mpack);
            }
            if fmt != Q8_0 {
                flush_offsets::<R, C>(g0, g1 - g0, x, &mut acc, &mut mpack);
            }
            g0 = g1;
        }
        let mut out = [[0f32; C]; R];
        for r in 0..R {
            for c in 0..C {
                out[r][c] = _mm512_reduce_add_ps(acc[r][c]);
            }
        }
        out
    }
}

/// AVX-512 panel with `vpmaddubsw` products.
///
/// # Safety
/// The CPU must support AVX-512 F/BW/VL, AVX2, FMA and F16C.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
pub(super) unsafe fn panel_avx512<const F: u8>(p: &mut Panel<'_>) {
    const VNNI: bool = false;
    panel_loops!(p, tile512, 8, 2, 4)
}

/// AVX-512 panel with VNNI `vpdpbusd` products.
///
/// # Safety
/// The CPU must support AVX-512 F/BW/VL/VNNI, AVX2, FMA and F16C.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub(super) unsafe fn panel_avx512_vnni<const F: u8>(p: &mut Panel<'_>) {
    const VNNI: bool = true;
    panel_loops!(p, tile512, 8, 2, 4)
}

// ---------------------------------------------------------------- AVX2 (one block)

/// One block `b` for an `R` × `C` tile.
#[inline(always)]
unsafe fn step256<const F: u8, const R: usize, const C: usize>(
    w: *const u8,
    row_bytes: usize,
    b: usize,
    x: &[RowPtr; R],
    acc: &mut [[__m256; C]; R],
) {
    let fmt = const { WeightFormat::from_id(F) };
    let (bb, qo) = (fmt.block_bytes(), fmt.qs_offset());
    // SAFETY: the caller guarantees `C` weight rows and `R` activation rows holding block `b`.
    unsafe {
        let mut wq = [_mm256_setzero_si256(); C];
        let mut wsign = [_mm256_setzero_si256(); C];
        let mut dw = [_mm256_setzero_ps(); C];
        let mut mw = [_mm256_setzero_ps(); C];
        for c in 0..C {
            let p0 = w.add(c * row_bytes + b * bb);
            if fmt == Q4_1 {
                let f = _mm256_cvtph_ps(_mm_set1_epi32(p0.cast::<i32>().read_unaligned()));
                dw[c] = _mm256_moveldup_ps(f);
                mw[c] = _mm256_movehdup_ps(f);
            } else {
                dw[c] = _mm256_cvtph_ps(_mm_set1_epi16(p0.cast::<i16>().read_unaligned()));
                if fmt == Q4_0 {
                    mw[c] = _mm256_mul_ps(dw[c], _mm256_set1_ps(-8.0));
                }
            }
            if fmt == Q8_0 {
                let v = _mm256_loadu_si256(p0.add(qo).cast());
                wq[c] = _mm256_abs_epi8(v);
                wsign[c] = v;
            } else {
                let q = _mm_loadu_si128(p0.add(qo).cast());
                let a = _mm256_inserti128_si256::<1>(_mm256_castsi128_si256(q), _mm_srli_epi16::<4>(q));
                wq[c] = _mm256_and_si256(a, _mm256_set1_epi8(0x0F));
            }
        }
        for r in 0..R {
            let xq = _mm256_loadu_si256(x[r].qs.add(b * QK8).cast());
            let dx = _mm256_loadu_ps(x[r].d.add(b * Q8_LANES));
            let sx = _mm256_loadu_ps(x[r].s.add(b * Q8_LANES));
            for c in 0..C {
                let xs = if fmt == Q8_0 { _mm256_sign_epi8(xq, wsign[c]) } else { xq };
                // |u| <= 128 and |s| <= 127: no i16 saturation in vpmaddubsw.
                let dp = _mm256_madd_epi16(_mm256_maddubs_epi16(wq[c], xs), _mm256_set1_epi16(1));
                acc[r][c] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dp), _mm256_mul_ps(dw[c], dx), acc[r][c]);
                if fmt != Q8_0 {
                    acc[r][c] = _mm256_fmadd_ps(mw[c], sx, acc[r][c]);
                }
            }
        }
    }
}

#[inline(always)]
unsafe fn hsum256(v: __m256) -> f32 {
    // SAFETY: only reached from functions compiled with AVX2.
    unsafe {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_movehdup_ps(s));
        _mm_cvtss_f32(s)
    }
}

#[inline(always)]
unsafe fn tile256<const F: u8, const VNNI: bool, const R: usize, const C: usize>(
    w: *const u8,
    row_bytes: usize,
    nb: usize,
    x: &[RowPtr; R],
) -> [[f32; C]; R] {
    // SAFETY: as for `step256`, for blocks below `nb`.
    unsafe {
        let mut acc = [[_mm256_setzero_ps(); C]; R];
        for b in 0..nb {
            step256::<F, R, C>(w, row_bytes, b, x, &mut acc);
        }
        let mut out = [[0f32; C]; R];
        for r in 0..R {
            for c in 0..C {
                out[r][c] = hsum256(acc[r][c]);
            }
        }
        out
    }
}

/// AVX2 panel.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn panel_avx2<const F: u8>(p: &mut Panel<'_>) {
    const VNNI: bool = false;
    panel_loops!(p, tile256, 4, 2, 2)
}

// ---------------------------------------------------------------- activation quantiser

/// AVX-512 F/BW/VL present (detected once by std, then a cached bit test).
pub(super) fn has_avx512() -> bool {
    is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512bw") && is_x86_feature_detected!("avx512vl")
}

/// The Q8 quantiser of q8.rs for whole blocks, with identical results: the same scale
/// `max|x| / 127` and round-to-nearest-even (the default MXCSR mode) of `x / scale`.
///
/// # Safety
/// The CPU must support AVX-512 F/BW/VL; `qs` holds 32, `d` and `s` 8, `sums` 1 and
/// `hsums` 2 values (the quant sums of each half) per 32 values of `x`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
pub(super) unsafe fn quantize_q8_avx512(
    x: &[f32],
    qs: &mut [i8],
    d: &mut [f32],
    s: &mut [f32],
    sums: &mut [f32],
    hsums: &mut [i32],
) {
    let nb = x.len() / QK8;
    assert!(qs.len() >= nb * QK8 && d.len() >= nb * Q8_LANES && s.len() >= nb * Q8_LANES && sums.len() >= nb);
    assert!(hsums.len() >= 2 * nb);
    // SAFETY: block `b < nb` reads x[32b..32b + 32] and writes inside the slices checked above.
    unsafe {
        for (b, (block_sum, half)) in sums[..nb].iter_mut().zip(hsums[..2 * nb].chunks_exact_mut(2)).enumerate() {
            let v0 = _mm512_loadu_ps(x.as_ptr().add(b * QK8));
            let v1 = _mm512_loadu_ps(x.as_ptr().add(b * QK8 + 16));
            let amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(v0), _mm512_abs_ps(v1)));
            // A NaN or an infinity makes the scale NaN (as in the scalar `quantize_block`):
            // x * 0 is 0 only for finite x.
            let zero = _mm512_setzero_ps();
            let finite = _mm512_cmp_ps_mask::<_CMP_EQ_OQ>(_mm512_mul_ps(v0, zero), zero)
                & _mm512_cmp_ps_mask::<_CMP_EQ_OQ>(_mm512_mul_ps(v1, zero), zero);
            let scale = if finite == 0xffff { amax / 127.0 } else { f32::NAN };
            // Quants 0 then, as in the scalar build (the conversion would make a NaN -128).
            let (v0, v1) = if finite == 0xffff { (v0, v1) } else { (zero, zero) };
            let id = _mm512_set1_ps(if scale != 0.0 && scale.is_finite() { 1.0 / scale } else { 0.0 });
            let q0 = _mm512_cvtps_epi32(_mm512_mul_ps(v0, id));
            let q1 = _mm512_cvtps_epi32(_mm512_mul_ps(v1, id));
            _mm_storeu_si128(qs.as_mut_ptr().add(b * QK8).cast(), _mm512_cvtsepi32_epi8(q0));
            _mm_storeu_si128(qs.as_mut_ptr().add(b * QK8 + 16).cast(), _mm512_cvtsepi32_epi8(q1));
            let (h0, h1) = (_mm512_reduce_add_epi32(q0), _mm512_reduce_add_epi32(q1));
            (half[0], half[1]) = (h0, h1);
            let sum = scale * (h0 + h1) as f32;
            _mm256_storeu_ps(d.as_mut_ptr().add(b * Q8_LANES), _mm256_set1_ps(scale));
            _mm256_storeu_ps(s.as_mut_ptr().add(b * Q8_LANES), _mm256_set1_ps(sum / Q8_LANES as f32));
            *block_sum = sum;
        }
    }
}

/// The second terms of [`super::q8::Q8Acts::quantize_two_term`]: for each block of 32 values
/// of `x`, with first-term quants `q1` and scale `d1[8b]`, the rest `x - d·q1` in steps of
/// `d / 256` (rounded to nearest even, clamped to ±127) into `q2`, and the sums of each
/// half's quants into `hsums2`. The same operations as the scalar build, so the same bits.
///
/// # Safety
/// The CPU must support AVX-512 F/BW/VL; `q1` and `q2` hold as many values as `x` (whole
/// blocks), `d1` 8 and `hsums2` 2 per block.
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
pub(super) unsafe fn residual_q8_avx512(x: &[f32], q1: &[i8], d1: &[f32], q2: &mut [i8], hsums2: &mut [i32]) {
    let nb = x.len() / QK8;
    assert!(q1.len() >= nb * QK8 && q2.len() >= nb * QK8 && d1.len() >= nb * Q8_LANES && hsums2.len() >= 2 * nb);
    // SAFETY: block `b < nb` reads x[32b..32b + 32], q1 likewise and d1[8b], and writes
    // q2[32b..32b + 32] and hsums2[2b..2b + 2], all inside the slices checked above.
    unsafe {
        let (lo, hi) = (_mm512_set1_epi32(-127), _mm512_set1_epi32(127));
        for b in 0..nb {
            let d = *d1.get_unchecked(b * Q8_LANES);
            let sd = _mm512_set1_ps(d);
            let inv = _mm512_set1_ps(if d != 0.0 && d.is_finite() { 256.0 / d } else { 0.0 });
            for h in 0..2 {
                let at = b * QK8 + 16 * h;
                let v = _mm512_loadu_ps(x.as_ptr().add(at));
                let q = _mm512_cvtepi8_epi32(_mm_loadu_si128(q1.as_ptr().add(at).cast()));
                let rest = _mm512_mul_ps(_mm512_sub_ps(v, _mm512_mul_ps(sd, _mm512_cvtepi32_ps(q))), inv);
                // A NaN rest (NaN scale) converts to i32::MIN; the scalar build gives 0.
                let finite = _mm512_cmp_ps_mask::<_CMP_EQ_OQ>(rest, rest);
                let r = _mm512_maskz_mov_epi32(
                    finite,
                    _mm512_min_epi32(_mm512_max_epi32(_mm512_cvtps_epi32(rest), lo), hi),
                );
                _mm_storeu_si128(q2.as_mut_ptr().add(at).cast(), _mm512_cvtepi32_epi8(r));
                *hsums2.get_unchecked_mut(2 * b + h) = _mm512_reduce_add_epi32(r);
            }
        }
    }
}
