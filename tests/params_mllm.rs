//! `.mllm` files (MLLM's own format, versions 1 and 2) seen from outside: round trips of
//! every savable dtype, files built byte by byte from the documented layout (not with our
//! writer), safetensors -> `.mllm`, every kind of corrupt file, and mutation smoke tests.

use std::path::{Path, PathBuf};

use half::{bf16, f16};
use mllm::kernels::quant::{quantize_q4_0, quantize_q4_1, quantize_q4_k, quantize_q5_k, quantize_q6_k, quantize_q8_0};
use mllm::params::mllm_file::{self, MODEL_NAME_KEY};
use mllm::params::{detect_format, FileFormat, MetaValue};
use mllm::{DType, MemType, ParameterFile, Tensor};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

// ---- helpers --------------------------------------------------------------------

const V2_HEADER: usize = 532;
const V2_DESC: usize = 352;

fn random_f32(rng: &mut StdRng, n: usize) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(-2.0..2.0)).collect()
}

fn le_f32(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

fn put_u32(b: &mut [u8], pos: usize, v: u32) {
    b[pos..pos + 4].copy_from_slice(&v.to_le_bytes());
}

fn put_u64(b: &mut [u8], pos: usize, v: u64) {
    b[pos..pos + 8].copy_from_slice(&v.to_le_bytes());
}

fn get_u64(b: &[u8], pos: usize) -> u64 {
    u64::from_le_bytes(b[pos..pos + 8].try_into().unwrap())
}

/// One tensor of a hand-built file: name bytes, MLLM dtype id, shape (v2 only), data.
#[derive(Clone)]
struct Entry {
    name: Vec<u8>,
    id: u32,
    shape: Vec<i32>,
    data: Vec<u8>,
}

fn entry(name: &str, id: u32, shape: &[i32], data: Vec<u8>) -> Entry {
    Entry { name: name.as_bytes().to_vec(), id, shape: shape.to_vec(), data }
}

/// A version 2 file laid out as MLLM's Python converter does: header, optional extra
/// bytes, the descriptor table (with `spare` unused zeroed slots, as the streaming writer
/// leaves), then the data back to back with no padding.
struct V2 {
    model_name: Vec<u8>,
    extra: usize,
    spare: usize,
    entries: Vec<Entry>,
}

impl V2 {
    fn new(entries: Vec<Entry>) -> V2 {
        V2 { model_name: Vec::new(), extra: 0, spare: 0, entries }
    }

    fn desc_offset(&self) -> usize {
        V2_HEADER + self.extra
    }

    /// Byte position of descriptor `i`.
    fn desc(&self, i: usize) -> usize {
        self.desc_offset() + i * V2_DESC
    }

    fn bytes(&self) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&0x519Ai32.to_le_bytes());
        b.extend_from_slice(&2i32.to_le_bytes());
        let mut name = self.model_name.clone();
        name.resize(512, 0);
        b.extend_from_slice(&name);
        b.extend_from_slice(&(self.entries.len() as u32).to_le_bytes());
        b.extend_from_slice(&(self.desc_offset() as u64).to_le_bytes());
        assert_eq!(b.len(), V2_HEADER);
        b.resize(b.len() + self.extra, 0xEE); // extra data MLLM ignores
        let mut data_pos = self.desc(self.entries.len() + self.spare);
        for (i, e) in self.entries.iter().enumerate() {
            b.extend_from_slice(&(i as u32).to_le_bytes());
            b.extend_from_slice(&e.id.to_le_bytes());
            b.extend_from_slice(&(e.data.len() as u64).to_le_bytes());
            b.extend_from_slice(&(data_pos as u64).to_le_bytes());
            b.extend_from_slice(&(e.shape.len() as u64).to_le_bytes());
            let mut shape = e.shape.clone();
            shape.resize(16, 0);
            shape.iter().for_each(|d| b.extend_from_slice(&d.to_le_bytes()));
            let mut name = e.name.clone();
            name.resize(256, 0);
            b.extend_from_slice(&name);
            data_pos += e.data.len();
        }
        b.resize(b.len() + self.spare * V2_DESC, 0);
        for e in &self.entries {
            b.extend_from_slice(&e.data);
        }
        b
    }
}

/// A version 1 file as MLLM writes it: magic, index length, index, data back to back.
/// Returns the bytes and the byte position of each entry's `data_len` field.
fn v1_bytes(entries: &[Entry]) -> (Vec<u8>, Vec<usize>) {
    let index_len: usize = entries.iter().map(|e| 4 + e.name.len() + 8 + 8 + 4).sum();
    let mut b = Vec::new();
    b.extend_from_slice(&20012i32.to_le_bytes());
    b.extend_from_slice(&(index_len as u64).to_le_bytes());
    let mut data_pos = 12 + index_len;
    let mut fields = Vec::new();
    for e in entries {
        b.extend_from_slice(&(e.name.len() as i32).to_le_bytes());
        b.extend_from_slice(&e.name);
        fields.push(b.len());
        b.extend_from_slice(&(e.data.len() as u64).to_le_bytes());
        b.extend_from_slice(&(data_pos as u64).to_le_bytes());
        b.extend_from_slice(&(e.id as i32).to_le_bytes());
        data_pos += e.data.len();
    }
    for e in entries {
        b.extend_from_slice(&e.data);
    }
    (b, fields)
}

