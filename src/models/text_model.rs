//! A language model ready to use: the network, its tokenizer and where it came from,
//! loaded from one GGUF file. Cheap to clone (weights and vocabulary are shared).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::kernels::quant::WeightFormat;
use crate::models::generate::{generate, GenerateOptions, Generation};
use crate::models::{ChatMessage, Decoder, Tokenizer};
use crate::params::ParameterFile;
use crate::task::{join2, Task};
use crate::{Error, Result};

/// A load step's own error (a file or format problem), not wrapped in the task's name.
fn unwrap_task_error(e: Error) -> Error {
    match e {
        Error::Task { source, .. } => *source,
        other => other,
    }
}

#[derive(Clone)]
pub struct TextModel {
    pub decoder: Decoder,
    pub tokenizer: Arc<Tokenizer>,
    pub path: PathBuf,
    /// Time to open, check and load the file.
    pub load_time: Duration,
}

impl TextModel {
    /// Open a GGUF model file (weights are memory-mapped, not copied) or a Hugging Face
    /// model folder (weights as stored: f16/bf16 matrices stay 16-bit).
    pub fn load(path: impl AsRef<Path>) -> Result<TextModel> {
        TextModel::load_with(path, None)
    }

    /// [`TextModel::load`], a folder's weights quantised on load to `quantize` when given
    /// (GGUF files keep their own types).
    pub fn load_with(path: impl AsRef<Path>, quantize: Option<WeightFormat>) -> Result<TextModel> {
        let t0 = Instant::now();
        let path = path.as_ref().to_path_buf();
        if path.is_dir() {
            if !crate::models::hf::is_folder(&path) {
                return Err(Error::invalid(format!(
                    "{} is a folder without config.json: expected a GGUF file or a Hugging Face model folder",
                    path.display()
                )));
            }
            let tokenizer = Arc::new(Tokenizer::from_folder(&path)?);
            let decoder = Decoder::from_folder(&path, quantize)?;
            crate::context::memory::release_free_heap();
            return Ok(TextModel { decoder, tokenizer, path, load_time: t0.elapsed() });
        }
        let file = Arc::new(ParameterFile::open(&path)?);
        // The tokenizer (a 262k-entry vocabulary takes about a second) and the weights
        // (checked, repacked) are independent: both are forked and waited on together.
        let f = file.clone();
        let tokenizer = Task::lazy("tokenizer", move || Tokenizer::from_gguf_metadata(f.metadata()));
        let f = file.clone();
        let decoder = Task::lazy("weights", move || Decoder::from_file(&f));
        let (tokenizer, decoder) = join2(tokenizer, decoder).map_err(unwrap_task_error)?;
        drop(file);
        crate::context::memory::release_free_heap();
        Ok(TextModel { decoder, tokenizer: Arc::new(tokenizer), path, load_time: t0.elapsed() })
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
