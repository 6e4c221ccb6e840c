//! Parameter files: named tensors in memory, read from safetensors / GGUF / `.mllm`
//! files (by mmap) and written back. Knows tensors, not modules.

pub mod gguf;
mod meta;
pub mod mllm_file;
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
    /// MLLM's own `.mllm` files: i32 magic 20012 (version 1) or 0x519A (version 2).
    Mllm,
}

/// How many leading bytes [`ParameterFile::open`] reads for [`detect_format`].
const FORMAT_PROBE_LEN: usize = 16;

/// The format of a file starting with `head` (its first bytes; `open` passes up to 16),
/// or `None` if no reader recognises it.
pub fn detect_format(head: &[u8]) -> Option<FileFormat> {
    let magic = head.get(..4).map(|m| i32::from_le_bytes([m[0], m[1], m[2], m[3]]));
    let is_mllm = matches!(magic, Some(mllm_file::V1_MAGIC | mllm_file::V2_MAGIC));
    // A safetensors header length below 4 GiB leaves bytes 4..8 zero, while a version 2
    // `.mllm` file has its (non-zero) version there; so only a `.mllm` magic followed by
    // zeros and `{` (a safetensors header of exactly 20012 or 0x519A bytes) is safetensors.
    let version_field_zero = head.get(4..8).is_some_and(|v| v == [0; 4]);
    if head.starts_with(b"GGUF") {
        Some(FileFormat::Gguf)
    } else if is_mllm && !(version_field_zero && head.get(8) == Some(&b'{')) {
        Some(FileFormat::Mllm)
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
            Some(FileFormat::Mllm) => mllm_file::read(path),
            None => {
                let hex: Vec<String> = head.iter().map(|b| format!("{b:02x}")).collect();
                Err(Error::format(
                    path.display().to_string(),
                    format!(
                        "unrecognised format (first {} bytes: {}); expected safetensors, GGUF or .mllm",
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
