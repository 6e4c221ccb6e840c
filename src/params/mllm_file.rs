//! MLLM's own parameter files (`.mllm`, format versions 1 and 2): reading by mmap (in place
//! where aligned) after every descriptor has been checked, and atomic writing of version 2.
//! Knows files and tensors, not modules; never trusts a count, length or offset from the file.
//!
//! # Layout (as implemented here)
//!
//! Learned from MLLM's C++ loader and writer and its Python converters. Every integer is
//! little-endian (MLLM copies packed structs of a little-endian host; its Python converters
//! pack with `<`). Data offsets are absolute (from the first byte of the file) and need no
//! alignment. Both versions share one table of dtype ids (MLLM's `DataTypes` enum), below.
//!
//! ## Version 1 (magic 20012; no version field, no shapes)
//!
//! | bytes                | field                                                          |
//! |----------------------|----------------------------------------------------------------|
//! | 0..4                 | magic, i32 20012 (`2c 4e 00 00`)                               |
//! | 4..12                | `index_len`, u64: byte length of the index that follows        |
//! | 12..12+`index_len`   | the index: entries back to back, filling it exactly            |
//!
//! An index entry is: `name_len` u32 (written as i32 by the old converter: same bytes),
//! the name (`name_len` bytes of UTF-8, no terminator), `data_len` u64 (bytes), `offset`
//! u64, `dtype` i32. MLLM's C++ names the `index_len` field an offset, but both its reader
//! and writers use it as the index's length. The writers put the data right after the
//! index, in index order, unpadded. A version 1 tensor has no shape: it reads as one
//! dimension of `data_len / block_bytes * block_len` elements, which a model reshapes.
//!
//! ## Version 2 (magic 0x519A)
//!
//! A 532-byte header:
//!
//! | bytes    | field                                                                      |
//! |----------|----------------------------------------------------------------------------|
//! | 0..4     | magic, i32 0x519A (`9a 51 00 00`)                                          |
//! | 4..8     | version, i32 2                                                             |
//! | 8..520   | model name, NUL-padded (often empty)                                       |
//! | 520..524 | `num_params`, u32                                                          |
//! | 524..532 | `desc_offset`, u64: start of the descriptor table; 532 unless a writer put |
//! |          | extra data between header and table (MLLM ignores it, and so do we)       |
//!
//! then `num_params` descriptors of 352 bytes each, back to back from `desc_offset`:
//!
//! | bytes    | field                                                                      |
//! |----------|----------------------------------------------------------------------------|
//! | 0..4     | id, u32 (the index when written by the Python converter; ignored)          |
//! | 4..8     | dtype, u32                                                                 |
//! | 8..16    | `size`, u64: data bytes                                                    |
//! | 16..24   | `offset`, u64: absolute                                                    |
//! | 24..32   | `shape_len`, u64, at most 16                                               |
//! | 32..96   | shape: 16 x i32, the first `shape_len` used, outermost first (row-major)   |
//! | 96..352  | name: 256 bytes of UTF-8, ending at the first NUL or after 256 bytes       |
//!
//! (MLLM's header comment gives 416 and 128 bytes for these, but its packed struct, checked
//! by a `static_assert`, is 352 bytes: the shape is 16 four-byte ints.) Writers put the data
//! after the table in descriptor order, unpadded; the Python "streaming" writer reserves a
//! larger table than it fills, so data may start past the last used descriptor.
//!
//! ## dtype ids
//!
//! 0 F32, 1 F16, 2 Q4_0, 3 Q4_1, 8 Q8_0, 12 Q4_K, 14 Q6_K, 18 I32, 128 BF16, 129 U8. The
//! quantised ids are GGML's, with GGML's block layouts (MLLM's default build, 256-weight
//! K-blocks). MLLM has no id for Q5_0, Q5_1 or Q5_K (GGML's 6, 7 and 13 are unassigned),
//! so tensors of these types cannot be saved here. Every other id (int8, Q8_K, repacked Q4_0_4_4, bool, raw bytes, ...) is refused
//! with its MLLM name. (MLLM's old version 1 converter tagged uint8 tensors 31, an id the
//! current enum leaves unassigned; such tensors are refused rather than guessed at.)
//!
//! ## What the reader checks (MLLM's own loader trusts the file)
//!
//! Magic and version; that the header, the index or descriptor table, every name and every
//! tensor's data lie inside the file; names non-empty, valid UTF-8 and unique; version 1
//! index entries filling the index exactly; shapes of at most 16 non-negative dims whose
//! size (shape x dtype) neither overflows nor differs from the stored size (MLLM accepts a
//! larger stored size; its writers never produce one); quantised rows of whole blocks; data
//! not overlapping the header, the index or table, or another tensor's data.
//!
//! ## What the writer produces
//!
//! Version 2 with `desc_offset` 532 and each tensor's data starting at a multiple of 64
//! bytes (zero padding between; MLLM reads it since offsets are absolute), so every tensor
//! is read back in place. Ids are indices; names of at most 255 bytes end with a NUL, as
//! MLLM's C++ writer does. The model name comes from the metadata key [`MODEL_NAME_KEY`];
//! other metadata is not saved (the format has no place for it).

