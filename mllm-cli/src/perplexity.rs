//! `mllm perplexity`: perplexity of a text file over windows of `--ctx` tokens, computed
//! as llama.cpp's `llama-perplexity` does (second half of each window scored), with its
//! standard error and a progress bar.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use mllm::models::score;

#[derive(Args)]
#[command(after_help = "Example:\n  mllm perplexity -f /usr/share/common-licenses/GPL-3 --ctx 512\n  \
    mllm perplexity -f book.txt --exact --json")]
pub struct PerplexityArgs {
    #[command(flatten)]
    model: super::commands::ModelArgs,
    /// Text file to score (UTF-8)
    #[arg(long, short = 'f')]
    file: PathBuf,
    /// Tokens per window; the second half of each window is scored
    #[arg(long, short = 'c', default_value_t = 512)]
    ctx: usize,
    /// Score at most this many windows (default: the whole text)
    #[arg(long)]
    chunks: Option<usize>,
    /// Print the result as one JSON object
    #[arg(long)]
    json: bool,
}

pub fn perplexity(args: PerplexityArgs) -> Result<()> {
    if args.chunks == Some(0) {
        bail!("--chunks must be at least 1");
    }
    let text = std::fs::read_to_string(&args.file).with_context(|| format!("cannot read {}", args.file.display()))?;
    let model = super::commands::load(&args.model)?;
    let tok = &model.tokenizer;
    let mut tokens = tok.encode(&text)?;
    let bos = if tok.adds_bos() { tok.bos_id() } else { None };
    if bos.is_some() && tokens.first() == bos.as_ref() {
        tokens.remove(0);
    }
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} windows  {msg}  [{elapsed_precise} < {eta_precise}]")
            .expect("a valid template"),
    );
    let t0 = std::time::Instant::now();
    let r = score::perplexity(&model.decoder, &tokens, args.ctx, bos, args.chunks, &mut |done, total, so_far| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
        bar.set_message(format!("ppl {:.4} ± {:.4}", so_far.ppl, so_far.stderr));
    })?;
    bar.finish_and_clear();
    let secs = t0.elapsed().as_secs_f64();
    let mut out = std::io::stdout().lock();
    if args.json {
        let v = serde_json::json!({
            "perplexity": r.ppl, "stderr": r.stderr, "nll": r.nll, "tokens_scored": r.scored,
            "windows": r.windows, "ctx": args.ctx, "text_tokens": tokens.len(),
            "precision": args.model.precision_name(), "seconds": secs,
        });
        writeln!(out, "{v}")?;
    } else {
        writeln!(
            out,
            "perplexity {:.4} ± {:.4} ({} tokens scored in {} windows of {}; {:.1} s, {:.0} tokens/s)",
            r.ppl,
            r.stderr,
            r.scored,
            r.windows,
            args.ctx,
            secs,
            (r.windows * args.ctx) as f64 / secs
        )?;
    }
    Ok(())
}
