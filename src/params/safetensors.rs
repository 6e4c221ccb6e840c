//! safetensors files: reading by mmap (zero copy where the data is aligned) with every
//! header field checked before any tensor is made, and atomic writing. Knows files and
//! tensors, not modules; must never panic or allocate by trusting a size from the file.

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use memmap2::Mmap;
use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::Value;

use super::{MetaValue, ParameterFile};
use crate::tensor::{DType, MemType, Tensor};
use crate::{Error, Result};

/// Largest header we read (the reference implementation uses the same limit).
const MAX_HEADER_LEN: u64 = 100_000_000;
/// The header's key for the file-level string metadata.
const METADATA_KEY: &str = "__metadata__";

/// Every dtype name the safetensors format defines (as of format crate 0.8), so an
/// unsupported but valid type gets a different message from a corrupt one.
const KNOWN_DTYPES: [&str; 22] = [
    "BOOL",
    "F4",
    "F6_E2M3",
    "F6_E3M2",
    "U8",
    "I8",
    "F8_E5M2",
    "F8_E4M3",
    "F8_E8M0",
    "F8_E4M3FNUZ",
    "F8_E5M2FNUZ",
    "I16",
    "U16",
    "F16",
    "BF16",
    "I32",
    "U32",
    "F32",
    "F64",
    "I64",
    "U64",
    "C64",
];

fn dtype_from_name(name: &str) -> Option<DType> {
    Some(match name {
        "F32" => DType::F32,
        "F16" => DType::F16,
        "BF16" => DType::BF16,
        "I32" => DType::I32,
        "U8" => DType::U8,
        _ => return None,
    })
}

fn dtype_name(dtype: DType) -> Option<&'static str> {
    Some(match dtype {
        DType::F32 => "F32",
        DType::F16 => "F16",
        DType::BF16 => "BF16",
        DType::I32 => "I32",
        DType::U8 => "U8",
        _ => return None,
    })
}

impl ParameterFile {
    /// Read a safetensors file by memory-mapping it.
    ///
    /// Tensors whose data is aligned for their dtype are read in place
    /// ([`MemType::ParamsMmap`]: no copy, pages load on first use); the others are
    /// copied to the heap ([`MemType::ParamsNormal`]). Supported dtypes: F32, F16,
    /// BF16, I32, U8. `__metadata__` entries become [`MetaValue::Str`].
    ///
    /// The whole header is checked before any tensor is made: header length, UTF-8,
    /// JSON shape, duplicate names, dtypes, shape sizes, and that the data offsets tile
    /// the data section exactly (no overlap, gap, or byte past the end). Errors name
    /// the file and the tensor.
    ///
    /// Like every mmap reader, this assumes the file is not modified or truncated
    /// while tensors from it are alive: a change shows through in the tensors, and a
    /// truncation makes reading the lost pages fail with `SIGBUS`. Write files with
    /// [`save_safetensors`](Self::save_safetensors), which replaces a file atomically
    /// and so never changes one that is mapped.
    pub fn open_safetensors(path: impl AsRef<Path>) -> Result<ParameterFile> {
        ParameterFile::open_safetensors_skipping(path, &|_| false)
    }

    /// [`open_safetensors`](Self::open_safetensors), leaving out the tensors `skip`
    /// names: they are checked like the others (a dtype safetensors defines, offsets,
    /// tiling) but may have a dtype the engine does not compute with (BERT's I64
    /// `position_ids` buffer) and are not loaded.
    pub fn open_safetensors_skipping(path: impl AsRef<Path>, skip: &dyn Fn(&str) -> bool) -> Result<ParameterFile> {
        let path = path.as_ref();
        let bad = |msg: String| Error::format(path.display().to_string(), msg);
        let file = File::open(path).map_err(|e| Error::io(format!("{}: cannot open", path.display()), e))?;
        let file_len = file.metadata().map_err(|e| Error::io(format!("{}: cannot stat", path.display()), e))?.len();
        if file_len < 8 {
            return Err(bad(format!(
                "file is {file_len} bytes, too short for a safetensors header (8-byte length + JSON)"
            )));
        }
        // SAFETY: `Mmap::map` is unsafe because the mapped bytes may change if another
        // process writes or truncates the file while it is mapped, which Rust cannot
        // rule out. Like every mmap reader we accept that (documented above): the map is
        // read-only, lives in an `Arc` that outlives every tensor slice of it, every
        // bit pattern is a valid value of the plain dtypes we read, and the header is
        // fully checked before any offset into the map is used.
        let map = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(format!("{}: cannot mmap", path.display()), e))?;
        let map = Arc::new(map);
        if map.len() < 8 {
            return Err(bad(format!("file shrank to {} bytes while being opened", map.len())));
        }
        let layout = parse_skipping(&map, skip).map_err(bad)?;

