//! Tensors: a shape, strides and dtype over a reference-counted [`Storage`], so clones
//! and views (reshape, permute, narrow) are cheap. Computation lives in `ops.rs`,
//! which checks shapes and calls the `kernels` layer; this layer never reaches up.

mod display;
mod dtype;
mod element;
pub mod ops;
mod packed;
mod shape;
mod storage;
mod weight;

use std::sync::Arc;

pub use dtype::{DType, MemType};
pub use element::Element;
pub use packed::PackedLinear;
pub(crate) use shape::for_each_run;
pub use shape::Shape;
pub use storage::Storage;
pub(crate) use weight::{aligned_half, half_kind, half_slice};
pub use weight::{Weight, WeightOptions};

use crate::{Error, Result};

/// An n-dimensional array. Cloning is cheap (the storage is shared).
#[derive(Clone)]
pub struct Tensor {
    storage: Arc<Storage>,
    shape: Shape,
    strides: Vec<usize>,
    /// Offset of the first element in the storage, in elements.
    offset: usize,
    dtype: DType,
    name: Option<Arc<str>>,
}

/// A tensor that has a shape, dtype and memory type but no memory yet: the seed's
/// `Tensor::empty(...)`. Call [`EmptyTensor::alloc`] to get a (zero-filled) [`Tensor`].
#[derive(Clone, Debug)]
#[must_use = "an empty tensor owns no memory until alloc() is called"]
pub struct EmptyTensor {
    shape: Shape,
    dtype: DType,
    mem_type: MemType,
    name: Option<Arc<str>>,
}

impl EmptyTensor {
    /// Set the memory type (default [`MemType::Normal`]).
    pub fn mem_type(mut self, m: MemType) -> Self {
        self.mem_type = m;
        self
    }

    /// Give the tensor a name (parameters are looked up by name).
    pub fn name(mut self, name: impl AsRef<str>) -> Self {
        self.name = Some(Arc::from(name.as_ref()));
        self
    }

    pub fn dims(&self) -> &[usize] {
        self.shape.dims()
    }

    /// Allocate zero-filled memory. Fails if the size overflows or is not a whole
    /// number of blocks of a quantised dtype.
    pub fn alloc(self) -> Result<Tensor> {
        let n = self.shape.checked_elem_count()?;
        let bytes = byte_len(self.dtype, n, &self.shape)?;
        let storage = Storage::zeroed(bytes, self.mem_type, self.dtype, self.name.as_ref());
        Ok(Tensor::from_parts(Arc::new(storage), self.shape, self.dtype, self.name))
    }
}

fn byte_len(dtype: DType, n: usize, shape: &Shape) -> Result<usize> {
    if dtype.is_quantized() {
        let last = shape.dims().last().copied().unwrap_or(1);
        if last % dtype.block_len() != 0 {
            return Err(Error::shape(
                "alloc",
                format!("last dimension of {shape:?} is not a multiple of the {dtype} block ({})", dtype.block_len()),
            ));
        }
    }
    dtype.bytes_for(n).ok_or_else(|| Error::Overflow(format!("{n} elements of {dtype} for shape {shape:?}")))
}

impl Tensor {
    fn from_parts(storage: Arc<Storage>, shape: Shape, dtype: DType, name: Option<Arc<str>>) -> Tensor {
        let strides = shape.contiguous_strides();
        Tensor { storage, shape, strides, offset: 0, dtype, name }
    }

    /// Declare a tensor without allocating it (see [`EmptyTensor`]).
    pub fn empty(dims: &[usize], dtype: DType) -> EmptyTensor {
        EmptyTensor { shape: Shape::from(dims), dtype, mem_type: MemType::Normal, name: None }
    }

    /// A zero-filled tensor.
    pub fn zeros(dims: &[usize], dtype: DType) -> Result<Tensor> {
        Tensor::empty(dims, dtype).alloc()
    }

    /// An f32 tensor filled with `value`.
    pub fn full(dims: &[usize], value: f32) -> Result<Tensor> {
        let n = Shape::from(dims).checked_elem_count()?;
        Tensor::from_vec(vec![value; n], dims)
    }