use std::collections::HashSet;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::sync::Arc;

use memmap2::Mmap;

use super::safetensors::TempFile;
use super::{MetaValue, ParameterFile};
use crate::tensor::{DType, MemType, Tensor};
use crate::{Error, Result};

/// Magic number of version 1 files (an i32).
pub const V1_MAGIC: i32 = 20012;
/// Magic number of version 2 files (an i32, followed by the version).
pub const V2_MAGIC: i32 = 0x519A;
/// The metadata key that holds a version 2 file's model name.
pub const MODEL_NAME_KEY: &str = "mllm.model_name";

const V1_HEADER_LEN: usize = 12;
/// `data_len` + `offset` + `dtype` after an index entry's name.
const V1_ENTRY_TAIL_LEN: usize = 8 + 8 + 4;
const V2_VERSION: i32 = 2;
const V2_HEADER_LEN: usize = 532;
const V2_MODEL_NAME_LEN: usize = 512;
const V2_DESC_LEN: usize = 352;
const V2_NAME_LEN: usize = 256;
const V2_MAX_DIMS: usize = 16;
/// Alignment of each tensor's data in files we write.
const WRITE_ALIGNMENT: usize = 64;

/// The `DType` of an MLLM dtype id, or `None` for ids we do not read.
pub fn dtype_of_mllm_id(id: u32) -> Option<DType> {
    Some(match id {
        0 => DType::F32,
        1 => DType::F16,
        2 => DType::Q4_0,
        3 => DType::Q4_1,
        8 => DType::Q8_0,
        12 => DType::Q4_K,
        14 => DType::Q6_K,
        18 => DType::I32,
        128 => DType::BF16,
        129 => DType::U8,
        _ => return None,
    })
}

/// The MLLM dtype id of `dtype`, or `None` when MLLM has none (Q5_0, Q5_1, Q5_K).
pub fn mllm_id_of_dtype(dtype: DType) -> Option<u32> {
    Some(match dtype {
        DType::F32 => 0,
        DType::F16 => 1,
        DType::Q4_0 => 2,
        DType::Q4_1 => 3,
        DType::Q8_0 => 8,
        DType::Q4_K => 12,
        DType::Q6_K => 14,
        DType::I32 => 18,
        DType::BF16 => 128,
        DType::U8 => 129,
        DType::Q5_0 | DType::Q5_1 | DType::Q5_K => return None,
    })
}

/// MLLM's name of a dtype id, for error messages.
fn mllm_type_name(id: u32) -> &'static str {
    match id {
        0 => "kFloat32",
        1 => "kFloat16",
        2 => "kGGUF_Q4_0",
        3 => "kGGUF_Q4_1",
        8 => "kGGUF_Q8_0",
        9 => "kGGUF_Q8_1",
        10 => "kGGUF_Q8_Pertensor",
        12 => "kGGUF_Q4_K",
        14 => "kGGUF_Q6_K",
        15 => "kGGUF_Q8_K",
        16 => "kInt8",
        17 => "kInt16",
        18 => "kInt32",
        19 => "kGGUF_Q4_0_4_4",
        20 => "kGGUF_Q4_0_4_8",
        21 => "kGGUF_Q4_0_8_8",
        22 => "kGGUF_Q8_0_4_4",
        23 => "kGGUF_Q3_K",
        24 => "kGGUF_Q2_K",
        25 => "kGGUF_Q1_K",
        26 => "kGGUF_IQ2_XXS",
        27 => "kGGUF_IQ2_XS",
        28 => "kGGUF_IQ1_S",
        29 => "kGGUF_IQ1_M",
        30 => "kGGUF_IQ2_S",
        128 => "kBFloat16",
        129 => "kUInt8",
        130 => "kUInt16",
        131 => "kUInt32",
        132 => "kInt64",
        133 => "kUInt64",
        134 => "kByte",
        135 => "kMXFP4",
        136 => "kInt4",
        137 => "kUInt4",
        138 => "kInt2",
        139 => "kUInt2",
        140..=155 => "a per-tensor/per-channel integer quantisation type",
        156 => "kBool",
        201 => "kComplexFloat32",
        202 => "kComplexFloat64",
        _ => "unknown",
    }
}