        let mut params = ParameterFile::create();
        for (key, value) in layout.metadata {
            params.set_metadata(key, MetaValue::Str(value));
        }
        for t in layout.tensors {
            let Some(dtype) = t.dtype else { continue };
            let start = layout.data_start + t.start;
            let aligned = (map.as_ptr() as usize + start).is_multiple_of(dtype.block_bytes());
            let tensor = if aligned {
                Tensor::from_mmap(map.clone(), start, dtype, &t.dims, Some(&t.name))?
            } else {
                Tensor::from_bytes(&map[start..layout.data_start + t.end], dtype, &t.dims, MemType::ParamsNormal)?
            };
            params.push(t.name, tensor)?;
        }
        Ok(params)
    }

    /// Parse a safetensors file held in memory, copying each tensor (for data that did
    /// not come from a file, and for fuzzing). Same checks and errors as
    /// [`open_safetensors`](Self::open_safetensors).
    pub fn safetensors_from_bytes(bytes: &[u8]) -> Result<ParameterFile> {
        let bad = |msg: String| Error::format("<memory>", msg);
        if bytes.len() < 8 {
            return Err(bad(format!("{} bytes, too short for a safetensors header", bytes.len())));
        }
        let layout = parse(bytes).map_err(bad)?;
        let mut params = ParameterFile::create();
        for (key, value) in layout.metadata {
            params.set_metadata(key, MetaValue::Str(value));
        }
        for t in layout.tensors {
            let data = &bytes[layout.data_start + t.start..layout.data_start + t.end];
            let Some(dtype) = t.dtype else { continue };
            params.push(t.name, Tensor::from_bytes(data, dtype, &t.dims, MemType::ParamsNormal)?)?;
        }
        Ok(params)
    }

    /// Write all tensors and string metadata as a safetensors file.
    ///
    /// Only F32, F16, BF16, I32 and U8 tensors can be saved (a quantised tensor is an
    /// error, reported before anything is written). Non-contiguous tensors are written
    /// contiguous. Metadata values other than [`MetaValue::Str`] are **skipped**:
    /// safetensors metadata maps strings to strings, and turning numbers or arrays into
    /// text would not read back as the same value.
    ///
    /// The file is written to a temporary file in the same directory and renamed over
    /// `path` only when complete, so a failure never leaves a partial file at `path`,
    /// and tensors still mapped from an old file at `path` keep their data. The data
    /// section is laid out 4-byte types first, then 2-byte, then 1-byte, after a header
    /// padded to 8 bytes, so every tensor can be read back in place.
    pub fn save_safetensors(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let bad = |msg: String| Error::format(path.display().to_string(), msg);
        let io = |what: &str, e| Error::io(format!("{}: {what}", path.display()), e);

        let mut layout = Vec::with_capacity(self.tensors.len());
        for (name, t) in &self.tensors {
            if name == METADATA_KEY {
                return Err(bad(format!("tensor name '{METADATA_KEY}' is reserved for metadata")));
            }
            let Some(dtype) = dtype_name(t.dtype()) else {
                return Err(bad(format!(
                    "tensor '{name}': cannot save dtype {} (safetensors has no quantised types; \
                     supported: F32, F16, BF16, I32, U8)",
                    t.dtype()
                )));
            };
            layout.push((name.as_str(), t, dtype, 0usize, 0usize));
        }
        // Widest elements first: each tensor's size is a multiple of its element size,
        // so every start offset stays a multiple of its own alignment.
        let mut order: Vec<usize> = (0..layout.len()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(layout[i].1.dtype().block_bytes()));
        let mut offset = 0usize;
        for &i in &order {
            let end = offset.checked_add(layout[i].1.nbytes()).ok_or_else(|| Error::Overflow("file size".into()))?;
            (layout[i].3, layout[i].4) = (offset, end);
            offset = end;
        }

        let mut header = String::from("{");
        let strings: Vec<(&String, &String)> = self
            .metadata
            .iter()
            .filter_map(|(k, v)| match v {
                MetaValue::Str(s) => Some((k, s)),
                _ => None,
            })
            .collect();
        if !strings.is_empty() {
            header.push_str(&format!("{}:{{", json_string(METADATA_KEY)));
            for (i, (k, v)) in strings.iter().enumerate() {
                let sep = if i == 0 { "" } else { "," };
                header.push_str(&format!("{sep}{}:{}", json_string(k), json_string(v)));
            }
            header.push('}');
        }
        for (i, (name, t, dtype, start, end)) in layout.iter().enumerate() {
            let sep = if i == 0 && strings.is_empty() { "" } else { "," };
            header.push_str(&format!(
                "{sep}{}:{{\"dtype\":\"{dtype}\",\"shape\":{:?},\"data_offsets\":[{start},{end}]}}",
                json_string(name),
                t.dims()
            ));
        }
        header.push('}');
        // Pad with spaces (valid JSON whitespace) so the data section starts 8-aligned.
        while header.len() % 8 != 0 {
            header.push(' ');
        }

        let temp = TempFile::create(path)?;
        let mut w = BufWriter::with_capacity(1 << 20, &temp.file);
        let write_err = |e| io("writing safetensors", e);
        w.write_all(&(header.len() as u64).to_le_bytes()).map_err(write_err)?;
        w.write_all(header.as_bytes()).map_err(write_err)?;
        for &i in &order {
            let t = layout[i].1.contiguous()?;
            w.write_all(t.raw_bytes()?).map_err(write_err)?;
        }
        w.flush().map_err(write_err)?;
        drop(w);
        temp.file.sync_all().map_err(write_err)?;
        temp.commit(path)
    }
}

