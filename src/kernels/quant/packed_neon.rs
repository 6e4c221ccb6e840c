//! aarch64 kernels for packed (16-row interleaved) Q4_0/Q4_1/Q8_0 weights × Q8 activations:
//! `sdot` with the dot-product extension, or widening multiplies and pairwise adds. Four
//! rows per 128-bit register; tested against packed.rs's scalar reference where it can run.

use std::arch::aarch64::*;

use half::f16;

use super::packed::{format_of, quant_offset, GroupCall, PACK_ROWS, P_Q4_1, P_Q8_0};
use super::q8::{Q8_LANES, QK8};

/// Per 32-bit lane (one weight row each), Σ of four products of `w` and `x`.
#[inline(always)]
unsafe fn dot4<const DOT: bool>(acc: int32x4_t, w: int8x16_t, x: int8x16_t) -> int32x4_t {
    // SAFETY: only reached from functions compiled with NEON (and dotprod when `DOT`).
    unsafe {
        if DOT {
            // `vdotq_s32` is not stable yet: the same `sdot` instruction written out.
            let mut acc = acc;
            std::arch::asm!(
                ".arch_extension dotprod",
                "sdot {acc:v}.4s, {a:v}.16b, {b:v}.16b",
                acc = inout(vreg) acc,
                a = in(vreg) w,
                b = in(vreg) x,
                options(pure, nomem, nostack, preserves_flags),
            );
            acc
        } else {
            // |w| <= 128, |x| <= 127: a pair of products fits in i16.
            let lo = vmull_s8(vget_low_s8(w), vget_low_s8(x));
            let hi = vmull_high_s8(w, x);
            vpadalq_s16(acc, vpaddq_s16(lo, hi))
        }
    }
}

/// 16 f16 values at `p` as four f32 vectors.
#[inline(always)]
unsafe fn load_f16x16(p: *const u8) -> [float32x4_t; 4] {
    // SAFETY: the caller guarantees 32 readable bytes at `p`.
    unsafe {
        let mut f = [0f32; PACK_ROWS];
        for (i, v) in f.iter_mut().enumerate() {
            *v = f16::from_bits(p.add(2 * i).cast::<u16>().read_unaligned()).to_f32();
        }
        std::array::from_fn(|q| vld1q_f32(f.as_ptr().add(4 * q)))
    }
}

/// One activation row × one group.
#[inline(always)]
unsafe fn row<const F: u8, const DOT: bool>(c: &mut GroupCall<'_, '_>, r: usize) {
    let lay = c.lay;
    let x = c.x[r];
    // Q8_0 is turned back to signed, so only Q4_0 has an offset here.
    let off = if F == P_Q8_0 { 0 } else { quant_offset(format_of(F)) };
    // SAFETY: `GroupCall` guarantees a whole group and an activation row of `lay.nb` blocks;
    // every pointer read below stays inside them; the output holds 16 values.
    unsafe {
        let g = c.grp.as_ptr();
        let nib = vdupq_n_u8(0x0F);
        let flip = vdupq_n_u8(0x80);
        let mut acc = [vdupq_n_f32(0.0); 4];
        for b in 0..lay.nb {
            let q = g.add(lay.q_at(b));
            let mut s = [vdupq_n_s32(0); 4];
            for u in 0..8 {
                let xv = vreinterpretq_s8_s32(vdupq_n_s32(
                    x.qs.as_ptr().add(b * QK8 + 4 * u).cast::<i32>().read_unaligned(),
                ));
                for (part, sp) in s.iter_mut().enumerate() {
                    let w = if F == P_Q8_0 {
                        vreinterpretq_s8_u8(veorq_u8(vld1q_u8(q.add(64 * u + 16 * part)), flip))
                    } else {
                        let v = vld1q_u8(q.add(64 * (u / 2) + 16 * part));
                        let n = if u % 2 == 0 { vandq_u8(v, nib) } else { vshrq_n_u8::<4>(v) };
                        vreinterpretq_s8_u8(n)
                    };
                    *sp = dot4::<DOT>(*sp, w, xv);
                }
            }
            let d = load_f16x16(g.add(lay.d_at(b)));
            let m = if F == P_Q4_1 { load_f16x16(g.add(lay.m_at(b))) } else { [vdupq_n_f32(0.0); 4] };
            let dx = *x.d.get_unchecked(b * Q8_LANES);
            let corr = vdupq_n_s32(off * x.isums[b]);
            for p in 0..4 {
                let f = vmulq_f32(vcvtq_f32_s32(vsubq_s32(s[p], corr)), d[p]);
                acc[p] = vfmaq_n_f32(acc[p], f, dx);
                if F == P_Q4_1 {
                    acc[p] = vfmaq_n_f32(acc[p], m[p], x.sums[b]);
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
#[target_feature(enable = "neon")]
pub(super) unsafe fn group_neon<const F: u8, const DOT: bool>(c: &mut GroupCall<'_, '_>) {
    for r in 0..c.x.len() {
        // SAFETY: forwarded from this function's contract.
        unsafe { row::<F, DOT>(c, r) }
    }
}
