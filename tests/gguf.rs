//! The GGUF reader seen from outside: small GGUF v2/v3 files written byte by byte here,
//! read back through `gguf::read` (mmap) and `gguf::read_bytes`; one test per kind of
//! corruption; a deterministic mutation smoke test (truncations, byte flips); and a
//! file written by the `gguf` Python package (tests/fixtures/gguf/).

use std::panic::{catch_unwind, AssertUnwindSafe};

use half::f16;
use mllm::kernels::quant::{dequantize_q4_1, dequantize_q8_0, quantize_q4_1, quantize_q8_0};
use mllm::params::gguf;
use mllm::params::MetaValue;
use mllm::{DType, MemType, ParameterFile};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

// ---- a GGUF writer for tests ---------------------------------------------------------

/// A metadata value as written: GGUF type id and its encoding.
#[derive(Clone, Debug)]
enum V {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    Str(String),
    /// Element type id and elements (all of that type).
    Arr(u32, Vec<V>),
    U64(u64),
    I64(i64),
    F64(f64),
    /// Any type id followed by any bytes (for corrupt values).
    Raw(u32, Vec<u8>),
}

impl V {
    fn type_id(&self) -> u32 {
        match self {
            V::U8(_) => 0,
            V::I8(_) => 1,
            V::U16(_) => 2,
            V::I16(_) => 3,
            V::U32(_) => 4,
            V::I32(_) => 5,
            V::F32(_) => 6,
            V::Bool(_) => 7,
            V::Str(_) => 8,
            V::Arr(..) => 9,
            V::U64(_) => 10,
            V::I64(_) => 11,
            V::F64(_) => 12,
            V::Raw(t, _) => *t,
        }
    }

    fn write(&self, b: &mut Vec<u8>) {
        match self {
            V::U8(v) => b.push(*v),
            V::I8(v) => b.extend(v.to_le_bytes()),
            V::U16(v) => b.extend(v.to_le_bytes()),
            V::I16(v) => b.extend(v.to_le_bytes()),
            V::U32(v) => b.extend(v.to_le_bytes()),
            V::I32(v) => b.extend(v.to_le_bytes()),
            V::F32(v) => b.extend(v.to_le_bytes()),
            V::Bool(v) => b.push(*v as u8),
            V::Str(s) => put_str(b, s.as_bytes()),
            V::Arr(t, items) => {
                b.extend(t.to_le_bytes());
                b.extend((items.len() as u64).to_le_bytes());
                items.iter().for_each(|i| i.write(b));
            }
            V::U64(v) => b.extend(v.to_le_bytes()),
            V::I64(v) => b.extend(v.to_le_bytes()),
            V::F64(v) => b.extend(v.to_le_bytes()),
            V::Raw(_, bytes) => b.extend(bytes),
        }
    }
}

fn put_str(b: &mut Vec<u8>, s: &[u8]) {
    b.extend((s.len() as u64).to_le_bytes());
    b.extend(s);
}

#[derive(Clone)]
struct TensorSpec {
    name: Vec<u8>,
    /// GGUF order: fastest dimension first.
    ne: Vec<u64>,
    ggml_type: u32,
    data: Vec<u8>,
    /// Replaces the computed data offset (relative to the data section).
    offset: Option<u64>,
}

fn tensor(name: &str, ne: &[u64], ggml_type: u32, data: Vec<u8>) -> TensorSpec {
    TensorSpec { name: name.as_bytes().to_vec(), ne: ne.to_vec(), ggml_type, data, offset: None }
}

#[derive(Clone)]
struct Builder {
    magic: [u8; 4],
    version: u32,
    kv: Vec<(Vec<u8>, V)>,
    tensors: Vec<TensorSpec>,
    alignment: usize,
    /// Replace the tensor / metadata counts in the header.
    n_tensors: Option<u64>,
    n_kv: Option<u64>,
}

impl Builder {
    fn new(version: u32) -> Builder {
        Builder { magic: *b"GGUF", version, kv: vec![], tensors: vec![], alignment: 32, n_tensors: None, n_kv: None }
    }