/// A small valid version 2 file: f32 [2, 3], u8 [5], q8_0 [1, 32] (at an odd offset).
fn sample_v2() -> V2 {
    let mut rng = StdRng::seed_from_u64(11);
    V2::new(vec![
        entry("a.weight", 0, &[2, 3], le_f32(&random_f32(&mut rng, 6))),
        entry("b", 129, &[5], vec![1, 2, 3, 4, 5]),
        entry("c.q", 8, &[1, 32], quantize_q8_0(&random_f32(&mut rng, 32))),
    ])
}

/// A small valid version 1 file: f32, f16, q4_0 and i32 tensors.
fn sample_v1() -> (Vec<u8>, Vec<usize>) {
    let mut rng = StdRng::seed_from_u64(12);
    let h: Vec<u8> = random_f32(&mut rng, 3).iter().flat_map(|&x| f16::from_f32(x).to_le_bytes()).collect();
    v1_bytes(&[
        entry("w", 0, &[], le_f32(&random_f32(&mut rng, 4))),
        entry("bias", 1, &[], h),
        entry("q", 2, &[], quantize_q4_0(&random_f32(&mut rng, 32))),
        entry("ids", 18, &[], [7i32, -9].iter().flat_map(|x| x.to_le_bytes()).collect()),
    ])
}

/// The error of reading `bytes` as an `.mllm` file, checked to be the same by mmap, from
/// memory and through `ParameterFile::open`, and to name the file.
fn open_error(bytes: &[u8]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "bad.mllm", bytes);
    let msg = mllm_file::read(&path).expect_err("a corrupt file must not open").to_string();
    assert!(msg.contains("bad.mllm"), "error does not name the file: {msg}");
    let mem = mllm_file::read_bytes(bytes).expect_err("a corrupt file must not read from memory").to_string();
    assert_eq!(mem.replace("<mllm bytes>", &path.display().to_string()), msg);
    if detect_format(&bytes[..bytes.len().min(16)]) == Some(FileFormat::Mllm) {
        assert_eq!(ParameterFile::open(&path).unwrap_err().to_string(), msg);
    }
    msg
}

fn assert_mentions(msg: &str, parts: &[&str]) {
    for p in parts {
        assert!(msg.contains(p), "expected {p:?} in the error: {msg}");
    }
}

fn assert_same_tensors(a: &ParameterFile, b: &ParameterFile) {
    assert_eq!(a.names().collect::<Vec<_>>(), b.names().collect::<Vec<_>>());
    for (name, x) in a.iter() {
        let y = b.get(name).unwrap();
        assert_eq!((x.dims(), x.dtype()), (y.dims(), y.dtype()), "tensor '{name}'");
        let (x, y) = (x.contiguous().unwrap(), y.contiguous().unwrap());
        assert_eq!(x.raw_bytes().unwrap(), y.raw_bytes().unwrap(), "tensor '{name}'");
    }
}

// ---- round trips ----------------------------------------------------------------

/// One tensor of every savable dtype, with odd shapes, a scalar, an empty tensor and a
/// non-contiguous view; quantised ones hold real blocks from the quantisers.
fn every_dtype() -> ParameterFile {
    let mut rng = StdRng::seed_from_u64(1);
    let mut p = ParameterFile::create();
    p.push("f32", Tensor::from_vec(random_f32(&mut rng, 15), &[3, 5]).unwrap()).unwrap();
    let h: Vec<f16> = random_f32(&mut rng, 7).into_iter().map(f16::from_f32).collect();
    p.push("f16", Tensor::from_vec(h, &[7]).unwrap()).unwrap();
    let b: Vec<bf16> = random_f32(&mut rng, 6).into_iter().map(bf16::from_f32).collect();
    p.push("bf16", Tensor::from_vec(b, &[1, 2, 3]).unwrap()).unwrap();
    p.push("i32", Tensor::from_vec(vec![i32::MIN, -1, 0, 1, i32::MAX], &[5]).unwrap()).unwrap();
    p.push("u8", Tensor::from_vec(vec![0u8, 7, 255], &[3]).unwrap()).unwrap();
    type Quantizer = fn(&[f32]) -> Vec<u8>;
    let quants: [(DType, Quantizer, usize); 5] = [
        (DType::Q4_0, quantize_q4_0, 64),
        (DType::Q4_1, quantize_q4_1, 96),
        (DType::Q8_0, quantize_q8_0, 32),
        (DType::Q4_K, quantize_q4_k, 256),
        (DType::Q6_K, quantize_q6_k, 512),
    ];
    for (dtype, quantize, row) in quants {
        let blocks = quantize(&random_f32(&mut rng, 3 * row));
        let t = Tensor::from_bytes(&blocks, dtype, &[3, row], MemType::Normal).unwrap();
        p.push(format!("blk.{dtype}"), t).unwrap();
    }
    p.push("scalar", Tensor::from_vec(vec![4.5f32], &[]).unwrap()).unwrap();
    p.push("empty", Tensor::from_vec(Vec::<f32>::new(), &[0, 4]).unwrap()).unwrap();
    let m = Tensor::from_vec(random_f32(&mut rng, 12), &[3, 4]).unwrap();
    p.push("transposed", m.transpose(0, 1).unwrap()).unwrap();
    p.set_metadata(MODEL_NAME_KEY, MetaValue::Str("tiny-model ✓".into()));
    p
}

