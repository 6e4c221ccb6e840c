//! Measured f32 FMA peak of this CPU (256-bit FMA, 1 thread and all threads), the yardstick
//! for the GFLOP/s in BENCHMARKS.md. Measures only; x86-64 only (prints a note elsewhere).
//! Run: `cargo bench --bench peak`.
//!
//! No AVX-512 variant: its intrinsics need Rust 1.89, above the crate's MSRV (1.85), and
//! on Zen 4 a 512-bit FMA is split into two 256-bit halves, so its peak is the same.

use std::hint::black_box;
use std::time::Instant;

/// Independent accumulator chains: FMA latency (4 cycles on Zen 4) times the two FMA
/// pipes needs at least 8 in flight; 12 fits the 16 ymm registers with the 2 constants.
const CHAINS: usize = 12;

/// Latency of a dependent 256-bit FMA on Zen 4, in cycles (AMD's Zen 4 optimisation guide):
/// timing one chain turns it into the core clock actually running.
const FMA_LATENCY_CYCLES: f64 = 4.0;

#[cfg(target_arch = "x86_64")]
mod fma {
    use std::arch::x86_64::*;

    /// `iters` rounds of `C` independent 8-lane FMAs; returns a value that depends
    /// on all of them so nothing is optimised away.
    ///
    /// # Safety
    /// The CPU must support AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn avx2<const C: usize>(iters: u64, m: f32, c: f32) -> f32 {
        let (vm, vc) = (_mm256_set1_ps(m), _mm256_set1_ps(c));
        let mut acc = [_mm256_set1_ps(1.0); C];
        for _ in 0..iters {
            for a in acc.iter_mut() {
                *a = _mm256_fmadd_ps(*a, vm, vc);
            }
        }
        let mut s = _mm256_setzero_ps();
        for a in acc {
            s = _mm256_add_ps(s, a);
        }
        let mut out = [0.0f32; 8];
        _mm256_storeu_ps(out.as_mut_ptr(), s);
        out.iter().sum()
    }
}

/// A measured loop: `(rounds, multiplier, addend) -> checksum`.
type Kernel = fn(u64, f32, f32) -> f32;

/// GFLOP/s of `threads` threads each running `kernel` for `iters` rounds (wall clock,
/// from the first start to the last finish).
fn run(threads: usize, iters: u64, chains: usize, lanes: u64, kernel: Kernel) -> f64 {
    let start = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| black_box(kernel(black_box(iters), black_box(0.999_999), black_box(1e-6))));
        }
    });
    let secs = start.elapsed().as_secs_f64();
    let flops = threads as f64 * iters as f64 * chains as f64 * lanes as f64 * 2.0;
    flops / secs / 1e9
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[cfg(target_arch = "x86_64")]
fn main() {
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    if !(is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")) {
        println!("no AVX2/FMA: nothing to measure");
        return;
    }
    // SAFETY: only reached when the CPU reports AVX2 and FMA, checked just above.
    let kernel: Kernel = |i, m, c| unsafe { fma::avx2::<CHAINS>(i, m, c) };
    // SAFETY: as above.
    let one_chain: Kernel = |i, m, c| unsafe { fma::avx2::<1>(i, m, c) };
    let lanes = 8;
    // Size a run to about 0.3 s on one thread.
    let probe = 2_000_000;
    let t = Instant::now();
    black_box(kernel(black_box(probe), 0.999_999, 1e-6));
    let iters = ((probe as f64) * 0.3 / t.elapsed().as_secs_f64()).max(1.0) as u64;
    println!("f32 FMA peak (avx2+fma, ymm), {CHAINS} chains, median of 7 runs of ~0.3 s each");
    let mut threads = vec![1];
    if cores > 1 {
        threads.push(cores);
    }
    for n in threads {
        let g = median((0..7).map(|_| run(n, iters, CHAINS, lanes, kernel)).collect());
        println!("{n} thread(s): {g:7.1} GFLOP/s  ({:.1} per thread)", g / n as f64);
    }
    // One dependent chain runs one FMA per latency: 16 flops every 4 cycles.
    let chain_iters = iters * CHAINS as u64 / 8;
    let g = median((0..7).map(|_| run(1, chain_iters, 1, lanes, one_chain)).collect());
    let ghz = g / (2.0 * lanes as f64) * FMA_LATENCY_CYCLES;
    println!(
        "one dependent chain: {g:.1} GFLOP/s -> clock ~{ghz:.2} GHz (if FMA latency is {FMA_LATENCY_CYCLES} cycles); \
         2 FMA pipes x 8 lanes x 2 flops = {:.1} GFLOP/s per core at that clock",
        ghz * 32.0
    );
}

#[cfg(not(target_arch = "x86_64"))]
fn main() {
    println!("the FMA peak benchmark is written for x86-64 only");
}
