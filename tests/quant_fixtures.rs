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
type VecDot = fn(&[u8], &[f32]) -> f32;

const FORMATS: [(&str, DType, Dequantize, VecDot); 8] = [
    ("q4_0", DType::Q4_0, dequantize_q4_0, vec_dot_q4_0_f32),
    ("q4_1", DType::Q4_1, dequantize_q4_1, vec_dot_q4_1_f32),
    ("q5_0", DType::Q5_0, dequantize_q5_0, vec_dot_q5_0_f32),
    ("q5_1", DType::Q5_1, dequantize_q5_1, vec_dot_q5_1_f32),
    ("q8_0", DType::Q8_0, dequantize_q8_0, vec_dot_q8_0_f32),
    ("q4_k", DType::Q4_K, dequantize_q4_k, vec_dot_q4_k_f32),
    ("q5_k", DType::Q5_K, dequantize_q5_k, vec_dot_q5_k_f32),
    ("q6_k", DType::Q6_K, dequantize_q6_k, vec_dot_q6_k_f32),
];

#[test]
fn every_weight_format_has_fixtures() {
    let names: Vec<&str> = FORMATS.iter().map(|f| f.1.as_str()).collect();
    for fmt in WeightFormat::ALL {
        assert!(names.contains(&DType::from(fmt).as_str()), "{fmt:?}");
    }
}

fn assert_bitwise(name: &str, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{name}: length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(g.to_bits() == w.to_bits(), "{name}: value {i}: got {g}, gguf gives {w}");
    }
}

#[test]
fn dequantisation_matches_gguf_python_bitwise() {
    for (name, dtype, dequantize, _) in FORMATS {
        let blocks = fixture(&format!("{name}.blocks"));
        let want = f32s(&fixture(&format!("{name}.f32")));
        let mut got = vec![f32::NAN; want.len()];
        dequantize(&blocks, &mut got);
        assert_bitwise(name, &got, &want);

        // the same through the tensor layer: shape [rows, cols] with whole blocks per row
        let cols = 2 * dtype.block_len();
        let t = Tensor::from_bytes(&blocks, dtype, &[want.len() / cols, cols], MemType::Normal).unwrap();
        assert_bitwise(name, &t.to_f32_vec().unwrap(), &want);

        // and through the format's own dispatch
        let mut again = vec![f32::NAN; want.len()];
        dtype.weight_format().unwrap().dequantize(&blocks, &mut again);
        assert_bitwise(name, &again, &want);
    }
}

#[test]
fn reference_dot_products_agree_with_fixture_values() {
    for (name, _, _, dot) in FORMATS {
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
    let quantizers: [(&str, Quantize); 5] = [
        ("q4_0", quantize_q4_0),
        ("q4_1", quantize_q4_1),
        ("q5_0", quantize_q5_0),
        ("q5_1", quantize_q5_1),
        ("q8_0", quantize_q8_0),
    ];
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

#[test]
fn packed_rows_decode_to_the_gguf_python_values() {
    // The 48 blocks of each 32-weight format as 16 rows of 96 weights (one packed group).
    for (name, dtype, _, _) in FORMATS {
        let fmt = dtype.weight_format().unwrap();
        if fmt.is_k_quant() {
            continue; // 8 blocks: not a whole group of 16 rows
        }
        let blocks = fixture(&format!("{name}.blocks"));
        let want = f32s(&fixture(&format!("{name}.f32")));
        let (n, k) = (PACK_ROWS, want.len() / PACK_ROWS);
        let mut packed = vec![0u8; packed_len(fmt, n, k)];
        pack_rows(fmt, &blocks, n, k, &mut packed);
        let mut row = vec![f32::NAN; k];
        for r in 0..n {
            dequantize_packed_row(fmt, &packed, n, k, r, &mut row);
            // Equal values (a zero's sign may differ: `d q + 0` for the formats without a min).
            assert_eq!(row, want[r * k..(r + 1) * k], "{name} row {r}");
        }
    }
}