#[test]
fn v2_round_trip_of_every_savable_dtype() {
    let p = every_dtype();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("all.mllm");
    p.save_mllm_v2(&path).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    assert_eq!(detect_format(&bytes[..16]), Some(FileFormat::Mllm));
    assert_eq!(bytes, mllm_file::to_v2_bytes(&p).unwrap(), "file and in-memory writers agree");

    let q = ParameterFile::open(&path).unwrap();
    assert_same_tensors(&p, &q);
    assert_eq!(q.metadata()[MODEL_NAME_KEY], MetaValue::Str("tiny-model ✓".into()));
    assert!(q.iter().all(|(_, t)| t.mem_type() == MemType::ParamsMmap), "aligned data is read in place");
    // values, not only bytes, for the view that was written contiguous
    let t = p.get("transposed").unwrap().to_vec::<f32>().unwrap();
    assert_eq!(q.get("transposed").unwrap().to_vec::<f32>().unwrap(), t);
    assert_eq!(q.get("scalar").unwrap().dims(), &[] as &[usize]);

    let r = mllm_file::read_bytes(&bytes).unwrap();
    assert_same_tensors(&p, &r);
    assert!(r.iter().all(|(_, t)| t.mem_type() == MemType::ParamsNormal));

    // and saved again from the mapped tensors: identical file
    let path2 = dir.path().join("again.mllm");
    q.save_mllm_v2(&path2).unwrap();
    assert_eq!(std::fs::read(&path2).unwrap(), bytes);
}

#[test]
fn written_layout_matches_the_documented_one() {
    let mut p = ParameterFile::create();
    p.push("x", Tensor::from_vec(vec![1.0f32, 2.0], &[1, 2]).unwrap()).unwrap();
    p.push("y", Tensor::from_vec(vec![9u8; 3], &[3]).unwrap()).unwrap();
    let b = mllm_file::to_v2_bytes(&p).unwrap();
    assert_eq!(&b[..8], &[0x9a, 0x51, 0, 0, 2, 0, 0, 0]);
    assert!(b[8..520].iter().all(|&c| c == 0), "no model name");
    assert_eq!(u32::from_le_bytes(b[520..524].try_into().unwrap()), 2);
    assert_eq!(get_u64(&b, 524), 532);
    let d1 = V2_HEADER + V2_DESC;
    assert_eq!(u32::from_le_bytes(b[d1..d1 + 4].try_into().unwrap()), 1, "id");
    assert_eq!(u32::from_le_bytes(b[d1 + 4..d1 + 8].try_into().unwrap()), 129, "u8 id");
    assert_eq!(get_u64(&b, d1 + 8), 3);
    let off = get_u64(&b, d1 + 16) as usize;
    assert_eq!(off % 64, 0);
    assert_eq!(get_u64(&b, d1 + 24), 1);
    assert_eq!(i32::from_le_bytes(b[d1 + 32..d1 + 36].try_into().unwrap()), 3);
    assert_eq!(&b[d1 + 96..d1 + 98], b"y\0");
    assert_eq!(&b[off..], &[9, 9, 9]);
}

#[test]
fn q5_k_cannot_be_saved_and_nothing_is_written() {
    let mut rng = StdRng::seed_from_u64(2);
    let mut p = ParameterFile::create();
    p.push("ok", Tensor::from_vec(vec![1.0f32], &[1]).unwrap()).unwrap();
    let blocks = quantize_q5_k(&random_f32(&mut rng, 256));
    p.push("blk.q5k", Tensor::from_bytes(&blocks, DType::Q5_K, &[1, 256], MemType::Normal).unwrap()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("q5k.mllm");
    let e = p.save_mllm_v2(&path).unwrap_err().to_string();
    assert_mentions(&e, &["q5k.mllm", "'blk.q5k'", "q5_k"]);
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "no file and no temporary left behind");
}