    /// A tensor that takes the values of `data` (row-major) with the given shape.
    pub fn from_vec<T: Element>(data: Vec<T>, dims: &[usize]) -> Result<Tensor> {
        Tensor::from_slice(&data, dims)
    }

    /// A tensor holding a copy of `data` (row-major) with the given shape.
    pub fn from_slice<T: Element>(data: &[T], dims: &[usize]) -> Result<Tensor> {
        let shape = Shape::from(dims);
        let n = shape.checked_elem_count()?;
        if n != data.len() {
            return Err(Error::shape(
                "from_slice",
                format!("{} values do not fill shape {shape:?} ({n} elements)", data.len()),
            ));
        }
        let storage = Storage::copy_of(bytemuck::cast_slice(data), MemType::Normal, T::DTYPE, None);
        Ok(Tensor::from_parts(Arc::new(storage), shape, T::DTYPE, None))
    }

    /// A tensor holding a copy of raw little-endian bytes of `dtype` (any dtype,
    /// including the block-quantised ones).
    pub fn from_bytes(bytes: &[u8], dtype: DType, dims: &[usize], mem_type: MemType) -> Result<Tensor> {
        let shape = Shape::from(dims);
        let want = byte_len(dtype, shape.checked_elem_count()?, &shape)?;
        if want != bytes.len() {
            return Err(Error::shape(
                "from_bytes",
                format!("{} bytes given, {dtype} {shape:?} needs {want}", bytes.len()),
            ));
        }
        let storage = Storage::copy_of(bytes, mem_type, dtype, None);
        Ok(Tensor::from_parts(Arc::new(storage), shape, dtype, None))
    }

    /// A tensor that reads `dtype` data in place from a memory-mapped file, starting at
    /// byte `offset`. Fails if the range does not lie inside the map.
    pub fn from_mmap(
        map: Arc<memmap2::Mmap>,
        offset: usize,
        dtype: DType,
        dims: &[usize],
        name: Option<&str>,
    ) -> Result<Tensor> {
        let shape = Shape::from(dims);
        let len = byte_len(dtype, shape.checked_elem_count()?, &shape)?;
        let end = offset.checked_add(len).ok_or_else(|| Error::Overflow("mapped tensor range".into()))?;
        if end > map.len() {
            return Err(Error::shape(
                "from_mmap",
                format!("bytes {offset}..{end} lie past the end of the file ({} bytes)", map.len()),
            ));
        }
        let name: Option<Arc<str>> = name.map(Arc::from);
        let storage = Storage::mapped(map, offset, len, dtype, name.as_ref());
        Ok(Tensor::from_parts(Arc::new(storage), shape, dtype, name))
    }

    // ---- accessors -------------------------------------------------------------

    pub fn shape(&self) -> &Shape {
        &self.shape
    }

    pub fn dims(&self) -> &[usize] {
        self.shape.dims()
    }

    pub fn rank(&self) -> usize {
        self.shape.rank()
    }

    pub fn elem_count(&self) -> usize {
        self.shape.elem_count()
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    pub fn mem_type(&self) -> MemType {
        self.storage.mem_type()
    }

    pub fn strides(&self) -> &[usize] {
        &self.strides
    }

    pub fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }

    /// The same tensor with a name. The first name given to a storage also labels it
    /// in the memory report.
    pub fn with_name(mut self, name: impl AsRef<str>) -> Tensor {
        self.storage.rename(name.as_ref());
        self.name = Some(Arc::from(name.as_ref()));
        self
    }

    /// Size of dimension `dim` (negative counts from the end).
    pub fn dim(&self, dim: isize) -> Result<usize> {
        Ok(self.dims()[self.shape.dim_index(dim, "dim")?])
    }

    /// True if the elements are laid out row-major without gaps.
    pub fn is_contiguous(&self) -> bool {
        let mut expect = 1;
        for (&d, &s) in self.dims().iter().zip(&self.strides).rev() {
            if d != 1 && s != expect {
                return false;
            }
            expect *= d;
        }
        true
    }

