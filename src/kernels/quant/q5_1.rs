//! Q5_1: 32 weights per block, an f16 scale and an f16 minimum with 5-bit quants
//! (w = d * q + m), the bits laid out as in Q5_0. Block layout, dequantisation, reference
//! dot product, quantiser.

use bytemuck::{Pod, Zeroable};
use half::f16;

use super::q5_0::{pack_quant5, quant5};
use super::QuantBlock;

const QK: usize = 32;

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
pub struct BlockQ5_1 {
    pub d: f16,
    pub m: f16,
    /// A little-endian u32: bit `w` is the fifth bit of weight `w`.
    pub qh: [u8; 4],
    /// Low 4 bits of weights j (low nibble) and j + 16 (high nibble) in byte j.
    pub qs: [u8; QK / 2],
}

const _: () = assert!(std::mem::size_of::<BlockQ5_1>() == 24);

impl QuantBlock for BlockQ5_1 {
    const LEN: usize = QK;

    fn dequantize(&self, out: &mut [f32]) {
        let (d, m) = (self.d.to_f32(), self.m.to_f32());
        let qh = u32::from_le_bytes(self.qh);
        for (w, y) in out.iter_mut().enumerate() {
            *y = quant5(&self.qs, qh, w) as f32 * d + m;
        }
    }
}

/// Decode Q5_1 blocks into `out` (32 values per 24-byte block).
pub fn dequantize_q5_1(blocks: &[u8], out: &mut [f32]) {
    super::dequantize_blocks::<BlockQ5_1>("dequantize_q5_1", blocks, out)
}

/// Reference dot product of a row of Q5_1 blocks with `x` (32 values per block).
pub fn vec_dot_q5_1_f32(blocks: &[u8], x: &[f32]) -> f32 {
    super::vec_dot_blocks::<BlockQ5_1>("vec_dot_q5_1_f32", blocks, x)
}

/// Quantise `x` (a multiple of 32 values) to Q5_1 with round-to-nearest over each
/// block's [min, max] range, as in GGML's reference.
pub fn quantize_q5_1(x: &[f32]) -> Vec<u8> {
    super::check_quantize_len("quantize_q5_1", x.len(), QK);
    let mut out = Vec::with_capacity(x.len() / QK * std::mem::size_of::<BlockQ5_1>());
    for xs in x.chunks_exact(QK) {
        let (mut min, mut max) = (f32::MAX, -f32::MAX);
        for &v in xs {
            min = if v < min { v } else { min };
            max = if v > max { v } else { max };
        }
        let d = (max - min) / 31.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        let q: [u8; QK] = std::array::from_fn(|w| (((xs[w] - min) * id + 0.5) as u8).min(31));
        let (qs, qh) = pack_quant5(&q);
        out.extend_from_slice(bytemuck::bytes_of(&BlockQ5_1 { d: f16::from_f32(d), m: f16::from_f32(min), qh, qs }));
    }
    out
}