#[test]
fn writer_refuses_what_the_format_cannot_hold() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("w.mllm");
    let save = |name: &str, t: Tensor| {
        let mut p = ParameterFile::create();
        p.push(name, t).unwrap();
        p.save_mllm_v2(&path).unwrap_err().to_string()
    };
    let one = || Tensor::from_vec(vec![1.0f32], &[1]).unwrap();
    assert_mentions(&save(&"n".repeat(256), one()), &["255 bytes", "256 bytes"]);
    assert_mentions(&save("", one()), &["tensor ''", "1 to 255"]);
    assert_mentions(&save("nul\0name", one()), &["NUL"]);
    let deep = Tensor::from_vec(vec![1.0f32], &[1; 17]).unwrap();
    assert_mentions(&save("deep", deep), &["'deep'", "17 dimensions"]);
    let wide = Tensor::from_vec(Vec::<u8>::new(), &[0, 3_000_000_000]).unwrap();
    assert_mentions(&save("wide", wide), &["'wide'", "dimension 1", "i32"]);
    let mut p = ParameterFile::create();
    p.set_metadata(MODEL_NAME_KEY, MetaValue::Int(3));
    assert_mentions(&p.save_mllm_v2(&path).unwrap_err().to_string(), &[MODEL_NAME_KEY, "string"]);
    p.set_metadata(MODEL_NAME_KEY, MetaValue::Str("m".repeat(512)));
    assert_mentions(&p.save_mllm_v2(&path).unwrap_err().to_string(), &["511 bytes"]);
    assert!(!path.exists());
}

#[test]
fn saving_over_a_mapped_file_keeps_its_tensors_valid() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.mllm");
    let mut p = ParameterFile::create();
    p.push("v", Tensor::from_vec(vec![1.0f32, 2.0, 3.0], &[3]).unwrap()).unwrap();
    p.save_mllm_v2(&path).unwrap();
    let old = ParameterFile::open(&path).unwrap();
    let mut q = ParameterFile::create();
    q.push("v", Tensor::from_vec(vec![7.0f32], &[1]).unwrap()).unwrap();
    q.save_mllm_v2(&path).unwrap();
    assert_eq!(old.get("v").unwrap().to_vec::<f32>().unwrap(), [1.0, 2.0, 3.0]);
    assert_eq!(ParameterFile::open(&path).unwrap().get("v").unwrap().to_vec::<f32>().unwrap(), [7.0]);
}

#[test]
fn safetensors_to_mllm_and_back() {
    let mut rng = StdRng::seed_from_u64(3);
    let mut p = ParameterFile::create();
    p.push("emb", Tensor::from_vec(random_f32(&mut rng, 35), &[5, 7]).unwrap()).unwrap();
    let h: Vec<bf16> = random_f32(&mut rng, 9).into_iter().map(bf16::from_f32).collect();
    p.push("norm", Tensor::from_vec(h, &[9]).unwrap()).unwrap();
    p.push("ids", Tensor::from_vec(vec![3i32, 1, 4], &[3]).unwrap()).unwrap();
    p.push("mask", Tensor::from_vec(vec![1u8, 0], &[1, 2]).unwrap()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let st = dir.path().join("m.safetensors");
    p.save_safetensors(&st).unwrap();

    let from_st = ParameterFile::open(&st).unwrap();
    let ml = dir.path().join("m.mllm");
    from_st.save_mllm_v2(&ml).unwrap();
    let from_ml = ParameterFile::open(&ml).unwrap();
    assert_same_tensors(&from_st, &from_ml);
    let mut sorted: Vec<&str> = p.names().collect();
    sorted.sort();
    let mut got: Vec<&str> = from_ml.names().collect();
    got.sort();
    assert_eq!(sorted, got);
    for (name, t) in p.iter() {
        assert_eq!(t.raw_bytes().unwrap(), from_ml.get(name).unwrap().raw_bytes().unwrap(), "{name}");
    }
    // and back to safetensors
    let st2 = dir.path().join("m2.safetensors");
    from_ml.save_safetensors(&st2).unwrap();
    assert_same_tensors(&from_st, &ParameterFile::open(&st2).unwrap());
}

// ---- files built by hand ----------------------------------------------------------

#[test]
fn reads_a_hand_built_version_1_file() {
    let mut rng = StdRng::seed_from_u64(4);
    let w = random_f32(&mut rng, 5);
    let hv: Vec<f16> = random_f32(&mut rng, 3).into_iter().map(f16::from_f32).collect();
    let bv: Vec<bf16> = random_f32(&mut rng, 2).into_iter().map(bf16::from_f32).collect();
    let q = quantize_q4_1(&random_f32(&mut rng, 64));
    let entries = [
        entry("model.w", 0, &[], le_f32(&w)),
        entry("h", 1, &[], hv.iter().flat_map(|x| x.to_le_bytes()).collect()),
        entry("b16", 128, &[], bv.iter().flat_map(|x| x.to_le_bytes()).collect()),
        entry("q", 3, &[], q.clone()),
        entry("i", 18, &[], [5i32, -6].iter().flat_map(|x| x.to_le_bytes()).collect()),
        entry("u", 129, &[], vec![1, 2, 3]),
        entry("zero", 0, &[], vec![]),
    ];
    let (bytes, _) = v1_bytes(&entries);
    assert_eq!(&bytes[..4], &[0x2c, 0x4e, 0, 0]);
    assert_eq!(detect_format(&bytes[..16]), Some(FileFormat::Mllm));
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "v1.mllm", &bytes);
    for p in [ParameterFile::open(&path).unwrap(), mllm_file::read_bytes(&bytes).unwrap()] {
        assert_eq!(p.names().collect::<Vec<_>>(), ["model.w", "h", "b16", "q", "i", "u", "zero"]);
        assert_eq!(p.get("model.w").unwrap().to_vec::<f32>().unwrap(), w);
        assert_eq!(p.get("model.w").unwrap().dims(), &[5]);
        assert_eq!(p.get("h").unwrap().to_vec::<f16>().unwrap(), hv);
        assert_eq!(p.get("b16").unwrap().to_vec::<bf16>().unwrap(), bv);
        let tq = p.get("q").unwrap();
        assert_eq!((tq.dims(), tq.dtype()), (&[64][..], DType::Q4_1));
        assert_eq!(tq.raw_bytes().unwrap(), &q[..]);
        assert_eq!(p.get("i").unwrap().to_vec::<i32>().unwrap(), [5, -6]);
        assert_eq!(p.get("u").unwrap().to_vec::<u8>().unwrap(), [1, 2, 3]);
        assert_eq!(p.get("zero").unwrap().dims(), &[0]);
        assert!(p.metadata().is_empty());
    }
    // the index ends at 12 + 7 entries; data offsets follow unaligned names: data of
    // misaligned tensors is copied, the values above prove both paths right
    let info = mllm_file::parse(&bytes, "v1").unwrap();
    assert_eq!(info.version, 1);
    let mapped = ParameterFile::open(&path).unwrap();
    for t in &info.tensors {
        let aligned = t.offset % if t.dtype.is_quantized() { 2 } else { t.dtype.block_bytes() } == 0;
        let expect = if aligned { MemType::ParamsMmap } else { MemType::ParamsNormal };
        assert_eq!(mapped.get(&t.name).unwrap().mem_type(), expect, "tensor '{}'", t.name);
    }
    assert!(info.tensors.iter().any(|t| t.offset % t.dtype.block_bytes() != 0), "the sample has a misaligned tensor");
}