/// Everything an `.mllm` file says about itself, parsed and checked, without tensor data.
#[derive(Clone, Debug, PartialEq)]
pub struct MllmInfo {
    /// 1 or 2.
    pub version: u32,
    /// The model name of a version 2 header (lossy UTF-8, may be empty; always empty in v1).
    pub model_name: String,
    /// Tensors in file order.
    pub tensors: Vec<MllmTensorInfo>,
}

/// One tensor's checked entry.
#[derive(Clone, Debug, PartialEq)]
pub struct MllmTensorInfo {
    pub name: String,
    /// Row-major dimensions (one dimension for version 1 files).
    pub dims: Vec<usize>,
    pub dtype: DType,
    /// Absolute byte offset of the data in the file.
    pub offset: usize,
    /// Byte length of the data.
    pub nbytes: usize,
}

/// Read an `.mllm` file (version 1 or 2) by memory-mapping it.
///
/// Tensors whose data is aligned for their dtype are read in place
/// ([`MemType::ParamsMmap`]); the others are copied ([`MemType::ParamsNormal`]). The whole
/// file structure is checked (see the module documentation) before any tensor is made.
/// As with every mmap reader, the file must not be modified or truncated while tensors
/// from it are alive; [`ParameterFile::save_mllm_v2`] replaces files atomically.
pub fn read(path: impl AsRef<Path>) -> Result<ParameterFile> {
    let path = path.as_ref();
    let label = path.display().to_string();
    let file = File::open(path).map_err(|e| Error::io(format!("{label}: cannot open"), e))?;
    // SAFETY: `Mmap::map` is unsafe because another process may change or truncate the
    // file while it is mapped, which nothing in this process can rule out; like every
    // mmap loader we accept that (documented above). The map is read-only, lives in an
    // `Arc` that outlives every tensor viewing it, and is only read through `&[u8]` after
    // every offset into it has been checked.
    let map = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(format!("{label}: cannot mmap"), e))?;
    let map = Arc::new(map);
    let info = parse(&map, &label)?;
    build(info, &label, |t| {
        let aligned = (map.as_ptr() as usize).wrapping_add(t.offset) % natural_alignment(t.dtype) == 0;
        if aligned {
            Tensor::from_mmap(map.clone(), t.offset, t.dtype, &t.dims, Some(&t.name))
        } else {
            Tensor::from_bytes(&map[t.offset..t.offset + t.nbytes], t.dtype, &t.dims, MemType::ParamsNormal)
        }
    })
}

/// Read an `.mllm` file held in memory; tensor data is copied ([`MemType::ParamsNormal`]).
/// Errors name the file as `<mllm bytes>`.
pub fn read_bytes(bytes: &[u8]) -> Result<ParameterFile> {
    let label = "<mllm bytes>";
    let info = parse(bytes, label)?;
    build(info, label, |t| {
        Tensor::from_bytes(&bytes[t.offset..t.offset + t.nbytes], t.dtype, &t.dims, MemType::ParamsNormal)
    })
}

/// The alignment a tensor's data needs to be used in place: the element size of plain
/// types, the f16 scale of quantised blocks.
fn natural_alignment(dtype: DType) -> usize {
    if dtype.is_quantized() {
        2
    } else {
        dtype.block_bytes()
    }
}

fn build(
    info: MllmInfo,
    label: &str,
    mut tensor: impl FnMut(&MllmTensorInfo) -> Result<Tensor>,
) -> Result<ParameterFile> {
    let mut params = ParameterFile::create();
    if !info.model_name.is_empty() {
        params.set_metadata(MODEL_NAME_KEY, MetaValue::Str(info.model_name));
    }
    for t in info.tensors {
        let x = tensor(&t).map_err(|e| Error::format(label, format!("tensor '{}': {e}", t.name)))?;
        params.push(t.name, x)?;
    }
    Ok(params)
}

