//! Model architectures built from `nn` modules (LLaMA family), the generation loop,
//! samplers, KV caches, tokenizers and model fetching. Nothing below this layer knows
//! about models.

pub mod config;
pub mod fetch;
pub mod generate;
pub mod kv_cache;
pub mod llama;
pub mod sampler;
pub mod text_model;
pub mod tokenizer;

pub use config::LlamaConfig;
pub use generate::{generate, FinishReason, GenerateOptions, Generation, TokenText};
pub use kv_cache::{KvCache, KvRows};
pub use llama::Llama;
pub use sampler::{Sampler, SamplingParams};
pub use text_model::TextModel;
pub use tokenizer::{ChatMessage, Tokenizer};
