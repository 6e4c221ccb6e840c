//! GGUF (v2, v3) reader: header, metadata, tensor infos, and tensors read in place from
//! a memory map (or copied from a byte buffer). Every count, length and offset is checked
//! against the bytes that are really there before anything is allocated or sliced, so a
//! corrupt file gives an `Error::Format`, never a panic. Writing GGUF is not done here.

use std::collections::HashSet;
use std::fs::File;
use std::path::Path;
use std::sync::Arc;

use memmap2::Mmap;

use super::{MetaValue, ParameterFile};
use crate::tensor::{DType, MemType, Tensor};
use crate::{Error, Result};

const MAGIC: &[u8; 4] = b"GGUF";
/// Data alignment when the file has no `general.alignment` key.
pub const DEFAULT_ALIGNMENT: usize = 32;
/// GGML tensors have at most this many dimensions.
const MAX_DIMS: usize = 4;
/// Deepest nesting of arrays we follow (GGML itself writes none; this bounds recursion).
const MAX_ARRAY_DEPTH: usize = 8;
/// Largest `general.alignment` we accept.
const MAX_ALIGNMENT: usize = 1 << 20;

/// Everything a GGUF file says about itself, parsed and checked, without tensor data.
#[derive(Clone, Debug, PartialEq)]
pub struct GgufInfo {
    pub version: u32,
    /// Alignment of the data section and of every tensor's data.
    pub alignment: usize,
    /// Byte offset of the data section in the file.
    pub data_offset: usize,
    /// Metadata in file order.
    pub metadata: Vec<(String, MetaValue)>,
    /// Tensors in file order.
    pub tensors: Vec<GgufTensorInfo>,
}

/// One tensor's entry in the file.
#[derive(Clone, Debug, PartialEq)]
pub struct GgufTensorInfo {
    pub name: String,
    /// Row-major dimensions (GGUF stores them fastest first; these are reversed).
    pub dims: Vec<usize>,
    /// GGML's type id as written in the file.
    pub ggml_type: u32,
    /// The type as this crate knows it; `None` for GGML types it cannot compute with
    /// (`parse` still describes such tensors; `read` refuses them).
    pub dtype: Option<DType>,
    /// Absolute byte offset of the data in the file.
    pub offset: usize,
    /// Byte length of the data; `None` only for type ids whose layout is unknown.
    pub nbytes: Option<usize>,
}

impl GgufTensorInfo {
    /// GGML's name of the tensor's type.
    pub fn type_name(&self) -> &'static str {
        ggml_type_name(self.ggml_type)
    }

    /// The type and byte length of a tensor this crate can load, or the error that says why not.
    fn loadable(&self, label: &str) -> Result<(DType, usize)> {
        match (self.dtype, self.nbytes) {
            (Some(d), Some(n)) => Ok((d, n)),
            _ => Err(Error::format(
                label,
                format!("tensor '{}' has unsupported ggml type {} ({})", self.name, self.ggml_type, self.type_name()),
            )),
        }
    }
}

/// The `DType` of a GGML type id, or `None` for the types we do not support.
pub fn dtype_of_ggml_type(id: u32) -> Option<DType> {
    Some(match id {
        0 => DType::F32,
        1 => DType::F16,
        2 => DType::Q4_0,
        3 => DType::Q4_1,
        6 => DType::Q5_0,
        7 => DType::Q5_1,
        8 => DType::Q8_0,
        12 => DType::Q4_K,
        13 => DType::Q5_K,
        14 => DType::Q6_K,
        26 => DType::I32,
        30 => DType::BF16,
        _ => return None,
    })
}

