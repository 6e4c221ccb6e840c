//! The `Module` trait and parameter registration. A module's parameters are declared
//! at construction (name, shape, accepted dtypes) in a [`Registry`] shared by the
//! whole module tree, so `load` is a walk over declared names, checked one by one.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, RwLock};

use crate::params::ParameterFile;
use crate::tensor::{DType, Tensor};
use crate::{Error, Result};

/// Which element types a parameter may be loaded with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Accepts {
    /// F32, F16 or BF16 (computed in f32).
    Float,
    /// Float or any block-quantised type (matrix weights).
    FloatOrQuantized,
    /// Exactly this type.
    Exactly(DType),
}

impl Accepts {
    pub fn allows(self, d: DType) -> bool {
        match self {
            Accepts::Float => d.is_float(),
            Accepts::FloatOrQuantized => d.is_float() || d.is_quantized(),
            Accepts::Exactly(x) => x == d,
        }
    }
}

struct ParamInner {
    name: String,
    dims: Vec<usize>,
    accepts: Accepts,
    value: RwLock<Option<Tensor>>,
}

/// A declared parameter: its full dotted name, expected shape and dtypes, and (once
/// loaded) its tensor. Cloning shares the same slot.
#[derive(Clone)]
pub struct Param(Arc<ParamInner>);

impl Param {
    pub fn name(&self) -> &str {
        &self.0.name
    }

    pub fn dims(&self) -> &[usize] {
        &self.0.dims
    }

    pub fn accepts(&self) -> Accepts {
        self.0.accepts
    }

    /// The loaded tensor, or an error naming the parameter if it was never loaded.
    pub fn get(&self) -> Result<Tensor> {
        self.0
            .value
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .ok_or_else(|| Error::invalid(format!("parameter '{}' is not loaded (call load first)", self.name())))
    }

    pub fn is_loaded(&self) -> bool {
        self.0.value.read().unwrap_or_else(|p| p.into_inner()).is_some()
    }

    /// Why `t` cannot be this parameter, if it cannot.
    fn mismatch(&self, t: &Tensor) -> Option<String> {
        if t.dims() != self.dims() {
            Some(format!("{}: shape {:?} in file, module expects {:?}", self.name(), t.shape(), self.dims()))
        } else if !self.accepts().allows(t.dtype()) {
            Some(format!("{}: dtype {} in file, module accepts {:?}", self.name(), t.dtype(), self.accepts()))
        } else {
            None
        }
    }

    /// Set the tensor after checking its shape and dtype.
    pub fn set(&self, t: Tensor) -> Result<()> {
        if let Some(msg) = self.mismatch(&t) {
            return Err(Error::Load {
                module: String::new(),
                missing: vec![],
                unexpected: vec![],
                mismatched: vec![msg],
            });
        }
        *self.0.value.write().unwrap_or_else(|p| p.into_inner()) = Some(t);
        Ok(())
    }
}

impl std::fmt::Debug for Param {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Param({}, {:?}, {:?}, loaded={})", self.name(), self.dims(), self.accepts(), self.is_loaded())
    }
}

/// Where a module sits in its tree (`foo_net.linear_0`) and the list of parameters
/// declared by the whole tree. `child` makes the registry of a sub-module.
#[derive(Clone)]
pub struct Registry {
    path: Arc<str>,
    params: Arc<Mutex<Vec<Param>>>,
}

impl Registry {
    /// The root of a new module tree named `name` (may be empty: then parameter names
    /// have no prefix, as in GGUF files).
    pub fn new(name: &str) -> Registry {
        Registry { path: Arc::from(name), params: Arc::new(Mutex::new(Vec::new())) }
    }

    /// The registry of a child module: `foo_net` → `foo_net.linear_0`; list
    /// containers use indices: `layers` → `layers.0`.
    pub fn child(&self, name: impl std::fmt::Display) -> Registry {
        Registry { path: Arc::from(join(&self.path, &name.to_string())), params: self.params.clone() }
    }

    /// This module's full dotted name.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// Declare a parameter `path.name` of shape `dims`.
    pub fn param(&self, name: &str, dims: &[usize], accepts: Accepts) -> Param {
        let p = Param(Arc::new(ParamInner {
            name: join(&self.path, name),
            dims: dims.to_vec(),
            accepts,
            value: RwLock::new(None),
        }));
        self.params.lock().unwrap_or_else(|e| e.into_inner()).push(p.clone());
        p
    }

