//! Q5_0: 32 weights per block, an f16 scale and 5-bit quants centred on 16
//! (w = d * (q - 16)): the low 4 bits as in Q4_0, the fifth bit of weight `w` in bit `w`
//! of `qh`. Block layout, dequantisation, reference dot product, quantiser.

use bytemuck::{Pod, Zeroable};
use half::f16;

use super::QuantBlock;

const QK: usize = 32;

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
pub struct BlockQ5_0 {
    pub d: f16,
    /// A little-endian u32 (bytes, so that the block stays 22 bytes): bit `w` is the
    /// fifth bit of weight `w`.
    pub qh: [u8; 4],
    /// Byte j holds the low 4 bits of weight j in its low nibble and of weight j + 16 in
    /// its high nibble.
    pub qs: [u8; QK / 2],
}

const _: () = assert!(std::mem::size_of::<BlockQ5_0>() == 22);

/// The 5-bit quant (0..32) of weight `w` (0..32) of a Q5_0 or Q5_1 block.
#[inline(always)]
pub(super) fn quant5(qs: &[u8; QK / 2], qh: u32, w: usize) -> u8 {
    let low = (qs[w % 16] >> (4 * (w / 16))) & 0xF;
    low | ((((qh >> w) & 1) as u8) << 4)
}

/// The inverse of [`quant5`]: 32 quants below 32 as `qs` and `qh`.
pub(super) fn pack_quant5(q: &[u8; QK]) -> ([u8; QK / 2], [u8; 4]) {
    let mut qs = [0u8; QK / 2];
    let mut qh = 0u32;
    for (w, &v) in q.iter().enumerate() {
        qs[w % 16] |= (v & 0xF) << (4 * (w / 16));
        qh |= ((v >> 4) as u32 & 1) << w;
    }
    (qs, qh.to_le_bytes())
}

impl QuantBlock for BlockQ5_0 {
    const LEN: usize = QK;

    fn dequantize(&self, out: &mut [f32]) {
        let d = self.d.to_f32();
        let qh = u32::from_le_bytes(self.qh);
        for (w, y) in out.iter_mut().enumerate() {
            *y = (quant5(&self.qs, qh, w) as i32 - 16) as f32 * d;
        }
    }
}

/// Decode Q5_0 blocks into `out` (32 values per 22-byte block).
pub fn dequantize_q5_0(blocks: &[u8], out: &mut [f32]) {
    super::dequantize_blocks::<BlockQ5_0>("dequantize_q5_0", blocks, out)
}

/// Reference dot product of a row of Q5_0 blocks with `x` (32 values per block).
pub fn vec_dot_q5_0_f32(blocks: &[u8], x: &[f32]) -> f32 {
    super::vec_dot_blocks::<BlockQ5_0>("vec_dot_q5_0_f32", blocks, x)
}

/// Quantise `x` (a multiple of 32 values) to Q5_0 with round-to-nearest: the value of
/// largest magnitude in each block maps to quant 0 (i.e. -16 x d), as in GGML's reference.
pub fn quantize_q5_0(x: &[f32]) -> Vec<u8> {
    super::check_quantize_len("quantize_q5_0", x.len(), QK);
    let mut out = Vec::with_capacity(x.len() / QK * std::mem::size_of::<BlockQ5_0>());
    for xs in x.chunks_exact(QK) {
        let (mut amax, mut max) = (0f32, 0f32);
        for &v in xs {
            if v.abs() > amax {
                amax = v.abs();
                max = v;
            }
        }
        let d = max / -16.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        // |x id| <= 16, so x id + 16.5 >= 0.5 and truncating rounds to the nearest quant
        // (halves up); +16 (the other sign's extreme) clips to 31.
        let q: [u8; QK] = std::array::from_fn(|w| ((xs[w] * id + 16.5) as u8).min(31));
        let (qs, qh) = pack_quant5(&q);
        out.extend_from_slice(bytemuck::bytes_of(&BlockQ5_0 { d: f16::from_f32(d), qh, qs }));
    }
    out
}