/// Parse and check the structure of `.mllm` bytes (either version). `label` names the
/// file in errors.
pub fn parse(bytes: &[u8], label: &str) -> Result<MllmInfo> {
    let bad = |msg: String| Error::format(label, msg);
    let Some(magic) = le_i32(bytes, 0) else {
        return Err(bad(format!("file is {} bytes, too short for an .mllm magic number", bytes.len())));
    };
    match magic {
        V1_MAGIC => parse_v1(bytes).map_err(bad),
        V2_MAGIC => parse_v2(bytes).map_err(bad),
        _ => Err(bad(format!(
            "not an .mllm file: magic is {:02x?}, expected {V1_MAGIC} (version 1) or {V2_MAGIC:#x} (version 2)",
            &bytes[..4]
        ))),
    }
}

// ---- little-endian fields; `None` when the bytes are not there ---------------------

fn field<const N: usize>(b: &[u8], pos: usize) -> Option<[u8; N]> {
    b.get(pos..pos.checked_add(N)?)?.try_into().ok()
}

fn le_u32(b: &[u8], pos: usize) -> Option<u32> {
    field(b, pos).map(u32::from_le_bytes)
}

fn le_i32(b: &[u8], pos: usize) -> Option<i32> {
    field(b, pos).map(i32::from_le_bytes)
}

fn le_u64(b: &[u8], pos: usize) -> Option<u64> {
    field(b, pos).map(u64::from_le_bytes)
}

/// A tensor entry whose data range has not been placed yet.
struct RawEntry {
    name: String,
    dims: Vec<usize>,
    dtype: DType,
    offset: u64,
    nbytes: usize,
}

type Parsed<T> = std::result::Result<T, String>;

fn parse_v1(b: &[u8]) -> Parsed<MllmInfo> {
    let index_len = le_u64(b, 4).ok_or_else(|| {
        format!("truncated: the version 1 header needs {V1_HEADER_LEN} bytes, the file has {}", b.len())
    })?;
    let available = (b.len() - V1_HEADER_LEN) as u64;
    if index_len > available {
        return Err(format!(
            "the index is {index_len} bytes but only {available} follow the header (truncated or corrupt file)"
        ));
    }
    let index_end = V1_HEADER_LEN + index_len as usize; // <= b.len()
    let index = &b[..index_end];

    let mut entries = Vec::new();
    let mut names = HashSet::new();
    let mut pos = V1_HEADER_LEN;
    while pos < index_end {
        let i = entries.len();
        let name_len = le_u32(index, pos).ok_or_else(|| {
            format!("index entry #{i} at byte {pos}: its name length runs past the end of the index (byte {index_end})")
        })?;
        pos += 4;
        let name_bytes = (name_len as usize <= index_end - pos).then(|| &index[pos..pos + name_len as usize]);
        let name_bytes = name_bytes.ok_or_else(|| {
            format!(
                "index entry #{i}: name length {name_len} runs past the end of the index ({} bytes left)",
                index_end - pos
            )
        })?;
        let name = tensor_name(name_bytes, i)?;
        pos += name_bytes.len();
        if !names.insert(name.clone()) {
            return Err(format!("duplicate tensor name '{name}'"));
        }
        if index_end - pos < V1_ENTRY_TAIL_LEN {
            return Err(format!(
                "tensor '{name}': its index entry needs {V1_ENTRY_TAIL_LEN} more bytes but the index ends after {}",
                index_end - pos
            ));
        }
        // In bounds: checked just above.
        let data_len = le_u64(index, pos).unwrap_or_default();
        let offset = le_u64(index, pos + 8).unwrap_or_default();
        let id = le_i32(index, pos + 16).unwrap_or_default();
        pos += V1_ENTRY_TAIL_LEN;

        let dtype = dtype_of_id(&name, id as u32, &id.to_string())?;
        let bb = dtype.block_bytes() as u64;
        if !data_len.is_multiple_of(bb) {
            return Err(format!(
                "tensor '{name}': {data_len} bytes are not a whole number of {dtype} {} ({bb} bytes)",
                if dtype.is_quantized() { "blocks" } else { "elements" }
            ));
        }
        let nbytes = usize::try_from(data_len).ok();
        let elems = (data_len / bb).checked_mul(dtype.block_len() as u64).and_then(|n| usize::try_from(n).ok());
        let (Some(nbytes), Some(elems)) = (nbytes, elems) else {
            return Err(format!("tensor '{name}': size {data_len} bytes is too large"));
        };
        entries.push(RawEntry { name, dims: vec![elems], dtype, offset, nbytes });
    }
    let tensors = place(entries, b.len(), &[(0, index_end, "the header and index")])?;
    Ok(MllmInfo { version: 1, model_name: String::new(), tensors })
}