/// Every GGML type id we know of: its name and, where GGML still defines a storage for
/// it, (weights per block, bytes per block). Ids 4 and 5 were retired long ago and
/// 31-33 / 36-38 were in-memory repackings that never had a file layout.
const GGML_TYPES: [(&str, Option<(usize, usize)>); 40] = [
    ("F32", Some((1, 4))),
    ("F16", Some((1, 2))),
    ("Q4_0", Some((32, 18))),
    ("Q4_1", Some((32, 20))),
    ("Q4_2", None),
    ("Q4_3", None),
    ("Q5_0", Some((32, 22))),
    ("Q5_1", Some((32, 24))),
    ("Q8_0", Some((32, 34))),
    ("Q8_1", Some((32, 36))),
    ("Q2_K", Some((256, 84))),
    ("Q3_K", Some((256, 110))),
    ("Q4_K", Some((256, 144))),
    ("Q5_K", Some((256, 176))),
    ("Q6_K", Some((256, 210))),
    ("Q8_K", Some((256, 292))),
    ("IQ2_XXS", Some((256, 66))),
    ("IQ2_XS", Some((256, 74))),
    ("IQ3_XXS", Some((256, 98))),
    ("IQ1_S", Some((256, 50))),
    ("IQ4_NL", Some((32, 18))),
    ("IQ3_S", Some((256, 110))),
    ("IQ2_S", Some((256, 82))),
    ("IQ4_XS", Some((256, 136))),
    ("I8", Some((1, 1))),
    ("I16", Some((1, 2))),
    ("I32", Some((1, 4))),
    ("I64", Some((1, 8))),
    ("F64", Some((1, 8))),
    ("IQ1_M", Some((256, 56))),
    ("BF16", Some((1, 2))),
    ("Q4_0_4_4", None),
    ("Q4_0_4_8", None),
    ("Q4_0_8_8", None),
    ("TQ1_0", Some((256, 54))),
    ("TQ2_0", Some((256, 66))),
    ("IQ4_NL_4_4", None),
    ("IQ4_NL_4_8", None),
    ("IQ4_NL_8_8", None),
    ("MXFP4", Some((32, 17))),
];

/// GGML's name of a type id ("unknown" past the ids we know).
pub fn ggml_type_name(id: u32) -> &'static str {
    GGML_TYPES.get(id as usize).map_or("unknown", |t| t.0)
}

/// (weights per block, bytes per block) of a GGML type id, if it has a file layout we know.
fn ggml_block(id: u32) -> Option<(usize, usize)> {
    match dtype_of_ggml_type(id) {
        Some(d) => Some((d.block_len(), d.block_bytes())),
        None => GGML_TYPES.get(id as usize).and_then(|t| t.1),
    }
}

/// Read a GGUF file by memory-mapping it: tensors view the map in place
/// (`MemType::ParamsMmap`) and the metadata goes into the file's metadata.
pub fn read(path: impl AsRef<Path>) -> Result<ParameterFile> {
    let path = path.as_ref();
    let label = path.display().to_string();
    let file = File::open(path).map_err(|e| Error::io(format!("opening {label}"), e))?;
    // SAFETY: the map is read-only and only ever read through `&[u8]`. As with every
    // mmap-based loader, another process truncating or rewriting the file while it is
    // mapped would break that, which no check inside this process can rule out.
    let map = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(format!("mapping {label}"), e))?;
    let map = Arc::new(map);
    let info = parse(&map, &label)?;
    build(info, &label, |t, dtype, _| Tensor::from_mmap(map.clone(), t.offset, dtype, &t.dims, Some(&t.name)))
}

/// Parse a GGUF file's header, metadata and tensor table without loading any tensor,
/// also when some tensors have types this crate cannot compute with (for `mllm inspect`).
pub fn describe(path: impl AsRef<Path>) -> Result<GgufInfo> {
    let path = path.as_ref();
    let label = path.display().to_string();
    let file = File::open(path).map_err(|e| Error::io(format!("opening {label}"), e))?;
    // SAFETY: as in `read`: a read-only map, read only through `&[u8]` while it lives.
    let map = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(format!("mapping {label}"), e))?;
    parse(&map, &label)
}

/// Whether the file at `path` starts with the GGUF magic number.
pub fn is_gguf(path: impl AsRef<Path>) -> bool {
    use std::io::Read;
    let mut magic = [0u8; 4];
    File::open(path).and_then(|mut f| f.read_exact(&mut magic)).is_ok() && &magic == MAGIC
}

/// Read GGUF from bytes in memory; tensor data is copied (`MemType::ParamsNormal`).
pub fn read_bytes(bytes: &[u8]) -> Result<ParameterFile> {
    let label = "<gguf bytes>";
    let info = parse(bytes, label)?;
    build(info, label, |t, dtype, nbytes| {
        let data = &bytes[t.offset..t.offset + nbytes];
        Tensor::from_bytes(data, dtype, &t.dims, MemType::ParamsNormal)
    })
}

fn build(
    info: GgufInfo,
    label: &str,
    mut tensor: impl FnMut(&GgufTensorInfo, DType, usize) -> Result<Tensor>,
) -> Result<ParameterFile> {
    let mut file = ParameterFile::create();
    for t in &info.tensors {
        let (dtype, nbytes) = t.loadable(label)?;
        let x = tensor(t, dtype, nbytes).map_err(|e| Error::format(label, format!("tensor '{}': {e}", t.name)))?;
        file.push(t.name.clone(), x)?;
    }
    for (k, v) in info.metadata {
        file.set_metadata(k, v);
    }
    Ok(file)
}

