//! Scalar reference dot products of weight blocks with quantised activations: Q4_0,
//! Q4_1, Q5_0, Q5_1, Q8_0 against [`Q8Row`] and the K-quants against [`BlockQ8_K`]. Integer parts are
//! exact (i32); the SIMD kernels are tested against these. No `unsafe` here.

use super::q4_k::scale_min_k4;
use super::q5_0::quant5;
use super::q8::{BlockQ8_K, Q8Row, QK8};
use super::{
    for_each_block, BlockQ4_0, BlockQ4_1, BlockQ4_K, BlockQ5_0, BlockQ5_1, BlockQ5_K, BlockQ6_K, BlockQ8_0, QuantBlock,
    QK_K,
};

fn check<B: QuantBlock>(op: &str, w: &[u8], values: usize) {
    let n = super::block_count::<B>(op, w);
    assert_eq!(n * B::LEN, values, "{op}: {n} weight blocks for {values} activations");
}

/// Σ_b d_w d_x Σ (q - 8) x over a row of Q4_0 blocks.
pub fn vec_dot_q4_0_q8(w: &[u8], x: Q8Row<'_>) -> f32 {
    check::<BlockQ4_0>("vec_dot_q4_0_q8", w, x.qs.len());
    let mut sum = 0f32;
    for_each_block::<BlockQ4_0>(w, |b, blk| {
        let xs = &x.qs[b * QK8..(b + 1) * QK8];
        let mut dot = 0i32;
        for (j, &q) in blk.qs.iter().enumerate() {
            dot += ((q & 0xF) as i32 - 8) * xs[j] as i32 + ((q >> 4) as i32 - 8) * xs[j + 16] as i32;
        }
        sum += blk.d.to_f32() * x.scale(b) * dot as f32;
    });
    sum
}

/// Σ_b (d_w d_x Σ q x + m_w d_x Σ x) over a row of Q4_1 blocks.
pub fn vec_dot_q4_1_q8(w: &[u8], x: Q8Row<'_>) -> f32 {
    check::<BlockQ4_1>("vec_dot_q4_1_q8", w, x.qs.len());
    let mut sum = 0f32;
    for_each_block::<BlockQ4_1>(w, |b, blk| {
        let xs = &x.qs[b * QK8..(b + 1) * QK8];
        let mut dot = 0i32;
        for (j, &q) in blk.qs.iter().enumerate() {
            dot += (q & 0xF) as i32 * xs[j] as i32 + (q >> 4) as i32 * xs[j + 16] as i32;
        }
        sum += blk.d.to_f32() * x.scale(b) * dot as f32 + blk.m.to_f32() * x.sum(b);
    });
    sum
}

/// Σ_b d_w d_x Σ (q - 16) x over a row of Q5_0 blocks.
pub fn vec_dot_q5_0_q8(w: &[u8], x: Q8Row<'_>) -> f32 {
    check::<BlockQ5_0>("vec_dot_q5_0_q8", w, x.qs.len());
    let mut sum = 0f32;
    for_each_block::<BlockQ5_0>(w, |b, blk| {
        let xs = &x.qs[b * QK8..(b + 1) * QK8];
        let qh = u32::from_le_bytes(blk.qh);
        let dot: i32 = xs.iter().enumerate().map(|(j, &xv)| (quant5(&blk.qs, qh, j) as i32 - 16) * xv as i32).sum();
        sum += blk.d.to_f32() * x.scale(b) * dot as f32;
    });
    sum
}

/// Σ_b (d_w d_x Σ q x + m_w d_x Σ x) over a row of Q5_1 blocks.
pub fn vec_dot_q5_1_q8(w: &[u8], x: Q8Row<'_>) -> f32 {
    check::<BlockQ5_1>("vec_dot_q5_1_q8", w, x.qs.len());
    let mut sum = 0f32;
    for_each_block::<BlockQ5_1>(w, |b, blk| {
        let xs = &x.qs[b * QK8..(b + 1) * QK8];
        let qh = u32::from_le_bytes(blk.qh);
        let dot: i32 = xs.iter().enumerate().map(|(j, &xv)| quant5(&blk.qs, qh, j) as i32 * xv as i32).sum();
        sum += blk.d.to_f32() * x.scale(b) * dot as f32 + blk.m.to_f32() * x.sum(b);
    });
    sum
}