    fn kv(mut self, key: &str, v: V) -> Builder {
        if key == "general.alignment" {
            if let V::U32(a) = v {
                self.alignment = a as usize;
            }
        }
        self.kv.push((key.as_bytes().to_vec(), v));
        self
    }

    fn tensor(mut self, t: TensorSpec) -> Builder {
        self.tensors.push(t);
        self
    }

    /// The file's bytes; tensor data is packed in order, each padded to the alignment,
    /// and the file ends right after the last tensor's data.
    fn bytes(&self) -> Vec<u8> {
        let mut b = self.magic.to_vec();
        b.extend(self.version.to_le_bytes());
        b.extend(self.n_tensors.unwrap_or(self.tensors.len() as u64).to_le_bytes());
        b.extend(self.n_kv.unwrap_or(self.kv.len() as u64).to_le_bytes());
        for (k, v) in &self.kv {
            put_str(&mut b, k);
            b.extend(v.type_id().to_le_bytes());
            v.write(&mut b);
        }
        let mut offsets = vec![];
        let mut next = 0u64;
        for t in &self.tensors {
            put_str(&mut b, &t.name);
            b.extend((t.ne.len() as u32).to_le_bytes());
            t.ne.iter().for_each(|d| b.extend(d.to_le_bytes()));
            b.extend(t.ggml_type.to_le_bytes());
            let off = t.offset.unwrap_or(next);
            b.extend(off.to_le_bytes());
            offsets.push(off);
            next = (off + t.data.len() as u64).next_multiple_of(self.alignment as u64);
        }
        if !self.tensors.is_empty() {
            let data_start = b.len().next_multiple_of(self.alignment);
            for (t, &off) in self.tensors.iter().zip(&offsets).filter(|(t, _)| !t.data.is_empty()) {
                let start = data_start + off as usize;
                if b.len() < start + t.data.len() {
                    b.resize(start + t.data.len(), 0);
                }
                b[start..start + t.data.len()].copy_from_slice(&t.data);
            }
        }
        b
    }
}

// ---- a valid file with every kind of metadata and four tensor types -------------------

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn random(rng: &mut StdRng, n: usize) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(-1.0..1.0)).collect()
}

struct Sample {
    builder: Builder,
    w_f32: Vec<f32>,
    w_f16: Vec<f32>,
    q8: Vec<u8>,
    q41: Vec<u8>,
}

fn sample(version: u32) -> Sample {
    let mut rng = StdRng::seed_from_u64(42);
    let w_f32 = random(&mut rng, 6);
    let w_f16: Vec<f32> = random(&mut rng, 5).into_iter().map(|x| f16::from_f32(x).to_f32()).collect();
    let q8 = quantize_q8_0(&random(&mut rng, 2 * 64));
    let q41 = quantize_q4_1(&random(&mut rng, 3 * 32));
    let f16_bytes: Vec<u8> = w_f16.iter().flat_map(|&x| f16::from_f32(x).to_le_bytes()).collect();
    let s = |x: &str| V::Str(x.to_string());
    let builder = Builder::new(version)
        .kv("general.architecture", s("llama"))
        .kv("t.u8", V::U8(200))
        .kv("t.i8", V::I8(-100))
        .kv("t.u16", V::U16(60000))
        .kv("t.i16", V::I16(-30000))
        .kv("t.u32", V::U32(4_000_000_000))
        .kv("t.i32", V::I32(-2_000_000_000))
        .kv("t.f32", V::F32(1e-5))
        .kv("t.bool", V::Bool(true))
        .kv("t.str", s("héllo ✓"))
        .kv("t.empty_str", s(""))
        .kv("t.u64", V::U64(u64::MAX))
        .kv("t.i64", V::I64(i64::MIN))
        .kv("t.f64", V::F64(-2.5e300))
        .kv("t.arr_u8", V::Arr(0, vec![V::U8(1), V::U8(2), V::U8(255)]))
        .kv("t.arr_i32", V::Arr(5, vec![V::I32(-1), V::I32(7)]))
        .kv("t.arr_f32", V::Arr(6, vec![V::F32(0.5), V::F32(-0.25)]))
        .kv("t.arr_bool", V::Arr(7, vec![V::Bool(false), V::Bool(true)]))
        .kv("t.arr_str", V::Arr(8, vec![s("a"), s(""), s("Ġthe")]))
        .kv("t.arr_empty", V::Arr(10, vec![]))
        .kv("t.arr_nested", V::Arr(9, vec![V::Arr(4, vec![V::U32(1), V::U32(2)]), V::Arr(8, vec![s("x")])]))
        .kv("llama.block_count", V::U32(30))
        .tensor(tensor("w.f32", &[3, 2], 0, f32_bytes(&w_f32)))
        .tensor(tensor("w.f16", &[5], 1, f16_bytes))
        .tensor(tensor("w.q8_0", &[64, 2], 8, q8.clone()))
        .tensor(tensor("w.q4_1", &[32, 3, 1], 3, q41.clone()));
    Sample { builder, w_f32, w_f16, q8, q41 }
}

