//! Tests of the 8-bit activation path: the quantisers, the scalar Q8 dot products against
//! naive f64 sums, and every SIMD variant available here against the scalar one (exact
//! on integer-valued data, tight tolerance on random data, odd block counts and edges).

use half::f16;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::*;

fn randn(rng: &mut StdRng, n: usize, scale: f32) -> Vec<f32> {
    (0..n).map(|i| rng.random_range(-1.0..1.0) * scale * if i % 97 == 5 { 20.0 } else { 1.0 }).collect()
}

/// The activations as the kernels see them (dequantised Q8 values), per row.
fn dequantized_acts(fmt: WeightFormat, x: &[f32], m: usize, k: usize) -> Vec<f64> {
    let mut out = Vec::with_capacity(m * k);
    if fmt.block_len() == QK8 {
        let mut a = Q8Acts::new();
        a.quantize(x, m, k);
        for r in 0..m {
            let row = a.row(r);
            for (i, &q) in row.qs.iter().enumerate() {
                out.push(q as f64 * row.scale(i / QK8) as f64);
            }
        }
    } else {
        let mut blocks = vec![BlockQ8_K { d: 0.0, qs: [0; QK_K], bsums: [0; 16] }; m * k / QK_K];
        quantize_q8_k(x, &mut blocks);
        for b in &blocks {
            out.extend(b.qs.iter().map(|&q| q as f64 * b.d as f64));
        }
    }
    out
}

/// Naive f64 product of dequantised weights with dequantised activations, and Σ|terms|.
fn naive(fmt: WeightFormat, w: &[u8], n: usize, k: usize, xq: &[f64], m: usize) -> (Vec<f64>, Vec<f64>) {
    let mut wf = vec![0f32; n * k];
    fmt.dequantize(w, &mut wf);
    let mut want = vec![0.0; m * n];
    let mut scale = vec![0.0; m * n];
    for i in 0..m {
        for j in 0..n {
            for t in 0..k {
                let p = wf[j * k + t] as f64 * xq[i * k + t];
                want[i * n + j] += p;
                scale[i * n + j] += p.abs();
            }
        }
    }
    (want, scale)
}

#[test]
fn q8_quantiser_rounds_to_nearest_and_keeps_sums() {
    let mut rng = StdRng::seed_from_u64(1);
    let (m, k) = (3, 96);
    let mut x = randn(&mut rng, m * k, 2.0);
    x[40..64].fill(0.0); // part of a block zero
    x[64..96].fill(0.0); // a whole zero block
    let mut a = Q8Acts::new();
    a.quantize(&x, m, k);
    for r in 0..m {
        let row = a.row(r);
        for b in 0..k / QK8 {
            let xs = &x[r * k + b * QK8..r * k + (b + 1) * QK8];
            let amax = xs.iter().fold(0f32, |a, v| a.max(v.abs()));
            assert_eq!(row.scale(b), amax / 127.0);
            let qs = &row.qs[b * QK8..(b + 1) * QK8];
            for (&q, &v) in qs.iter().zip(xs) {
                assert!((q as f32 * row.scale(b) - v).abs() <= row.scale(b) * 0.5001, "{v} -> {q}");
            }
            let isum: i32 = qs.iter().map(|&q| q as i32).sum();
            assert_eq!(row.sum(b), row.scale(b) * isum as f32);
            assert!(row.d[b * Q8_LANES..(b + 1) * Q8_LANES].iter().all(|&d| d == row.scale(b)));
        }
    }
    assert_eq!(a.row(0).scale(2), 0.0);
    // reuse with a smaller shape keeps the views consistent
    a.quantize(&x[..k], 1, k);
    assert_eq!(a.rows(), 1);
    assert_eq!(a.row(0).qs.len(), k);
}