fn json_string(s: &str) -> String {
    // Serialising a string to JSON cannot fail.
    serde_json::to_string(s).unwrap_or_default()
}

/// A file being written next to its destination; removed on drop unless committed.
/// Shared with the other writers in `params`.
pub(super) struct TempFile {
    path: PathBuf,
    pub(super) file: File,
    committed: bool,
}

impl TempFile {
    pub(super) fn create(dest: &Path) -> Result<TempFile> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let name = dest
            .file_name()
            .ok_or_else(|| Error::format(dest.display().to_string(), "cannot save: the path does not name a file"))?;
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let temp_name = format!(".{}.tmp-{}-{n}", name.to_string_lossy(), std::process::id());
        let path = dest.with_file_name(temp_name);
        let file = OpenOptions::new().write(true).create_new(true).open(&path).map_err(|e| {
            Error::io(format!("{}: cannot create temporary file {}", dest.display(), path.display()), e)
        })?;
        Ok(TempFile { path, file, committed: false })
    }

    pub(super) fn commit(mut self, dest: &Path) -> Result<()> {
        fs::rename(&self.path, dest)
            .map_err(|e| Error::io(format!("{}: cannot move {} into place", dest.display(), self.path.display()), e))?;
        self.committed = true;
        // Make the rename itself durable; best effort (directories cannot be opened
        // as files on every platform).
        let dir = dest.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if !self.committed {
            let _ = fs::remove_file(&self.path);
        }
    }
}

// ---- header parsing -------------------------------------------------------------

/// A checked tensor entry; offsets are relative to the data section.
#[derive(Debug)]
struct TensorEntry {
    name: String,
    /// `None`: a skipped tensor (checked, not loaded).
    dtype: Option<DType>,
    dims: Vec<usize>,
    start: usize,
    end: usize,
}

/// A fully checked header: where the data starts, the metadata and the tensors (in
/// header order).
#[derive(Debug)]
struct Layout {
    data_start: usize,
    metadata: Vec<(String, String)>,
    tensors: Vec<TensorEntry>,
}

/// Check the header of the whole file `bytes` (at least 8 bytes). The error message
/// is completed with the file name by the caller.
fn parse(bytes: &[u8]) -> std::result::Result<Layout, String> {
    parse_skipping(bytes, &|_| false)
}