    /// The parameters declared under this module (itself and its descendants).
    pub fn params(&self) -> Vec<Param> {
        let all = self.params.lock().unwrap_or_else(|e| e.into_inner());
        all.iter().filter(|p| is_under(p.name(), &self.path)).cloned().collect()
    }
}

fn join(path: &str, name: &str) -> String {
    if path.is_empty() {
        name.to_string()
    } else {
        format!("{path}.{name}")
    }
}

fn is_under(name: &str, path: &str) -> bool {
    path.is_empty() || (name.len() > path.len() && name.starts_with(path) && name.as_bytes()[path.len()] == b'.')
}

/// A neural-network module: anything with named parameters and a `forward`.
///
/// Implement `registry` and `forward`; naming, listing and loading come for free.
pub trait Module: Send + Sync {
    /// Where this module sits in its tree, and the tree's parameter list.
    fn registry(&self) -> &Registry;

    /// Run the module on its inputs.
    fn forward(&self, inputs: &[Tensor]) -> Result<Vec<Tensor>>;

    /// The module's full dotted name.
    fn name(&self) -> &str {
        self.registry().path()
    }

    /// Parameters declared by this module and its children.
    fn params(&self) -> Vec<Param> {
        self.registry().params()
    }

    /// Load every parameter of this module from `file`, checking presence, shape and
    /// dtype. On any problem nothing is loaded and the error lists all missing,
    /// unexpected (in the file under this module's name but not declared) and
    /// mismatched parameters.
    fn load(&self, file: &ParameterFile) -> Result<()> {
        load_params(self.name(), &self.params(), file)
    }
}

fn load_params(module: &str, params: &[Param], file: &ParameterFile) -> Result<()> {
    let mut missing = Vec::new();
    let mut mismatched = Vec::new();
    let mut found = Vec::with_capacity(params.len());
    // A parameter may be declared twice (a tied output head shares the embedding's):
    // each problem is told once.
    let tell = |list: &mut Vec<String>, msg: String| {
        if !list.contains(&msg) {
            list.push(msg);
        }
    };
    for p in params {
        match file.get(p.name()) {
            None => tell(&mut missing, p.name().to_string()),
            Some(t) => match p.mismatch(t) {
                Some(msg) => tell(&mut mismatched, msg),
                None => found.push((p, t.clone())),
            },
        }
    }
    let declared: BTreeSet<&str> = params.iter().map(|p| p.name()).collect();
    let unexpected: Vec<String> =
        file.names().filter(|n| is_under(n, module) && !declared.contains(n)).map(str::to_string).collect();
    if !missing.is_empty() || !unexpected.is_empty() || !mismatched.is_empty() {
        return Err(Error::Load { module: module.to_string(), missing, unexpected, mismatched });
    }
    for (p, t) in found {
        *p.0.value.write().unwrap_or_else(|e| e.into_inner()) = Some(t);
    }
    Ok(())
}

/// A list of modules named `prefix.0`, `prefix.1`, ... (transformer blocks).
#[derive(Clone)]
pub struct ModuleList<M> {
    registry: Registry,
    items: Vec<M>,
}

impl<M> ModuleList<M> {
    /// Build `n` children of `registry` with `make(child_registry, index)`.
    pub fn new(registry: &Registry, n: usize, mut make: impl FnMut(&Registry, usize) -> M) -> Self {
        let items = (0..n).map(|i| make(&registry.child(i), i)).collect();
        ModuleList { registry: registry.clone(), items }
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    pub fn iter(&self) -> std::slice::Iter<'_, M> {
        self.items.iter()
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }
}

impl<M> std::ops::Index<usize> for ModuleList<M> {
    type Output = M;
    fn index(&self, i: usize) -> &M {
        &self.items[i]
    }
}

impl<'a, M> IntoIterator for &'a ModuleList<M> {
    type Item = &'a M;
    type IntoIter = std::slice::Iter<'a, M>;
    fn into_iter(self) -> Self::IntoIter {
        self.items.iter()
    }
}
