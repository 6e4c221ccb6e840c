//! Parameter files: named tensors in memory, read from safetensors / GGUF / `.mllm`
//! files (by mmap) and written back. Knows tensors, not modules.

pub mod gguf;
mod meta;
mod safetensors;

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

use indexmap::IndexMap;

use crate::tensor::Tensor;
use crate::{Error, Result};

/// A metadata value from a model file (GGUF key-values, safetensors `__metadata__`).
#[derive(Clone, Debug, PartialEq)]
pub enum MetaValue {
    Bool(bool),
    Int(i64),
    UInt(u64),
    Float(f64),
    Str(String),
    Array(Vec<MetaValue>),
}

/// Named tensors, in insertion (or file) order, plus the file's metadata.
#[derive(Clone, Default)]
pub struct ParameterFile {
    tensors: IndexMap<String, Tensor>,
    metadata: BTreeMap<String, MetaValue>,
}

impl ParameterFile {
    /// An empty parameter file (the seed's `ParameterFile::create()`).
    pub fn create() -> ParameterFile {
        ParameterFile::default()
    }

    /// Add a tensor under `name`. A name may be pushed only once.
    pub fn push(&mut self, name: impl Into<String>, tensor: Tensor) -> Result<()> {
        let name = name.into();
        if self.tensors.contains_key(&name) {
            return Err(Error::invalid(format!("parameter '{name}' is already in the file")));
        }
        let tensor = if tensor.name() == Some(name.as_str()) { tensor } else { tensor.with_name(&name) };
        self.tensors.insert(name, tensor);
        Ok(())
    }

    pub fn get(&self, name: &str) -> Option<&Tensor> {
        self.tensors.get(name)
    }

    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.tensors.keys().map(String::as_str)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &Tensor)> {
        self.tensors.iter().map(|(k, v)| (k.as_str(), v))
    }

    pub fn len(&self) -> usize {
        self.tensors.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }

    pub fn metadata(&self) -> &BTreeMap<String, MetaValue> {
        &self.metadata
    }

    pub fn set_metadata(&mut self, key: impl Into<String>, value: MetaValue) {
        self.metadata.insert(key.into(), value);
    }
}

// ---- opening a file of any known format --------------------------------------------

/// The file formats [`ParameterFile::open`] recognises from their first bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum FileFormat {
    /// 8-byte little-endian header length, then a JSON header starting with `{`.
    Safetensors,
    /// Magic `GGUF`.
    Gguf,
}

/// How many leading bytes [`ParameterFile::open`] reads for [`detect_format`].
const FORMAT_PROBE_LEN: usize = 16;

/// The format of a file starting with `head` (its first bytes; `open` passes up to 16),
/// or `None` if no reader recognises it.
pub fn detect_format(head: &[u8]) -> Option<FileFormat> {
    if head.starts_with(b"GGUF") {
        Some(FileFormat::Gguf)
    } else if head.len() > 8 && head[8] == b'{' {
        Some(FileFormat::Safetensors)
    } else {
        None
    }
}

impl ParameterFile {
    /// Open a parameter file, choosing the reader from the file's first bytes (see
    /// [`FileFormat`]). Large files are memory-mapped, not read: see
    /// [`open_safetensors`](Self::open_safetensors) for what that implies.
    ///
    /// ```
    /// use mllm::{DType, MemType, ParameterFile, Tensor};
    ///
    /// # fn main() -> mllm::Result<()> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// let path = dir.path().join("tiny.safetensors");
    /// let mut params = ParameterFile::create();
    /// params.push("proj.weight", Tensor::from_vec(vec![1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0], &[2, 3])?)?;
    /// params.save_safetensors(&path)?;
    ///
    /// let loaded = ParameterFile::open(&path)?;
    /// let w = loaded.get("proj.weight").unwrap();
    /// assert_eq!((w.dims(), w.dtype()), (&[2, 3][..], DType::F32));
    /// assert_eq!(w.mem_type(), MemType::ParamsMmap); // read in place, not copied
    /// assert_eq!(w.to_vec::<f32>()?, [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
    /// # Ok(())
    /// # }
    /// ```
    pub fn open(path: impl AsRef<Path>) -> Result<ParameterFile> {
        let path = path.as_ref();
        let head = read_head(path)?;
        match detect_format(&head) {
            Some(FileFormat::Safetensors) => ParameterFile::open_safetensors(path),
            Some(FileFormat::Gguf) => gguf::read(path),
            None => {
                let hex: Vec<String> = head.iter().map(|b| format!("{b:02x}")).collect();
                Err(Error::format(
                    path.display().to_string(),
                    format!(
                        "unrecognised format (first {} bytes: {}); expected safetensors or GGUF",
                        head.len(),
                        if hex.is_empty() { "none".to_string() } else { hex.join(" ") }
                    ),
                ))
            }
        }
    }
}

/// The first (up to) `FORMAT_PROBE_LEN` bytes of the file.
fn read_head(path: &Path) -> Result<Vec<u8>> {
    let file = std::fs::File::open(path).map_err(|e| Error::io(format!("{}: cannot open", path.display()), e))?;
    let mut head = Vec::with_capacity(FORMAT_PROBE_LEN);
    file.take(FORMAT_PROBE_LEN as u64)
        .read_to_end(&mut head)
        .map_err(|e| Error::io(format!("{}: cannot read", path.display()), e))?;
    Ok(head)
}

impl std::fmt::Debug for ParameterFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ParameterFile({} tensors, {} metadata keys)", self.tensors.len(), self.metadata.len())
    }
}