/// [`parse`], where tensors `skip` names may have any whole-byte dtype safetensors defines.
fn parse_skipping(bytes: &[u8], skip: &dyn Fn(&str) -> bool) -> std::result::Result<Layout, String> {
    let mut len_bytes = [0u8; 8];
    len_bytes.copy_from_slice(&bytes[..8]);
    let header_len = u64::from_le_bytes(len_bytes);
    if header_len > MAX_HEADER_LEN {
        return Err(format!("header length {header_len} exceeds the limit of {MAX_HEADER_LEN} bytes (corrupt file?)"));
    }
    let available = bytes.len() as u64 - 8;
    if header_len > available {
        return Err(format!("header length {header_len} runs past the end of the file ({available} bytes after it)"));
    }
    let header_len = header_len as usize; // <= MAX_HEADER_LEN, fits
    let data_start = 8 + header_len;
    let header = std::str::from_utf8(&bytes[8..data_start])
        .map_err(|e| format!("header is not valid UTF-8 (byte {} of the header)", e.valid_up_to()))?;
    let entries = parse_json(header)?;

    let data_len = bytes.len() - data_start;
    let mut metadata = Vec::new();
    let mut tensors = Vec::with_capacity(entries.len());
    for (name, entry) in entries {
        if name == METADATA_KEY {
            metadata = check_metadata(entry)?;
        } else {
            let skipped = skip(&name);
            tensors.push(check_tensor(name, entry, data_len, skipped)?);
        }
    }
    check_tiling(&tensors, data_len)?;
    Ok(Layout { data_start, metadata, tensors })
}

/// A top-level header value: an object (fields in order, duplicate keys rejected while
/// parsing) or something else, kept only as the name of its JSON type for errors.
enum Entry {
    Object(Vec<(String, Value)>),
    Other(&'static str),
}

fn parse_json(header: &str) -> std::result::Result<Vec<(String, Entry)>, String> {
    let mut de = serde_json::Deserializer::from_str(header);
    let entries = de::Deserializer::deserialize_map(&mut de, HeaderVisitor).and_then(|e| de.end().map(|()| e));
    entries.map_err(|e| match e.classify() {
        serde_json::error::Category::Data => format!("bad header: {e}"),
        _ => format!("header is not valid JSON: {e}"),
    })
}

struct HeaderVisitor;

impl<'de> Visitor<'de> for HeaderVisitor {
    type Value = Vec<(String, Entry)>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON object mapping tensor names to entries")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> std::result::Result<Self::Value, A::Error> {
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        while let Some(key) = map.next_key::<String>()? {
            if !seen.insert(key.clone()) {
                return Err(de::Error::custom(if key == METADATA_KEY {
                    format!("'{METADATA_KEY}' appears twice")
                } else {
                    format!("duplicate tensor name '{key}'")
                }));
            }
            let entry = map.next_value_seed(EntrySeed(&key))?;
            out.push((key, entry));
        }
        Ok(out)
    }
}

/// Reads one top-level value, naming its key in duplicate-field errors.
struct EntrySeed<'a>(&'a str);

impl<'de> DeserializeSeed<'de> for EntrySeed<'_> {
    type Value = Entry;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> std::result::Result<Entry, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for EntrySeed<'_> {
    type Value = Entry;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> std::result::Result<Entry, A::Error> {
        let mut fields: Vec<(String, Value)> = Vec::new();
        while let Some(key) = map.next_key::<String>()? {
            if fields.iter().any(|(k, _)| *k == key) {
                let who =
                    if self.0 == METADATA_KEY { METADATA_KEY.to_string() } else { format!("tensor '{}'", self.0) };
                return Err(de::Error::custom(format!("{who}: field '{key}' appears twice")));
            }
            let value = map.next_value::<Value>()?;
            fields.push((key, value));
        }
        Ok(Entry::Object(fields))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> std::result::Result<Entry, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Entry::Other("an array"))
    }
    fn visit_bool<E>(self, _: bool) -> std::result::Result<Entry, E> {
        Ok(Entry::Other("a boolean"))
    }
    fn visit_i64<E>(self, _: i64) -> std::result::Result<Entry, E> {
        Ok(Entry::Other("a number"))
    }
    fn visit_u64<E>(self, _: u64) -> std::result::Result<Entry, E> {
        Ok(Entry::Other("a number"))
    }
    fn visit_f64<E>(self, _: f64) -> std::result::Result<Entry, E> {
        Ok(Entry::Other("a number"))
    }
    fn visit_str<E>(self, _: &str) -> std::result::Result<Entry, E> {
        Ok(Entry::Other("a string"))
    }
    fn visit_unit<E>(self) -> std::result::Result<Entry, E> {
        Ok(Entry::Other("null"))
    }
}