    /// True if both tensors view the same storage.
    pub fn same_storage(&self, other: &Tensor) -> bool {
        Arc::ptr_eq(&self.storage, &other.storage)
    }

    /// Byte size of the elements this tensor views (not of its whole storage).
    pub fn nbytes(&self) -> usize {
        self.dtype.bytes_for(self.elem_count()).unwrap_or(0)
    }

    fn byte_offset(&self, elems: usize) -> usize {
        elems / self.dtype.block_len() * self.dtype.block_bytes()
    }

    /// The raw bytes of a contiguous tensor (any dtype).
    pub fn raw_bytes(&self) -> Result<&[u8]> {
        if !self.is_contiguous() {
            return Err(Error::invalid("raw_bytes needs a contiguous tensor; call .contiguous() first"));
        }
        let start = self.byte_offset(self.offset);
        Ok(&self.storage.bytes()[start..start + self.nbytes()])
    }

    /// Let the OS drop this tensor's pages of a memory-mapped file from the resident set
    /// (e.g. after making a repacked copy); they are read from the file again if used.
    /// Does nothing for heap tensors.
    pub fn release_mapped_pages(&self) {
        if let Ok(b) = self.raw_bytes() {
            let start = b.as_ptr() as usize - self.storage.bytes().as_ptr() as usize;
            self.storage.release_mapped(start, b.len());
        }
    }

    /// Hint that this tensor's rows of a memory-mapped file will be read in random order
    /// (an embedding table): only the pages touched become resident. No-op on the heap.
    pub fn advise_random_access(&self) {
        self.storage.advise_random();
    }

    /// The elements of a contiguous tensor of element type `T`, without copying.
    pub fn as_slice<T: Element>(&self) -> Result<&[T]> {
        self.check_dtype::<T>("as_slice")?;
        let bytes = self.raw_bytes()?;
        bytemuck::try_cast_slice(bytes)
            .map_err(|e| Error::invalid(format!("as_slice: storage not aligned for {}: {e}", T::DTYPE)))
    }

    fn check_dtype<T: Element>(&self, op: &'static str) -> Result<()> {
        if self.dtype != T::DTYPE {
            return Err(Error::DType {
                op,
                dtype: self.dtype,
                msg: format!("the tensor holds {}, not {}", self.dtype, T::DTYPE),
            });
        }
        Ok(())
    }

    /// A row-major copy of the elements (any layout), of the tensor's own type `T`.
    pub fn to_vec<T: Element>(&self) -> Result<Vec<T>> {
        self.check_dtype::<T>("to_vec")?;
        let t = self.contiguous()?;
        Ok(t.as_slice::<T>()?.to_vec())
    }

    /// A row-major copy as f32, converting F16/BF16/I32/U8 and dequantising block types.
    pub fn to_f32_vec(&self) -> Result<Vec<f32>> {
        let t = self.contiguous()?;
        ops::convert::bytes_to_f32(t.raw_bytes()?, t.dtype)
    }

    /// Mutable elements, copying first if the storage is shared, mapped or strided
    /// (copy on write), so other handles never see the change.
    pub fn data_mut<T: Element>(&mut self) -> Result<&mut [T]> {
        self.check_dtype::<T>("data_mut")?;
        let needs_copy = !self.is_contiguous()
            || self.offset != 0
            || self.storage.len() != self.nbytes()
            || Arc::get_mut(&mut self.storage).and_then(|s| s.try_bytes_mut()).is_none();
        if needs_copy {
            let bytes = self.contiguous_bytes()?;
            let storage = Storage::copy_of(&bytes, MemType::Normal, self.dtype, self.name.as_ref());
            *self = Tensor::from_parts(Arc::new(storage), self.shape.clone(), self.dtype, self.name.clone());
        }
        let storage = Arc::get_mut(&mut self.storage).expect("storage was made unique above");
        let bytes = storage.try_bytes_mut().expect("heap storage");
        bytemuck::try_cast_slice_mut(bytes).map_err(|e| Error::invalid(format!("data_mut: {e}")))
    }

