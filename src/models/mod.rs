//! Decoder language models of several families on shared layers (models::layers), the
//! generation loop, samplers, KV caches, tokenizers and model fetching; encoders for
//! sentence embeddings (models::encoder). Nothing below this
//! layer knows about models.

pub mod config;
pub mod decoder;
pub mod encoder;
pub mod families;
pub mod fetch;
pub mod generate;
pub mod hf;
pub mod kv_cache;
pub mod layers;
pub mod sampler;
pub mod score;
pub(crate) mod spm;
pub mod text_model;
pub mod tokenizer;
pub mod workspace;

pub use config::DecoderConfig;
pub use decoder::Decoder;
pub use encoder::{Embedded, EmbeddingModel};
pub use families::{Family, FAMILIES};
pub use generate::{generate, FinishReason, GenerateOptions, Generation, TokenText};
pub use kv_cache::{KvCache, KvLayer, KvRows};
pub use sampler::{Sampler, SamplingParams};
pub use text_model::TextModel;
pub use tokenizer::{ChatMessage, Tokenizer};
pub use workspace::Workspace;