fn parse_v2(b: &[u8]) -> Parsed<MllmInfo> {
    if b.len() < V2_HEADER_LEN {
        return Err(format!("truncated: the version 2 header needs {V2_HEADER_LEN} bytes, the file has {}", b.len()));
    }
    // In bounds from here to byte 532.
    let version = le_i32(b, 4).unwrap_or_default();
    if version != V2_VERSION {
        return Err(format!("unsupported .mllm version {version} (magic {V2_MAGIC:#x} must be followed by version 2)"));
    }
    let model_name = String::from_utf8_lossy(until_nul(&b[8..8 + V2_MODEL_NAME_LEN])).into_owned();
    let num_params = le_u32(b, 520).unwrap_or_default();
    let desc_offset = le_u64(b, 524).unwrap_or_default();
    if desc_offset < V2_HEADER_LEN as u64 {
        return Err(format!("descriptor table offset {desc_offset} points into the {V2_HEADER_LEN}-byte header"));
    }
    let table_end = desc_offset.checked_add(num_params as u64 * V2_DESC_LEN as u64);
    let table_end = table_end.filter(|&e| e <= b.len() as u64).ok_or_else(|| {
        format!(
            "{num_params} descriptors of {V2_DESC_LEN} bytes from byte {desc_offset} run past the end of the file \
             ({} bytes; truncated or corrupt file)",
            b.len()
        )
    })? as usize;
    let desc_offset = desc_offset as usize; // <= table_end <= b.len()

    let mut entries = Vec::new();
    let mut names = HashSet::new();
    for i in 0..num_params as usize {
        let d = &b[desc_offset + i * V2_DESC_LEN..desc_offset + (i + 1) * V2_DESC_LEN];
        let name = tensor_name(until_nul(&d[96..96 + V2_NAME_LEN]), i)?;
        if !names.insert(name.clone()) {
            return Err(format!("duplicate tensor name '{name}'"));
        }
        // In bounds: `d` is a whole descriptor.
        let id = le_u32(d, 4).unwrap_or_default();
        let size = le_u64(d, 8).unwrap_or_default();
        let offset = le_u64(d, 16).unwrap_or_default();
        let shape_len = le_u64(d, 24).unwrap_or_default();
        if shape_len > V2_MAX_DIMS as u64 {
            return Err(format!("tensor '{name}': {shape_len} dimensions, the format allows at most {V2_MAX_DIMS}"));
        }
        let mut dims = Vec::with_capacity(shape_len as usize);
        for j in 0..shape_len as usize {
            let dim = le_i32(d, 32 + 4 * j).unwrap_or_default();
            let dim =
                usize::try_from(dim).map_err(|_| format!("tensor '{name}': dimension {j} is negative ({dim})"))?;
            dims.push(dim);
        }
        let dtype = dtype_of_id(&name, id, &id.to_string())?;
        let nbytes = expected_size(&name, &dims, dtype)?;
        if size != nbytes as u64 {
            return Err(format!(
                "tensor '{name}': the descriptor gives {size} bytes but shape {dims:?} of {dtype} needs {nbytes}"
            ));
        }
        entries.push(RawEntry { name, dims, dtype, offset, nbytes });
    }
    let reserved = [(0, V2_HEADER_LEN, "the header"), (desc_offset, table_end, "the descriptor table")];
    let tensors = place(entries, b.len(), &reserved)?;
    Ok(MllmInfo { version: 2, model_name, tensors })
}

/// The bytes before the first NUL (all of them if there is none).
fn until_nul(b: &[u8]) -> &[u8] {
    b.iter().position(|&c| c == 0).map_or(b, |n| &b[..n])
}

/// A tensor name from the file: non-empty UTF-8. `i` numbers the entry for errors.
fn tensor_name(bytes: &[u8], i: usize) -> Parsed<String> {
    if bytes.is_empty() {
        return Err(format!("tensor #{i} has an empty name"));
    }
    std::str::from_utf8(bytes).map(str::to_string).map_err(|e| {
        format!(
            "tensor #{i}: name is not valid UTF-8 (invalid byte at {} of {:?})",
            e.valid_up_to(),
            String::from_utf8_lossy(bytes)
        )
    })
}

