//! Q5_K: 256 weights in 8 sub-blocks of 32 like Q4_K (same scales and mins), with a
//! fifth quant bit per weight kept in `qh`: w = d*sc*q - dmin*m, q in 0..32.

use bytemuck::{Pod, Zeroable};
use half::f16;

use super::q4_k::{quantize_scale_min, scale_min_k4};
use super::{QuantBlock, QK_K};

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
pub struct BlockQ5_K {
    pub d: f16,
    pub dmin: f16,
    /// Eight 6-bit scales and mins, packed as in Q4_K.
    pub scales: [u8; 12],
    /// Bit j of byte l is the high bit of weight l of sub-block j.
    pub qh: [u8; QK_K / 8],
    /// Low 4 bits, laid out as Q4_K's quants.
    pub qs: [u8; QK_K / 2],
}

const _: () = assert!(std::mem::size_of::<BlockQ5_K>() == 176);

impl QuantBlock for BlockQ5_K {
    const LEN: usize = QK_K;

    fn dequantize(&self, out: &mut [f32]) {
        let (d, dmin) = (self.d.to_f32(), self.dmin.to_f32());
        for (j, y) in out.chunks_exact_mut(32).enumerate() {
            let (sc, m) = scale_min_k4(j, &self.scales);
            let (dj, mj) = (d * sc as f32, dmin * m as f32);
            let ql = &self.qs[32 * (j / 2)..32 * (j / 2) + 32];
            let shift = 4 * (j % 2);
            for (l, y) in y.iter_mut().enumerate() {
                let q = ((ql[l] >> shift) & 0xF) | (((self.qh[l] >> j) & 1) << 4);
                *y = dj * q as f32 - mj;
            }
        }
    }
}

/// Decode Q5_K blocks into `out` (256 values per 176-byte block).
pub fn dequantize_q5_k(blocks: &[u8], out: &mut [f32]) {
    super::dequantize_blocks::<BlockQ5_K>("dequantize_q5_k", blocks, out)
}

/// Reference dot product of a row of Q5_K blocks with `x` (256 values per block).
pub fn vec_dot_q5_k_f32(blocks: &[u8], x: &[f32]) -> f32 {
    super::vec_dot_blocks::<BlockQ5_K>("vec_dot_q5_k_f32", blocks, x)
}

/// Quantise `x` (a multiple of 256 values) to Q5_K with a simple round-to-nearest
/// quantiser (good enough for tests; not GGML's error-minimising search).
pub fn quantize_q5_k(x: &[f32]) -> Vec<u8> {
    super::check_quantize_len("quantize_q5_k", x.len(), QK_K);
    let mut out = Vec::with_capacity(x.len() / QK_K * std::mem::size_of::<BlockQ5_K>());
    for xs in x.chunks_exact(QK_K) {
        let s = quantize_scale_min(xs, 31);
        let mut b = BlockQ5_K { d: s.d, dmin: s.dmin, scales: s.scales, qh: [0; QK_K / 8], qs: [0; QK_K / 2] };
        for (i, &q) in s.q.iter().enumerate() {
            let (j, l) = (i / 32, i % 32);
            b.qs[32 * (j / 2) + l] |= (q & 0xF) << (4 * (j % 2));
            b.qh[l] |= (q >> 4) << j;
        }
        out.extend_from_slice(bytemuck::bytes_of(&b));
    }
    out
}