fn check_sample(f: &ParameterFile, s: &Sample, mem_type: MemType) {
    let m = |k: &str| f.meta(k).unwrap().clone();
    let st = |x: &str| MetaValue::Str(x.to_string());
    assert_eq!(f.meta_str("general.architecture").unwrap(), "llama");
    assert_eq!(m("t.u8"), MetaValue::UInt(200));
    assert_eq!(m("t.i8"), MetaValue::Int(-100));
    assert_eq!(m("t.u16"), MetaValue::UInt(60000));
    assert_eq!(m("t.i16"), MetaValue::Int(-30000));
    assert_eq!(m("t.u32"), MetaValue::UInt(4_000_000_000));
    assert_eq!(m("t.i32"), MetaValue::Int(-2_000_000_000));
    assert_eq!(f.meta_f32("t.f32").unwrap(), 1e-5);
    assert!(f.meta_bool("t.bool").unwrap());
    assert_eq!(f.meta_str("t.str").unwrap(), "héllo ✓");
    assert_eq!(f.meta_str("t.empty_str").unwrap(), "");
    assert_eq!(f.meta_u64("t.u64").unwrap(), u64::MAX);
    assert_eq!(f.meta_i64("t.i64").unwrap(), i64::MIN);
    assert_eq!(f.meta_f64("t.f64").unwrap(), -2.5e300);
    assert_eq!(f.meta_i64_array("t.arr_u8").unwrap(), [1, 2, 255]);
    assert_eq!(f.meta_i64_array("t.arr_i32").unwrap(), [-1, 7]);
    assert_eq!(f.meta_f32_array("t.arr_f32").unwrap(), [0.5, -0.25]);
    assert_eq!(m("t.arr_bool"), MetaValue::Array(vec![MetaValue::Bool(false), MetaValue::Bool(true)]));
    assert_eq!(f.meta_str_array("t.arr_str").unwrap(), ["a", "", "Ġthe"]);
    assert_eq!(f.meta_array("t.arr_empty").unwrap(), []);
    assert_eq!(
        m("t.arr_nested"),
        MetaValue::Array(vec![
            MetaValue::Array(vec![MetaValue::UInt(1), MetaValue::UInt(2)]),
            MetaValue::Array(vec![st("x")])
        ])
    );
    assert_eq!(f.meta_usize("llama.block_count").unwrap(), 30);
    assert_eq!(f.metadata().len(), 22);

    assert_eq!(f.names().collect::<Vec<_>>(), ["w.f32", "w.f16", "w.q8_0", "w.q4_1"]);
    let t = |n: &str| f.get(n).unwrap();
    for (_, x) in f.iter() {
        assert_eq!(x.mem_type(), mem_type);
    }
    assert_eq!((t("w.f32").dims(), t("w.f32").dtype()), (&[2, 3][..], DType::F32));
    assert_eq!(t("w.f32").to_vec::<f32>().unwrap(), s.w_f32);
    assert_eq!(t("w.f32").name(), Some("w.f32"));
    assert_eq!((t("w.f16").dims(), t("w.f16").dtype()), (&[5][..], DType::F16));
    assert_eq!(t("w.f16").to_f32_vec().unwrap(), s.w_f16);
    assert_eq!((t("w.q8_0").dims(), t("w.q8_0").dtype()), (&[2, 64][..], DType::Q8_0));
    assert_eq!(t("w.q8_0").raw_bytes().unwrap(), &s.q8[..]);
    let mut want = vec![0.0; 128];
    dequantize_q8_0(&s.q8, &mut want);
    assert_eq!(t("w.q8_0").to_f32_vec().unwrap(), want);
    assert_eq!((t("w.q4_1").dims(), t("w.q4_1").dtype()), (&[1, 3, 32][..], DType::Q4_1));
    let mut want = vec![0.0; 96];
    dequantize_q4_1(&s.q41, &mut want);
    assert_eq!(t("w.q4_1").to_f32_vec().unwrap(), want);
    // a row of the second tensor is reachable as a view, in whole blocks
    let row1 = t("w.q8_0").narrow(0, 1, 1).unwrap().to_f32_vec().unwrap();
    let mut want = vec![0.0; 64];
    dequantize_q8_0(&s.q8[68..], &mut want);
    assert_eq!(row1, want);
}

