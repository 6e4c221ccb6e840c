//! A language model ready to use: the network, its tokenizer and where it came from,
//! loaded from one GGUF file. Cheap to clone (weights and vocabulary are shared).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::models::generate::{generate, GenerateOptions, Generation};
use crate::models::{ChatMessage, Decoder, Tokenizer};
use crate::params::ParameterFile;
use crate::Result;

#[derive(Clone)]
pub struct TextModel {
    pub decoder: Decoder,
    pub tokenizer: Arc<Tokenizer>,
    pub path: PathBuf,
    /// Time to open, check and load the file.
    pub load_time: Duration,
}

impl TextModel {
    /// Open a GGUF model file (weights are memory-mapped, not copied).
    pub fn load(path: impl AsRef<Path>) -> Result<TextModel> {
        let t0 = Instant::now();
        let path = path.as_ref().to_path_buf();
        let file = ParameterFile::open(&path)?;
        // The tokenizer first, its build temporaries returned to the OS before the weights
        // are repacked: the process's peak resident memory is then the model plus the
        // tokenizer, not plus their temporaries too.
        let tokenizer = Arc::new(Tokenizer::from_gguf_metadata(file.metadata())?);
        crate::context::memory::release_free_heap();
        let decoder = Decoder::from_file(&file)?;
        drop(file);
        crate::context::memory::release_free_heap();
        Ok(TextModel { decoder, tokenizer, path, load_time: t0.elapsed() })
    }

    /// Token ids for `text`: raw text (special-token strings become special tokens), or
    /// with `chat` one user message put through the model's chat template.
    pub fn encode_prompt(&self, text: &str, chat: bool) -> Result<Vec<u32>> {
        if chat {
            self.encode_chat(&[ChatMessage::new("user", text)])
        } else {
            self.tokenizer.encode(text)
        }
    }

    /// Token ids of a conversation, ending where the assistant's answer begins. Only the
    /// template makes control tokens: `<|im_start|>` typed in a message is text.
    pub fn encode_chat(&self, messages: &[ChatMessage]) -> Result<Vec<u32>> {
        self.tokenizer.encode_chat(messages, true)
    }

    /// Generate after `prompt` ids, streaming text to `on_text` (return `false` to stop).
    pub fn generate(
        &self,
        prompt: &[u32],
        opts: &GenerateOptions,
        on_text: &mut dyn FnMut(&str) -> bool,
    ) -> Result<Generation> {
        generate(&self.decoder, &self.tokenizer, prompt, opts, on_text)
    }
}
