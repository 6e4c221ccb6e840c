//! x86_64 kernels for packed (16-row interleaved) weights × Q8 activations, every packed
//! format: AVX-512 VNNI (`vpdpbusd`, all 16 rows in one register) and AVX2 (`vpmaddubsw`,
//! two halves of 8 rows). Layout and scalar reference: packed.rs, which tests these.

// AVX-512 intrinsics are stable since Rust 1.89 (the crate's rust-version).
#![allow(clippy::incompatible_msrv)]

use std::arch::x86_64::*;

use super::packed::{BlockActs, GroupCall};
use super::q8::{Q8_LANES, QK8};
use super::WeightFormat;

/// Blocks ahead that the AVX-512 kernel prefetches, and how: when the call streams the
/// weights (one pass of few rows: decode), every line of the block [`STREAM_AHEAD`] blocks
/// ahead; otherwise (prompts, which pass over each group many times) one line [`PREFETCH`]
/// blocks ahead. Measured in `mllm bench` on SmolLM2 Q4_1 (alternating, Xeon): in decode,
/// whole blocks 8 ahead beat one line 4 ahead by 1.1-1.6x on 1 thread and 1.07-1.15x on 2,
/// in both precisions; in prompt processing they cost 8-20%.
const PREFETCH: usize = 4;
const STREAM_AHEAD: usize = 8;

/// Raw pointers to the parts of one activation row the kernels read.
#[derive(Clone, Copy)]
struct XPtr {
    qs: *const i8,
    d: *const f32,
    sums: *const f32,
    isums: *const i32,
    hsums: *const i32,
}

impl XPtr {
    /// Rows `first`, `first + step`, ... of the call's activations.
    #[inline(always)]
    fn rows<const R: usize>(c: &GroupCall<'_, '_>, first: usize, step: usize) -> [XPtr; R] {
        std::array::from_fn(|i| {
            let x = &c.x[(first + step * i).min(c.x.len() - 1)];
            XPtr {
                qs: x.qs.as_ptr(),
                d: x.d.as_ptr(),
                sums: x.sums.as_ptr(),
                isums: x.isums.as_ptr(),
                hsums: x.hsums.as_ptr(),
            }
        })
    }
}

/// Output rows `r0..r0 + R`: their first (or only) activation rows, and with `TWO` the
/// second terms.
#[inline(always)]
fn row_ptrs<const R: usize, const TWO: bool>(c: &GroupCall<'_, '_>, r0: usize) -> ([XPtr; R], [XPtr; R]) {
    if TWO {
        (XPtr::rows::<R>(c, 2 * r0, 2), XPtr::rows::<R>(c, 2 * r0 + 1, 2))
    } else {
        let x = XPtr::rows::<R>(c, r0, 1);
        (x, x)
    }
}

/// Block `b`'s integer sums, dot scale and scaled sum for one output row (`y` is only
/// read with `TWO`).
#[inline(always)]
unsafe fn block_acts<const TWO: bool>(x: XPtr, y: XPtr, b: usize) -> BlockActs {
    // SAFETY: the caller guarantees block `b` exists in both rows.
    let one = |x: XPtr| unsafe {
        BlockActs {
            isum: *x.isums.add(b),
            hsums: [*x.hsums.add(2 * b), *x.hsums.add(2 * b + 1)],
            scale: *x.d.add(b * Q8_LANES),
            sum: *x.sums.add(b),
        }
    };
    if TWO {
        one(x).with_second(one(y))
    } else {
        one(x)
    }
}

/// Four activation bytes `4u..4u + 4` of block `b`, broadcast to every 32-bit lane.
#[inline(always)]
unsafe fn bcast512(x: XPtr, b: usize, u: usize) -> __m512i {
    // SAFETY: the caller guarantees block `b` exists in the row (u < 8).
    unsafe { _mm512_set1_epi32(x.qs.add(b * QK8 + 4 * u).cast::<i32>().read_unaligned()) }
}

/// 16 scales (f16 or f32) at `p` as f32.
#[inline(always)]
unsafe fn scales512<const F: u8>(p: *const u8) -> __m512 {
    // SAFETY: the caller guarantees 32 (f16) or 64 (f32) readable bytes at `p`.
    unsafe {
        if const { WeightFormat::from_id(F).f32_scales() } {
            _mm512_loadu_ps(p.cast())
        } else {
            _mm512_cvtph_ps(_mm256_loadu_si256(p.cast()))
        }
    }
}