/// The `DType` of a dtype id, or an error naming the tensor and the id (`shown` is the id
/// as the file stores it: signed in version 1).
fn dtype_of_id(name: &str, id: u32, shown: &str) -> Parsed<DType> {
    dtype_of_mllm_id(id).ok_or_else(|| {
        let kind = mllm_type_name(id);
        let what = if kind == "unknown" { "an unknown MLLM dtype id".to_string() } else { format!("MLLM's {kind}") };
        format!(
            "tensor '{name}': dtype id {shown} ({what}) is not supported \
             (supported: 0 f32, 1 f16, 2 q4_0, 3 q4_1, 8 q8_0, 12 q4_k, 14 q6_k, 18 i32, 128 bf16, 129 u8)"
        )
    })
}

/// Bytes of a tensor of `dims` and `dtype`; quantised rows must hold whole blocks.
fn expected_size(name: &str, dims: &[usize], dtype: DType) -> Parsed<usize> {
    let row = dims.last().copied().unwrap_or(1);
    if row % dtype.block_len() != 0 {
        return Err(format!(
            "tensor '{name}': row length {row} of shape {dims:?} is not a multiple of the {dtype} block size {}",
            dtype.block_len()
        ));
    }
    dims.iter()
        .try_fold(1usize, |n, &d| n.checked_mul(d))
        .and_then(|n| dtype.bytes_for(n))
        .ok_or_else(|| format!("tensor '{name}': size of shape {dims:?} of {dtype} overflows"))
}

/// Make data ranges concrete and check that each lies inside the file, outside the
/// `reserved` structural ranges, and apart from every other tensor's data.
fn place(entries: Vec<RawEntry>, file_len: usize, reserved: &[(usize, usize, &str)]) -> Parsed<Vec<MllmTensorInfo>> {
    let mut out = Vec::with_capacity(entries.len());
    for t in entries {
        let offset = usize::try_from(t.offset).ok();
        let end = offset.and_then(|o| o.checked_add(t.nbytes));
        let (Some(offset), Some(end)) = (offset, end) else {
            return Err(format!("tensor '{}': data offset {} + {} bytes overflows", t.name, t.offset, t.nbytes));
        };
        if end > file_len {
            return Err(format!(
                "tensor '{}': data (bytes {offset}..{end}) lies past the end of the file ({file_len} bytes; truncated?)",
                t.name
            ));
        }
        if t.nbytes > 0 {
            if let Some((s, e, what)) = reserved.iter().find(|(s, e, _)| offset < *e && *s < end) {
                return Err(format!(
                    "tensor '{}': data (bytes {offset}..{end}) overlaps {what} (bytes {s}..{e})",
                    t.name
                ));
            }
        }
        out.push(MllmTensorInfo { name: t.name, dims: t.dims, dtype: t.dtype, offset, nbytes: t.nbytes });
    }
    let mut order: Vec<&MllmTensorInfo> = out.iter().filter(|t| t.nbytes > 0).collect();
    order.sort_by_key(|t| t.offset);
    for w in order.windows(2) {
        let (a, b) = (w[0], w[1]);
        if a.offset + a.nbytes > b.offset {
            return Err(format!(
                "tensors '{}' (bytes {}..{}) and '{}' (bytes {}..{}) overlap",
                a.name,
                a.offset,
                a.offset + a.nbytes,
                b.name,
                b.offset,
                b.offset + b.nbytes
            ));
        }
    }
    Ok(out)
}

// ---- writing version 2 -------------------------------------------------------------

/// A checked plan of a version 2 file: header and descriptor table bytes, and where each
/// tensor's data goes.
struct PlanV2<'a> {
    head: Vec<u8>,
    tensors: Vec<(&'a Tensor, usize)>,
}

