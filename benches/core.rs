//! Benchmarks of the core engine: f32 `linear` against the gemm crate called directly,
//! the cost of fork + wait next to bare rayon, and the seed's FooNet forked vs sequential.
//! Measures only; results and how to read them are in BENCHMARKS.md. Run: `cargo bench --bench core`.

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkGroup, Criterion, Throughput};
use mllm::kernels::matmul::{matmul_f32_gemm_threads, MatRef};
use mllm::prelude::*;

mod common;
use common::values;

fn tensor(dims: &[usize], seed: u64) -> Tensor {
    let n = dims.iter().product();
    Tensor::from_vec(values(n, seed), dims).expect("bench tensor")
}

fn heavy<'a>(c: &'a mut Criterion, name: &str) -> BenchmarkGroup<'a, criterion::measurement::WallTime> {
    let mut g = c.benchmark_group(name);
    g.sample_size(10).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(3));
    g
}

/// `out = x @ w^T` with `x` `[m, k]` and `w` `[n, k]`, both row-major: one gemm call with
/// gemm's own threading (the baseline).
fn gemm_direct(x: &[f32], w: &[f32], out: &mut [f32], m: usize, k: usize, n: usize, threads: usize) {
    let (a, b) = (MatRef::row_major(x, m, k), MatRef::row_major(w, n, k).t());
    matmul_f32_gemm_threads(a, b, out, threads);
}

fn linear_case(c: &mut Criterion, label: &str, m: usize, k: usize, n: usize) {
    let ctx = mllm::context();
    let pool = ctx.pool();
    let threads = ctx.threads();
    let x = tensor(&[m, k], 1);
    let w = tensor(&[n, k], 2);
    let b = tensor(&[n], 3);
    let flops = 2 * m * n * k;

    // Both paths must compute the same product, or the comparison means nothing.
    let xs = x.as_slice::<f32>().expect("f32");
    let ws = w.as_slice::<f32>().expect("f32");
    let bs = b.as_slice::<f32>().expect("f32");
    let mut out = vec![0.0f32; m * n];
    let ours = pool.install(|| x.linear(&w, Some(&b)).expect("linear"));
    pool.install(|| gemm_direct(xs, ws, &mut out, m, k, n, threads));
    let ours = ours.as_slice::<f32>().expect("f32");
    for (i, (o, d)) in ours.iter().zip(&out).enumerate() {
        assert!((o - (d + bs[i % n])).abs() <= 1e-3 * (k as f32).sqrt(), "linear and gemm differ at {i}");
    }

    let mut g = heavy(c, &format!("linear_{label}"));
    // One "element" is one flop, so criterion's "Gelem/s" reads as GFLOP/s.
    g.throughput(Throughput::Elements(flops as u64));
    g.bench_function("mllm_linear", |bch| {
        bch.iter(|| pool.install(|| black_box(x.linear(&w, Some(&b)).expect("linear"))))
    });
    g.bench_function("gemm_direct", |bch| {
        bch.iter(|| pool.install(|| gemm_direct(xs, ws, &mut out, m, k, n, threads)))
    });
    g.bench_function("gemm_direct_1thread", |bch| {
        bch.iter(|| pool.install(|| gemm_direct(xs, ws, &mut out, m, k, n, 1)))
    });
    // What linear does besides the product: a zeroed output tensor, then bias rows.
    g.bench_function("output_zeros_only", |bch| {
        bch.iter(|| black_box(Tensor::zeros(&[m, n], DType::F32).expect("zeros")))
    });
    g.bench_function("output_setup_only", |bch| {
        bch.iter(|| {
            let mut o = Tensor::zeros(&[m, n], DType::F32).expect("zeros");
            for row in o.data_mut::<f32>().expect("f32").chunks_exact_mut(n) {
                row.copy_from_slice(bs);
            }
            black_box(o)
        })
    });
    g.finish();
}

/// (a) f32 linear: the seed's shape ([1,12,1024,1024] flattened to [12288, 1024] times a
/// [2048, 1024] weight), decode-like single rows and an encoder's 20 rows.
fn bench_linear(c: &mut Criterion) {
    let ctx = mllm::context();
    eprintln!("mllm context: {} threads, main thread adopted: {}", ctx.threads(), ctx.adopted_thread());
    linear_case(c, "seed_12288x1024x2048", 12 * 1024, 1024, 2048);
    linear_case(c, "decode_1x576x1536", 1, 576, 1536);
    // An f32 lm head at decode (memory-bound) and an encoder's few-row product; the
    // threading and weight-layout choices on these are in benches/matmul_threads.rs.
    linear_case(c, "lm_head_1x576x49152", 1, 576, 49152);
    linear_case(c, "encoder_20x384x1536", 20, 384, 1536);
}