#[test]
fn reads_v3_and_v2_by_mmap_and_from_bytes() {
    for version in [3, 2] {
        let s = sample(version);
        let bytes = s.builder.bytes();
        let info = gguf::parse(&bytes, "t").unwrap();
        assert_eq!(info.version, version);
        assert_eq!(info.alignment, 32);
        assert_eq!(info.data_offset % 32, 0);
        assert!(info.tensors.iter().all(|t| t.offset % 32 == 0));
        check_sample(&gguf::read_bytes(&bytes).unwrap(), &s, MemType::ParamsNormal);

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.gguf");
        std::fs::write(&path, &bytes).unwrap();
        check_sample(&gguf::read(&path).unwrap(), &s, MemType::ParamsMmap);
    }
}

#[test]
fn honours_a_custom_alignment() {
    let mut rng = StdRng::seed_from_u64(1);
    let a = random(&mut rng, 3);
    let b = random(&mut rng, 5);
    let bytes = Builder::new(3)
        .kv("general.alignment", V::U32(256))
        .tensor(tensor("a", &[3], 0, f32_bytes(&a)))
        .tensor(tensor("b", &[5], 0, f32_bytes(&b)))
        .bytes();
    let info = gguf::parse(&bytes, "t").unwrap();
    assert_eq!((info.alignment, info.data_offset % 256), (256, 0));
    assert_eq!(info.tensors[1].offset - info.tensors[0].offset, 256);
    let f = gguf::read_bytes(&bytes).unwrap();
    assert_eq!(f.get("a").unwrap().to_vec::<f32>().unwrap(), a);
    assert_eq!(f.get("b").unwrap().to_vec::<f32>().unwrap(), b);
}

#[test]
fn a_file_without_tensors_needs_no_data_section() {
    let bytes = Builder::new(3).kv("general.name", V::Str("x".into())).bytes();
    let f = gguf::read_bytes(&bytes).unwrap();
    assert!(f.is_empty());
    assert_eq!(f.meta_str("general.name").unwrap(), "x");
}

// ---- a file written by the gguf Python package ------------------------------------------

/// The MetaValue that a value of GGUF types `types` (outermost first) reads as.
fn expected_meta(types: &[String], v: &serde_json::Value) -> MetaValue {
    match types[0].as_str() {
        "UINT8" | "UINT16" | "UINT32" | "UINT64" => MetaValue::UInt(v.as_u64().unwrap()),
        "INT8" | "INT16" | "INT32" | "INT64" => MetaValue::Int(v.as_i64().unwrap()),
        "FLOAT32" | "FLOAT64" => MetaValue::Float(v.as_f64().unwrap()),
        "BOOL" => MetaValue::Bool(v.as_bool().unwrap()),
        "STRING" => MetaValue::Str(v.as_str().unwrap().to_string()),
        "ARRAY" => MetaValue::Array(v.as_array().unwrap().iter().map(|x| expected_meta(&types[1..], x)).collect()),
        t => panic!("unexpected type {t}"),
    }
}