fn plan_v2<'a>(params: &'a ParameterFile, label: &str) -> Result<PlanV2<'a>> {
    let bad = |msg: String| Error::format(label, msg);
    let n = params.tensors.len();
    let num_params =
        u32::try_from(n).map_err(|_| bad(format!("{n} tensors; the format holds at most {}", u32::MAX)))?;
    let model_name = match params.metadata.get(MODEL_NAME_KEY) {
        Some(MetaValue::Str(s)) => s.as_str(),
        Some(other) => {
            return Err(bad(format!("metadata '{MODEL_NAME_KEY}' must be a string, not {}", other.type_name())))
        }
        None => "",
    };
    if model_name.len() >= V2_MODEL_NAME_LEN || model_name.contains('\0') {
        return Err(bad(format!(
            "model name ('{MODEL_NAME_KEY}') must be at most {} bytes without NUL; it is {} bytes",
            V2_MODEL_NAME_LEN - 1,
            model_name.len()
        )));
    }
    let table_end = n
        .checked_mul(V2_DESC_LEN)
        .and_then(|t| t.checked_add(V2_HEADER_LEN))
        .ok_or_else(|| Error::Overflow("descriptor table size".into()))?;

    let mut head = Vec::with_capacity(table_end);
    head.extend_from_slice(&V2_MAGIC.to_le_bytes());
    head.extend_from_slice(&V2_VERSION.to_le_bytes());
    let mut name_field = [0u8; V2_MODEL_NAME_LEN];
    name_field[..model_name.len()].copy_from_slice(model_name.as_bytes());
    head.extend_from_slice(&name_field);
    head.extend_from_slice(&num_params.to_le_bytes());
    head.extend_from_slice(&(V2_HEADER_LEN as u64).to_le_bytes());

    let mut tensors = Vec::with_capacity(n);
    let mut cursor = table_end;
    for (i, (name, t)) in params.tensors.iter().enumerate() {
        let who = |msg: String| bad(format!("tensor '{name}': {msg}"));
        if name.is_empty() || name.len() >= V2_NAME_LEN || name.contains('\0') {
            return Err(who(format!(
                "names must be 1 to {} bytes without NUL to fit the format; this one is {} bytes",
                V2_NAME_LEN - 1,
                name.len()
            )));
        }
        let id = mllm_id_of_dtype(t.dtype())
            .ok_or_else(|| who(format!("MLLM has no dtype id for {}, so it cannot be saved as .mllm", t.dtype())))?;
        let dims = t.dims();
        if dims.len() > V2_MAX_DIMS {
            return Err(who(format!("{} dimensions; the format allows at most {V2_MAX_DIMS}", dims.len())));
        }
        let mut shape = [0u8; 4 * V2_MAX_DIMS];
        for (j, &d) in dims.iter().enumerate() {
            let d = i32::try_from(d).map_err(|_| who(format!("dimension {j} ({d}) does not fit the format's i32")))?;
            shape[4 * j..4 * j + 4].copy_from_slice(&d.to_le_bytes());
        }
        let offset =
            cursor.checked_next_multiple_of(WRITE_ALIGNMENT).ok_or_else(|| Error::Overflow("file size".into()))?;
        let nbytes = t.nbytes();
        cursor = offset.checked_add(nbytes).ok_or_else(|| Error::Overflow("file size".into()))?;

        head.extend_from_slice(&(i as u32).to_le_bytes());
        head.extend_from_slice(&id.to_le_bytes());
        head.extend_from_slice(&(nbytes as u64).to_le_bytes());
        head.extend_from_slice(&(offset as u64).to_le_bytes());
        head.extend_from_slice(&(dims.len() as u64).to_le_bytes());
        head.extend_from_slice(&shape);
        let mut name_field = [0u8; V2_NAME_LEN];
        name_field[..name.len()].copy_from_slice(name.as_bytes());
        head.extend_from_slice(&name_field);
        tensors.push((t, offset));
    }
    debug_assert_eq!(head.len(), table_end);
    Ok(PlanV2 { head, tensors })
}

/// Write a planned file: the head, then each tensor's bytes after zero padding up to its
/// offset.
fn emit_v2(plan: &PlanV2<'_>, w: &mut impl Write) -> std::io::Result<()> {
    w.write_all(&plan.head)?;
    let mut pos = plan.head.len();
    let zeros = [0u8; WRITE_ALIGNMENT];
    for &(t, offset) in &plan.tensors {
        w.write_all(&zeros[..offset - pos])?;
        let t = t.contiguous().map_err(std::io::Error::other)?;
        let bytes = t.raw_bytes().map_err(std::io::Error::other)?;
        w.write_all(bytes)?;
        pos = offset + bytes.len();
    }
    Ok(())
}

/// The bytes of a version 2 `.mllm` file holding `params` (see
/// [`ParameterFile::save_mllm_v2`]).
pub fn to_v2_bytes(params: &ParameterFile) -> Result<Vec<u8>> {
    let label = "<mllm bytes>";
    let plan = plan_v2(params, label)?;
    let mut out = Vec::new();
    emit_v2(&plan, &mut out).map_err(|e| Error::io(format!("{label}: writing .mllm"), e))?;
    Ok(out)
}

