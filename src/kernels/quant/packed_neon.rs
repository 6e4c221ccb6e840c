//! aarch64 kernels for packed (16-row interleaved) weights × Q8 activations, every packed
//! format: `sdot` with the dot-product extension, or widening multiplies and pairwise adds.
//! Four rows per 128-bit register; tested against packed.rs's scalar reference where it runs.

use std::arch::aarch64::*;

use half::f16;

use super::packed::{BlockActs, GroupCall, PACK_ROWS};
use super::q8::Q8Row;
use super::q8::QK8;
use super::WeightFormat;

/// Per 32-bit lane (one weight row each), Σ of four products of `w` and `x`.
#[inline(always)]
unsafe fn dot4<const DOT: bool>(acc: int32x4_t, w: int8x16_t, x: int8x16_t) -> int32x4_t {
    // SAFETY: only reached from functions compiled with NEON (and dotprod when `DOT`).
    unsafe {
        if DOT {
            super::neon::sdot(acc, w, x)
        } else {
            // |w| <= 128, |x| <= 127: a pair of products fits in i16.
            let lo = vmull_s8(vget_low_s8(w), vget_low_s8(x));
            let hi = vmull_high_s8(w, x);
            vpadalq_s16(acc, vpaddq_s16(lo, hi))
        }
    }
}

/// 16 scales (f16 or f32) at `p` as four f32 vectors.
#[inline(always)]
unsafe fn load_scales<const F: u8>(p: *const u8) -> [float32x4_t; 4] {
    // SAFETY: the caller guarantees 32 (f16) or 64 (f32) readable bytes at `p`.
    unsafe {
        if const { WeightFormat::from_id(F).f32_scales() } {
            return std::array::from_fn(|q| vld1q_f32(p.cast::<f32>().add(4 * q)));
        }
        let mut f = [0f32; PACK_ROWS];
        for (i, v) in f.iter_mut().enumerate() {
            *v = f16::from_bits(p.add(2 * i).cast::<u16>().read_unaligned()).to_f32();
        }
        std::array::from_fn(|q| vld1q_f32(f.as_ptr().add(4 * q)))
    }
}