/// A NaN or an infinity gives its block a NaN scale and zero quants in both quantiser
/// builds (the SIMD one would otherwise convert NaN to -128), so it reaches the output of
/// every kernel on every instruction set instead of vanishing.
#[test]
fn non_finite_activations_give_nan_outputs() {
    let mut rng = StdRng::seed_from_u64(8);
    let (m, k) = (3, 2 * QK_K);
    let mut x = randn(&mut rng, m * k, 1.0);
    x[k + 70] = f32::NAN;
    x[2 * k + 300] = f32::INFINITY;
    let mut scalar = Q8Acts::new();
    scalar.quantize_with(&x, m, k, false);
    let mut simd = Q8Acts::new();
    simd.quantize(&x, m, k);
    for a in [&scalar, &simd] {
        assert!(a.row(1).scale(70 / QK8).is_nan() && a.row(2).scale(300 / QK8).is_nan());
        assert!(a.row(1).sum(70 / QK8).is_nan());
        assert!(a.row(1).qs[64..96].iter().all(|&q| q == 0));
        assert!(a.row(0).d.iter().all(|d| d.is_finite()));
    }
    assert_eq!(scalar.row(1).qs, simd.row(1).qs);
    let mut blocks = vec![BlockQ8_K { d: 0.0, qs: [0; QK_K], bsums: [0; 16] }; m * k / QK_K];
    quantize_q8_k(&x, &mut blocks);
    assert!(blocks[2].d.is_nan() && blocks[5].d.is_nan() && blocks[0].d.is_finite());
    for isa in Isa::available() {
        for fmt in WeightFormat::ALL {
            let n = 5;
            let w = fmt.quantize(&randn(&mut rng, n * k, 0.3));
            let mut out = vec![0f32; m * n];
            quantized_matmul_with(isa, fmt, &w, n, k, &x, m, &mut out, false);
            assert!(out[..n].iter().all(|v| v.is_finite()), "{isa:?} {fmt:?}: the finite row");
            assert!(out[n..].iter().all(|v| v.is_nan()), "{isa:?} {fmt:?}: {:?}", &out[n..]);
        }
    }
}

#[test]
fn q8_k_quantiser_keeps_block_sums() {
    let mut rng = StdRng::seed_from_u64(2);
    let x = randn(&mut rng, 2 * QK_K, 1.0);
    let mut b = vec![BlockQ8_K { d: 0.0, qs: [0; QK_K], bsums: [0; 16] }; 2];
    quantize_q8_k(&x, &mut b);
    for (blk, xs) in b.iter().zip(x.chunks(QK_K)) {
        for (s, qs) in blk.bsums.iter().zip(blk.qs.chunks(16)) {
            assert_eq!(*s as i32, qs.iter().map(|&q| q as i32).sum::<i32>());
        }
        for (&q, &v) in blk.qs.iter().zip(xs) {
            assert!((q as f32 * blk.d - v).abs() <= blk.d * 0.5001);
        }
    }
}

#[test]
fn scalar_q8_dots_match_naive_sums_and_the_f32_reference() {
    let mut rng = StdRng::seed_from_u64(3);
    for fmt in WeightFormat::ALL {
        for nb in [1, 3, 4] {
            let k = nb * fmt.block_len();
            let w = fmt.quantize(&randn(&mut rng, k, 0.5));
            let x = randn(&mut rng, k, 1.5);
            let mut out = [0f32];
            quantized_matmul_with(Isa::Scalar, fmt, &w, 1, k, &x, 1, &mut out, false);
            let xq = dequantized_acts(fmt, &x, 1, k);
            let (want, scale) = naive(fmt, &w, 1, k, &xq, 1);
            assert!(
                (out[0] as f64 - want[0]).abs() <= 1e-5 * scale[0] + 1e-12,
                "{fmt:?} x{nb}: {} vs {}",
                out[0],
                want[0]
            );
            // against f32 activations: off by at most half an activation step per weight
            let mut wf = vec![0f32; k];
            fmt.dequantize(&w, &mut wf);
            let bound: f64 =
                wf.iter().zip(&x).zip(&xq).map(|((&a, &xv), &xd)| (a as f64 * (xv as f64 - xd)).abs()).sum::<f64>()
                    + 1e-5 * scale[0];
            let exact: f64 = wf.iter().zip(&x).map(|(&a, &b)| a as f64 * b as f64).sum();
            assert!((out[0] as f64 - exact).abs() <= bound + 1e-9, "{fmt:?} x{nb}: {} vs f32 {exact}", out[0]);
        }
    }
}

/// Weight rows whose blocks have power-of-two scales and offsets, so every product and
/// sum is an exactly representable integer.
fn integer_weights(rng: &mut StdRng, fmt: WeightFormat, n: usize, nb: usize) -> Vec<u8> {
    let mut w = Vec::new();
    for _ in 0..n * nb {
        let d = f16::from_f32([1.0, 2.0, 0.5][rng.random_range(0..3)]).to_bits().to_le_bytes();
        w.extend_from_slice(&d);
        if matches!(fmt, WeightFormat::Q4_1 | WeightFormat::Q5_1) {
            w.extend_from_slice(&f16::from_f32(rng.random_range(-8..8) as f32).to_bits().to_le_bytes());
        }
        // The rest (fifth bits, quants) random; Q8_0 with a -128 in every block.
        let rest = fmt.block_bytes() - w.len() % fmt.block_bytes();
        let q8 = fmt == WeightFormat::Q8_0;
        w.extend((0..rest).map(|i| if q8 && i == 7 { 0x80 } else { rng.random::<u8>() }));
    }
    w
}