/// Parse and check the header, metadata and tensor infos of GGUF bytes. `path` only
/// labels errors. Tensors of GGML types this crate cannot compute with are described
/// (`dtype: None`), not refused: `read` and `read_bytes` refuse them.
pub fn parse(bytes: &[u8], path: &str) -> Result<GgufInfo> {
    let mut c = Cursor { buf: bytes, pos: 0, path };
    let magic = c.take(4, "the magic number")?;
    if magic != MAGIC {
        return Err(c.err_at(0, format!("not a GGUF file: magic is {magic:02x?}, expected \"GGUF\"")));
    }
    let version = c.u32("the version")?;
    match version {
        2 | 3 => {}
        1 => return Err(c.err_at(4, "GGUF version 1 is not supported (only 2 and 3)")),
        v if matches!(v.swap_bytes(), 2 | 3) => {
            return Err(c.err_at(4, "big-endian GGUF is not supported"));
        }
        v => return Err(c.err_at(4, format!("unsupported GGUF version {v} (only 2 and 3)"))),
    }
    let n_tensors = c.u64("the tensor count")?;
    let n_kv = c.u64("the metadata count")?;
    // smallest entries: key (8-byte length) + type + 1-byte value; name + n_dims + type + offset
    c.check_count(n_kv, 8 + 4 + 1, "metadata entries")?;
    c.check_count(n_tensors, 8 + 4 + 4 + 8, "tensor infos")?;

    let mut metadata = Vec::new();
    let mut keys = HashSet::new();
    for _ in 0..n_kv {
        let start = c.pos;
        let key = c.string("a metadata key")?;
        let ty = c.u32(&format!("the type of metadata key '{key}'"))?;
        let value = c.value(ty, &key, 0)?;
        if !keys.insert(key.clone()) {
            return Err(c.err_at(start, format!("duplicate metadata key '{key}'")));
        }
        metadata.push((key, value));
    }
    let alignment = alignment(&metadata).map_err(|msg| c.err(msg))?;

    let mut infos = Vec::new();
    let mut names = HashSet::new();
    for _ in 0..n_tensors {
        let start = c.pos;
        let name = c.string("a tensor name")?;
        if !names.insert(name.clone()) {
            return Err(c.err_at(start, format!("duplicate tensor name '{name}'")));
        }
        let info = c.tensor_info(name, alignment)?;
        infos.push(info);
    }
    let data_offset = c.pos.checked_next_multiple_of(alignment).ok_or_else(|| c.err("data offset overflows"))?;
    let tensors = place_tensors(&c, infos, data_offset)?;
    Ok(GgufInfo { version, alignment, data_offset, metadata, tensors })
}

/// `general.alignment` (an unsigned power of two), or the default.
fn alignment(metadata: &[(String, MetaValue)]) -> std::result::Result<usize, String> {
    let Some((_, v)) = metadata.iter().find(|(k, _)| k == "general.alignment") else {
        return Ok(DEFAULT_ALIGNMENT);
    };
    match v {
        MetaValue::UInt(a) if a.is_power_of_two() && *a <= MAX_ALIGNMENT as u64 => Ok(*a as usize),
        MetaValue::UInt(a) => Err(format!("general.alignment {a} is not a power of two between 1 and {MAX_ALIGNMENT}")),
        other => Err(format!("general.alignment has type {}, expected an unsigned integer", other.type_name())),
    }
}

/// A tensor info whose offset is still relative to the data section.
struct RawTensor {
    name: String,
    dims: Vec<usize>,
    ggml_type: u32,
    rel_offset: u64,
    nbytes: Option<usize>,
}