/// One output row × one group; with `TWO`, two activation terms per row.
#[inline(always)]
unsafe fn row<const F: u8, const DOT: bool, const TWO: bool>(c: &mut GroupCall<'_, '_>, r: usize) {
    let lay = c.lay;
    let (x, y) = if TWO { (c.x[2 * r], c.x[2 * r + 1]) } else { (c.x[r], c.x[r]) };
    let fmt = const { WeightFormat::from_id(F) };
    let q8_0 = fmt == WeightFormat::Q8_0;
    // Q8_0 is turned back to signed, so it has no offset here.
    let off = if q8_0 { 0 } else { fmt.quant_offset() };
    // SAFETY: `GroupCall` guarantees a whole group and an activation row of `lay.nb` blocks;
    // every pointer read below stays inside them; the output holds 16 values.
    unsafe {
        let g = c.grp.as_ptr();
        let nib = vdupq_n_u8(0x0F);
        let flip = vdupq_n_u8(0x80);
        let mut acc = [vdupq_n_f32(0.0); 4];
        for b in 0..lay.nb {
            let q = g.add(lay.q_at(b));
            // Sums of weights 0..16 (`lo`) and 16..32 (`hi`) per row, four rows per register.
            let mut lo = [vdupq_n_s32(0); 4];
            let mut hi = [vdupq_n_s32(0); 4];
            let (mut lo2, mut hi2) = (lo, hi);
            for u in 0..8 {
                let bytes = |x: &Q8Row<'_>| {
                    vreinterpretq_s8_s32(vdupq_n_s32(x.qs.as_ptr().add(b * QK8 + 4 * u).cast::<i32>().read_unaligned()))
                };
                let (xv, yv) = (bytes(&x), bytes(&y));
                for part in 0..4 {
                    let w = if fmt.nibbles() {
                        let v = vld1q_u8(q.add(64 * (u / 2) + 16 * part));
                        let n = if u % 2 == 0 { vandq_u8(v, nib) } else { vshrq_n_u8::<4>(v) };
                        vreinterpretq_s8_u8(n)
                    } else if q8_0 {
                        vreinterpretq_s8_u8(veorq_u8(vld1q_u8(q.add(64 * u + 16 * part)), flip))
                    } else {
                        // The other byte formats' quants are below 64: valid as i8.
                        vreinterpretq_s8_u8(vld1q_u8(q.add(64 * u + 16 * part)))
                    };
                    if u < 4 {
                        lo[part] = dot4::<DOT>(lo[part], w, xv);
                        if TWO {
                            lo2[part] = dot4::<DOT>(lo2[part], w, yv);
                        }
                    } else {
                        hi[part] = dot4::<DOT>(hi[part], w, xv);
                        if TWO {
                            hi2[part] = dot4::<DOT>(hi2[part], w, yv);
                        }
                    }
                }
            }
            if TWO {
                for p in 0..4 {
                    lo[p] = vaddq_s32(vshlq_n_s32::<8>(lo[p]), lo2[p]);
                    hi[p] = vaddq_s32(vshlq_n_s32::<8>(hi[p]), hi2[p]);
                }
            }
            let xb = BlockActs::of(&x, TWO.then_some(&y), b);
            let s1 = load_scales::<F>(g.add(lay.d_at(b)));
            let s2 = if fmt.has_min() || fmt.two_scales() {
                load_scales::<F>(g.add(lay.m_at(b)))
            } else {
                [vdupq_n_f32(0.0); 4]
            };
            for p in 0..4 {
                let f = if fmt.two_scales() {
                    let l = vsubq_s32(lo[p], vdupq_n_s32(off * xb.hsums[0]));
                    let h = vsubq_s32(hi[p], vdupq_n_s32(off * xb.hsums[1]));
                    vfmaq_f32(vmulq_f32(vcvtq_f32_s32(l), s1[p]), vcvtq_f32_s32(h), s2[p])
                } else {
                    let s = vsubq_s32(vaddq_s32(lo[p], hi[p]), vdupq_n_s32(off * xb.isum));
                    vmulq_f32(vcvtq_f32_s32(s), s1[p])
                };
                acc[p] = vfmaq_n_f32(acc[p], f, xb.scale);
                if fmt.has_min() {
                    acc[p] = vfmaq_n_f32(acc[p], s2[p], xb.sum);
                }
            }
        }
        let o = c.out[r].as_mut_ptr();
        for (p, a) in acc.iter().enumerate() {
            let v = if c.accumulate { vaddq_f32(vld1q_f32(o.add(4 * p)), *a) } else { *a };
            vst1q_f32(o.add(4 * p), v);
        }
    }
}

/// Packed group kernel, NEON (with `sdot` when `DOT`).
///
/// # Safety
/// The CPU must support NEON (and the dot-product extension when `DOT`); the call must
/// describe a whole group and activation rows of matching length.
#[inline(always)]
unsafe fn group<const F: u8, const DOT: bool>(c: &mut GroupCall<'_, '_>) {
    for r in 0..c.out.len() {
        // SAFETY: forwarded from this function's contract.
        unsafe {
            if c.pairs {
                row::<F, DOT, true>(c, r)
            } else {
                row::<F, DOT, false>(c, r)
            }
        }
    }
}

/// Packed group kernel, NEON with widening multiplies.
///
/// # Safety
/// The CPU must support NEON; the call must describe a whole group and activation rows of
/// matching length.
#[target_feature(enable = "neon")]
pub(super) unsafe fn group_neon<const F: u8>(c: &mut GroupCall<'_, '_>) {
    // SAFETY: forwarded from this function's contract.
    unsafe { group::<F, false>(c) }
}

/// Packed group kernel, NEON with `sdot`.
///
/// # Safety
/// The CPU must support NEON and the dot-product extension; the call must describe a whole
/// group and activation rows of matching length.
#[target_feature(enable = "neon,dotprod")]
pub(super) unsafe fn group_neon_dot<const F: u8>(c: &mut GroupCall<'_, '_>) {
    // SAFETY: forwarded from this function's contract.
    unsafe { group::<F, true>(c) }
}