#[test]
fn reads_a_hand_built_version_2_file_with_extra_data_and_spare_slots() {
    let mut rng = StdRng::seed_from_u64(5);
    let w = random_f32(&mut rng, 6);
    let k = quantize_q4_k(&random_f32(&mut rng, 512));
    let mut f = V2::new(vec![
        entry("layers.0.w", 0, &[3, 2], le_f32(&w)),
        entry("k", 12, &[2, 256], k.clone()),
        entry("s", 0, &[], le_f32(&[2.5])),
        entry("flag", 129, &[1, 1, 3], vec![0, 1, 0]),
    ]);
    f.model_name = b"qwen-tiny".to_vec();
    f.extra = 13;
    f.spare = 3;
    let bytes = f.bytes();
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "v2.mllm", &bytes);
    for p in [ParameterFile::open(&path).unwrap(), mllm_file::read_bytes(&bytes).unwrap()] {
        assert_eq!(p.names().collect::<Vec<_>>(), ["layers.0.w", "k", "s", "flag"]);
        assert_eq!(p.get("layers.0.w").unwrap().to_vec::<f32>().unwrap(), w);
        assert_eq!(p.get("layers.0.w").unwrap().dims(), &[3, 2]);
        let tk = p.get("k").unwrap();
        assert_eq!((tk.dims(), tk.dtype()), (&[2, 256][..], DType::Q4_K));
        assert_eq!(tk.raw_bytes().unwrap(), &k[..]);
        assert_eq!(p.get("s").unwrap().to_vec::<f32>().unwrap(), [2.5]);
        assert_eq!(p.get("flag").unwrap().dims(), &[1, 1, 3]);
        assert_eq!(p.metadata()[MODEL_NAME_KEY], MetaValue::Str("qwen-tiny".into()));
    }
}

#[test]
fn a_name_filling_all_256_bytes_is_read_whole() {
    let name = "n".repeat(256);
    let bytes = V2::new(vec![entry(&name, 129, &[1], vec![5])]).bytes();
    let p = mllm_file::read_bytes(&bytes).unwrap();
    assert_eq!(p.get(&name).unwrap().to_vec::<u8>().unwrap(), [5]);
}

#[test]
fn empty_files_of_both_versions() {
    assert!(mllm_file::read_bytes(&V2::new(vec![]).bytes()).unwrap().is_empty());
    assert!(mllm_file::read_bytes(&v1_bytes(&[]).0).unwrap().is_empty());
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("e.mllm");
    ParameterFile::create().save_mllm_v2(&path).unwrap();
    assert!(ParameterFile::open(&path).unwrap().is_empty());
}

