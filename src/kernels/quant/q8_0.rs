//! Q8_0: 32 weights per block, an f16 scale and signed 8-bit quants (w = d * q).
//! Block layout, dequantisation, reference dot product, quantiser.

use bytemuck::{Pod, Zeroable};
use half::f16;

use super::QuantBlock;

const QK: usize = 32;

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
pub struct BlockQ8_0 {
    pub d: f16,
    pub qs: [i8; QK],
}

const _: () = assert!(std::mem::size_of::<BlockQ8_0>() == 34);

impl QuantBlock for BlockQ8_0 {
    const LEN: usize = QK;

    fn dequantize(&self, out: &mut [f32]) {
        let d = self.d.to_f32();
        for (&q, y) in self.qs.iter().zip(out) {
            *y = q as f32 * d;
        }
    }
}

/// Decode Q8_0 blocks into `out` (32 values per 34-byte block).
pub fn dequantize_q8_0(blocks: &[u8], out: &mut [f32]) {
    super::dequantize_blocks::<BlockQ8_0>("dequantize_q8_0", blocks, out)
}

/// Reference dot product of a row of Q8_0 blocks with `x` (32 values per block).
pub fn vec_dot_q8_0_f32(blocks: &[u8], x: &[f32]) -> f32 {
    super::vec_dot_blocks::<BlockQ8_0>("vec_dot_q8_0_f32", blocks, x)
}

/// Quantise `x` (a multiple of 32 values) to Q8_0: d = max|x| / 127 and each quant is
/// x / d rounded half away from zero, as in GGML's reference.
pub fn quantize_q8_0(x: &[f32]) -> Vec<u8> {
    super::check_quantize_len("quantize_q8_0", x.len(), QK);
    let mut out = Vec::with_capacity(x.len() / QK * std::mem::size_of::<BlockQ8_0>());
    for xs in x.chunks_exact(QK) {
        let amax = xs.iter().fold(0f32, |a, v| a.max(v.abs()));
        let d = amax / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        let mut b = BlockQ8_0 { d: f16::from_f32(d), qs: [0; QK] };
        for (q, &v) in b.qs.iter_mut().zip(xs) {
            *q = (v * id).round() as i8;
        }
        out.extend_from_slice(bytemuck::bytes_of(&b));
    }
    out
}
