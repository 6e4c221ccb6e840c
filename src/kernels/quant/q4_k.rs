//! Q4_K: 256 weights in 8 sub-blocks of 32; each sub-block has a 6-bit scale and a
//! 6-bit min (packed in 12 bytes) applied to f16 super-scales: w = d*sc*q - dmin*m.
//! Also the scale packing and the simple quantiser shared with Q5_K.

use bytemuck::{Pod, Zeroable};
use half::f16;

use super::{QuantBlock, QK_K};

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
pub struct BlockQ4_K {
    pub d: f16,
    pub dmin: f16,
    /// Eight 6-bit scales and eight 6-bit mins (see [`scale_min_k4`]).
    pub scales: [u8; 12],
    /// 32-byte group g holds sub-block 2g in its low nibbles and 2g + 1 in its high ones.
    pub qs: [u8; QK_K / 2],
}

const _: () = assert!(std::mem::size_of::<BlockQ4_K>() == 144);

/// Scale and min of sub-block `j` (0..8): bytes 0..4 hold the scales of 0..4 in their
/// low 6 bits, bytes 4..8 the mins; sub-blocks 4..8 keep their low 4 bits in bytes 8..12
/// (scale low, min high) and their top 2 bits in the top bits of bytes 0..8.
pub(super) fn scale_min_k4(j: usize, s: &[u8; 12]) -> (u8, u8) {
    if j < 4 {
        (s[j] & 63, s[j + 4] & 63)
    } else {
        ((s[j + 4] & 0xF) | ((s[j - 4] >> 6) << 4), (s[j + 4] >> 4) | ((s[j] >> 6) << 4))
    }
}

/// The inverse of [`scale_min_k4`] for eight scales and mins below 64.
pub(super) fn pack_scale_min_k4(sc: &[u8; 8], m: &[u8; 8]) -> [u8; 12] {
    let mut s = [0u8; 12];
    for j in 0..4 {
        s[j] = sc[j] | ((sc[j + 4] >> 4) << 6);
        s[j + 4] = m[j] | ((m[j + 4] >> 4) << 6);
        s[j + 8] = (sc[j + 4] & 0xF) | ((m[j + 4] & 0xF) << 4);
    }
    s
}

impl QuantBlock for BlockQ4_K {
    const LEN: usize = QK_K;

    fn dequantize(&self, out: &mut [f32]) {
        let (d, dmin) = (self.d.to_f32(), self.dmin.to_f32());
        for (g, (q, y)) in self.qs.chunks_exact(32).zip(out.chunks_exact_mut(64)).enumerate() {
            let (sc0, m0) = scale_min_k4(2 * g, &self.scales);
            let (sc1, m1) = scale_min_k4(2 * g + 1, &self.scales);
            let (d0, m0) = (d * sc0 as f32, dmin * m0 as f32);
            let (d1, m1) = (d * sc1 as f32, dmin * m1 as f32);
            let (lo, hi) = y.split_at_mut(32);
            for ((&q, l), h) in q.iter().zip(lo).zip(hi) {
                *l = d0 * (q & 0xF) as f32 - m0;
                *h = d1 * (q >> 4) as f32 - m1;
            }
        }
    }
}

/// Decode Q4_K blocks into `out` (256 values per 144-byte block).
pub fn dequantize_q4_k(blocks: &[u8], out: &mut [f32]) {
    super::dequantize_blocks::<BlockQ4_K>("dequantize_q4_k", blocks, out)
}

/// Reference dot product of a row of Q4_K blocks with `x` (256 values per block).
pub fn vec_dot_q4_k_f32(blocks: &[u8], x: &[f32]) -> f32 {
    super::vec_dot_blocks::<BlockQ4_K>("vec_dot_q4_k_f32", blocks, x)
}

/// A 256-value super-block quantised with per-32 scales and mins (Q4_K, Q5_K).
pub(super) struct ScaleMinBlock {
    pub d: f16,
    pub dmin: f16,
    pub scales: [u8; 12],
    /// One quant per value, in 0..=`nmax`.
    pub q: [u8; QK_K],
}

/// A simple (not error-minimising) quantiser: each sub-block spans [min(0, lo), hi]
/// with `nmax + 1` levels; scales and mins are rounded to 6 bits of the f16
/// super-scales, and the quants are rounded against the rounded scales.
pub(super) fn quantize_scale_min(xs: &[f32], nmax: u8) -> ScaleMinBlock {
    let mut scale = [0f32; 8];
    let mut neg_min = [0f32; 8];
    for (j, sub) in xs.chunks_exact(32).enumerate() {
        let lo = sub.iter().fold(0f32, |a, &v| a.min(v));
        let hi = sub.iter().fold(lo, |a, &v| a.max(v));
        scale[j] = (hi - lo) / nmax as f32;
        neg_min[j] = -lo;
    }
    let d = f16::from_f32(scale.iter().fold(0f32, |a, &v| a.max(v)) / 63.0);
    let dmin = f16::from_f32(neg_min.iter().fold(0f32, |a, &v| a.max(v)) / 63.0);
    let to_6bit = |v: f32, unit: f32| if unit > 0.0 { (v / unit).round().clamp(0.0, 63.0) as u8 } else { 0 };
    let sc: [u8; 8] = std::array::from_fn(|j| to_6bit(scale[j], d.to_f32()));
    let m: [u8; 8] = std::array::from_fn(|j| to_6bit(neg_min[j], dmin.to_f32()));
    let mut q = [0u8; QK_K];
    for (j, (sub, qs)) in xs.chunks_exact(32).zip(q.chunks_exact_mut(32)).enumerate() {
        let step = d.to_f32() * sc[j] as f32;
        let offset = dmin.to_f32() * m[j] as f32;
        for (q, &v) in qs.iter_mut().zip(sub) {
            *q = if step > 0.0 { ((v + offset) / step).round().clamp(0.0, nmax as f32) as u8 } else { 0 };
        }
    }
    ScaleMinBlock { d, dmin, scales: pack_scale_min_k4(&sc, &m), q }
}

/// Quantise `x` (a multiple of 256 values) to Q4_K with a simple round-to-nearest
/// quantiser (good enough for tests; not GGML's error-minimising search).
pub fn quantize_q4_k(x: &[f32]) -> Vec<u8> {
    super::check_quantize_len("quantize_q4_k", x.len(), QK_K);
    let mut out = Vec::with_capacity(x.len() / QK_K * std::mem::size_of::<BlockQ4_K>());
    for xs in x.chunks_exact(QK_K) {
        let s = quantize_scale_min(xs, 15);
        let mut b = BlockQ4_K { d: s.d, dmin: s.dmin, scales: s.scales, qs: [0; QK_K / 2] };
        for (g, qs) in b.qs.chunks_exact_mut(32).enumerate() {
            for (l, byte) in qs.iter_mut().enumerate() {
                *byte = s.q[64 * g + l] | (s.q[64 * g + 32 + l] << 4);
            }
        }
        out.extend_from_slice(bytemuck::bytes_of(&b));
    }
    out
}