#[test]
fn reads_a_file_written_by_the_gguf_python_package() {
    let dir = format!("{}/tests/fixtures/gguf", env!("CARGO_MANIFEST_DIR"));
    let want: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(format!("{dir}/small.json")).unwrap()).unwrap();
    let f = gguf::read(format!("{dir}/small.gguf")).unwrap();
    let meta = want["metadata"].as_object().unwrap();
    assert_eq!(f.metadata().len(), meta.len());
    for (k, v) in meta {
        let types: Vec<String> = serde_json::from_value(v["type"].clone()).unwrap();
        assert_eq!(f.meta(k).unwrap(), &expected_meta(&types, &v["value"]), "metadata key {k}");
    }
    let info = gguf::parse(&std::fs::read(format!("{dir}/small.gguf")).unwrap(), "small.gguf").unwrap();
    assert_eq!(info.alignment, 64);
    let tensors = want["tensors"].as_array().unwrap();
    assert_eq!(f.names().collect::<Vec<_>>(), tensors.iter().map(|t| t["name"].as_str().unwrap()).collect::<Vec<_>>());
    for t in tensors {
        let name = t["name"].as_str().unwrap();
        let x = f.get(name).unwrap();
        let dims: Vec<usize> = serde_json::from_value(t["dims"].clone()).unwrap();
        let values: Vec<f32> = serde_json::from_value(t["values"].clone()).unwrap();
        assert_eq!(x.dims(), &dims[..], "{name}");
        assert_eq!(x.dtype(), t["ggml_type"].as_str().unwrap().parse::<DType>().unwrap(), "{name}");
        assert_eq!(x.mem_type(), MemType::ParamsMmap);
        assert_eq!(x.to_f32_vec().unwrap(), values, "{name}");
    }
}

// ---- corrupt files ---------------------------------------------------------------------

fn err_of(bytes: &[u8]) -> String {
    match gguf::read_bytes(bytes) {
        Ok(_) => panic!("corrupt file was accepted"),
        Err(e) => e.to_string(),
    }
}

#[track_caller]
fn assert_err(b: &Builder, needle: &str) {
    let e = err_of(&b.bytes());
    assert!(e.contains(needle), "error {e:?} does not mention {needle:?}");
}

fn one_tensor(t: TensorSpec) -> Builder {
    Builder::new(3).tensor(t)
}

#[test]
fn bad_magic_and_versions() {
    let mut b = Builder::new(3);
    b.magic = *b"GGML";
    assert_err(&b, "not a GGUF file");
    assert_err(&Builder::new(1), "version 1 is not supported");
    assert_err(&Builder::new(4), "unsupported GGUF version 4");
    assert_err(&Builder::new(3u32.swap_bytes()), "big-endian");
    assert!(err_of(b"GG").contains("truncated"));
    assert!(err_of(b"").contains("truncated"));
}

#[test]
fn truncation_anywhere_is_an_error() {
    let bytes = sample(3).builder.bytes();
    for len in 0..bytes.len() {
        let e = err_of(&bytes[..len]);
        assert!(e.contains("truncated") || e.contains("past the end") || e.contains("cannot fit"), "cut at {len}: {e}");
    }
}

#[test]
fn counts_that_cannot_fit_are_refused() {
    let mut b = Builder::new(3);
    b.n_tensors = Some(u64::MAX);
    assert_err(&b, "tensor infos cannot fit");
    let mut b = Builder::new(3);
    b.n_kv = Some(1 << 40);
    assert_err(&b, "metadata entries cannot fit");
    let b = Builder::new(3).kv("a", V::Raw(9, [8u32.to_le_bytes().to_vec(), u64::MAX.to_le_bytes().to_vec()].concat()));
    assert_err(&b, "elements of metadata array 'a' cannot fit");
    let b = Builder::new(3).kv("a", V::Raw(8, (1u64 << 62).to_le_bytes().to_vec()));
    assert_err(&b, "has length 4611686018427387904 but only 0 bytes are left");
    let mut big_key = Vec::new();
    put_str(&mut big_key, &[b'k'; 10]);
    big_key[0] = 200;
    let mut b = Builder::new(3);
    b.n_kv = Some(1);
    let mut bytes = b.bytes();
    bytes.extend(&big_key);
    assert!(err_of(&bytes).contains("truncated: a metadata key has length 200"));
}

