//! Quantised matmul on the shapes of SmolLM2-135M (Q4_1 layers, Q8_0 output head), over
//! all 30 layers' worth of distinct weights so they stream from memory as in a real token:
//! the GGUF-layout kernels (`quantized_matmul`) against the packed 16-row kernels
//! (`packed_matmul`), interleaved in one run, 1 and 2 threads, decode (m = 1) and prefill
//! (m = 128). Prints medians and the ratio. Then the formats whose GGUF-layout path is
//! scalar (Q5_0, Q5_1 and the K-quants) on eight 2048 x 2048 matrices. Run:
//! `cargo bench --bench qmatmul` (`QMATMUL_FORMATS=q5_0,q4_k` narrows the second part;
//! `QMATMUL_CPU=1` times by thread CPU time instead of wall time, see [`pass`]).

use std::hint::black_box;
use std::time::Instant;

use mllm::kernels::quant::{pack_rows, packed_len, packed_matmul, quantized_matmul, WeightFormat};

/// Deterministic bytes from a 64-bit LCG; each block's f16 scale (and min) set to a small
/// finite value so no NaN or infinity enters the sums.
fn blocks(fmt: WeightFormat, n: usize, k: usize, seed: u64) -> Vec<u8> {
    let bb = fmt.block_bytes();
    let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
    let mut v: Vec<u8> = (0..n * k / fmt.block_len() * bb)
        .map(|_| {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (s >> 56) as u8
        })
        .collect();
    for b in v.chunks_exact_mut(bb) {
        // The f16 scale (and min) of each format, where GGUF puts them.
        let (d_at, m_at) = match fmt {
            WeightFormat::Q6_K => (208, None),
            WeightFormat::Q4_1 | WeightFormat::Q5_1 | WeightFormat::Q4_K | WeightFormat::Q5_K => (0, Some(2)),
            _ => (0, None),
        };
        b[d_at..d_at + 2].copy_from_slice(&half::f16::from_f32(0.01).to_le_bytes());
        if let Some(m) = m_at {
            b[m..m + 2].copy_from_slice(&half::f16::from_f32(-0.05).to_le_bytes());
        }
    }
    v
}

struct Mat {
    fmt: WeightFormat,
    n: usize,
    k: usize,
    gguf: Vec<u8>,
    packed: Vec<u8>,
}

fn model() -> Vec<Mat> {
    let (h, kv, f, vocab) = (576, 192, 1536, 49152);
    let mut mats = Vec::new();
    let mut seed = 0;
    // QMATMUL_LAYERS=1 keeps the weights in cache (kernel speed without memory traffic).
    let layers: usize = std::env::var("QMATMUL_LAYERS").ok().and_then(|v| v.parse().ok()).unwrap_or(30);
    for _ in 0..layers {
        for (n, k) in [(h, h), (kv, h), (kv, h), (h, h), (f, h), (f, h), (h, f)] {
            mats.push((WeightFormat::Q4_1, n, k, seed));
            seed += 1;
        }
    }
    if layers == 30 {
        mats.push((WeightFormat::Q8_0, vocab, h, seed));
    }
    mats.into_iter()
        .map(|(fmt, n, k, seed)| {
            let gguf = blocks(fmt, n, k, seed);
            let mut packed = vec![0u8; packed_len(fmt, n, k)];
            pack_rows(fmt, &gguf, n, k, &mut packed);
            Mat { fmt, n, k, gguf, packed }
        })
        .collect()
}

/// Eight 2048 x 2048 matrices of one format.
fn k_model(fmt: WeightFormat) -> Vec<Mat> {
    (0..8)
        .map(|seed| {
            let (n, k) = (2048, 2048);
            let gguf = blocks(fmt, n, k, 1000 + seed);
            let mut packed = vec![0u8; packed_len(fmt, n, k)];
            pack_rows(fmt, &gguf, n, k, &mut packed);
            Mat { fmt, n, k, gguf, packed }
        })
        .collect()
}

/// CPU time of this thread in seconds (`/proc/thread-self/schedstat`).
fn thread_cpu_secs() -> f64 {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").unwrap_or_default();
    s.split_whitespace().next().and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0) / 1e9
}

