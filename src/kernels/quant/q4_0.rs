//! Q4_0: 32 weights per block, an f16 scale and 4-bit quants centred on 8
//! (w = d * (q - 8)). Block layout, dequantisation, reference dot product, quantiser.

use bytemuck::{Pod, Zeroable};
use half::f16;

use super::QuantBlock;

const QK: usize = 32;

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
pub struct BlockQ4_0 {
    pub d: f16,
    /// Byte j holds weight j in its low nibble and weight j + 16 in its high nibble.
    pub qs: [u8; QK / 2],
}

const _: () = assert!(std::mem::size_of::<BlockQ4_0>() == 18);

impl QuantBlock for BlockQ4_0 {
    const LEN: usize = QK;

    fn dequantize(&self, out: &mut [f32]) {
        let d = self.d.to_f32();
        let (lo, hi) = out.split_at_mut(QK / 2);
        for ((&q, l), h) in self.qs.iter().zip(lo).zip(hi) {
            *l = ((q & 0xF) as i32 - 8) as f32 * d;
            *h = ((q >> 4) as i32 - 8) as f32 * d;
        }
    }
}

/// Decode Q4_0 blocks into `out` (32 values per 18-byte block).
pub fn dequantize_q4_0(blocks: &[u8], out: &mut [f32]) {
    super::dequantize_blocks::<BlockQ4_0>("dequantize_q4_0", blocks, out)
}

/// Reference dot product of a row of Q4_0 blocks with `x` (32 values per block).
pub fn vec_dot_q4_0_f32(blocks: &[u8], x: &[f32]) -> f32 {
    super::vec_dot_blocks::<BlockQ4_0>("vec_dot_q4_0_f32", blocks, x)
}

/// Quantise `x` (a multiple of 32 values) to Q4_0 with round-to-nearest: the value of
/// largest magnitude in each block maps to quant 0 (i.e. -8 x d), as in GGML's reference.
pub fn quantize_q4_0(x: &[f32]) -> Vec<u8> {
    super::check_quantize_len("quantize_q4_0", x.len(), QK);
    let mut out = Vec::with_capacity(x.len() / QK * std::mem::size_of::<BlockQ4_0>());
    for xs in x.chunks_exact(QK) {
        let (mut amax, mut max) = (0f32, 0f32);
        for &v in xs {
            if v.abs() > amax {
                amax = v.abs();
                max = v;
            }
        }
        let d = max / -8.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        let quant = |v: f32| ((v * id + 8.5) as u8).min(15);
        let mut b = BlockQ4_0 { d: f16::from_f32(d), qs: [0; QK / 2] };
        for (j, q) in b.qs.iter_mut().enumerate() {
            *q = quant(xs[j]) | (quant(xs[j + QK / 2]) << 4);
        }
        out.extend_from_slice(bytemuck::bytes_of(&b));
    }
    out
}
