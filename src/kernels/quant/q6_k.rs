//! Q6_K: 256 weights in 16 sub-blocks of 16 with signed 8-bit scales and an f16
//! super-scale; quants are 6-bit (low 4 bits in `ql`, high 2 in `qh`): w = d*sc*(q - 32).

use bytemuck::{Pod, Zeroable};
use half::f16;

use super::{QuantBlock, QK_K};

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
pub struct BlockQ6_K {
    /// Low 4 bits. In each 128-weight half h, weight 32r + l (r in 0..4, l in 0..32)
    /// is in byte 64h + 32(r % 2) + l, low nibble for r < 2, high nibble otherwise.
    pub ql: [u8; QK_K / 2],
    /// High 2 bits: weight 32r + l of half h is at bits 2r..2r+2 of byte 32h + l.
    pub qh: [u8; QK_K / 4],
    /// One scale per 16 weights.
    pub scales: [i8; QK_K / 16],
    pub d: f16,
}

const _: () = assert!(std::mem::size_of::<BlockQ6_K>() == 210);

/// Byte and bit positions of weight `i` (0..256): (ql byte, ql shift, qh byte, qh shift).
pub(super) fn position(i: usize) -> (usize, usize, usize, usize) {
    let (h, r, l) = (i / 128, (i % 128) / 32, i % 32);
    (64 * h + 32 * (r % 2) + l, 4 * (r / 2), 32 * h + l, 2 * r)
}

impl QuantBlock for BlockQ6_K {
    const LEN: usize = QK_K;

    fn dequantize(&self, out: &mut [f32]) {
        let d = self.d.to_f32();
        for (s, y) in out.chunks_exact_mut(16).enumerate() {
            let ds = d * self.scales[s] as f32;
            for (k, y) in y.iter_mut().enumerate() {
                let (lb, ls, hb, hs) = position(16 * s + k);
                let q = ((self.ql[lb] >> ls) & 0xF) | (((self.qh[hb] >> hs) & 3) << 4);
                *y = ds * (q as i32 - 32) as f32;
            }
        }
    }
}

/// Decode Q6_K blocks into `out` (256 values per 210-byte block).
pub fn dequantize_q6_k(blocks: &[u8], out: &mut [f32]) {
    super::dequantize_blocks::<BlockQ6_K>("dequantize_q6_k", blocks, out)
}

/// Reference dot product of a row of Q6_K blocks with `x` (256 values per block).
pub fn vec_dot_q6_k_f32(blocks: &[u8], x: &[f32]) -> f32 {
    super::vec_dot_blocks::<BlockQ6_K>("vec_dot_q6_k_f32", blocks, x)
}

/// Quantise `x` (a multiple of 256 values) to Q6_K with a simple round-to-nearest
/// quantiser: each sub-block's scale is max|x| / 31 rounded to 8 bits of the f16 `d`.
pub fn quantize_q6_k(x: &[f32]) -> Vec<u8> {
    super::check_quantize_len("quantize_q6_k", x.len(), QK_K);
    let mut out = Vec::with_capacity(x.len() / QK_K * std::mem::size_of::<BlockQ6_K>());
    for xs in x.chunks_exact(QK_K) {
        let sub_scale: [f32; 16] =
            std::array::from_fn(|s| xs[16 * s..16 * s + 16].iter().fold(0f32, |a, v| a.max(v.abs())) / 31.0);
        let d = f16::from_f32(sub_scale.iter().fold(0f32, |a, &v| a.max(v)) / 127.0);
        let mut b = BlockQ6_K { ql: [0; QK_K / 2], qh: [0; QK_K / 4], scales: [0; QK_K / 16], d };
        for (s, sub) in xs.chunks_exact(16).enumerate() {
            let sc = if d.to_f32() > 0.0 { (sub_scale[s] / d.to_f32()).round().clamp(0.0, 127.0) as i8 } else { 0 };
            b.scales[s] = sc;
            let step = d.to_f32() * sc as f32;
            for (k, &v) in sub.iter().enumerate() {
                let q = if step > 0.0 { (v / step).round().clamp(-32.0, 31.0) as i32 } else { 0 };
                let q = (q + 32) as u8;
                let (lb, ls, hb, hs) = position(16 * s + k);
                b.ql[lb] |= (q & 0xF) << ls;
                b.qh[hb] |= (q >> 4) << hs;
            }
        }
        out.extend_from_slice(bytemuck::bytes_of(&b));
    }
    out
}