#[test]
fn format_detection() {
    assert_eq!(detect_format(&V2::new(vec![]).bytes()[..16]), Some(FileFormat::Mllm));
    assert_eq!(detect_format(&sample_v1().0[..16]), Some(FileFormat::Mllm));
    // a v2 magic with a wrong version is still ours, so the reader can say what is wrong
    assert_eq!(detect_format(b"\x9a\x51\0\0\x07\0\0\0abcdefgh"), Some(FileFormat::Mllm));
    // safetensors whose JSON header is exactly 20012 or 0x519A bytes long
    assert_eq!(detect_format(b"\x2c\x4e\0\0\0\0\0\0{\"a\""), Some(FileFormat::Safetensors));
    assert_eq!(detect_format(b"\x9a\x51\0\0\0\0\0\0{\"a\""), Some(FileFormat::Safetensors));
    assert_eq!(detect_format(b"\x2c\x4e\0"), None);
}

// ---- corrupt files: each problem on its own -----------------------------------------

#[test]
fn bad_magic() {
    let mut b = sample_v2().bytes();
    b[0] ^= 0xff;
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "bad.mllm", &b);
    let e = mllm_file::read(&path).unwrap_err().to_string();
    assert_mentions(&e, &["bad.mllm", "not an .mllm file", "magic"]);
    let e = ParameterFile::open(&path).unwrap_err().to_string();
    assert_mentions(&e, &["unrecognised format", ".mllm"]);
    assert_mentions(&open_error(&[0x2c, 0x4e]), &["too short"]);
}

#[test]
fn unknown_version() {
    for v in [0i32, 1, 3, -2] {
        let mut b = sample_v2().bytes();
        b[4..8].copy_from_slice(&v.to_le_bytes());
        assert_mentions(&open_error(&b), &["unsupported .mllm version", &v.to_string()]);
    }
}

#[test]
fn truncation_at_every_length_is_an_error() {
    let (v1, _) = sample_v1();
    for full in [sample_v2().bytes(), v1] {
        for len in 0..full.len() {
            let r = mllm_file::read_bytes(&full[..len]);
            assert!(r.is_err(), "a file cut to {len} of {} bytes was read", full.len());
        }
        assert!(mllm_file::read_bytes(&full).is_ok());
    }
    // the messages say what is missing
    let b = sample_v2().bytes();
    assert_mentions(&open_error(&b[..100]), &["truncated", "header needs 532"]);
    assert_mentions(&open_error(&b[..600]), &["descriptors", "past the end of the file"]);
    assert_mentions(&open_error(&b[..b.len() - 1]), &["'c.q'", "past the end of the file", "truncated"]);
    let (v1, _) = sample_v1();
    assert_mentions(&open_error(&v1[..30]), &["index is", "truncated"]);
    assert_mentions(&open_error(&v1[..v1.len() - 3]), &["'ids'", "past the end of the file"]);
}

#[test]
fn counts_and_lengths_that_overflow_or_exceed_the_file() {
    let f = sample_v2();
    let base = f.bytes();
    // descriptor count far beyond the file
    let mut b = base.clone();
    put_u32(&mut b, 520, u32::MAX);
    assert_mentions(&open_error(&b), &["4294967295 descriptors", "past the end"]);
    // table offset that overflows when the table is added
    let mut b = base.clone();
    put_u64(&mut b, 524, u64::MAX - 100);
    assert_mentions(&open_error(&b), &["descriptors", "past the end"]);
    // table offset into the header
    let mut b = base.clone();
    put_u64(&mut b, 524, 100);
    assert_mentions(&open_error(&b), &["offset 100", "header"]);
    // shape_len beyond 16, and as huge as a u64 can be
    for n in [17u64, u64::MAX] {
        let mut b = base.clone();
        put_u64(&mut b, f.desc(1) + 24, n);
        assert_mentions(&open_error(&b), &["'b'", "dimensions", "at most 16"]);
    }
    // a shape whose element count overflows
    let mut b = base.clone();
    put_u64(&mut b, f.desc(0) + 24, 16);
    for j in 0..16 {
        b[f.desc(0) + 32 + 4 * j..f.desc(0) + 36 + 4 * j].copy_from_slice(&i32::MAX.to_le_bytes());
    }
    assert_mentions(&open_error(&b), &["'a.weight'", "overflows"]);
    // offset near u64::MAX (overflows with the size) and a huge size
    let mut b = base.clone();
    put_u64(&mut b, f.desc(0) + 16, u64::MAX - 3);
    assert_mentions(&open_error(&b), &["'a.weight'", "overflows"]);
    let mut b = base.clone();
    put_u64(&mut b, f.desc(0) + 8, u64::MAX);
    assert_mentions(&open_error(&b), &["'a.weight'", "bytes"]);

    // version 1: index length, name length, data length
    let (v1, fields) = sample_v1();
    let mut b = v1.clone();
    put_u64(&mut b, 4, u64::MAX);
    assert_mentions(&open_error(&b), &["index is 18446744073709551615 bytes"]);
    let mut b = v1.clone();
    put_u32(&mut b, 12, u32::MAX);
    assert_mentions(&open_error(&b), &["entry #0", "name length 4294967295"]);
    let mut b = v1.clone();
    put_u64(&mut b, fields[0], u64::MAX - 3); // a multiple of 4: passes the element check
    assert_mentions(&open_error(&b), &["'w'"]);
    let mut b = v1.clone();
    put_u64(&mut b, fields[1] + 8, u64::MAX - 1);
    assert_mentions(&open_error(&b), &["'bias'", "overflows"]);
}

