//! Parameter files: named tensors in memory, read from safetensors / GGUF / `.mllm`
//! files (by mmap) and written back. Knows tensors, not modules.

pub mod gguf;
mod meta;

use std::collections::BTreeMap;

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

impl std::fmt::Debug for ParameterFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ParameterFile({} tensors, {} metadata keys)", self.tensors.len(), self.metadata.len())
    }
}