/// Seconds for one pass over `mats`: wall time, or with `QMATMUL_CPU=1` the CPU time of
/// the calling thread, which other processes on a shared machine do not inflate (all of
/// the work only with `QMATMUL_THREADS=1`).
fn pass(mats: &[Mat], m: usize, packed: bool, x: &[f32], out: &mut [f32]) -> f64 {
    let cpu = std::env::var_os("QMATMUL_CPU").is_some_and(|v| v == "1");
    let (t, c0) = (Instant::now(), if cpu { thread_cpu_secs() } else { 0.0 });
    for w in mats {
        let (x, out) = (&x[..m * w.k], &mut out[..m * w.n]);
        if packed {
            packed_matmul(w.fmt, &w.packed, w.n, w.k, x, m, out, false);
        } else {
            quantized_matmul(w.fmt, &w.gguf, w.n, w.k, x, m, out, false);
        }
        black_box(&out);
    }
    if cpu {
        thread_cpu_secs() - c0
    } else {
        t.elapsed().as_secs_f64()
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() {
    let mats = model();
    let total: usize = mats.iter().map(|w| w.gguf.len()).sum();
    println!("weights: {:.1} MiB in {} matrices", total as f64 / (1 << 20) as f64, mats.len());
    println!("| threads | m | gguf-layout ms | packed ms | gguf/packed |");
    println!("| ---: | ---: | ---: | ---: | ---: |");
    // QMATMUL_THREADS / QMATMUL_M (comma lists) narrow the run, e.g. while tuning.
    let list = |var: &str, default: &[usize]| -> Vec<usize> {
        std::env::var(var)
            .ok()
            .map(|v| v.split(',').filter_map(|s| s.trim().parse().ok()).collect())
            .unwrap_or_else(|| default.to_vec())
    };
    let ms = list("QMATMUL_M", &[1, 128]);
    for threads in list("QMATMUL_THREADS", &[1, 2]) {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().expect("pool");
        for &m in &ms {
            let reps = if m < 16 { 41 } else { 5 };
            let x: Vec<f32> = (0..m * 2048).map(|i| ((i * 7919 % 1000) as f32 / 500.0) - 1.0).collect();
            let mut out = vec![0f32; m * 49152];
            let (mut a, mut b) = (Vec::new(), Vec::new());
            pool.install(|| {
                pass(&mats, m, false, &x, &mut out);
                pass(&mats, m, true, &x, &mut out);
                for _ in 0..reps {
                    a.push(pass(&mats, m, false, &x, &mut out));
                    b.push(pass(&mats, m, true, &x, &mut out));
                }
            });
            let (a, b) = (median(a), median(b));
            println!("| {threads} | {m} | {:.2} | {:.2} | {:.2} |", a * 1e3, b * 1e3, a / b);
        }
    }
    if std::env::var_os("QMATMUL_SKIP_K").is_some() {
        return;
    }
    println!();
    println!("Q5_0, Q5_1 and K-quants, 8 matrices of 2048 x 2048 (GGUF layout: scalar Q8 / Q8_K dots)");
    println!("| format | threads | m | gguf-layout ms | packed ms | gguf/packed |");
    println!("| --- | ---: | ---: | ---: | ---: | ---: |");
    let wanted = std::env::var("QMATMUL_FORMATS").unwrap_or_default().to_ascii_lowercase();
    let formats = [WeightFormat::Q5_0, WeightFormat::Q5_1, WeightFormat::Q4_K, WeightFormat::Q5_K, WeightFormat::Q6_K];
    for fmt in formats {
        let name = format!("{fmt:?}").to_ascii_lowercase();
        if !wanted.is_empty() && !wanted.split(',').any(|w| w.trim() == name) {
            continue;
        }
        let mats = k_model(fmt);
        for threads in list("QMATMUL_THREADS", &[1, 2]) {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().expect("pool");
            for &m in &ms {
                let reps = if m < 16 { 11 } else { 1 };
                let x: Vec<f32> = (0..m * 2048).map(|i| ((i * 7919 % 1000) as f32 / 500.0) - 1.0).collect();
                let mut out = vec![0f32; m * 2048];
                let (mut a, mut b) = (Vec::new(), Vec::new());
                pool.install(|| {
                    pass(&mats, m, true, &x, &mut out);
                    for _ in 0..reps {
                        a.push(pass(&mats, m, false, &x, &mut out));
                        b.push(pass(&mats, m, true, &x, &mut out));
                    }
                });
                let (a, b) = (median(a), median(b));
                println!("| {fmt:?} | {threads} | {m} | {:.2} | {:.2} | {:.2} |", a * 1e3, b * 1e3, a / b);
            }
        }
    }
}
