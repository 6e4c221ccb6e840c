//! Our block formats against the `gguf` Python package (an independent implementation):
//! fixtures in tests/fixtures/quant/ made by scripts/make_quant_fixtures.py.

use mllm::kernels::quant::*;
use mllm::{DType, MemType, Tensor};

fn fixture(name: &str) -> Vec<u8> {
    let path = format!("{}/tests/fixtures/quant/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn f32s(bytes: &[u8]) -> Vec<f32> {
    bytes.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect()
}

type Dequantize = fn(&[u8], &mut [f32]);

const FORMATS: [(&str, DType, Dequantize); 6] = [
    ("q4_0", DType::Q4_0, dequantize_q4_0),
    ("q4_1", DType::Q4_1, dequantize_q4_1),
    ("q8_0", DType::Q8_0, dequantize_q8_0),
    ("q4_k", DType::Q4_K, dequantize_q4_k),
    ("q5_k", DType::Q5_K, dequantize_q5_k),
    ("q6_k", DType::Q6_K, dequantize_q6_k),
];

fn assert_bitwise(name: &str, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{name}: length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(g.to_bits() == w.to_bits(), "{name}: value {i}: got {g}, gguf gives {w}");
    }
}

#[test]
fn dequantisation_matches_gguf_python_bitwise() {
    for (name, dtype, dequantize) in FORMATS {
        let blocks = fixture(&format!("{name}.blocks"));
        let want = f32s(&fixture(&format!("{name}.f32")));
        let mut got = vec![f32::NAN; want.len()];
        dequantize(&blocks, &mut got);
        assert_bitwise(name, &got, &want);

        // the same through the tensor layer: shape [rows, cols] with whole blocks per row
        let cols = 2 * dtype.block_len();
        let t = Tensor::from_bytes(&blocks, dtype, &[want.len() / cols, cols], MemType::Normal).unwrap();
        assert_bitwise(name, &t.to_f32_vec().unwrap(), &want);
    }
}

#[test]
fn reference_dot_products_agree_with_fixture_values() {
    type VecDot = fn(&[u8], &[f32]) -> f32;
    let dots: [VecDot; 6] =
        [vec_dot_q4_0_f32, vec_dot_q4_1_f32, vec_dot_q8_0_f32, vec_dot_q4_k_f32, vec_dot_q5_k_f32, vec_dot_q6_k_f32];
    for ((name, _, _), dot) in FORMATS.into_iter().zip(dots) {
        let blocks = fixture(&format!("{name}.blocks"));
        let w = f32s(&fixture(&format!("{name}.f32")));
        let x: Vec<f32> = (0..w.len()).map(|i| ((i * 7919 % 1000) as f32 - 500.0) / 250.0).collect();
        let want: f64 = w.iter().zip(&x).map(|(&a, &b)| a as f64 * b as f64).sum();
        let scale: f64 = w.iter().zip(&x).map(|(&a, &b)| (a as f64 * b as f64).abs()).sum();
        let got = dot(&blocks, &x) as f64;
        assert!((got - want).abs() <= 1e-5 * scale, "{name}: {got} vs {want}");
    }
}

#[test]
fn quantisers_match_ggml_reference_rounding_bitwise() {
    type Quantize = fn(&[f32]) -> Vec<u8>;
    let quantizers: [(&str, Quantize); 3] = [("q4_0", quantize_q4_0), ("q4_1", quantize_q4_1), ("q8_0", quantize_q8_0)];
    for (name, quantize) in quantizers {
        let x = f32s(&fixture(&format!("quant_{name}.f32")));
        let want = fixture(&format!("quant_{name}.blocks"));
        let got = quantize(&x);
        assert_eq!(got.len(), want.len(), "{name}");
        if let Some(i) = got.iter().zip(&want).position(|(a, b)| a != b) {
            panic!(
                "{name}: byte {i} (block {}) is {} but gguf gives {}",
                i / (want.len() / (x.len() / 32)),
                got[i],
                want[i]
            );
        }
    }
}

#[test]
fn partial_quantised_blocks_are_an_error_not_a_panic() {
    let t = Tensor::from_bytes(&[0u8; 34], DType::Q8_0, &[32], MemType::Normal).unwrap();
    assert_eq!(t.to_f32_vec().unwrap(), vec![0.0; 32]);
    assert!(Tensor::from_bytes(&[0u8; 33], DType::Q8_0, &[32], MemType::Normal).is_err());
}