#[test]
fn version_1_index_entries_must_fill_the_index() {
    let (v1, fields) = sample_v1();
    // index one byte short: the last entry's dtype is cut
    let mut b = v1.clone();
    let len = get_u64(&b, 4);
    put_u64(&mut b, 4, len - 1);
    assert_mentions(&open_error(&b), &["'ids'", "index entry needs 20 more bytes"]);
    // index two bytes into the next entry's name length
    let mut b = v1.clone();
    put_u64(&mut b, 4, (fields[1] + 20 - 12 + 2) as u64);
    assert_mentions(&open_error(&b), &["entry #2", "name length runs past the end of the index"]);
}

#[test]
fn non_utf8_names() {
    let mut f = sample_v2();
    f.entries[1].name = vec![b'x', 0xff, 0xfe];
    assert_mentions(&open_error(&f.bytes()), &["tensor #1", "not valid UTF-8"]);
    let mut e = sample_v2().entries;
    e[0].name = vec![0xc3]; // a cut two-byte sequence
    assert_mentions(&open_error(&v1_bytes(&e).0), &["tensor #0", "not valid UTF-8"]);
}

#[test]
fn empty_names() {
    let mut f = sample_v2();
    f.entries[2].name.clear();
    assert_mentions(&open_error(&f.bytes()), &["tensor #2 has an empty name"]);
    let mut e = sample_v2().entries;
    e[1].name.clear();
    assert_mentions(&open_error(&v1_bytes(&e).0), &["tensor #1 has an empty name"]);
}

#[test]
fn duplicate_names() {
    let mut f = sample_v2();
    f.entries[2].name = b"a.weight".to_vec();
    assert_mentions(&open_error(&f.bytes()), &["duplicate tensor name 'a.weight'"]);
    let mut e = sample_v2().entries;
    e[1].name = b"c.q".to_vec();
    assert_mentions(&open_error(&v1_bytes(&e).0), &["duplicate tensor name 'c.q'"]);
}

#[test]
fn offsets_past_the_end() {
    let f = sample_v2();
    let mut b = f.bytes();
    let len = b.len() as u64;
    put_u64(&mut b, f.desc(1) + 16, len - 2);
    assert_mentions(&open_error(&b), &["'b'", "past the end of the file"]);
    let mut b = f.bytes();
    put_u64(&mut b, f.desc(1) + 16, len + 1_000_000);
    assert_mentions(&open_error(&b), &["'b'", "past the end of the file"]);
    let (mut v1, fields) = sample_v1();
    let len = v1.len() as u64;
    put_u64(&mut v1, fields[2] + 8, len);
    assert_mentions(&open_error(&v1), &["'q'", "past the end of the file"]);
}

#[test]
fn overlapping_data() {
    let f = sample_v2();
    let base = f.bytes();
    // 'b' moved one byte back into 'a.weight'
    let mut b = base.clone();
    let off = get_u64(&b, f.desc(1) + 16);
    put_u64(&mut b, f.desc(1) + 16, off - 1);
    assert_mentions(&open_error(&b), &["'a.weight'", "'b'", "overlap"]);
    // data inside the header and inside the descriptor table
    let mut b = base.clone();
    put_u64(&mut b, f.desc(1) + 16, 10);
    assert_mentions(&open_error(&b), &["'b'", "overlaps the header"]);
    let mut b = base.clone();
    put_u64(&mut b, f.desc(1) + 16, (f.desc(2) + 5) as u64);
    assert_mentions(&open_error(&b), &["'b'", "overlaps the descriptor table"]);
    // version 1: data inside the index, and two tensors on the same bytes
    let (v1, fields) = sample_v1();
    let mut b = v1.clone();
    put_u64(&mut b, fields[0] + 8, 12);
    assert_mentions(&open_error(&b), &["'w'", "overlaps the header and index"]);
    let mut b = v1.clone();
    let w_off = get_u64(&b, fields[0] + 8);
    put_u64(&mut b, fields[3] + 8, w_off);
    assert_mentions(&open_error(&b), &["'w'", "'ids'", "overlap"]);
    // empty tensors take no bytes and may sit anywhere in the file
    let mut f = sample_v2();
    f.entries.push(entry("none", 0, &[0, 3], vec![]));
    let mut b = f.bytes();
    put_u64(&mut b, f.desc(3) + 16, 4);
    assert!(mllm_file::read_bytes(&b).unwrap().get("none").unwrap().dims() == [0, 3]);
}