/// Integer activations with ±127 in every block, so the scale is exactly 1.
fn integer_acts(rng: &mut StdRng, m: usize, k: usize) -> Vec<f32> {
    (0..m * k)
        .map(|i| match i % 32 {
            3 => 127.0,
            19 if i % 64 == 19 => -127.0,
            _ => rng.random_range(-127..=127) as f32,
        })
        .collect()
}

#[test]
fn simd_kernels_equal_scalar_exactly_on_integer_data() {
    let mut rng = StdRng::seed_from_u64(4);
    for isa in Isa::available() {
        for fmt in WeightFormat::ALL.into_iter().filter(|f| !f.is_k_quant()) {
            for (m, n, nb) in [(1, 1, 1), (1, 5, 3), (4, 4, 2), (5, 7, 5), (9, 13, 18), (2, 3, 4)] {
                let k = nb * QK8;
                let w = integer_weights(&mut rng, fmt, n, nb);
                let x = integer_acts(&mut rng, m, k);
                let mut want = vec![0f32; m * n];
                quantized_matmul_with(Isa::Scalar, fmt, &w, n, k, &x, m, &mut want, false);
                let mut got = vec![0f32; m * n];
                quantized_matmul_with(isa, fmt, &w, n, k, &x, m, &mut got, false);
                assert_eq!(got, want, "{isa:?} {fmt:?} m={m} n={n} blocks={nb}");
            }
        }
    }
}

#[test]
fn simd_kernels_match_scalar_on_random_data() {
    let mut rng = StdRng::seed_from_u64(5);
    for isa in Isa::available() {
        for fmt in WeightFormat::ALL {
            let shapes: &[(usize, usize, usize)] = if fmt.block_len() == QK8 {
                &[(1, 3, 1), (3, 5, 3), (4, 8, 18), (6, 9, 7), (1, 64, 48), (7, 6, 2)]
            } else {
                &[(1, 3, 1), (3, 5, 2)]
            };
            for &(m, n, nb) in shapes {
                let k = nb * fmt.block_len();
                let w = fmt.quantize(&randn(&mut rng, n * k, 0.3));
                let x = randn(&mut rng, m * k, 3.0);
                let xq = dequantized_acts(fmt, &x, m, k);
                let (want, scale) = naive(fmt, &w, n, k, &xq, m);
                let bias: Vec<f32> = (0..m * n).map(|i| i as f32 * 0.25 - 1.0).collect();
                let mut got = bias.clone();
                quantized_matmul_with(isa, fmt, &w, n, k, &x, m, &mut got, true);
                // f32 rounding only: the integer parts are exact (previous test); Q4_0's offset
                // form d·Σq·x − 8·d·Σx cancels terms up to 8x larger than the result's.
                for i in 0..m * n {
                    let g = got[i] as f64 - bias[i] as f64;
                    assert!(
                        (g - want[i]).abs() <= 1e-5 * scale[i] + 1e-6,
                        "{isa:?} {fmt:?} m={m} n={n} blocks={nb} [{i}]: {g} vs {}",
                        want[i]
                    );
                }
                // unaligned weight bytes give the same results
                let mut shifted = vec![0u8; w.len() + 1];
                shifted[1..].copy_from_slice(&w);
                let mut again = bias.clone();
                quantized_matmul_with(isa, fmt, &shifted[1..], n, k, &x, m, &mut again, true);
                assert_eq!(again, got, "{isa:?} {fmt:?} unaligned");
            }
        }
    }
}

#[test]
fn parallel_split_matches_serial_and_nested_use_does_not_panic() {
    let mut rng = StdRng::seed_from_u64(6);
    let (m, n, k) = (5, 203, 256);
    let pool = rayon::ThreadPoolBuilder::new().num_threads(3).build().unwrap();
    for fmt in [WeightFormat::Q4_1, WeightFormat::Q5_0, WeightFormat::Q8_0, WeightFormat::Q6_K] {
        let w = fmt.quantize(&randn(&mut rng, n * k, 0.3));
        let x = randn(&mut rng, m * k, 1.0);
        let mut serial = vec![0f32; m * n];
        quantized_matmul(fmt, &w, n, k, &x, m, &mut serial, false);
        let mut par = vec![0f32; m * n];
        pool.install(|| {
            // several matmuls at once on the pool, each reusing thread-local buffers
            rayon::join(
                || quantized_matmul(fmt, &w, n, k, &x, m, &mut par, false),
                || {
                    let mut other = vec![0f32; m * n];
                    quantized_matmul(fmt, &w, n, k, &x, m, &mut other, false);
                    assert_eq!(other, serial, "{fmt:?} concurrent");
                },
            )
        });
        assert_eq!(par, serial, "{fmt:?}");
    }
}