impl ParameterFile {
    /// Write all tensors as an `.mllm` version 2 file (layout in [`mllm_file`](super::mllm_file)).
    ///
    /// Every dtype but Q5_0, Q5_1 and Q5_K can be saved (MLLM has no ids for them); quantised tensors are
    /// written as their raw blocks. Names must be 1 to 255 bytes, shapes at most 16
    /// dimensions that fit an i32. Everything is checked before anything is written. Of
    /// the metadata only the model name ([`MODEL_NAME_KEY`], a string) is saved.
    ///
    /// The file is written next to `path` under a temporary name and renamed over it only
    /// when complete, so a failure leaves no partial file and tensors still mapped from an
    /// old file at `path` keep their data.
    pub fn save_mllm_v2(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let label = path.display().to_string();
        let plan = plan_v2(self, &label)?;
        let temp = TempFile::create(path)?;
        let write_err = |e| Error::io(format!("{label}: writing .mllm"), e);
        let mut w = BufWriter::with_capacity(1 << 20, &temp.file);
        emit_v2(&plan, &mut w).map_err(write_err)?;
        w.flush().map_err(write_err)?;
        drop(w);
        temp.file.sync_all().map_err(write_err)?;
        temp.commit(path)
    }
}

// ---- fuzzing -----------------------------------------------------------------------

/// The body of a fuzz target: parse `data` as an `.mllm` file; if it reads, every tensor
/// must dequantise or convert without error, and saving it as version 2 and reading that
/// back must give the same tensors. Panics only when one of those properties fails (or on
/// a bug the fuzzer should report); a corrupt input just returns.
pub fn fuzz_target(data: &[u8]) {
    let Ok(params) = read_bytes(data) else { return };
    for (name, t) in params.iter() {
        let bytes = t.raw_bytes().unwrap_or_else(|e| panic!("tensor '{name}': {e}"));
        assert_eq!(bytes.len(), t.nbytes(), "tensor '{name}'");
    }
    let written = match to_v2_bytes(&params) {
        Ok(b) => b,
        // A version 1 file may hold a tensor whose single dimension does not fit an i32.
        Err(Error::Format { .. }) => return,
        Err(e) => panic!("saving a file that read: {e}"),
    };
    let again = read_bytes(&written).unwrap_or_else(|e| panic!("a written file does not read back: {e}"));
    assert_eq!(params.len(), again.len());
    for ((n1, t1), (n2, t2)) in params.iter().zip(again.iter()) {
        assert_eq!(n1, n2);
        assert_eq!((t1.dims(), t1.dtype()), (t2.dims(), t2.dtype()), "tensor '{n1}'");
        assert_eq!(t1.raw_bytes().ok(), t2.raw_bytes().ok(), "tensor '{n1}'");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dtype_ids_round_trip() {
        for d in DType::ALL {
            match mllm_id_of_dtype(d) {
                Some(id) => assert_eq!(dtype_of_mllm_id(id), Some(d)),
                None => assert!(matches!(d, DType::Q5_0 | DType::Q5_1 | DType::Q5_K), "{d}"),
            }
        }
        for id in [6, 7, 13] {
            assert_eq!(dtype_of_mllm_id(id), None);
        }
        assert_eq!(mllm_type_name(16), "kInt8");
    }

    #[test]
    fn descriptor_table_larger_than_the_file_is_refused_before_allocating() {
        let mut b = vec![0u8; V2_HEADER_LEN];
        b[..4].copy_from_slice(&V2_MAGIC.to_le_bytes());
        b[4..8].copy_from_slice(&2i32.to_le_bytes());
        b[520..524].copy_from_slice(&u32::MAX.to_le_bytes());
        b[524..532].copy_from_slice(&(u64::MAX - 10).to_le_bytes());
        let e = parse(&b, "x").unwrap_err().to_string();
        assert!(e.contains("run past the end"), "{e}");
    }

    #[test]
    fn writer_pads_every_tensor_to_the_alignment() {
        let mut p = ParameterFile::create();
        p.push("a", Tensor::from_vec(vec![1u8, 2, 3], &[3]).unwrap()).unwrap();
        p.push("b", Tensor::from_vec(vec![1.0f32], &[1]).unwrap()).unwrap();
        let info = parse(&to_v2_bytes(&p).unwrap(), "x").unwrap();
        assert!(info.tensors.iter().all(|t| t.offset % WRITE_ALIGNMENT == 0));
    }
}