#[test]
fn size_not_matching_shape_and_dtype() {
    let f = sample_v2();
    let mut b = f.bytes();
    put_u64(&mut b, f.desc(0) + 8, 20);
    assert_mentions(&open_error(&b), &["'a.weight'", "20 bytes", "needs 24"]);
    // shape changed instead of size
    let mut b = f.bytes();
    b[f.desc(1) + 32..f.desc(1) + 36].copy_from_slice(&4i32.to_le_bytes());
    assert_mentions(&open_error(&b), &["'b'", "5 bytes", "needs 4"]);
    // quantised rows must hold whole blocks
    let mut b = f.bytes();
    b[f.desc(2) + 32..f.desc(2) + 40].copy_from_slice(&[2, 0, 0, 0, 16, 0, 0, 0]);
    assert_mentions(&open_error(&b), &["'c.q'", "row length 16", "block size 32"]);
    // negative dimension
    let mut b = f.bytes();
    b[f.desc(0) + 32..f.desc(0) + 36].copy_from_slice(&(-2i32).to_le_bytes());
    assert_mentions(&open_error(&b), &["'a.weight'", "negative"]);
    // version 1: a length that is not whole elements or blocks
    let (v1, fields) = sample_v1();
    let mut b = v1.clone();
    put_u64(&mut b, fields[0], 6);
    assert_mentions(&open_error(&b), &["'w'", "6 bytes are not a whole number of f32 elements"]);
    let mut b = v1.clone();
    put_u64(&mut b, fields[2], 17);
    assert_mentions(&open_error(&b), &["'q'", "q4_0 blocks"]);
}

#[test]
fn unknown_or_unsupported_dtype_ids() {
    for (id, what) in [(16u32, "kInt8"), (13, "unknown"), (15, "kGGUF_Q8_K"), (156, "kBool"), (9999, "unknown")] {
        let mut f = sample_v2();
        f.entries[1].id = id;
        let e = open_error(&f.bytes());
        assert_mentions(&e, &["'b'", &format!("dtype id {id}"), what, "not supported"]);
    }
    let mut e = sample_v2().entries;
    e[0].id = u32::MAX; // -1 as the i32 a version 1 file stores
    assert_mentions(&open_error(&v1_bytes(&e).0), &["'a.weight'", "dtype id -1", "unknown"]);
}

// ---- mutation smoke test ------------------------------------------------------------

/// Read mutated bytes in every way; only errors are allowed, never a panic.
fn exercise(bytes: &[u8]) {
    mllm_file::fuzz_target(bytes);
    if let Ok(p) = mllm_file::read_bytes(bytes) {
        for (_, t) in p.iter() {
            if t.dtype().is_float() || t.dtype().is_quantized() {
                let _ = t.to_f32_vec();
            }
        }
    }
}

#[test]
fn mutated_files_never_panic() {
    let mut rng = StdRng::seed_from_u64(0x5eed);
    let mut f = sample_v2();
    f.entries.push(entry("z", 0, &[], le_f32(&[1.0])));
    let (v1, _) = sample_v1();
    let dir = tempfile::tempdir().unwrap();
    for (k, full) in [f.bytes(), v1].into_iter().enumerate() {
        for len in 0..=full.len() {
            exercise(&full[..len]);
        }
        for round in 0..3000 {
            let mut m = full.clone();
            match round % 3 {
                0 => {
                    for _ in 0..rng.random_range(1..4) {
                        let p = rng.random_range(0..m.len());
                        m[p] ^= 1 << rng.random_range(0..8);
                    }
                }
                1 => {
                    // an extreme 4- or 8-byte value anywhere (counts, lengths, offsets)
                    let values = [0u64, 1, 31, 532, u32::MAX as u64, i32::MAX as u64, u64::MAX, u64::MAX / 352];
                    let v = values[rng.random_range(0..values.len())].to_le_bytes();
                    let w = if rng.random_bool(0.5) { 4 } else { 8 };
                    let p = rng.random_range(0..m.len() - w);
                    m[p..p + w].copy_from_slice(&v[..w]);
                }
                _ => {
                    let p = rng.random_range(0..m.len());
                    m[p] = rng.random();
                    m.truncate(rng.random_range(p..=m.len()));
                }
            }
            exercise(&m);
            if round % 100 == 0 {
                let path = write(dir.path(), &format!("m{k}-{round}.mllm"), &m);
                let _ = ParameterFile::open(&path);
                let _ = mllm_file::read(&path);
            }
        }
    }
}
