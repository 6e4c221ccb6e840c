//! `mllm bench`: prompt processing (ppN) and generation (tgN) speed in tokens/s with
//! mean ± standard deviation over repetitions, load time, time to first token and peak
//! memory, printed as a table in the habits of decoder.cpp's `llama-bench` (or as JSON).

use std::time::Instant;

use anyhow::{bail, Result};
use clap::Args;
use mllm::models::sampler::argmax;
use mllm::models::TextModel;
use mllm::nn::Module;
use rand::{Rng, SeedableRng};

#[derive(Args)]
pub struct BenchArgs {
    #[command(flatten)]
    model: super::commands::ModelArgs,
    /// Prompt lengths to test (ppN), comma separated; 0 to skip
    #[arg(long, short = 'p', value_delimiter = ',', default_value = "128,512")]
    prompt: Vec<usize>,
    /// Generation lengths to test (tgN), comma separated; 0 to skip
    #[arg(long, short = 'n', value_delimiter = ',', default_value = "128")]
    gen: Vec<usize>,
    /// Prompt tokens processed before a generation test (its KV cache is filled first)
    #[arg(long, default_value_t = 128)]
    gen_after: usize,
    /// Repetitions of each test
    #[arg(long, short = 'r', default_value_t = 5)]
    reps: usize,
    /// Output format
    #[arg(long, short = 'o', value_enum, default_value = "table")]
    output: Output,
    /// Skip the memory-bandwidth probe behind the "memory roof" column: it sums a 256 MiB
    /// buffer, which an outside measure of this process's peak RSS (`time -v`) would count
    #[arg(long)]
    no_roof: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    Table,
    Json,
}

struct Row {
    test: String,
    samples: Vec<f64>,
    /// Decode rows: bytes one step reads on average over the test.
    step_bytes: Option<usize>,
}

/// The buffer the bandwidth probe reads: far larger than any CPU cache.
const PROBE_BYTES: usize = 256 << 20;

fn mean_sd(v: &[f64]) -> (f64, f64) {
    let n = v.len() as f64;
    let mean = v.iter().sum::<f64>() / n;
    let var = if v.len() > 1 { v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0) } else { 0.0 };
    (mean, var.sqrt())
}

/// Peak resident set size of this process so far, from /proc (Linux), in bytes.
pub fn peak_rss() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

fn random_tokens(n: usize, vocab: usize, seed: u64) -> Vec<u32> {
    let mut r = rand::rngs::StdRng::seed_from_u64(seed);
    // Skip the first ids (special tokens) so prompts look like text to the model.
    (0..n).map(|_| r.random_range(100..vocab as u32)).collect()
}

pub fn bench(args: BenchArgs) -> Result<()> {
    if args.reps == 0 {
        bail!("--reps must be at least 1");
    }
    let model = super::commands::load(&args.model)?;
    let threads = mllm::context().threads();
    let vocab = model.decoder.config().vocab_size;
    let ctx = model.decoder.config().context_length;
    for &p in &args.prompt {
        if p >= ctx {
            bail!("pp{p}: longer than the model's context ({ctx})");
        }
    }
    let mut rows = Vec::new();
    // Time to first token: prefill of a short prompt plus the first sampled token, cold.
    let ttft = {
        let t0 = Instant::now();
        let ids = random_tokens(16, vocab, 99);
        let mut cache = model.decoder.new_cache(17)?;
        let logits = model.decoder.forward_tokens(&ids, &mut cache)?;
        let _ = argmax(logits.as_slice::<f32>()?);
        t0.elapsed().as_secs_f64()
    };
    for &p in args.prompt.iter().filter(|&&p| p > 0) {
        let ids = random_tokens(p, vocab, p as u64);
        let mut samples = Vec::new();
        for rep in 0..=args.reps {
            let mut cache = model.decoder.new_cache(p)?;
            let t0 = Instant::now();
            model.decoder.forward_tokens(&ids, &mut cache)?;
            let dt = t0.elapsed().as_secs_f64();
            if rep > 0 {
                // The first run warms caches and page-ins; it is not counted.
                samples.push(p as f64 / dt);
            }
        }
        rows.push(Row { test: format!("pp{p}"), samples, step_bytes: None });
    }
    for &n in args.gen.iter().filter(|&&n| n > 0) {
        let before = args.gen_after;
        if before + n > ctx {
            bail!("tg{n} after {before} prompt tokens exceeds the model's context ({ctx})");
        }
        let prompt = random_tokens(before.max(1), vocab, 7);
        let mut samples = Vec::new();
        for rep in 0..=args.reps {
            let mut cache = model.decoder.new_cache(prompt.len() + n)?;
            let mut logits = model.decoder.forward_tokens(&prompt, &mut cache)?;
            let t0 = Instant::now();
            for _ in 0..n {
                let next = argmax(logits.as_slice::<f32>()?);
                logits = model.decoder.forward_tokens(&[next], &mut cache)?;
            }
            let dt = t0.elapsed().as_secs_f64();
            if rep > 0 {
                samples.push(n as f64 / dt);
            }
        }
        let label = if before > 0 { format!("tg{n} @ pp{before}") } else { format!("tg{n}") };
        let step_bytes = model.decoder.decode_bytes(prompt.len() + n / 2, mllm::DType::F32)?;
        rows.push(Row { test: label, samples, step_bytes: Some(step_bytes) });
    }
    let report = mllm::MemoryReport::capture();
    // Before the probe: its buffer is not the model's memory.
    let rss = peak_rss().unwrap_or(0);
    // The memory roof of decode: this machine's read bandwidth on the same threads.
    let bandwidth = (!args.no_roof && rows.iter().any(|r| r.step_bytes.is_some()))
        .then(|| mllm::context::memory::read_bandwidth(PROBE_BYTES, 5));
    print_results(&args, &model, threads, &rows, (ttft, rss, report.total.peak), bandwidth);
    Ok(())
}