    // ---- views -----------------------------------------------------------------

    fn view(&self, shape: Shape, strides: Vec<usize>, offset: usize) -> Tensor {
        Tensor { storage: self.storage.clone(), shape, strides, offset, dtype: self.dtype, name: self.name.clone() }
    }

    fn check_block_view(&self, op: &'static str, strides: &[usize], dims: &[usize], offset: usize) -> Result<()> {
        let b = self.dtype.block_len();
        if b == 1 {
            return Ok(());
        }
        let last_ok = dims.last().is_none_or(|&d| d % b == 0) && strides.last().is_none_or(|&s| s == 1);
        let rest_ok = strides.iter().rev().skip(1).all(|&s| s % b == 0) && offset.is_multiple_of(b);
        if last_ok && rest_ok {
            Ok(())
        } else {
            Err(Error::DType {
                op,
                dtype: self.dtype,
                msg: "views of block-quantised tensors must keep whole blocks along the last dimension".into(),
            })
        }
    }

    /// The same elements with another shape; one dimension may be `usize::MAX`
    /// meaning "whatever is left". Copies only if the tensor is not contiguous.
    pub fn reshape(&self, dims: &[usize]) -> Result<Tensor> {
        let n = self.elem_count();
        let mut dims = dims.to_vec();
        if let Some(pos) = dims.iter().position(|&d| d == usize::MAX) {
            let known: usize = dims.iter().enumerate().filter(|&(i, _)| i != pos).map(|(_, &d)| d).product();
            if known == 0 || !n.is_multiple_of(known) {
                return Err(Error::shape("reshape", format!("cannot infer a dimension of {dims:?} for {n} elements")));
            }
            dims[pos] = n / known;
        }
        let shape = Shape::from(dims);
        if shape.checked_elem_count()? != n {
            return Err(Error::shape("reshape", format!("{:?} ({n} elements) cannot become {shape:?}", self.shape)));
        }
        let src = if self.is_contiguous() { self.clone() } else { self.contiguous()? };
        let strides = shape.contiguous_strides();
        src.check_block_view("reshape", &strides, shape.dims(), src.offset)?;
        Ok(src.view(shape, strides, src.offset))
    }

    /// Reorder dimensions: `permute(&[0, 2, 1, 3])` swaps the middle two.
    pub fn permute(&self, order: &[usize]) -> Result<Tensor> {
        let r = self.rank();
        let mut seen = vec![false; r];
        if order.len() != r || order.iter().any(|&d| d >= r || std::mem::replace(&mut seen[d], true)) {
            return Err(Error::shape("permute", format!("{order:?} is not a permutation of {r} dimensions")));
        }
        let dims: Vec<usize> = order.iter().map(|&d| self.dims()[d]).collect();
        let strides: Vec<usize> = order.iter().map(|&d| self.strides[d]).collect();
        self.check_block_view("permute", &strides, &dims, self.offset)?;
        Ok(self.view(Shape(dims), strides, self.offset))
    }

    /// Swap two dimensions (negative indices count from the end).
    pub fn transpose(&self, d0: isize, d1: isize) -> Result<Tensor> {
        let a = self.shape.dim_index(d0, "transpose")?;
        let b = self.shape.dim_index(d1, "transpose")?;
        let mut order: Vec<usize> = (0..self.rank()).collect();
        order.swap(a, b);
        self.permute(&order)
    }

    /// Elements `start..start + len` along `dim`, without copying.
    pub fn narrow(&self, dim: isize, start: usize, len: usize) -> Result<Tensor> {
        let d = self.shape.dim_index(dim, "narrow")?;
        let size = self.dims()[d];
        if start.checked_add(len).is_none_or(|end| end > size) {
            return Err(Error::shape(
                "narrow",
                format!("range {start}..{} outside dimension {d} of {:?}", start.saturating_add(len), self.shape),
            ));
        }
        let mut dims = self.dims().to_vec();
        dims[d] = len;
        let offset = self.offset + start * self.strides[d];
        self.check_block_view("narrow", &self.strides, &dims, offset)?;
        Ok(self.view(Shape(dims), self.strides.clone(), offset))
    }

