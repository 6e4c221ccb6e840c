//! aarch64 panels for the 32-weight formats (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0) × Q8
//! activations: NEON widening multiplies, or `sdot` with the dot-product extension. One
//! block at a time per row; exact integer sums per block, tested against dot_q8.rs (under
//! qemu-aarch64 by scripts/test-aarch64.sh).

use std::arch::aarch64::*;

use half::f16;

use super::q8::{Q8Row, QK8};
use super::qmatmul::Panel;
use super::WeightFormat;

/// `sdot`: lane `i` of `acc` plus Σ of the four products of bytes `4i..4i + 4` of `a` and `b`.
///
/// # Safety
/// The CPU must support the dot-product extension.
#[inline(always)]
pub(super) unsafe fn sdot(acc: int32x4_t, a: int8x16_t, b: int8x16_t) -> int32x4_t {
    // `vdotq_s32` is not stable yet: the same `sdot` instruction written out.
    let mut acc = acc;
    // SAFETY: the caller guarantees the dot-product extension; the instruction only reads
    // and writes the three vector registers.
    unsafe {
        std::arch::asm!(
            ".arch_extension dotprod",
            "sdot {acc:v}.4s, {a:v}.16b, {b:v}.16b",
            acc = inout(vreg) acc,
            a = in(vreg) a,
            b = in(vreg) b,
            options(pure, nomem, nostack, preserves_flags),
        );
    }
    acc
}

/// Σ a·b of two 16 × i8 vectors, in four i32 lanes.
#[inline(always)]
unsafe fn dot16<const DOT: bool>(acc: int32x4_t, a: int8x16_t, b: int8x16_t) -> int32x4_t {
    // SAFETY: only reached from functions compiled with NEON (and dotprod when `DOT`).
    unsafe {
        if DOT {
            sdot(acc, a, b)
        } else {
            let lo = vmull_s8(vget_low_s8(a), vget_low_s8(b));
            let hi = vmull_high_s8(a, b);
            vpadalq_s16(vpadalq_s16(acc, lo), hi)
        }
    }
}

/// 0x10 in byte `j` (0..16) where bit `j % 8` of byte `first + j / 8` of `qh` is set (`qh`
/// holds the block's 32 fifth bits in its first four bytes).
#[inline(always)]
unsafe fn fifth_bits(qh: uint8x16_t, first: u8) -> uint8x16_t {
    // SAFETY: only reached from functions compiled with NEON; register operations only.
    unsafe {
        let from = vcombine_u8(vdup_n_u8(first), vdup_n_u8(first + 1));
        let bit = vcreate_u8(0x8040_2010_0804_0201);
        let set = vtstq_u8(vqtbl1q_u8(qh, from), vcombine_u8(bit, bit));
        vandq_u8(set, vdupq_n_u8(0x10))
    }
}

/// Dot product of one weight row (`nb` blocks at `w`) with one activation row.
#[inline(always)]
unsafe fn row_dot<const F: u8, const DOT: bool>(w: *const u8, nb: usize, x: Q8Row<'_>) -> f32 {
    // `F` is a `WeightFormat` id: one of the 32-weight formats.
    let fmt = const { WeightFormat::from_id(F) };
    let (bb, qo) = (fmt.block_bytes(), fmt.qs_offset());
    // SAFETY: the caller guarantees `nb` blocks at `w`; `x` holds `nb` blocks (checked by
    // `Panel::new`), and the slices below are indexed with bounds checks.
    unsafe {
        let mut acc = vdupq_n_f32(0.0);
        let mut offset = 0f32;
        for b in 0..nb {
            let p = w.add(b * bb);
            let d = f16::from_bits(p.cast::<u16>().read_unaligned()).to_f32();
            let xs = &x.qs[b * QK8..(b + 1) * QK8];
            let (xl, xh) = (vld1q_s8(xs.as_ptr()), vld1q_s8(xs.as_ptr().add(16)));
            let dp = if fmt == WeightFormat::Q8_0 {
                let (w0, w1) = (vld1q_s8(p.add(qo).cast()), vld1q_s8(p.add(qo + 16).cast()));
                dot16::<DOT>(dot16::<DOT>(vdupq_n_s32(0), w0, xl), w1, xh)
            } else {
                // Weights 0..16 in the low nibbles, 16..32 in the high ones.
                let q = vld1q_u8(p.add(qo));
                let mut lo = vandq_u8(q, vdupq_n_u8(0x0F));
                let mut hi = vshrq_n_u8::<4>(q);
                if matches!(fmt, WeightFormat::Q5_0 | WeightFormat::Q5_1) {
                    // Fifth bits: bit `w` of the u32 before the nibbles, as 0x10 in byte `w`.
                    let qh = vreinterpretq_u8_u32(vdupq_n_u32(p.add(qo - 4).cast::<u32>().read_unaligned()));
                    lo = vorrq_u8(lo, fifth_bits(qh, 0));
                    hi = vorrq_u8(hi, fifth_bits(qh, 2));
                }
                let off = fmt.quant_offset() as u8;
                if off != 0 {
                    // Q4_0, Q5_0: centred quants, still within i8 after the subtraction.
                    lo = vsubq_u8(lo, vdupq_n_u8(off));
                    hi = vsubq_u8(hi, vdupq_n_u8(off));
                } else {
                    let m = f16::from_bits(p.add(2).cast::<u16>().read_unaligned()).to_f32();
                    offset += m * x.sum(b);
                }
                let (lo, hi) = (vreinterpretq_s8_u8(lo), vreinterpretq_s8_u8(hi));
                dot16::<DOT>(dot16::<DOT>(vdupq_n_s32(0), lo, xl), hi, xh)
            };
            acc = vfmaq_f32(acc, vcvtq_f32_s32(dp), vdupq_n_f32(d * x.scale(b)));
        }
        vaddvq_f32(acc) + offset
    }
}

#[inline(always)]
unsafe fn panel<const F: u8, const DOT: bool>(p: &mut Panel<'_>) {
    for r in 0..p.x.rows() {
        for c in 0..p.out.cols() {
            // SAFETY: `Panel::new` checked that row `c` of `row_bytes` = `nb` blocks exists.
            let v = unsafe { row_dot::<F, DOT>(p.w.as_ptr().add(c * p.row_bytes), p.nb, p.x.row(r)) };
            p.put(r, c, v);
        }
    }
}

/// NEON panel.
///
/// # Safety
/// The CPU must support NEON.
#[target_feature(enable = "neon")]
pub(super) unsafe fn panel_neon<const F: u8>(p: &mut Panel<'_>) {
    // SAFETY: NEON is enabled here.
    unsafe { panel::<F, false>(p) }
}

/// NEON panel with `sdot`.
///
/// # Safety
/// The CPU must support NEON and the dot-product extension.
#[target_feature(enable = "neon,dotprod")]
pub(super) unsafe fn panel_neon_dot<const F: u8>(p: &mut Panel<'_>) {
    // SAFETY: NEON and dotprod are enabled here.
    unsafe { panel::<F, true>(p) }
}
