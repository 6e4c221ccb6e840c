//! `mllm embed`: sentence embeddings of texts (arguments, a file or stdin, one text per
//! line) as JSON lines on stdout, and `--bench`: sentences per second at given batch sizes.

use std::io::{IsTerminal, Read, Write};
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context as _, Result};
use clap::Args;
use mllm::models::encoder::Batching;
use mllm::models::EmbeddingModel;

#[derive(Args)]
#[command(after_help = "Output: one JSON object per line and per text, in input order:\n  \
    {\"index\": 0, \"tokens\": 7, \"embedding\": [0.0123, -0.0456, ...]}\n\
tokens counts the model's tokens after truncation at max_seq_length (special tokens included).\n\
Texts from a file or stdin are one per line (an empty line is an empty text; index = line number from 0).\n\n\
Examples:\n  \
    mllm embed \"The cat sat.\" \"A dog ran.\"          # minilm, fetched on first use\n  \
    printf 'first\\nsecond\\n' | mllm embed -m ~/models/bge-small-en\n  \
    mllm embed --file sentences.txt --bench 1,32 --reps 5 -t 2   # sentences/s as JSON")]
pub struct EmbedArgs {
    /// Texts to embed, one per argument (default: --file, else stdin, one text per line)
    texts: Vec<String>,
    /// File with one text per line
    #[arg(long, short = 'f')]
    file: Option<PathBuf>,
    /// Embedding model: an encoder folder (config.json, model.safetensors, tokenizer.json)
    /// or a known name; default: minilm, fetched on first use
    #[arg(long, short = 'm')]
    model: Option<String>,
    /// Compute threads (default: MLLM_NUM_THREADS or all cores)
    #[arg(long, short = 't')]
    threads: Option<usize>,
    /// How the texts of one call share the compute pool: one pass over all texts' tokens
    /// back to back (packed), one pass padded to the longest (padded), or one forked task
    /// per text (forked)
    #[arg(long, value_enum, default_value = "packed")]
    batching: BatchingArg,
    /// Instead of printing embeddings, measure sentences/s embedding the texts in calls of
    /// these many texts (comma separated); prints JSON
    #[arg(long, value_delimiter = ',')]
    bench: Vec<usize>,
    /// Timed repetitions per batch size with --bench (after one untimed warm-up)
    #[arg(long, default_value_t = 5)]
    reps: usize,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum BatchingArg {
    Packed,
    Padded,
    Forked,
}

impl BatchingArg {
    fn get(self) -> Batching {
        match self {
            BatchingArg::Packed => Batching::Packed,
            BatchingArg::Padded => Batching::Padded,
            BatchingArg::Forked => Batching::Forked,
        }
    }
}

fn read_texts(args: &EmbedArgs) -> Result<Vec<String>> {
    let mut texts = args.texts.clone();
    if let Some(f) = &args.file {
        let text = std::fs::read_to_string(f).with_context(|| format!("cannot read {}", f.display()))?;
        texts.extend(text.lines().map(str::to_string));
    }
    if texts.is_empty() && args.file.is_none() {
        let stdin = std::io::stdin();
        if stdin.is_terminal() {
            bail!("no texts: give them as arguments, with --file FILE, or one per line on stdin");
        }
        let mut s = String::new();
        stdin.lock().read_to_string(&mut s).context("reading texts from stdin")?;
        texts.extend(s.lines().map(str::to_string));
    }
    if texts.is_empty() {
        bail!("no texts to embed");
    }
    Ok(texts)
}

/// One output line (f32 values in their shortest form; a non-finite value as null).
fn json_line(index: usize, tokens: usize, v: &[f32]) -> String {
    let mut s = format!("{{\"index\":{index},\"tokens\":{tokens},\"embedding\":[");
    for (i, x) in v.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        if x.is_finite() {
            s.push_str(&x.to_string());
        } else {
            s.push_str("null");
        }
    }
    s.push_str("]}");
    s
}

pub fn embed(args: EmbedArgs) -> Result<()> {
    if args.reps == 0 {
        bail!("--reps must be at least 1");
    }
    if args.bench.contains(&0) {
        bail!("--bench batch sizes must be at least 1");
    }
    let texts = read_texts(&args)?;
    let mut model = super::commands::load_embedding(&args.model, args.threads)?;
    model.batching = args.batching.get();
    if !args.bench.is_empty() {
        return bench(&model, &texts, &args);
    }
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let t0 = Instant::now();
    let out = model.embed(&refs)?;
    let dt = t0.elapsed().as_secs_f64();
    let mut stdout = std::io::stdout().lock();
    for (i, e) in out.iter().enumerate() {
        if writeln!(stdout, "{}", json_line(i, e.tokens, &e.vector)).is_err() {
            return Ok(()); // stdout closed (| head): stop quietly
        }
    }
    let _ = stdout.flush();
    let tokens: usize = out.iter().map(|e| e.tokens).sum();
    eprintln!(
        "load {:.0} ms | {} texts, {tokens} tokens, {} dimensions, {:.1} ms ({:.1} texts/s)",
        model.load_time.as_secs_f64() * 1e3,
        out.len(),
        model.dim(),
        dt * 1e3,
        out.len() as f64 / dt
    );
    Ok(())
}

fn bench(model: &EmbeddingModel, texts: &[String], args: &EmbedArgs) -> Result<()> {
    // Each repetition tokenizes too, as sentence-transformers' encode does.
    let mut tests = Vec::new();
    for &b in &args.bench {
        let mut samples = Vec::with_capacity(args.reps);
        for rep in 0..=args.reps {
            let t0 = Instant::now();
            for chunk in texts.chunks(b) {
                let refs: Vec<&str> = chunk.iter().map(String::as_str).collect();
                std::hint::black_box(model.embed(&refs)?);
            }
            if rep > 0 {
                samples.push(texts.len() as f64 / t0.elapsed().as_secs_f64());
            }
        }
        let mut sorted = samples.clone();
        sorted.sort_by(f64::total_cmp);
        eprintln!("batch {b:>3}: median {:.1} sentences/s over {} reps", sorted[sorted.len() / 2], args.reps);
        tests.push(serde_json::json!({"batch": b, "samples": samples}));
    }
    let out = serde_json::json!({
        "engine": "mllm",
        "model": model.path.display().to_string(),
        "threads": mllm::context().threads(),
        "batching": format!("{:?}", model.batching).to_lowercase(),
        "texts": texts.len(),
        "tests": tests,
    });
    println!("{out}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_json_with_shortest_floats() {
        let l = json_line(3, 7, &[0.1, -2.5e-8, f32::NAN]);
        assert_eq!(l, r#"{"index":3,"tokens":7,"embedding":[0.1,-0.000000025,null]}"#);
        let v: serde_json::Value = serde_json::from_str(&l).unwrap();
        assert_eq!(v["embedding"][0].as_f64().unwrap() as f32, 0.1f32);
    }
}