/// Σ_b d_w d_x Σ q x over a row of Q8_0 blocks.
pub fn vec_dot_q8_0_q8(w: &[u8], x: Q8Row<'_>) -> f32 {
    check::<BlockQ8_0>("vec_dot_q8_0_q8", w, x.qs.len());
    let mut sum = 0f32;
    for_each_block::<BlockQ8_0>(w, |b, blk| {
        let xs = &x.qs[b * QK8..(b + 1) * QK8];
        let dot: i32 = blk.qs.iter().zip(xs).map(|(&a, &b)| a as i32 * b as i32).sum();
        sum += blk.d.to_f32() * x.scale(b) * dot as f32;
    });
    sum
}

/// Σ over sub-blocks j of d·sc_j·Σ q x − dmin·m_j·Σ x, times the activation scale (Q4_K).
pub fn vec_dot_q4_k_q8_k(w: &[u8], x: &[BlockQ8_K]) -> f32 {
    check::<BlockQ4_K>("vec_dot_q4_k_q8_k", w, x.len() * QK_K);
    let mut sum = 0f32;
    for_each_block::<BlockQ4_K>(w, |b, blk| {
        let xb = &x[b];
        let (mut sumi, mut summ) = (0i32, 0i32);
        for j in 0..8 {
            let (sc, m) = scale_min_k4(j, &blk.scales);
            let ql = &blk.qs[32 * (j / 2)..32 * (j / 2) + 32];
            let shift = 4 * (j % 2);
            let dot: i32 = (0..32).map(|l| ((ql[l] >> shift) & 0xF) as i32 * xb.qs[32 * j + l] as i32).sum();
            sumi += sc as i32 * dot;
            summ += m as i32 * (xb.bsums[2 * j] as i32 + xb.bsums[2 * j + 1] as i32);
        }
        sum += xb.d * (blk.d.to_f32() * sumi as f32 - blk.dmin.to_f32() * summ as f32);
    });
    sum
}

/// As [`vec_dot_q4_k_q8_k`] with the fifth quant bit from `qh` (Q5_K).
pub fn vec_dot_q5_k_q8_k(w: &[u8], x: &[BlockQ8_K]) -> f32 {
    check::<BlockQ5_K>("vec_dot_q5_k_q8_k", w, x.len() * QK_K);
    let mut sum = 0f32;
    for_each_block::<BlockQ5_K>(w, |b, blk| {
        let xb = &x[b];
        let (mut sumi, mut summ) = (0i32, 0i32);
        for j in 0..8 {
            let (sc, m) = scale_min_k4(j, &blk.scales);
            let ql = &blk.qs[32 * (j / 2)..32 * (j / 2) + 32];
            let shift = 4 * (j % 2);
            let dot: i32 = (0..32)
                .map(|l| {
                    let q = ((ql[l] >> shift) & 0xF) | (((blk.qh[l] >> j) & 1) << 4);
                    q as i32 * xb.qs[32 * j + l] as i32
                })
                .sum();
            sumi += sc as i32 * dot;
            summ += m as i32 * (xb.bsums[2 * j] as i32 + xb.bsums[2 * j + 1] as i32);
        }
        sum += xb.d * (blk.d.to_f32() * sumi as f32 - blk.dmin.to_f32() * summ as f32);
    });
    sum
}

/// Σ over 16-value sub-blocks s of sc_s·Σ (q − 32) x, times d and the activation scale (Q6_K).
pub fn vec_dot_q6_k_q8_k(w: &[u8], x: &[BlockQ8_K]) -> f32 {
    check::<BlockQ6_K>("vec_dot_q6_k_q8_k", w, x.len() * QK_K);
    let mut sum = 0f32;
    for_each_block::<BlockQ6_K>(w, |b, blk| {
        let xb = &x[b];
        let mut sumi = 0i32;
        for s in 0..16 {
            let dot: i32 = (0..16)
                .map(|k| {
                    let i = 16 * s + k;
                    let (lb, ls, hb, hs) = super::q6_k::position(i);
                    let q = ((blk.ql[lb] >> ls) & 0xF) | (((blk.qh[hb] >> hs) & 3) << 4);
                    (q as i32 - 32) * xb.qs[i] as i32
                })
                .sum();
            sumi += blk.scales[s] as i32 * dot;
        }
        sum += xb.d * blk.d.to_f32() * sumi as f32;
    });
    sum
}
