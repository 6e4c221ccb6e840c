//! f32 matmul: how the work is split over threads and how the weight is laid out, on the
//! shapes that decide it: an encoder's few-row products (MiniLM: ~20 tokens x 384 x
//! 384/1152/1536), a batch of them (640 rows) and single-row decode matvecs (576 -> 1536,
//! 1536 -> 576, an lm head 576 -> 49152). For each shape every variant runs once per round,
//! in turn, so a noisy machine hits them alike; medians over the rounds. Results and how to
//! read them: BENCHMARKS.md ("f32 matmul threading"). Run:
//! `cargo bench --bench matmul_threads` (`-- 20x384x1536;1x576x49152` for chosen shapes;
//! `MLLM_BENCH_THREADS=1` for a one-thread pool; `MLLM_BENCH_COLD=1` cycles through copies
//! of the weight adding up to 512 MiB, more than the caches, as a decode step that reads
//! every layer once does).

use std::hint::black_box;
use std::time::Instant;

use mllm::kernels::matmul::{matmul_f32, matmul_f32_gemm_threads, transpose, MatRef};

mod common;
use common::values;

fn main() {
    let shapes: Vec<(usize, usize, usize)> = match std::env::args().skip(1).find(|a| a.contains('x')) {
        Some(list) => list
            .split(';')
            .map(|t| {
                let v: Vec<usize> = t.split('x').map(|x| x.parse().expect("shape MxKxN")).collect();
                (v[0], v[1], v[2])
            })
            .collect(),
        None => vec![
            (20, 384, 1152),
            (20, 384, 1536),
            (20, 1536, 384),
            (640, 384, 1536),
            (640, 1536, 384),
            (1, 576, 1536),
            (1, 1536, 576),
            (1, 576, 49152),
        ],
    };
    let threads: usize = std::env::var("MLLM_BENCH_THREADS").ok().and_then(|s| s.parse().ok()).unwrap_or(2);
    let cold = std::env::var("MLLM_BENCH_COLD").is_ok_and(|v| v == "1");
    let rounds = 15;
    let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().expect("pool");
    let caches = if cold { "weights cold (512 MiB of copies)" } else { "weights hot (one copy)" };
    println!("{threads} threads, {rounds} rounds, {caches}; median microseconds per product");
    println!("| m x k x n | weight | 1 thread (gemm) | gemm's split | mllm matmul_f32 |");
    println!("|---|---|---:|---:|---:|");
    pool.install(|| {
        for (m, k, n) in shapes {
            let x = values(m * k, 1);
            let copies = if cold { ((512usize << 20) / (n * k * 4)).max(1) } else { 1 };
            let w: Vec<Vec<f32>> = (0..copies).map(|c| values(n * k, 2 + c as u64)).collect(); // [n, k] as in the file
            let wt: Vec<Vec<f32>> = w.iter().map(|w| transpose(w, n, k)).collect(); // [k, n] as `Weight` keeps f32
            let a = MatRef::row_major(&x, m, k);
            let layouts: [(&str, Vec<MatRef<'_>>); 2] = [
                ("[n, k]", w.iter().map(|w| MatRef::row_major(w, n, k).t()).collect()),
                ("[k, n]", wt.iter().map(|w| MatRef::row_major(w, k, n)).collect()),
            ];
            let mut out = vec![0f32; m * n];
            let iters = (2e8 / (m * n * k) as f64).clamp(3.0, 2000.0) as usize;
            // times[layout][variant]
            let mut times = vec![vec![Vec::new(); 3]; 2];
            for _ in 0..rounds {
                for (l, (_, bs)) in layouts.iter().enumerate() {
                    for (v, t) in times[l].iter_mut().enumerate() {
                        let t0 = Instant::now();
                        for i in 0..iters {
                            let b = bs[i % copies];
                            match v {
                                0 => matmul_f32_gemm_threads(a, b, &mut out, 1),
                                1 => matmul_f32_gemm_threads(a, b, &mut out, threads),
                                _ => matmul_f32(a, b, &mut out, false),
                            }
                            black_box(&mut out);
                        }
                        t.push(t0.elapsed().as_secs_f64() * 1e6 / iters as f64);
                    }
                }
            }
            for (l, (name, _)) in layouts.iter().enumerate() {
                let med: Vec<f64> = times[l]
                    .iter_mut()
                    .map(|t| {
                        t.sort_by(f64::total_cmp);
                        t[t.len() / 2]
                    })
                    .collect();
                println!("| {m} x {k} x {n} | {name} | {:.1} | {:.1} | {:.1} |", med[0], med[1], med[2]);
            }
        }
    });
}