/// Share of the memory roof a decode row reached: bytes read per second over the bandwidth.
fn roof_share(r: &Row, bandwidth: Option<f64>) -> Option<f64> {
    Some(mean_sd(&r.samples).0 * r.step_bytes? as f64 / bandwidth?)
}

fn print_results(
    args: &BenchArgs,
    model: &TextModel,
    threads: usize,
    rows: &[Row],
    (ttft, rss, engine_peak): (f64, u64, usize),
    bandwidth: Option<f64>,
) {
    // A tied output head declares the embedding again: count each name once.
    let mut params = model.decoder.params();
    params.sort_by(|a, b| a.name().cmp(b.name()));
    params.dedup_by(|a, b| a.name() == b.name());
    let size: usize = params.iter().filter_map(|p| p.get().ok()).map(|t| t.nbytes()).sum();
    let n_params: usize = params.iter().map(|p| p.dims().iter().product::<usize>()).sum();
    let name = model.path.file_name().map(|s| s.to_string_lossy().to_string()).unwrap_or_default();
    let human = mllm::context::memory::human_bytes;
    if args.output == Output::Json {
        let tests: Vec<serde_json::Value> = rows
            .iter()
            .map(|r| {
                let (m, sd) = mean_sd(&r.samples);
                serde_json::json!({"test": r.test, "tokens_per_second": m, "sd": sd, "samples": r.samples,
                    "bytes_per_token": r.step_bytes, "roof_share": roof_share(r, bandwidth)})
            })
            .collect();
        let v = serde_json::json!({
            "engine": "mllm-rs", "model": name, "size_bytes": size, "params": n_params, "threads": threads,
            "load_ms": model.load_time.as_secs_f64() * 1e3, "first_token_ms": ttft * 1e3,
            "peak_rss_bytes": rss, "engine_peak_bytes": engine_peak, "read_bandwidth_bytes_per_s": bandwidth,
            "tests": tests,
        });
        println!("{v}");
        return;
    }
    println!("| model | size | params | threads | test | t/s | memory roof |");
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: |");
    for r in rows {
        let (m, sd) = mean_sd(&r.samples);
        let roof = match (roof_share(r, bandwidth), r.step_bytes) {
            (Some(share), Some(b)) => format!("{:.0}% ({} / token)", share * 100.0, human(b)),
            _ => "-".to_string(),
        };
        println!(
            "| {name} | {} | {:.2} M | {threads} | {} | {m:.2} ± {sd:.2} | {roof} |",
            human(size),
            n_params as f64 / 1e6,
            r.test
        );
    }
    println!();
    if let Some(bw) = bandwidth {
        println!(
            "memory roof: this machine reads {:.1} GB/s on {threads} thread(s) (probe: best of 5 sums of {}); \
             a decode step's bytes (weights as packed + head + KV) at that rate is 100%",
            bw / 1e9,
            human(PROBE_BYTES)
        );
    }
    println!(
        "load {:.0} ms | first token {:.1} ms | peak RSS {} | engine peak {} (mapped file ranges, even released, + packed weights + activations + KV) | {} reps",
        model.load_time.as_secs_f64() * 1e3,
        ttft * 1e3,
        human(rss as usize),
        human(engine_peak),
        args.reps
    );
}
