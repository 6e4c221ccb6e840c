//! The one error type of the engine. Every fallible call returns [`Result`]; messages
//! name the tensor, parameter, module or file concerned so a user can act on them.

use crate::tensor::DType;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Shapes that do not fit together (`op` names the operation).
    #[error("{op}: shape mismatch: {msg}")]
    Shape { op: &'static str, msg: String },

    /// A dtype an operation does not support.
    #[error("{op}: unsupported dtype {dtype:?}{}", if .msg.is_empty() { String::new() } else { format!(" ({})", .msg) })]
    DType { op: &'static str, dtype: DType, msg: String },

    /// A tensor that was declared with `Tensor::empty` but never allocated, or another
    /// misuse of the API that the types could not rule out.
    #[error("{0}")]
    Invalid(String),

    /// A size computation overflowed (huge shapes from a corrupt file, for example).
    #[error("size overflow: {0}")]
    Overflow(String),

    /// Loading parameters into a module found problems; all of them are listed.
    #[error("{}", load_message(.module, .missing, .unexpected, .mismatched))]
    Load { module: String, missing: Vec<String>, unexpected: Vec<String>, mismatched: Vec<String> },

    /// A model or parameter file that cannot be read (corrupt, truncated, unsupported).
    #[error("{path}: {msg}")]
    Format { path: String, msg: String },

    /// A forked task failed; `module` names the module that was forked.
    #[error("task '{module}' failed: {source}")]
    Task {
        module: String,
        #[source]
        source: Box<Error>,
    },

    /// A forked task panicked; the panic was caught and the pool keeps working.
    #[error("task '{module}' panicked: {message}")]
    Panic { module: String, message: String },

    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    pub(crate) fn shape(op: &'static str, msg: impl Into<String>) -> Self {
        Error::Shape { op, msg: msg.into() }
    }
    pub(crate) fn dtype(op: &'static str, dtype: DType) -> Self {
        Error::DType { op, dtype, msg: String::new() }
    }
    pub(crate) fn invalid(msg: impl Into<String>) -> Self {
        Error::Invalid(msg.into())
    }
    #[allow(dead_code)] // used by the file readers
    pub(crate) fn format(path: impl Into<String>, msg: impl Into<String>) -> Self {
        Error::Format { path: path.into(), msg: msg.into() }
    }
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io { context: context.into(), source }
    }
}

fn load_message(module: &str, missing: &[String], unexpected: &[String], mismatched: &[String]) -> String {
    let who = if module.is_empty() { "model".to_string() } else { format!("module '{module}'") };
    let mut s = format!("cannot load parameters into {who}:");
    for (label, list) in [("missing", missing), ("unexpected", unexpected), ("mismatched", mismatched)] {
        if !list.is_empty() {
            s.push_str(&format!("\n  {label} ({}): {}", list.len(), list.join(", ")));
        }
    }
    s
}