/// Integer dots of one activation row with block `b`'s weights `w`: two chains, weights
/// 0..16 and 16..32 (Q6_K needs them apart), or even and odd groups of four (the nibbles
/// of one load in parallel).
#[inline(always)]
unsafe fn dots512<const F: u8>(w: &[__m512i; 8], x: XPtr, b: usize) -> (__m512i, __m512i) {
    let fmt = const { WeightFormat::from_id(F) };
    // SAFETY: the caller guarantees block `b` exists in the row.
    unsafe {
        let (mut lo, mut hi) = (_mm512_setzero_si512(), _mm512_setzero_si512());
        for u in 0..4 {
            let (a, c) = if fmt.two_scales() { (u, u + 4) } else { (2 * u, 2 * u + 1) };
            lo = _mm512_dpbusd_epi32(lo, w[a], bcast512(x, b, a));
            hi = _mm512_dpbusd_epi32(hi, w[c], bcast512(x, b, c));
        }
        (lo, hi)
    }
}

/// `R` output rows × one group, AVX-512 VNNI; with `TWO`, two activation terms per row.
#[inline(always)]
unsafe fn g512<const F: u8, const R: usize, const TWO: bool, const STREAM: bool>(c: &mut GroupCall<'_, '_>, r0: usize) {
    let lay = c.lay;
    let (x, y) = row_ptrs::<R, TWO>(c, r0);
    let fmt = const { WeightFormat::from_id(F) };
    let off = fmt.quant_offset();
    // SAFETY: `GroupCall` guarantees a whole group (`lay.bytes` bytes, `lay.nb` blocks) and
    // activation rows of `lay.nb` blocks; every read below stays inside them, and each
    // output slice holds 16 values.
    unsafe {
        let g = c.grp.as_ptr();
        let nib = _mm512_set1_epi8(0x0F);
        let mut acc = [_mm512_setzero_ps(); R];
        for b in 0..lay.nb {
            let q = g.add(lay.q_at(b));
            // Past the group's end is harmless.
            if STREAM {
                let ahead = q.wrapping_add(STREAM_AHEAD * lay.stride);
                for l in 0..lay.stride.div_ceil(64) {
                    _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(64 * l).cast());
                }
            } else {
                _mm_prefetch::<_MM_HINT_T0>(q.wrapping_add(PREFETCH * lay.stride).cast());
            }
            // w[u] holds weights 4u..4u + 4 of each of the 16 rows.
            let mut w = [_mm512_setzero_si512(); 8];
            if fmt.nibbles() {
                for t in 0..4 {
                    let v = _mm512_loadu_si512(q.add(64 * t).cast());
                    w[2 * t] = _mm512_and_si512(v, nib);
                    w[2 * t + 1] = _mm512_and_si512(_mm512_srli_epi16::<4>(v), nib);
                }
            } else {
                for (u, wu) in w.iter_mut().enumerate() {
                    *wu = _mm512_loadu_si512(q.add(64 * u).cast());
                }
            }
            let s1 = scales512::<F>(g.add(lay.d_at(b)));
            let s2 = if fmt.has_min() || fmt.two_scales() {
                scales512::<F>(g.add(lay.m_at(b)))
            } else {
                _mm512_setzero_ps()
            };
            for r in 0..R {
                let (mut lo, mut hi) = dots512::<F>(&w, x[r], b);
                if TWO {
                    let (lo2, hi2) = dots512::<F>(&w, y[r], b);
                    lo = _mm512_add_epi32(_mm512_slli_epi32::<8>(lo), lo2);
                    hi = _mm512_add_epi32(_mm512_slli_epi32::<8>(hi), hi2);
                }
                let BlockActs { isum, hsums, scale: dx, sum } = block_acts::<TWO>(x[r], y[r], b);
                let f = if fmt.two_scales() {
                    let lo = _mm512_sub_epi32(lo, _mm512_set1_epi32(off * hsums[0]));
                    let hi = _mm512_sub_epi32(hi, _mm512_set1_epi32(off * hsums[1]));
                    _mm512_fmadd_ps(_mm512_cvtepi32_ps(hi), s2, _mm512_mul_ps(_mm512_cvtepi32_ps(lo), s1))
                } else {
                    let mut s = _mm512_add_epi32(lo, hi);
                    if off != 0 {
                        s = _mm512_sub_epi32(s, _mm512_set1_epi32(off * isum));
                    }
                    _mm512_mul_ps(_mm512_cvtepi32_ps(s), s1)
                };
                acc[r] = _mm512_fmadd_ps(f, _mm512_set1_ps(dx), acc[r]);
                if fmt.has_min() {
                    acc[r] = _mm512_fmadd_ps(s2, _mm512_set1_ps(sum), acc[r]);
                }
            }
        }
        for (r, a) in acc.iter().enumerate() {
            let o = c.out[r0 + r].as_mut_ptr();
            let v = if c.accumulate { _mm512_add_ps(_mm512_loadu_ps(o), *a) } else { *a };
            _mm512_storeu_ps(o, v);
        }
    }
}