/// `text` cut to a length that keeps an error message readable.
fn brief(text: impl std::fmt::Display) -> String {
    let s = text.to_string();
    if s.chars().count() <= 80 {
        s
    } else {
        format!("{}...", s.chars().take(80).collect::<String>())
    }
}

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn check_metadata(entry: Entry) -> std::result::Result<Vec<(String, String)>, String> {
    let fields = match entry {
        Entry::Object(fields) => fields,
        Entry::Other(kind) => return Err(format!("'{METADATA_KEY}' must be an object of strings, not {kind}")),
    };
    fields
        .into_iter()
        .map(|(k, v)| match v {
            Value::String(s) => Ok((k, s)),
            other => Err(format!("'{METADATA_KEY}' value for '{k}' must be a string, not {}", json_type(&other))),
        })
        .collect()
}

/// A JSON array of non-negative integers that fit in `usize`.
fn usize_array(name: &str, field: &str, v: &Value) -> std::result::Result<Vec<usize>, String> {
    let bad = || format!("tensor '{name}': '{field}' must be an array of non-negative integers, got {}", brief(v));
    let Value::Array(items) = v else { return Err(bad()) };
    items.iter().map(|x| x.as_u64().and_then(|n| usize::try_from(n).ok()).ok_or_else(bad)).collect()
}

/// Bytes per element of the whole-byte dtypes safetensors defines that the engine does not
/// load (for skipped tensors).
fn other_dtype_bytes(name: &str) -> Option<usize> {
    Some(match name {
        "BOOL" | "I8" => 1,
        "I16" | "U16" => 2,
        "U32" => 4,
        "F64" | "I64" | "U64" | "C64" => 8,
        _ => return None,
    })
}

fn check_tensor(name: String, entry: Entry, data_len: usize, skip: bool) -> std::result::Result<TensorEntry, String> {
    let fields = match entry {
        Entry::Object(fields) => fields,
        Entry::Other(kind) => {
            return Err(format!(
                "tensor '{name}': entry must be an object with dtype, shape and data_offsets, not {kind}"
            ))
        }
    };
    let field = |f: &str| {
        fields
            .iter()
            .find(|(k, _)| k == f)
            .map(|(_, v)| v)
            .ok_or_else(|| format!("tensor '{name}': missing field '{f}'"))
    };
    // Other fields are ignored, as the reference implementation does.
    let dtype_value = field("dtype")?;
    let Value::String(dtype_str) = dtype_value else {
        return Err(format!("tensor '{name}': 'dtype' must be a string, got {}", brief(dtype_value)));
    };
    let dims = usize_array(&name, "shape", field("shape")?)?;
    let offsets = usize_array(&name, "data_offsets", field("data_offsets")?)?;
    let [start, end] = offsets[..] else {
        return Err(format!(
            "tensor '{name}': 'data_offsets' must hold two numbers [start, end], got {}",
            brief(format!("{offsets:?}"))
        ));
    };
    let dtype = dtype_from_name(dtype_str);
    let other = if skip { other_dtype_bytes(dtype_str) } else { None };
    if dtype.is_none() && other.is_none() {
        let note = if KNOWN_DTYPES.contains(&dtype_str.as_str()) { "" } else { ", not a safetensors dtype" };
        let dtype_str = brief(dtype_str);
        return Err(format!(
            "tensor '{name}': unsupported dtype {dtype_str}{note} (supported: F32, F16, BF16, I32, U8)"
        ));
    }
    let need = dims
        .iter()
        .try_fold(1usize, |n, &d| n.checked_mul(d))
        .and_then(|n| match dtype {
            Some(dtype) => dtype.bytes_for(n),
            None => n.checked_mul(other.unwrap_or(1)),
        })
        .ok_or_else(|| {
            format!("tensor '{name}': size of shape {} x {dtype_str} overflows", brief(format!("{dims:?}")))
        })?;
    if end < start {
        return Err(format!("tensor '{name}': data_offsets [{start}, {end}] end before they start"));
    }
    if end > data_len {
        return Err(format!(
            "tensor '{name}': data_offsets [{start}, {end}] run past the end of the data section ({data_len} bytes; \
             truncated file?)"
        ));
    }
    if end - start != need {
        return Err(format!(
            "tensor '{name}': data_offsets [{start}, {end}] hold {} bytes but shape {} x {dtype_str} needs {need}",
            end - start,
            brief(format!("{dims:?}"))
        ));
    }
    Ok(TensorEntry { name, dtype: if skip { None } else { dtype }, dims, start, end })
}

