//! `mllm fidelity`: how far one matmul precision's next-token distributions lie from
//! another's (by default the default precision against `--exact`, which matches an f32
//! reference), or from a reference file made by another implementation
//! (scripts/fidelity_reference.py: transformers on the same GGUF), over every position of
//! a few texts.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;
use mllm::models::score::{self, Fidelity, FidelityStats};
use mllm::tensor::ops::MatmulPrecision;

/// The texts compared when no `--texts` file is given (prose, chat, code, digits).
const DEFAULT_TEXTS: &str = include_str!("fidelity_texts.txt");

#[derive(Args)]
#[command(after_help = "Examples:\n  mllm fidelity                       # default precision against --exact\n  \
    mllm fidelity --fast                # the 8-bit path against --exact\n  \
    mllm fidelity --reference ref.json  # against scripts/fidelity_reference.py's output")]
pub struct FidelityArgs {
    #[command(flatten)]
    model: super::commands::ModelArgs,
    /// Texts to run, separated by lines holding only `---` (default: a built-in set of
    /// prose, chat, code and digits). Control tokens in the text (`<|im_start|>`) count.
    #[arg(long)]
    texts: Option<PathBuf>,
    /// The precision compared against (ignored with --reference)
    #[arg(long, value_enum, default_value = "exact")]
    against: Against,
    /// A reference file (JSON from scripts/fidelity_reference.py): token ids and, per
    /// position, the reference's log-probability of the next token, top token, margin and
    /// top logits
    #[arg(long)]
    reference: Option<PathBuf>,
    /// A reference top token leading its runner-up by at least this many logits is
    /// "clear": the model should keep it
    #[arg(long, default_value_t = 0.1)]
    clear_margin: f64,
    /// Print the result as one JSON object
    #[arg(long)]
    json: bool,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum Against {
    Exact,
    Precise,
    Fast,
}

/// One reference position: the figures for predicting the token after it.
struct ReferencePosition {
    logprob: f64,
    top: usize,
    margin: f64,
    /// `[id, logit]` of the reference's largest logits.
    top_logits: Vec<(u32, f32)>,
}

/// A reference file's texts: token ids and one position per id but the last.
fn read_reference(v: &serde_json::Value) -> Result<Vec<(Vec<u32>, Vec<ReferencePosition>)>> {
    let num = |v: &serde_json::Value, what: &str| v.as_f64().with_context(|| format!("{what} is not a number"));
    let id = |v: &serde_json::Value, what: &str| {
        v.as_u64().and_then(|i| u32::try_from(i).ok()).with_context(|| format!("{what} is not a token id"))
    };
    let texts = v["texts"].as_array().context("no \"texts\" array")?;
    let mut out = Vec::with_capacity(texts.len());
    for (n, t) in texts.iter().enumerate() {
        let ids = t["ids"].as_array().with_context(|| format!("text {n}: no \"ids\" array"))?;
        let ids = ids.iter().map(|i| id(i, &format!("text {n}: an id"))).collect::<Result<Vec<u32>>>()?;
        let ps = t["positions"].as_array().with_context(|| format!("text {n}: no \"positions\" array"))?;
        if ids.len() < 2 || ps.len() != ids.len() - 1 {
            bail!("text {n}: {} ids need {} positions, got {}", ids.len(), ids.len().saturating_sub(1), ps.len());
        }
        let mut positions = Vec::with_capacity(ps.len());
        for (i, p) in ps.iter().enumerate() {
            let at = format!("text {n} position {i}");
            let tops = p["top_logits"].as_array().with_context(|| format!("{at}: no \"top_logits\""))?;
            let top_logits = tops
                .iter()
                .map(|e| Ok((id(&e[0], &at)?, num(&e[1], &at)? as f32)))
                .collect::<Result<Vec<(u32, f32)>>>()?;
            positions.push(ReferencePosition {
                logprob: num(&p["logprob"], &format!("{at}: logprob"))?,
                top: id(&p["top"], &format!("{at}: top"))? as usize,
                margin: num(&p["margin"], &format!("{at}: margin"))?,
                top_logits,
            });
        }
        out.push((ids, positions));
    }
    Ok(out)
}

pub fn fidelity(args: FidelityArgs) -> Result<()> {
    if args.clear_margin.is_nan() || args.clear_margin < 0.0 {
        bail!("--clear-margin must be a non-negative number");
    }
    let model = super::commands::load(&args.model)?;
    let t0 = std::time::Instant::now();
    let (result, against) = match &args.reference {
        Some(path) => {
            let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
            let v: serde_json::Value =
                serde_json::from_str(&text).with_context(|| format!("{} is not JSON", path.display()))?;
            let texts = read_reference(&v).with_context(|| format!("{} is not a reference file", path.display()))?;
            let label = v["made_with"].as_str().map_or_else(|| path.display().to_string(), String::from);
            (against_file(&model.decoder, &texts, args.clear_margin)?, label)
        }
        None => {
            let text = match &args.texts {
                Some(p) => std::fs::read_to_string(p).with_context(|| format!("cannot read {}", p.display()))?,
                None => DEFAULT_TEXTS.to_string(),
            };
            let texts: Vec<Vec<u32>> =
                split_texts(&text).iter().map(|t| model.tokenizer.encode(t)).collect::<mllm::Result<_>>()?;
            if texts.iter().all(|t| t.len() < 2) {
                bail!("no text has two or more tokens: nothing to compare");
            }
            let p = match args.against {
                Against::Exact => MatmulPrecision::Exact,
                Against::Precise => MatmulPrecision::Precise,
                Against::Fast => MatmulPrecision::Fast,
            };
            let reference = model.decoder.clone().with_precision(p);
            let label = format!("{} precision", super::commands::precision_name(p));
            (score::fidelity(&reference, &model.decoder, &texts, args.clear_margin)?, label)
        }
    };
    let secs = t0.elapsed().as_secs_f64();
    print(&args, &result, &against, secs)
}

/// Texts separated by lines holding only `---`, each without its surrounding newlines.
fn split_texts(all: &str) -> Vec<String> {
    let mut out = vec![String::new()];
    for line in all.split_inclusive('\n') {
        if line.trim_end_matches(['\n', '\r']) == "---" {
            out.push(String::new());
        } else {
            out.last_mut().expect("one text at least").push_str(line);
        }
    }
    out.into_iter().map(|t| t.trim_matches(['\n', '\r']).to_string()).filter(|t| !t.is_empty()).collect()
}

/// The model against a reference file's figures.
fn against_file(
    model: &mllm::models::Decoder,
    texts: &[(Vec<u32>, Vec<ReferencePosition>)],
    clear_margin: f64,
) -> Result<Fidelity> {
    let vocab = model.config().vocab_size;
    let mut stats = FidelityStats::new(clear_margin);
    for (n, (ids, positions)) in texts.iter().enumerate() {
        let mut cache = model.new_cache(ids.len())?;
        let logits = model.forward_all_logits(ids, &mut cache)?.to_vec::<f32>()?;
        for (i, p) in positions.iter().enumerate() {
            let l = &logits[i * vocab..(i + 1) * vocab];
            let top = mllm::models::sampler::argmax(l) as usize;
            stats.push_summary(p.logprob, score::log_prob(l, ids[i + 1])?, p.top, p.margin, top);
            let mut diffs = Vec::with_capacity(p.top_logits.len());
            for &(id, v) in &p.top_logits {
                let Some(&o) = l.get(id as usize) else {
                    bail!("reference text {n}: token {id} is outside the vocabulary")
                };
                diffs.push((o - v).abs() as f64);
            }
            stats.push_dlogits(diffs);
        }
    }
    Ok(stats.result())
}

fn print(args: &FidelityArgs, f: &Fidelity, against: &str, secs: f64) -> Result<()> {
    let mut out = std::io::stdout().lock();
    let precision = args.model.precision_name();
    if args.json {
        let mut v = serde_json::to_value(f)?;
        v["precision"] = precision.into();
        v["against"] = against.into();
        v["clear_margin"] = args.clear_margin.into();
        v["seconds"] = secs.into();
        writeln!(out, "{v}")?;
        return Ok(());
    }
    let logits = if args.reference.is_some() { "listed logits" } else { "all logits" };
    writeln!(out, "{precision} against {against}, {} positions:", f.positions)?;
    writeln!(out, "  |Δ log p(next token)|  mean {:.4}  max {:.4}", f.mean_dlogprob, f.max_dlogprob)?;
    writeln!(out, "  |Δ logit| ({logits})  mean {:.4}  max {:.4}", f.mean_dlogit, f.max_dlogit)?;
    let flipped = f.min_flipped_margin.map_or(String::new(), |m| format!("; smallest margin flipped {m:.3}"));
    writeln!(
        out,
        "  top token kept at {}/{} positions; {} of {} clear ones (margin >= {}) flipped{flipped}",
        f.top1_same, f.positions, f.clear_flips, f.clear, args.clear_margin
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn texts_split_on_dash_lines_only() {
        let t = split_texts("a\nb\n---\n\nc --- d\n---\r\n---\n");
        assert_eq!(t, ["a\nb", "c --- d"]);
        assert_eq!(split_texts(DEFAULT_TEXTS).len(), 7);
    }
}