/// All output rows of a call, AVX-512 VNNI: up to 7 in one pass over the weights, more in
/// passes of 4.
#[inline(always)]
unsafe fn rows512<const F: u8, const TWO: bool>(c: &mut GroupCall<'_, '_>) {
    // SAFETY: forwarded from the caller's contract.
    unsafe {
        match c.out.len() {
            0 => {}
            // Streaming calls (decode) prefetch whole blocks: their own monomorphs, so that
            // the prompt kernels' code is untouched.
            1 if c.stream => g512::<F, 1, TWO, true>(c, 0),
            2 if c.stream => g512::<F, 2, TWO, true>(c, 0),
            3 if c.stream => g512::<F, 3, TWO, true>(c, 0),
            4 if c.stream => g512::<F, 4, TWO, true>(c, 0),
            1 => g512::<F, 1, TWO, false>(c, 0),
            2 => g512::<F, 2, TWO, false>(c, 0),
            3 => g512::<F, 3, TWO, false>(c, 0),
            4 => g512::<F, 4, TWO, false>(c, 0),
            5 => g512::<F, 5, TWO, false>(c, 0),
            6 => g512::<F, 6, TWO, false>(c, 0),
            7 => g512::<F, 7, TWO, false>(c, 0),
            _ => {
                let mut r0 = 0;
                while r0 < c.out.len() {
                    match c.out.len() - r0 {
                        1 => g512::<F, 1, TWO, false>(c, r0),
                        2 => g512::<F, 2, TWO, false>(c, r0),
                        3 => g512::<F, 3, TWO, false>(c, r0),
                        _ => g512::<F, 4, TWO, false>(c, r0),
                    }
                    r0 += 4;
                }
            }
        }
    }
}

/// Packed group kernel, AVX-512 VNNI.
///
/// # Safety
/// The CPU must support AVX-512 F/BW/VL/VNNI, AVX2, FMA and F16C; the call must describe a
/// whole group and at most 8 output rows with activation rows of matching length.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub(super) unsafe fn group_avx512_vnni<const F: u8>(c: &mut GroupCall<'_, '_>) {
    // SAFETY: forwarded from this function's contract.
    unsafe {
        if c.pairs {
            rows512::<F, true>(c)
        } else {
            rows512::<F, false>(c)
        }
    }
}

// ------------------------------------------------------------------------ AVX2

/// 8 scales (f16 or f32) at `p` as f32.
#[inline(always)]
unsafe fn scales256<const F: u8>(p: *const u8) -> __m256 {
    // SAFETY: the caller guarantees 16 (f16) or 32 (f32) readable bytes at `p`.
    unsafe {
        if const { WeightFormat::from_id(F).f32_scales() } {
            _mm256_loadu_ps(p.cast())
        } else {
            _mm256_cvtph_ps(_mm_loadu_si128(p.cast()))
        }
    }
}

/// Integer dots of one activation row with block `b`'s weights `w` (one half of the group):
/// weights 0..16 and 16..32.
#[inline(always)]
unsafe fn dots256<const F: u8>(w: &[__m256i; 8], x: XPtr, b: usize) -> (__m256i, __m256i) {
    let q8_0 = const { WeightFormat::from_id(F) } == WeightFormat::Q8_0;
    // SAFETY: the caller guarantees block `b` exists in the row.
    unsafe {
        let ones = _mm256_set1_epi16(1);
        let (mut lo, mut hi) = (_mm256_setzero_si256(), _mm256_setzero_si256());
        for (u, &wu) in w.iter().enumerate() {
            let xv = _mm256_set1_epi32(x.qs.add(b * QK8 + 4 * u).cast::<i32>().read_unaligned());
            // |u8| <= 128 (Q8_0 magnitudes) or 63 (the other formats' quants), |i8| <= 127:
            // no i16 saturation.
            let p = if q8_0 {
                _mm256_maddubs_epi16(_mm256_abs_epi8(wu), _mm256_sign_epi8(xv, wu))
            } else {
                _mm256_maddubs_epi16(wu, xv)
            };
            let p = _mm256_madd_epi16(p, ones);
            if u < 4 {
                lo = _mm256_add_epi32(lo, p);
            } else {
                hi = _mm256_add_epi32(hi, p);
            }
        }
        (lo, hi)
    }
}