/// The tensors' byte ranges must cover the data section exactly once.
fn check_tiling(tensors: &[TensorEntry], data_len: usize) -> std::result::Result<(), String> {
    let mut order: Vec<&TensorEntry> = tensors.iter().collect();
    order.sort_by_key(|t| (t.start, t.end));
    let mut covered = 0;
    let mut prev: Option<&TensorEntry> = None;
    for t in order {
        if t.start > covered {
            return Err(format!(
                "gap in the data section: bytes {covered}..{} belong to no tensor (before tensor '{}')",
                t.start, t.name
            ));
        }
        if t.start < covered {
            let p = prev.expect("a range starting before `covered` > 0 has a predecessor");
            return Err(format!(
                "tensors '{}' and '{}' overlap (data bytes {}..{} and {}..{})",
                p.name, t.name, p.start, p.end, t.start, t.end
            ));
        }
        covered = t.end;
        prev = Some(t);
    }
    if covered < data_len {
        return Err(format!(
            "gap in the data section: bytes {covered}..{data_len} after the last tensor belong to no tensor"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(header: &str, data_len: usize) -> Vec<u8> {
        let mut b = (header.len() as u64).to_le_bytes().to_vec();
        b.extend_from_slice(header.as_bytes());
        b.resize(b.len() + data_len, 0);
        b
    }

    #[test]
    fn zero_sized_tensors_may_share_an_offset() {
        let h = r#"{"a":{"dtype":"F32","shape":[0],"data_offsets":[0,0]},"b":{"dtype":"U8","shape":[2,0],"data_offsets":[0,0]},"c":{"dtype":"U8","shape":[3],"data_offsets":[0,3]}}"#;
        let layout = parse(&file(h, 3)).unwrap();
        assert_eq!(layout.tensors.len(), 3);
    }

    #[test]
    fn skipped_tensors_may_have_other_dtypes_but_are_still_checked() {
        let h = r#"{"ids":{"dtype":"I64","shape":[1,2],"data_offsets":[0,16]},"w":{"dtype":"F32","shape":[1],"data_offsets":[16,20]}}"#;
        assert!(parse(&file(h, 20)).unwrap_err().contains("unsupported dtype I64"));
        let layout = parse_skipping(&file(h, 20), &|n| n == "ids").unwrap();
        assert_eq!(layout.tensors.iter().map(|t| t.dtype).collect::<Vec<_>>(), [None, Some(DType::F32)]);
        // A skipped tensor's size must still fit its offsets, and unknown names stay errors.
        let short = r#"{"ids":{"dtype":"I64","shape":[1,2],"data_offsets":[0,12]},"w":{"dtype":"F32","shape":[2],"data_offsets":[12,20]}}"#;
        assert!(parse_skipping(&file(short, 20), &|n| n == "ids").unwrap_err().contains("needs 16"));
        let odd = r#"{"ids":{"dtype":"Q9","shape":[1],"data_offsets":[0,1]}}"#;
        assert!(parse_skipping(&file(odd, 1), &|_| true).unwrap_err().contains("not a safetensors dtype"));
    }

    #[test]
    fn empty_header_object_is_an_empty_file() {
        let layout = parse(&file("{}  ", 0)).unwrap();
        assert!(layout.tensors.is_empty() && layout.metadata.is_empty());
        assert!(parse(&file("{}", 1)).unwrap_err().contains("gap"));
    }

    #[test]
    fn nested_duplicate_fields_and_bad_entries_are_named() {
        let h = r#"{"w":{"dtype":"F32","dtype":"F16","shape":[1],"data_offsets":[0,4]}}"#;
        let e = parse(&file(h, 4)).unwrap_err();
        assert!(e.contains("tensor 'w'") && e.contains("'dtype' appears twice"), "{e}");
        let e = parse(&file(r#"{"w":[1,2]}"#, 0)).unwrap_err();
        assert!(e.contains("tensor 'w'") && e.contains("an array"), "{e}");
        let e = parse(&file(r#"{"w":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}}"#, 4)).unwrap_err();
        assert!(e.contains("tensor 'w'") && e.contains("non-negative"), "{e}");
        let e = parse(&file(r#"{"w":{"dtype":"F32","shape":[1],"data_offsets":[0]}}"#, 4)).unwrap_err();
        assert!(e.contains("tensor 'w'") && e.contains("[start, end]"), "{e}");
        let e = parse(&file(r#"{"__metadata__":{"a":1}}"#, 0)).unwrap_err();
        assert!(e.contains("__metadata__") && e.contains("'a'"), "{e}");
        let e = parse(&file(r#"{} x"#, 0)).unwrap_err();
        assert!(e.contains("not valid JSON"), "{e}");
    }
}