/// Make tensor offsets absolute and check that every tensor lies inside the file and
/// that no two overlap.
fn place_tensors(c: &Cursor<'_>, raw: Vec<RawTensor>, data_offset: usize) -> Result<Vec<GgufTensorInfo>> {
    let len = c.buf.len();
    let mut out = Vec::with_capacity(raw.len());
    for t in raw {
        let offset = usize::try_from(t.rel_offset).ok().and_then(|o| o.checked_add(data_offset));
        let end = offset.and_then(|o| o.checked_add(t.nbytes.unwrap_or(0)));
        let (Some(offset), Some(end)) = (offset, end) else {
            return Err(c.err_at(len, format!("tensor '{}': data offset {} overflows", t.name, t.rel_offset)));
        };
        if end > len {
            return Err(c.err_at(
                len,
                format!(
                    "tensor '{}': data (bytes {offset}..{end}) lies past the end of the file ({len} bytes)",
                    t.name
                ),
            ));
        }
        let dtype = dtype_of_ggml_type(t.ggml_type);
        out.push(GgufTensorInfo {
            name: t.name,
            dims: t.dims,
            ggml_type: t.ggml_type,
            dtype,
            offset,
            nbytes: t.nbytes,
        });
    }
    let len_of = |t: &GgufTensorInfo| t.nbytes.unwrap_or(0);
    let mut order: Vec<&GgufTensorInfo> = out.iter().filter(|t| len_of(t) > 0).collect();
    order.sort_by_key(|t| t.offset);
    for w in order.windows(2) {
        let (a, b) = (w[0], w[1]);
        if a.offset + len_of(a) > b.offset {
            return Err(c.err_at(
                b.offset,
                format!(
                    "tensor data overlaps: '{}' (bytes {}..{}) and '{}' (bytes {}..{})",
                    a.name,
                    a.offset,
                    a.offset + len_of(a),
                    b.name,
                    b.offset,
                    b.offset + len_of(b)
                ),
            ));
        }
    }
    Ok(out)
}

/// Reads little-endian values from the file's bytes, checking every length first.
struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
    path: &'a str,
}

impl<'a> Cursor<'a> {
    fn err(&self, msg: impl std::fmt::Display) -> Error {
        self.err_at(self.pos, msg)
    }

    fn err_at(&self, pos: usize, msg: impl std::fmt::Display) -> Error {
        Error::format(self.path, format!("{msg} (at byte {pos})"))
    }

    fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8]> {
        if n > self.remaining() {
            return Err(self.err(format!(
                "truncated: {what} needs {n} bytes but only {} are left of {}",
                self.remaining(),
                self.buf.len()
            )));
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N]> {
        let s = self.take(N, what)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    fn u32(&mut self, what: &str) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &str) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    /// Fails unless `count` items of at least `min_size` bytes each fit in what is left.
    fn check_count(&self, count: u64, min_size: usize, what: &str) -> Result<usize> {
        let need = (count as u128) * (min_size as u128);
        if need > self.remaining() as u128 {
            return Err(self.err(format!(
                "{count} {what} cannot fit in the {} bytes left (file corrupt or truncated)",
                self.remaining()
            )));
        }
        Ok(count as usize)
    }

    fn string(&mut self, what: &str) -> Result<String> {
        let start = self.pos;
        let len = self.u64(&format!("the length of {what}"))?;
        if len > self.remaining() as u64 {
            return Err(
                self.err(format!("truncated: {what} has length {len} but only {} bytes are left", self.remaining()))
            );
        }
        let bytes = self.take(len as usize, what)?;
        String::from_utf8(bytes.to_vec()).map_err(|e| self.err_at(start, format!("{what} is not valid UTF-8: {e}")))
    }

    /// Bytes that one value of type `ty` takes at least, or `None` for an unknown type.
    fn min_size(ty: u32) -> Option<usize> {
        Some(match ty {
            0 | 1 | 7 => 1,
            2 | 3 => 2,
            4..=6 => 4,
            8 | 10..=12 => 8,
            9 => 4 + 8,
            _ => return None,
        })
    }

    fn value(&mut self, ty: u32, key: &str, depth: usize) -> Result<MetaValue> {
        let what = || format!("the value of metadata key '{key}'");
        Ok(match ty {
            0 => MetaValue::UInt(u8::from_le_bytes(self.array(&what())?) as u64),
            1 => MetaValue::Int(i8::from_le_bytes(self.array(&what())?) as i64),
            2 => MetaValue::UInt(u16::from_le_bytes(self.array(&what())?) as u64),
            3 => MetaValue::Int(i16::from_le_bytes(self.array(&what())?) as i64),
            4 => MetaValue::UInt(u32::from_le_bytes(self.array(&what())?) as u64),
            5 => MetaValue::Int(i32::from_le_bytes(self.array(&what())?) as i64),
            6 => MetaValue::Float(f32::from_le_bytes(self.array(&what())?) as f64),
            7 => match self.array::<1>(&what())?[0] {
                0 => MetaValue::Bool(false),
                1 => MetaValue::Bool(true),
                b => {
                    return Err(self.err_at(self.pos - 1, format!("metadata key '{key}': bool byte is {b}, not 0 or 1")))
                }
            },
            8 => MetaValue::Str(self.string(&what())?),
            9 => {
                if depth >= MAX_ARRAY_DEPTH {
                    return Err(self.err(format!("metadata key '{key}': arrays nested deeper than {MAX_ARRAY_DEPTH}")));
                }
                let elem_ty = self.u32(&format!("the element type of metadata key '{key}'"))?;
                let Some(min) = Self::min_size(elem_ty) else {
                    return Err(self
                        .err_at(self.pos - 4, format!("metadata key '{key}': unknown array element type {elem_ty}")));
                };
                let count = self.u64(&format!("the length of metadata array '{key}'"))?;
                let n = self.check_count(count, min, &format!("elements of metadata array '{key}'"))?;
                // grow as elements really parse; the check above already bounds n by the file
                let mut items = Vec::with_capacity(n.min(1 << 16));
                for _ in 0..n {
                    items.push(self.value(elem_ty, key, depth + 1)?);
                }
                MetaValue::Array(items)
            }
            10 => MetaValue::UInt(u64::from_le_bytes(self.array(&what())?)),
            11 => MetaValue::Int(i64::from_le_bytes(self.array(&what())?)),
            12 => MetaValue::Float(f64::from_le_bytes(self.array(&what())?)),
            t => return Err(self.err_at(self.pos - 4, format!("metadata key '{key}': unknown value type {t}"))),
        })
    }

    fn tensor_info(&mut self, name: String, alignment: usize) -> Result<RawTensor> {
        let n_dims = self.u32(&format!("the dimension count of tensor '{name}'"))?;
        if n_dims as usize > MAX_DIMS {
            return Err(self.err_at(
                self.pos - 4,
                format!("tensor '{name}' has {n_dims} dimensions; GGML allows at most {MAX_DIMS}"),
            ));
        }
        let mut ne = Vec::with_capacity(n_dims as usize);
        for i in 0..n_dims {
            let d = self.u64(&format!("dimension {i} of tensor '{name}'"))?;
            let d = usize::try_from(d).ok().filter(|&d| d <= i64::MAX as usize);
            ne.push(d.ok_or_else(|| self.err(format!("tensor '{name}': dimension {i} is too large")))?);
        }
        let ty_pos = self.pos;
        let ty = self.u32(&format!("the type of tensor '{name}'"))?;
        let rel_offset = self.u64(&format!("the data offset of tensor '{name}'"))?;
        let type_name = match dtype_of_ggml_type(ty) {
            Some(d) => d.to_string(),
            None => ggml_type_name(ty).to_string(),
        };
        let nbytes = match ggml_block(ty) {
            Some((block_len, block_bytes)) => {
                // the row (GGUF's first, fastest dimension) must hold whole blocks
                let row = ne.first().copied().unwrap_or(1);
                if row % block_len != 0 {
                    return Err(self.err_at(
                        ty_pos,
                        format!(
                            "tensor '{name}': row length {row} is not a multiple of the {type_name} block size {block_len}"
                        ),
                    ));
                }
                let n = ne.iter().try_fold(1usize, |a, &d| a.checked_mul(d)).filter(|&n| n <= i64::MAX as usize);
                let nbytes = n.and_then(|n| (n / block_len).checked_mul(block_bytes));
                Some(nbytes.ok_or_else(|| {
                    self.err_at(ty_pos, format!("tensor '{name}': size of {ne:?} {type_name} overflows"))
                })?)
            }
            None => None,
        };
        if rel_offset % alignment as u64 != 0 {
            return Err(self.err_at(
                self.pos - 8,
                format!("tensor '{name}': data offset {rel_offset} is not a multiple of the alignment {alignment}"),
            ));
        }
        ne.reverse();
        Ok(RawTensor { name, dims: ne, ggml_type: ty, rel_offset, nbytes })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ggml_type_ids() {
        assert_eq!(dtype_of_ggml_type(3), Some(DType::Q4_1));
        assert_eq!(dtype_of_ggml_type(30), Some(DType::BF16));
        assert_eq!(dtype_of_ggml_type(6), Some(DType::Q5_0));
        assert_eq!(dtype_of_ggml_type(7), Some(DType::Q5_1));
        assert_eq!(dtype_of_ggml_type(11), None);
        assert_eq!(ggml_type_name(11), "Q3_K");
        assert_eq!(ggml_type_name(1000), "unknown");
    }

    #[test]
    fn too_many_entries_are_refused_before_allocating() {
        let mut b = b"GGUF".to_vec();
        b.extend_from_slice(&3u32.to_le_bytes());
        b.extend_from_slice(&u64::MAX.to_le_bytes());
        b.extend_from_slice(&0u64.to_le_bytes());
        let e = parse(&b, "x").unwrap_err().to_string();
        assert!(e.contains("tensor infos cannot fit"), "{e}");
    }
}