#[test]
fn bad_metadata_values() {
    assert_err(&Builder::new(3).kv("k", V::Raw(13, vec![0; 8])), "metadata key 'k': unknown value type 13");
    assert_err(
        &Builder::new(3).kv("k", V::Raw(9, [77u32.to_le_bytes(), [0; 4]].concat())),
        "unknown array element type 77",
    );
    assert_err(&Builder::new(3).kv("k", V::Raw(7, vec![2])), "bool byte is 2");
    let mut bad_key = Builder::new(3);
    bad_key.kv.push((vec![b'a', 0xff, b'b'], V::U8(1)));
    assert_err(&bad_key, "a metadata key is not valid UTF-8");
    assert_err(
        &Builder::new(3).kv("k", V::Raw(8, [2u64.to_le_bytes().to_vec(), vec![0xc3, 0x28]].concat())),
        "not valid UTF-8",
    );
    assert_err(&Builder::new(3).kv("k", V::U8(1)).kv("k", V::U8(2)), "duplicate metadata key 'k'");
    let mut deep = V::Arr(4, vec![V::U32(1)]);
    for _ in 0..20 {
        deep = V::Arr(9, vec![deep]);
    }
    assert_err(&Builder::new(3).kv("deep", deep), "arrays nested deeper than");
    assert_err(&Builder::new(3).kv("general.alignment", V::U32(24)), "general.alignment 24 is not a power of two");
    assert_err(&Builder::new(3).kv("general.alignment", V::U32(0)), "general.alignment 0 is not a power of two");
    assert_err(&Builder::new(3).kv("general.alignment", V::Str("32".into())), "general.alignment has type string");
}

#[test]
fn bad_tensor_infos() {
    let f32x4 = || f32_bytes(&[1.0; 4]);
    assert_err(
        &one_tensor(tensor("t", &[1, 1, 1, 1, 4], 0, f32x4())),
        "tensor 't' has 5 dimensions; GGML allows at most 4",
    );
    assert_err(&one_tensor(tensor("t", &[1 << 40, 1 << 40], 0, vec![])), "tensor 't': size of");
    assert_err(&one_tensor(tensor("t", &[u64::MAX], 0, vec![])), "tensor 't': dimension 0 is too large");
    assert_err(&one_tensor(tensor("t", &[256], 10, vec![0; 84])), "tensor 't' has unsupported ggml type 10 (Q2_K)");
    assert_err(&one_tensor(tensor("t", &[4], 99, vec![0; 18])), "unsupported ggml type 99 (unknown)");
    assert_err(
        &one_tensor(tensor("t", &[33, 2], 8, vec![0; 68])),
        "tensor 't': row length 33 is not a multiple of the q8_0 block size 32",
    );
    assert_err(&one_tensor(tensor("t", &[], 2, vec![0; 18])), "row length 1 is not a multiple of the q4_0 block size");
    let mut bad_name = tensor("t", &[4], 0, f32x4());
    bad_name.name = vec![0xfe];
    assert_err(&one_tensor(bad_name), "a tensor name is not valid UTF-8");
    let dup = one_tensor(tensor("t", &[4], 0, f32x4())).tensor(tensor("t", &[4], 0, f32x4()));
    assert_err(&dup, "duplicate tensor name 't'");
}