/// `R` output rows × one half (8 rows) of a group, AVX2 `vpmaddubsw`; with `TWO`, two
/// activation terms per row.
#[inline(always)]
unsafe fn g256<const F: u8, const R: usize, const TWO: bool>(c: &mut GroupCall<'_, '_>, r0: usize, half: usize) {
    let lay = c.lay;
    let (x, y) = row_ptrs::<R, TWO>(c, r0);
    let fmt = const { WeightFormat::from_id(F) };
    let q8_0 = fmt == WeightFormat::Q8_0;
    // Q8_0 runs signed × signed (sign trick), so it needs no offset here.
    let off = if q8_0 { 0 } else { fmt.quant_offset() };
    // Scales of the half's 8 rows.
    let sh = lay.sb * 8 * half;
    // SAFETY: as in `g512`; `half < 2` picks bytes 32 * half.. of each 64-byte vector.
    unsafe {
        let g = c.grp.as_ptr();
        let nib = _mm256_set1_epi8(0x0F);
        let flip = _mm256_set1_epi8(i8::MIN);
        let mut acc = [_mm256_setzero_ps(); R];
        for b in 0..lay.nb {
            let q = g.add(lay.q_at(b) + 32 * half);
            let mut w = [_mm256_setzero_si256(); 8];
            if fmt.nibbles() {
                for t in 0..4 {
                    let v = _mm256_loadu_si256(q.add(64 * t).cast());
                    w[2 * t] = _mm256_and_si256(v, nib);
                    w[2 * t + 1] = _mm256_and_si256(_mm256_srli_epi16::<4>(v), nib);
                }
            } else {
                for (u, wu) in w.iter_mut().enumerate() {
                    let v = _mm256_loadu_si256(q.add(64 * u).cast());
                    // Q8_0 stores q + 128: back to signed.
                    *wu = if q8_0 { _mm256_xor_si256(v, flip) } else { v };
                }
            }
            let s1 = scales256::<F>(g.add(lay.d_at(b) + sh));
            let s2 = if fmt.has_min() || fmt.two_scales() {
                scales256::<F>(g.add(lay.m_at(b) + sh))
            } else {
                _mm256_setzero_ps()
            };
            for r in 0..R {
                let (mut lo, mut hi) = dots256::<F>(&w, x[r], b);
                if TWO {
                    let (lo2, hi2) = dots256::<F>(&w, y[r], b);
                    lo = _mm256_add_epi32(_mm256_slli_epi32::<8>(lo), lo2);
                    hi = _mm256_add_epi32(_mm256_slli_epi32::<8>(hi), hi2);
                }
                let BlockActs { isum, hsums, scale: dx, sum } = block_acts::<TWO>(x[r], y[r], b);
                let f = if fmt.two_scales() {
                    let lo = _mm256_sub_epi32(lo, _mm256_set1_epi32(off * hsums[0]));
                    let hi = _mm256_sub_epi32(hi, _mm256_set1_epi32(off * hsums[1]));
                    _mm256_fmadd_ps(_mm256_cvtepi32_ps(hi), s2, _mm256_mul_ps(_mm256_cvtepi32_ps(lo), s1))
                } else {
                    let mut s = _mm256_add_epi32(lo, hi);
                    if off != 0 {
                        s = _mm256_sub_epi32(s, _mm256_set1_epi32(off * isum));
                    }
                    _mm256_mul_ps(_mm256_cvtepi32_ps(s), s1)
                };
                acc[r] = _mm256_fmadd_ps(f, _mm256_set1_ps(dx), acc[r]);
                if fmt.has_min() {
                    acc[r] = _mm256_fmadd_ps(s2, _mm256_set1_ps(sum), acc[r]);
                }
            }
        }
        for (r, a) in acc.iter().enumerate() {
            let o = c.out[r0 + r].as_mut_ptr().add(8 * half);
            let v = if c.accumulate { _mm256_add_ps(_mm256_loadu_ps(o), *a) } else { *a };
            _mm256_storeu_ps(o, v);
        }
    }
}

/// Packed group kernel, AVX2.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C; the call must describe a whole group and
/// activation rows of matching length.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn group_avx2<const F: u8>(c: &mut GroupCall<'_, '_>) {
    // SAFETY: forwarded from this function's contract.
    unsafe {
        if c.pairs {
            halves256::<F, true>(c)
        } else {
            halves256::<F, false>(c)
        }
    }
}

/// All output rows of a call, both halves, in passes of up to 4 rows.
#[inline(always)]
unsafe fn halves256<const F: u8, const TWO: bool>(c: &mut GroupCall<'_, '_>) {
    // SAFETY: forwarded from the caller's contract.
    unsafe {
        for half in 0..2 {
            let mut r0 = 0;
            while r0 < c.out.len() {
                match c.out.len() - r0 {
                    1 => g256::<F, 1, TWO>(c, r0, half),
                    2 => g256::<F, 2, TWO>(c, r0, half),
                    3 => g256::<F, 3, TWO>(c, r0, half),
                    _ => g256::<F, 4, TWO>(c, r0, half),
                }
                r0 += 4;
            }
        }
    }
}