    /// Insert a dimension of size 1 at `dim` (0..=rank).
    pub fn unsqueeze(&self, dim: usize) -> Result<Tensor> {
        if dim > self.rank() {
            return Err(Error::shape("unsqueeze", format!("dimension {dim} out of range for {:?}", self.shape)));
        }
        let mut dims = self.dims().to_vec();
        let mut strides = self.strides.clone();
        let s = if dim < self.rank() { self.strides[dim] * self.dims()[dim] } else { 1 };
        dims.insert(dim, 1);
        strides.insert(dim, s);
        Ok(self.view(Shape(dims), strides, self.offset))
    }

    /// Remove a dimension of size 1.
    pub fn squeeze(&self, dim: isize) -> Result<Tensor> {
        let d = self.shape.dim_index(dim, "squeeze")?;
        if self.dims()[d] != 1 {
            return Err(Error::shape("squeeze", format!("dimension {d} of {:?} is not 1", self.shape)));
        }
        let mut dims = self.dims().to_vec();
        let mut strides = self.strides.clone();
        dims.remove(d);
        strides.remove(d);
        Ok(self.view(Shape(dims), strides, self.offset))
    }

    /// View with `dims`, repeating size-1 dimensions (and adding leading ones) by
    /// stride 0, following NumPy's broadcasting rules.
    pub fn broadcast_as(&self, dims: &[usize]) -> Result<Tensor> {
        if dims.len() < self.rank() {
            return Err(Error::shape("broadcast", format!("cannot broadcast {:?} to {dims:?}", self.shape)));
        }
        let lead = dims.len() - self.rank();
        let mut strides = vec![0; dims.len()];
        for (i, &want) in dims.iter().enumerate().skip(lead) {
            let have = self.dims()[i - lead];
            if have == want {
                strides[i] = self.strides[i - lead];
            } else if have != 1 {
                return Err(Error::shape("broadcast", format!("cannot broadcast {:?} to {dims:?}", self.shape)));
            }
        }
        if self.dtype.is_quantized() {
            return Err(Error::dtype("broadcast", self.dtype));
        }
        Ok(self.view(Shape::from(dims), strides, self.offset))
    }

    fn contiguous_bytes(&self) -> Result<Vec<u8>> {
        if self.is_contiguous() {
            return Ok(self.raw_bytes()?.to_vec());
        }
        let eb = self.dtype.block_bytes();
        let bl = self.dtype.block_len();
        let src = self.storage.bytes();
        let mut out = Vec::with_capacity(self.nbytes());
        for_each_run(self.dims(), &self.strides, self.offset, |start, len| {
            let s = start / bl * eb;
            out.extend_from_slice(&src[s..s + len / bl * eb]);
        });
        Ok(out)
    }

    /// A contiguous tensor with the same values: the tensor itself if it already is
    /// contiguous, else a row-major copy.
    pub fn contiguous(&self) -> Result<Tensor> {
        if self.is_contiguous() {
            return Ok(self.clone());
        }
        let bytes = self.contiguous_bytes()?;
        let storage = Storage::copy_of(&bytes, MemType::Normal, self.dtype, None);
        let mut t = Tensor::from_parts(Arc::new(storage), self.shape.clone(), self.dtype, None);
        t.name = self.name.clone();
        Ok(t)
    }

    /// A copy that owns fresh storage of the given memory type.
    pub fn copy_to(&self, mem_type: MemType) -> Result<Tensor> {
        let bytes = self.contiguous_bytes()?;
        let storage = Storage::copy_of(&bytes, mem_type, self.dtype, self.name.as_ref());
        let mut t = Tensor::from_parts(Arc::new(storage), self.shape.clone(), self.dtype, None);
        t.name = self.name.clone();
        Ok(t)
    }
}

#[cfg(test)]
mod tests;
