//! Unit tests of the block formats: quantise/dequantise round trips, the reference dot
//! products against a naive f64 dot, and the unaligned read path.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::*;

type Quantize = fn(&[f32]) -> Vec<u8>;
type Dequantize = fn(&[u8], &mut [f32]);
type VecDot = fn(&[u8], &[f32]) -> f32;

/// (name, weights per block, bytes per block, quantiser, dequantiser, dot, worst error
/// relative to the block's largest magnitude: half a step, or for Q4_0 and Q5_0 a whole
/// step since +max|x| clips to 7/8 (15/16) of it; plus the f16 rounding of the scales).
const FORMATS: [(&str, usize, usize, Quantize, Dequantize, VecDot, f32); 8] = [
    ("q4_0", 32, 18, quantize_q4_0, dequantize_q4_0, vec_dot_q4_0_f32, 1.0 / 8.0 + 1e-3),
    ("q4_1", 32, 20, quantize_q4_1, dequantize_q4_1, vec_dot_q4_1_f32, 1.0 / 15.0 + 1e-3),
    ("q5_0", 32, 22, quantize_q5_0, dequantize_q5_0, vec_dot_q5_0_f32, 1.0 / 16.0 + 1e-3),
    ("q5_1", 32, 24, quantize_q5_1, dequantize_q5_1, vec_dot_q5_1_f32, 1.0 / 31.0 + 2e-3),
    ("q8_0", 32, 34, quantize_q8_0, dequantize_q8_0, vec_dot_q8_0_f32, 1.0 / 254.0 + 1e-3),
    ("q4_k", 256, 144, quantize_q4_k, dequantize_q4_k, vec_dot_q4_k_f32, 0.15),
    ("q5_k", 256, 176, quantize_q5_k, dequantize_q5_k, vec_dot_q5_k_f32, 0.08),
    ("q6_k", 256, 210, quantize_q6_k, dequantize_q6_k, vec_dot_q6_k_f32, 0.04),
];

fn random_values(rng: &mut StdRng, n: usize) -> Vec<f32> {
    // blocks of very different magnitudes, some all-positive, some with zeros
    (0..n)
        .map(|i| {
            let scale = 10f32.powi((i / 32 % 7) as i32 - 3);
            let v: f32 = rng.random_range(-1.0..1.0) * scale;
            if i / 64 % 5 == 3 {
                v.abs()
            } else if i % 37 == 0 {
                0.0
            } else {
                v
            }
        })
        .collect()
}

#[test]
fn quantise_dequantise_round_trip_is_close() {
    let mut rng = StdRng::seed_from_u64(7);
    for (name, bl, bb, quantize, dequantize, _, tol) in FORMATS {
        let x = random_values(&mut rng, bl * 9);
        let q = quantize(&x);
        assert_eq!(q.len(), 9 * bb, "{name}");
        let mut y = vec![f32::NAN; x.len()];
        dequantize(&q, &mut y);
        for (b, (xs, ys)) in x.chunks(bl).zip(y.chunks(bl)).enumerate() {
            let amax = xs.iter().fold(0f32, |a, v| a.max(v.abs()));
            // GGML's 32-weight formats quantise against the f32 scale but store it as f16,
            // whose subnormal spacing (2^-24) adds up to 127 half-spacings for tiny blocks
            let f16_slack = 127.0 * 2f32.powi(-25);
            for (i, (a, b2)) in xs.iter().zip(ys).enumerate() {
                assert!(
                    (a - b2).abs() <= tol * amax + f16_slack,
                    "{name} block {b} value {i}: {a} became {b2} (max {amax})"
                );
            }
        }
    }
}

#[test]
fn zero_blocks_dequantise_to_zero() {
    for (name, bl, _, quantize, dequantize, dot, _) in FORMATS {
        let q = quantize(&vec![0.0; 2 * bl]);
        let mut y = vec![1.0; 2 * bl];
        dequantize(&q, &mut y);
        assert!(y.iter().all(|&v| v == 0.0), "{name}");
        assert_eq!(dot(&q, &vec![1.0; 2 * bl]), 0.0, "{name}");
    }
}