/// CPU time of this thread in seconds (immune to other processes sharing the cores).
fn thread_cpu_secs() -> f64 {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").unwrap_or_default();
    s.split_whitespace().next().and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0) / 1e9
}

/// Throughput of each variant on the model's shapes (run with `--ignored --nocapture`):
/// weights hot in cache (one matrix repeated) and streamed (cycling through ~100 MB).
/// Times are this thread's CPU time, so a busy machine does not distort them.
#[test]
#[ignore]
fn bench_panels() {
    let mut rng = StdRng::seed_from_u64(7);
    let pool = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
    for (fmt, n, k) in
        [(WeightFormat::Q4_1, 1536, 576), (WeightFormat::Q4_1, 576, 1536), (WeightFormat::Q8_0, 4096, 576)]
    {
        let w = fmt.quantize(&randn(&mut rng, n * k, 0.3));
        let copies = (100 << 20) / w.len() + 1;
        let big: Vec<u8> = (0..copies).flat_map(|_| w.iter().copied()).collect();
        for m in [1usize, 128] {
            let x = randn(&mut rng, m * k, 1.0);
            let mut out = vec![0f32; m * n];
            for isa in Isa::available() {
                if isa == Isa::Scalar && m > 1 {
                    continue;
                }
                let reps = if m == 1 { 200 } else { 4 };
                let hot = pool.install(|| {
                    let t = thread_cpu_secs();
                    for _ in 0..reps {
                        quantized_matmul_with(isa, fmt, &w, n, k, &x, m, &mut out, false)
                    }
                    (thread_cpu_secs() - t) / reps as f64
                });
                let cold_reps = if m == 1 { copies } else { 4 };
                let cold = pool.install(|| {
                    let t = thread_cpu_secs();
                    for c in 0..cold_reps {
                        let wc = &big[(c % copies) * w.len()..(c % copies + 1) * w.len()];
                        quantized_matmul_with(isa, fmt, wc, n, k, &x, m, &mut out, false)
                    }
                    (thread_cpu_secs() - t) / cold_reps as f64
                });
                let macs = (m * n * k) as f64;
                eprintln!(
                    "{fmt:?} {n}x{k} m={m} {isa:?}: hot {:.1} GMAC/s {:.1} GB/s | streamed {:.1} GMAC/s {:.1} GB/s",
                    macs / hot / 1e9,
                    w.len() as f64 / hot / 1e9,
                    macs / cold / 1e9,
                    w.len() as f64 / cold / 1e9
                );
            }
        }
    }
}

/// The SIMD tests here and in packed.rs loop over [`Isa::available`], so a detection that
/// silently finds nothing would let them pass on the scalar reference alone. NEON is part
/// of every aarch64 Linux CPU; `MLLM_EXPECT_ISAS` (comma separated, as `MLLM_QUANT_ISA`
/// spells them; set by scripts/test-aarch64.sh for each emulated CPU) names exactly the
/// SIMD sets this CPU must report.
#[test]
fn the_expected_instruction_sets_are_detected_and_chosen() {
    let isas = Isa::available();
    assert_eq!(isas[0], Isa::Scalar, "{isas:?}");
    #[cfg(target_arch = "aarch64")]
    assert!(isas.contains(&Isa::Neon), "aarch64 without NEON kernels: {isas:?}");
    if let Ok(expected) = std::env::var("MLLM_EXPECT_ISAS") {
        let want: Vec<String> = expected.split(',').map(|s| s.trim().to_ascii_lowercase()).collect();
        let got: Vec<String> = isas[1..].iter().map(|i| format!("{i:?}").to_ascii_lowercase()).collect();
        assert_eq!(got, want, "MLLM_EXPECT_ISAS");
    }
    if std::env::var_os("MLLM_QUANT_ISA").is_none() {
        assert_eq!(Some(&Isa::best()), isas.last(), "the best variant is the last detected");
    }
}

#[test]
fn parallel_grain_gives_equal_shares() {
    for (n, threads, chunk) in [(576, 2, 60), (192, 2, 24), (1536, 2, 64), (49152, 2, 64), (576, 16, 16), (10, 4, 16)] {
        assert_eq!(super::qmatmul::grain(n, threads), chunk, "{n} rows on {threads} threads");
    }
}