/// A module whose forward hands back its input: forking it measures the task machinery alone.
#[derive(Clone)]
struct Identity {
    reg: nn::Registry,
}

impl nn::Module for Identity {
    fn registry(&self) -> &nn::Registry {
        &self.reg
    }

    fn forward(&self, inputs: &[Tensor]) -> mllm::Result<Vec<Tensor>> {
        Ok(inputs.to_vec())
    }
}

/// (b) fork + wait of an empty task, next to the bare rayon primitives they sit on.
fn bench_fork_overhead(c: &mut Criterion) {
    let pool = mllm::context().pool();
    let m = Identity { reg: nn::Registry::new("identity") };
    let x = tensor(&[1, 16], 4);

    let mut g = c.benchmark_group("fork_overhead");
    g.sample_size(30).warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(2));
    g.bench_function("wait_fork_1_task", |bch| {
        bch.iter(|| pool.install(|| black_box(mllm::wait(mllm::fork(&m, vec![x.clone()])).expect("wait"))))
    });
    g.bench_function("wait_all_2_tasks", |bch| {
        bch.iter(|| {
            pool.install(|| {
                let a = mllm::fork(&m, vec![x.clone()]);
                let b = mllm::fork(&m, vec![x.clone()]);
                black_box(mllm::wait_all([a, b]).expect("wait_all"))
            })
        })
    });
    g.bench_function("rayon_join_2_empty", |bch| {
        bch.iter(|| pool.install(|| black_box(rayon::join(|| black_box(1u32), || black_box(2u32)))))
    });
    g.bench_function("pool_install_empty", |bch| bch.iter(|| black_box(pool.install(|| black_box(1u32)))));
    g.finish();
}

// ---- (c) the seed workload: FooNet from examples/async_foo_net.rs ----------------

#[derive(Clone)]
struct FooNet {
    reg: nn::Registry,
    linear_0: nn::Linear,
    linear_1: nn::Linear,
    linear_2: nn::Linear,
    linear_3: nn::Linear,
}

impl FooNet {
    fn new(name: &str) -> FooNet {
        let reg = nn::Registry::new(name);
        FooNet {
            linear_0: nn::Linear::new(&reg.child("linear_0"), 1024, 2048),
            linear_1: nn::Linear::new(&reg.child("linear_1"), 1024, 2048),
            linear_2: nn::Linear::new(&reg.child("linear_2"), 1024, 2048),
            linear_3: nn::Linear::new(&reg.child("linear_3"), 1024, 2048),
            reg,
        }
    }
}

impl nn::Module for FooNet {
    fn registry(&self) -> &nn::Registry {
        &self.reg
    }

    fn forward(&self, inputs: &[Tensor]) -> mllm::Result<Vec<Tensor>> {
        Ok(vec![
            self.linear_0.apply(&inputs[0])?,
            self.linear_1.apply(&inputs[0])?,
            self.linear_2.apply(&inputs[0])?,
            self.linear_3.apply(&inputs[0])?,
        ])
    }
}

fn bench_foo_net(c: &mut Criterion) {
    let pool = mllm::context().pool();
    let net = FooNet::new("foo_net");
    let mut params = ParameterFile::create();
    for i in 0..4u64 {
        let name = format!("foo_net.linear_{i}");
        params.push(format!("{name}.weight"), tensor(&[2048, 1024], 10 + i)).expect("push");
        params.push(format!("{name}.bias"), tensor(&[2048], 20 + i)).expect("push");
    }
    net.load(&params).expect("load");
    let x0 = tensor(&[1, 12, 1024, 1024], 30);
    let x1 = tensor(&[1, 12, 1024, 1024], 31);

    let mut g = heavy(c, "foo_net_2_inputs");
    g.throughput(Throughput::Elements(2 * 4 * 2 * 12 * 1024 * 1024 * 2048));
    g.bench_function("forked_wait_all", |bch| {
        bch.iter(|| {
            pool.install(|| {
                let f0 = mllm::fork(&net, vec![x0.clone()]);
                let f1 = mllm::fork(&net, vec![x1.clone()]);
                black_box(mllm::wait_all([f0, f1]).expect("wait_all"))
            })
        })
    });
    g.bench_function("sequential_forward", |bch| {
        bch.iter(|| {
            pool.install(|| {
                let y0 = net.forward(std::slice::from_ref(&x0)).expect("forward");
                let y1 = net.forward(std::slice::from_ref(&x1)).expect("forward");
                black_box((y0, y1))
            })
        })
    });
    g.finish();
}

criterion_group!(benches, bench_linear, bench_fork_overhead, bench_foo_net);
criterion_main!(benches);
