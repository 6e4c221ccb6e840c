//! The `mllm` command: run, chat with, inspect and fetch small language models.
//! Generated text goes to stdout; progress, timings and errors go to stderr.

mod bench;
mod commands;
mod embed;
mod fidelity;
mod perplexity;
mod serve;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "mllm", version, about = "Run small language models on the CPU", long_about = None)]
#[command(after_help = "Examples:\n  \
    mllm run --prompt \"The capital of France is\"      # default model, fetched on first use\n  \
    mllm run --chat --prompt \"What is 2+2?\" --max-tokens 64\n  \
    mllm chat\n  \
    mllm serve --port 8080                          # OpenAI-compatible API on 127.0.0.1\n  \
    mllm inspect ~/.cache/mllm/SmolLM2-135M-Instruct.Q4_1.gguf\n  \
    mllm bench -p 128,512 -n 128 -t 2\n  \
    mllm perplexity -f /usr/share/common-licenses/GPL-3\n  \
    mllm embed \"The cat sat.\" \"A dog ran.\"          # sentence embeddings (minilm), JSON lines\n  \
    mllm serve --model minilm                       # POST /v1/embeddings\n\n\
Environment: MLLM_NUM_THREADS (threads), MLLM_CACHE (model cache dir), MLLM_TRACE (trace file)")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate text for one or more prompts (several prompts run concurrently)
    Run(commands::RunArgs),
    /// Interactive multi-turn chat using the model's chat template
    Chat(commands::ChatArgs),
    /// Print a model file's metadata and tensor table
    Inspect(commands::InspectArgs),
    /// Fetch a known model into the cache (default: smollm2; also gemma3, minilm)
    Pull(commands::PullArgs),
    /// Serve the model over an OpenAI-compatible HTTP API (chat, completions, streaming;
    /// embeddings with an embedding model)
    Serve(serve::ServeArgs),
    /// Sentence embeddings of texts as JSON lines (default model: minilm)
    Embed(embed::EmbedArgs),
    /// Measure prompt processing and generation speed (like llama-bench)
    Bench(bench::BenchArgs),
    /// Perplexity of a text file over windows of --ctx tokens (like llama-perplexity)
    Perplexity(perplexity::PerplexityArgs),
    /// How far a matmul precision's log-probabilities lie from --exact's or a reference file's
    Fidelity(fidelity::FidelityArgs),
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(a) => commands::run(a),
        Command::Chat(a) => commands::chat(a),
        Command::Inspect(a) => commands::inspect(a),
        Command::Pull(a) => commands::pull(a),
        Command::Serve(a) => serve::serve(a),
        Command::Embed(a) => embed::embed(a),
        Command::Bench(a) => bench::bench(a),
        Command::Perplexity(a) => perplexity::perplexity(a),
        Command::Fidelity(a) => fidelity::fidelity(a),
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