#[test]
fn bad_tensor_offsets() {
    let f32x8 = || f32_bytes(&[1.0; 8]);
    let mut t = tensor("t", &[8], 0, f32x8());
    t.offset = Some(16);
    assert_err(&one_tensor(t), "tensor 't': data offset 16 is not a multiple of the alignment 32");

    // past the end: an offset beyond the data, and a tensor bigger than the file
    let b = one_tensor(tensor("t", &[8], 0, f32x8()));
    let mut bytes = b.bytes();
    bytes.truncate(bytes.len() - 1);
    assert!(err_of(&bytes).contains("tensor 't': data (bytes"));
    let mut b = one_tensor(tensor("t", &[8], 0, f32x8()));
    b.tensors[0].offset = Some(1 << 20);
    let mut bytes = b.bytes();
    bytes.truncate(bytes.len() - 32);
    assert!(err_of(&bytes).contains("lies past the end of the file"));
    // an offset whose end overflows (no data is written for a tensor without data)
    let mut t = tensor("t", &[8], 0, vec![]);
    t.offset = Some(u64::MAX - 31);
    assert_err(&one_tensor(t), "tensor 't': data offset 18446744073709551584 overflows");

    // overlap: the second tensor starts inside the first
    let mut second = tensor("u", &[8], 0, f32x8());
    second.offset = Some(0);
    let b = one_tensor(tensor("t", &[16], 0, f32_bytes(&[2.0; 16]))).tensor(second);
    assert_err(&b, "tensor data overlaps: 't'");
}

// ---- deterministic mutation smoke test ---------------------------------------------

/// Reads `bytes` and, if that succeeds, uses every tensor and metadata value; returns
/// the panic message if anything panicked.
fn exercise(bytes: &[u8]) -> Option<String> {
    let r = catch_unwind(AssertUnwindSafe(|| {
        if let Ok(f) = gguf::read_bytes(bytes) {
            for (_, t) in f.iter() {
                let _ = t.to_f32_vec();
            }
            for k in f.metadata().keys() {
                let _ = (f.meta_u64(k), f.meta_f32(k), f.meta_str(k), f.meta_str_array(k));
            }
        }
    }));
    r.err().map(|p| {
        p.downcast_ref::<String>().cloned().or(p.downcast_ref::<&str>().map(|s| s.to_string())).unwrap_or_default()
    })
}

#[test]
fn mutated_files_never_panic() {
    let prev = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let bytes = sample(3).builder.bytes();
    let mut failures = vec![];
    for len in 0..=bytes.len() {
        if let Some(p) = exercise(&bytes[..len]) {
            failures.push(format!("truncated to {len}: {p}"));
        }
    }
    let mut rng = StdRng::seed_from_u64(0x6767_7566);
    let interesting: [u64; 8] = [0, 1, 31, 32, 255, 1 << 32, u64::MAX, i64::MAX as u64];
    for i in 0..6000 {
        let mut m = bytes.clone();
        match i % 3 {
            0 => {
                let p = rng.random_range(0..m.len());
                m[p] ^= 1 << rng.random_range(0..8);
            }
            1 => {
                for _ in 0..rng.random_range(1..4) {
                    let p = rng.random_range(0..m.len());
                    m[p] = rng.random();
                }
            }
            _ => {
                // a u64/u32-sized field set to an extreme value at a random position
                let p = rng.random_range(0..m.len() - 8);
                let v = interesting[rng.random_range(0..interesting.len())];
                let w = if rng.random() { 8 } else { 4 };
                m[p..p + w].copy_from_slice(&v.to_le_bytes()[..w]);
            }
        }
        if let Some(p) = exercise(&m) {
            failures.push(format!("mutation {i}: {p}"));
        }
    }
    std::panic::set_hook(prev);
    assert!(failures.is_empty(), "{} panics, first: {:?}", failures.len(), &failures[..failures.len().min(5)]);
}

#[test]
fn parse_describes_tensor_types_that_read_refuses() {
    let b = Builder::new(3).tensor(tensor("q2", &[256], 10, vec![0; 84])).tensor(tensor("odd", &[4], 99, vec![0; 8]));
    let info = gguf::parse(&b.bytes(), "x").expect("describing a file with unsupported types");
    let (q2, odd) = (&info.tensors[0], &info.tensors[1]);
    assert_eq!((q2.ggml_type, q2.dtype, q2.nbytes, q2.type_name()), (10, None, Some(84), "Q2_K"));
    assert_eq!((odd.ggml_type, odd.dtype, odd.nbytes, odd.type_name()), (99, None, None, "unknown"));
    // a known layout is still checked against the file
    let short = Builder::new(3).tensor(tensor("q2", &[512], 10, vec![0; 84]));
    let e = gguf::parse(&short.bytes(), "x").unwrap_err().to_string();
    assert!(e.contains("past the end of the file"), "{e}");
}