#[test]
fn reference_dot_matches_naive_dot_of_dequantised_values() {
    let mut rng = StdRng::seed_from_u64(11);
    for (name, bl, _, quantize, dequantize, dot, _) in FORMATS {
        for n_blocks in [1, 3, 8] {
            let w = quantize(&random_values(&mut rng, bl * n_blocks));
            let x: Vec<f32> = (0..bl * n_blocks).map(|_| rng.random_range(-2.0..2.0)).collect();
            let mut wf = vec![0.0; x.len()];
            dequantize(&w, &mut wf);
            let want: f64 = wf.iter().zip(&x).map(|(&a, &b)| a as f64 * b as f64).sum();
            let scale: f64 = wf.iter().zip(&x).map(|(&a, &b)| (a as f64 * b as f64).abs()).sum();
            let got = dot(&w, &x) as f64;
            assert!((got - want).abs() <= 1e-5 * scale + 1e-30, "{name} x{n_blocks}: {got} vs {want}");
        }
    }
}

#[test]
fn unaligned_bytes_decode_like_aligned_ones() {
    let mut rng = StdRng::seed_from_u64(3);
    for (name, bl, _, quantize, dequantize, dot, _) in FORMATS {
        let x = random_values(&mut rng, bl * 4);
        let q = quantize(&x);
        let mut shifted = vec![0u8; q.len() + 1];
        shifted[1..].copy_from_slice(&q);
        let (mut a, mut b) = (vec![0.0; x.len()], vec![0.0; x.len()]);
        dequantize(&q, &mut a);
        dequantize(&shifted[1..], &mut b);
        assert_eq!(a, b, "{name}");
        assert_eq!(dot(&q, &x), dot(&shifted[1..], &x), "{name}");
    }
}

#[test]
fn q8_0_keeps_integer_multiples_exactly() {
    // with max |x| = 127 the scale is 1.0 and every integer is a quant
    let x: Vec<f32> = (0..64).map(|i| ((i * 37) % 255) as f32 - 127.0).collect();
    let q = quantize_q8_0(&x);
    let mut y = vec![0.0; 64];
    dequantize_q8_0(&q, &mut y);
    assert_eq!(x, y);
}

#[test]
fn the_formats_table_is_weight_format_s() {
    for (fmt, (name, bl, bb, quantize, dequantize, dot, _)) in WeightFormat::ALL.into_iter().zip(FORMATS) {
        assert_eq!((fmt.block_len(), fmt.block_bytes()), (bl, bb), "{name}");
        assert_eq!(format!("{fmt:?}").to_lowercase(), name);
        let x: Vec<f32> = (0..2 * bl).map(|i| (i as f32 * 0.37).sin()).collect();
        let q = quantize(&x);
        assert_eq!(fmt.quantize(&x), q, "{name}");
        let (mut a, mut b) = (vec![0.0; x.len()], vec![0.0; x.len()]);
        dequantize(&q, &mut a);
        fmt.dequantize(&q, &mut b);
        assert_eq!(a, b, "{name}");
        assert_eq!(dot(&q, &x), fmt.vec_dot_f32(&q, &x), "{name}");
    }
}

#[test]
fn q5_bits_follow_ggml() {
    // Weight w's fifth bit is bit w of qh (little endian); low nibbles as in Q4_0.
    let mut blk = [0u8; 22];
    blk[..2].copy_from_slice(&half::f16::from_f32(1.0).to_le_bytes());
    blk[2..6].copy_from_slice(&0x8001_0002u32.to_le_bytes()); // weights 1, 16, 31
    blk[6] = 0x3F; // weight 0: 15, weight 16: 3
    blk[21] = 0xA0; // weight 15: 0, weight 31: 10
    let mut y = [0f32; 32];
    dequantize_q5_0(&blk, &mut y);
    assert_eq!((y[0], y[1], y[15], y[16], y[31], y[2]), (-1.0, 0.0, -16.0, 3.0, 10.0, -16.0));
}

#[test]
fn k_scale_packing_round_trips() {
    let sc = [0, 63, 17, 42, 1, 62, 33, 16];
    let m = [63, 0, 5, 48, 31, 32, 15, 47];
    let s = super::q4_k::pack_scale_min_k4(&sc, &m);
    for j in 0..8 {
        assert_eq!(super::q4_k::scale_min_k4(j, &s), (sc[j], m[j]), "sub-block {j}");
    }
}

#[test]
#[should_panic(expected = "not a whole number")]
fn partial_blocks_are_a_caller_bug() {
    let mut out = vec![0.0; 32];
    dequantize_q4_0(&[0u8; 17], &mut out);
}
