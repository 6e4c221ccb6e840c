//! Q4_1: 32 weights per block, an f16 scale and an f16 minimum with 4-bit quants
//! (w = d * q + m). Block layout, dequantisation, reference dot product, quantiser.

use bytemuck::{Pod, Zeroable};
use half::f16;

use super::QuantBlock;

const QK: usize = 32;

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
pub struct BlockQ4_1 {
    pub d: f16,
    pub m: f16,
    /// Byte j holds weight j in its low nibble and weight j + 16 in its high nibble.
    pub qs: [u8; QK / 2],
}

const _: () = assert!(std::mem::size_of::<BlockQ4_1>() == 20);

impl QuantBlock for BlockQ4_1 {
    const LEN: usize = QK;

    fn dequantize(&self, out: &mut [f32]) {
        let (d, m) = (self.d.to_f32(), self.m.to_f32());
        let (lo, hi) = out.split_at_mut(QK / 2);
        for ((&q, l), h) in self.qs.iter().zip(lo).zip(hi) {
            *l = (q & 0xF) as f32 * d + m;
            *h = (q >> 4) as f32 * d + m;
        }
    }
}

/// Decode Q4_1 blocks into `out` (32 values per 20-byte block).
pub fn dequantize_q4_1(blocks: &[u8], out: &mut [f32]) {
    super::dequantize_blocks::<BlockQ4_1>("dequantize_q4_1", blocks, out)
}

/// Reference dot product of a row of Q4_1 blocks with `x` (32 values per block).
pub fn vec_dot_q4_1_f32(blocks: &[u8], x: &[f32]) -> f32 {
    super::vec_dot_blocks::<BlockQ4_1>("vec_dot_q4_1_f32", blocks, x)
}

/// Quantise `x` (a multiple of 32 values) to Q4_1 with round-to-nearest over each
/// block's [min, max] range, as in GGML's reference.
pub fn quantize_q4_1(x: &[f32]) -> Vec<u8> {
    super::check_quantize_len("quantize_q4_1", x.len(), QK);
    let mut out = Vec::with_capacity(x.len() / QK * std::mem::size_of::<BlockQ4_1>());
    for xs in x.chunks_exact(QK) {
        let (mut min, mut max) = (f32::MAX, -f32::MAX);
        for &v in xs {
            min = if v < min { v } else { min };
            max = if v > max { v } else { max };
        }
        let d = (max - min) / 15.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        let quant = |v: f32| (((v - min) * id + 0.5) as u8).min(15);
        let mut b = BlockQ4_1 { d: f16::from_f32(d), m: f16::from_f32(min), qs: [0; QK / 2] };
        for (j, q) in b.qs.iter_mut().enumerate() {
            *q = quant(xs[j]) | (quant(xs[j + QK / 2]) << 4);
        }
        out.extend_from_slice(bytemuck::bytes_of(&b));
    }
    out
}
