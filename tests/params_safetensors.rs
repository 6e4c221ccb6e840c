//! safetensors reading and writing seen from outside: round trips, files produced by
//! other writers (by hand and by the reference `safetensors` crate), every kind of
//! corrupt file, and loading a saved file into `nn` modules.

use std::path::{Path, PathBuf};

use half::{bf16, f16};
use mllm::nn::{self, Module};
use mllm::params::{detect_format, FileFormat, MetaValue};
use mllm::{DType, Error, MemType, ParameterFile, Tensor};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

// ---- helpers --------------------------------------------------------------------

/// The bytes of a safetensors file: 8-byte LE header length, header, data.
fn file_bytes(header: &str, data: &[u8]) -> Vec<u8> {
    let mut b = (header.len() as u64).to_le_bytes().to_vec();
    b.extend_from_slice(header.as_bytes());
    b.extend_from_slice(data);
    b
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

/// Open `bytes` as a safetensors file and return the error message, checking that it
/// names the file.
fn open_error(bytes: &[u8]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "bad.safetensors", bytes);
    let err = ParameterFile::open_safetensors(&path).expect_err("a corrupt file must not open");
    let msg = err.to_string();
    assert!(msg.contains("bad.safetensors"), "error does not name the file: {msg}");
    // The generic entry point must report the same problem.
    if bytes.len() > 8 && bytes[8] == b'{' {
        assert_eq!(ParameterFile::open(&path).unwrap_err().to_string(), msg);
    }
    msg
}

fn assert_mentions(msg: &str, parts: &[&str]) {
    for p in parts {
        assert!(msg.contains(p), "expected {p:?} in the error: {msg}");
    }
}

fn le_f32(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn le_i32(v: &[i32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn le_f16(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|&x| f16::from_f32(x).to_le_bytes()).collect()
}

fn le_bf16(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|&x| bf16::from_f32(x).to_le_bytes()).collect()
}

fn random_f32(rng: &mut StdRng, n: usize) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(-4.0f32..4.0)).collect()
}

// ---- round trips ----------------------------------------------------------------

#[test]
fn round_trip_every_plain_dtype() {
    let mut rng = StdRng::seed_from_u64(7);
    let f32s = random_f32(&mut rng, 15);
    let f16s: Vec<f16> = random_f32(&mut rng, 7).into_iter().map(f16::from_f32).collect();
    let bf16s: Vec<bf16> = random_f32(&mut rng, 18).into_iter().map(bf16::from_f32).collect();
    let i32s: Vec<i32> = (0..4).map(|_| rng.random()).collect();
    let u8s: Vec<u8> = (0..11).map(|_| rng.random()).collect();
    // A non-contiguous view: the transpose of a [4, 6] matrix.
    let base = random_f32(&mut rng, 24);
    let transposed = Tensor::from_slice(&base, &[4, 6]).unwrap().transpose(0, 1).unwrap();
    assert!(!transposed.is_contiguous());
    let expect_t: Vec<f32> = (0..6).flat_map(|j| (0..4).map(move |i| (i, j))).map(|(i, j)| base[i * 6 + j]).collect();

    let mut params = ParameterFile::create();
    // Odd sizes and mixed element widths, 1-byte first, so the writer has to reorder
    // the data to keep every tensor aligned.
    params.push("u8.odd", Tensor::from_slice(&u8s, &[11]).unwrap()).unwrap();
    params.push("layer.0.w", Tensor::from_slice(&f32s, &[3, 5]).unwrap()).unwrap();
    params.push("half", Tensor::from_slice(&f16s, &[7]).unwrap()).unwrap();
    params.push("brain", Tensor::from_slice(&bf16s, &[2, 3, 3]).unwrap()).unwrap();
    params.push("ints", Tensor::from_slice(&i32s, &[4, 1]).unwrap()).unwrap();
    params.push("transposed", transposed).unwrap();
    params.push("scalar", Tensor::from_slice(&[2.5f32], &[]).unwrap()).unwrap();
    params.push("empty", Tensor::zeros(&[0, 3], DType::F32).unwrap()).unwrap();
    params.set_metadata("format", MetaValue::Str("pt".into()));
    params.set_metadata("note", MetaValue::Str("quote \" and ünïcode".into()));
    params.set_metadata("layers", MetaValue::Int(30)); // not a string: skipped

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("all.safetensors");
    params.save_safetensors(&path).unwrap();
    let back = ParameterFile::open(&path).unwrap();

    assert_eq!(back.names().collect::<Vec<_>>(), params.names().collect::<Vec<_>>(), "file order is kept");
    for (name, t) in back.iter() {
        let orig = params.get(name).unwrap();
        assert_eq!(t.dims(), orig.dims(), "{name}");
        assert_eq!(t.dtype(), orig.dtype(), "{name}");
        assert_eq!(t.name(), Some(name));
        assert_eq!(t.mem_type(), MemType::ParamsMmap, "{name}: the writer aligns data, so it is read in place");
    }
    assert_eq!(back.get("u8.odd").unwrap().to_vec::<u8>().unwrap(), u8s);
    assert_eq!(back.get("layer.0.w").unwrap().as_slice::<f32>().unwrap(), &f32s[..]);
    assert_eq!(back.get("half").unwrap().to_vec::<f16>().unwrap(), f16s);
    assert_eq!(back.get("brain").unwrap().to_vec::<bf16>().unwrap(), bf16s);
    assert_eq!(back.get("ints").unwrap().to_vec::<i32>().unwrap(), i32s);
    assert_eq!(back.get("transposed").unwrap().to_vec::<f32>().unwrap(), expect_t);
    assert_eq!(back.get("scalar").unwrap().to_vec::<f32>().unwrap(), [2.5]);
    assert_eq!(back.get("empty").unwrap().elem_count(), 0);

    let meta = back.metadata();
    assert_eq!(meta.len(), 2, "only string metadata is written: {meta:?}");
    assert_eq!(meta["format"], MetaValue::Str("pt".into()));
    assert_eq!(meta["note"], MetaValue::Str("quote \" and ünïcode".into()));
}

#[test]
fn empty_parameter_file_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("empty.safetensors");
    ParameterFile::create().save_safetensors(&path).unwrap();
    let back = ParameterFile::open(&path).unwrap();
    assert!(back.is_empty() && back.metadata().is_empty());
}

#[test]
fn writer_output_is_accepted_by_the_reference_crate() {
    let mut rng = StdRng::seed_from_u64(11);
    let w = random_f32(&mut rng, 6);
    let h: Vec<f16> = random_f32(&mut rng, 3).into_iter().map(f16::from_f32).collect();
    let mut params = ParameterFile::create();
    params.push("h", Tensor::from_slice(&h, &[3]).unwrap()).unwrap();
    params.push("b", Tensor::from_slice(&[1u8, 2, 3], &[3]).unwrap()).unwrap();
    params.push("w", Tensor::from_slice(&w, &[2, 3]).unwrap()).unwrap();
    params.set_metadata("k", MetaValue::Str("v".into()));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.safetensors");
    params.save_safetensors(&path).unwrap();

    let bytes = std::fs::read(&path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    assert_eq!(meta.metadata().as_ref().unwrap()["k"], "v");
    let wv = st.tensor("w").unwrap();
    assert_eq!((wv.dtype(), wv.shape()), (safetensors::Dtype::F32, &[2, 3][..]));
    assert_eq!(wv.data(), &le_f32(&w)[..]);
    let hv = st.tensor("h").unwrap();
    assert_eq!((hv.dtype(), hv.shape()), (safetensors::Dtype::F16, &[3][..]));
    assert_eq!(hv.data(), bytemuck::cast_slice::<f16, u8>(&h));
    let bv = st.tensor("b").unwrap();
    assert_eq!((bv.dtype(), bv.data()), (safetensors::Dtype::U8, &[1u8, 2, 3][..]));
}

#[test]
fn reads_a_file_written_by_the_reference_crate() {
    use safetensors::tensor::TensorView;
    let mut rng = StdRng::seed_from_u64(12);
    let a = random_f32(&mut rng, 10);
    let b = random_f32(&mut rng, 5);
    let (a_bytes, b_bytes) = (le_f32(&a), le_bf16(&b));
    let views = vec![
        ("a.weight", TensorView::new(safetensors::Dtype::F32, vec![2, 5], &a_bytes).unwrap()),
        ("b", TensorView::new(safetensors::Dtype::BF16, vec![5], &b_bytes).unwrap()),
    ];
    let meta = std::collections::HashMap::from([("who".to_string(), "reference".to_string())]);
    let bytes = safetensors::serialize(views, Some(meta)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "ref.safetensors", &bytes);

    let p = ParameterFile::open(&path).unwrap();
    assert_eq!(p.len(), 2);
    assert_eq!(p.metadata()["who"], MetaValue::Str("reference".into()));
    let ta = p.get("a.weight").unwrap();
    assert_eq!((ta.dims(), ta.dtype()), (&[2, 5][..], DType::F32));
    assert_eq!(ta.to_vec::<f32>().unwrap(), a);
    let tb = p.get("b").unwrap();
    assert_eq!((tb.dims(), tb.dtype()), (&[5][..], DType::BF16));
    let expect_b: Vec<f32> = b.iter().map(|&x| bf16::from_f32(x).to_f32()).collect();
    assert_eq!(tb.to_f32_vec().unwrap(), expect_b);
}

#[test]
fn reads_a_hand_written_file() {
    // Header JSON in an order different from the data, metadata, trailing padding.
    let header = concat!(
        r#"{"__metadata__":{"format":"pt","source":"hand"},"#,
        r#""b.ids":{"dtype":"I32","shape":[3],"data_offsets":[8,20]},"#,
        r#""a.weight":{"dtype":"F32","shape":[1,2],"data_offsets":[0,8]},"#,
        r#""c":{"dtype":"U8","shape":[2,2],"data_offsets":[20,24]}}"#
    );
    let header = format!("{header:<width$}", width = header.len().next_multiple_of(8));
    let mut data = le_f32(&[1.5, -2.25]);
    data.extend(le_i32(&[7, -9, i32::MAX]));
    data.extend([0u8, 1, 254, 255]);
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "hand.safetensors", &file_bytes(&header, &data));
    assert_eq!(detect_format(&std::fs::read(&path).unwrap()[..16]), Some(FileFormat::Safetensors));

    let p = ParameterFile::open(&path).unwrap();
    assert_eq!(p.names().collect::<Vec<_>>(), ["b.ids", "a.weight", "c"], "header order is kept");
    assert_eq!(p.get("a.weight").unwrap().to_vec::<f32>().unwrap(), [1.5, -2.25]);
    assert_eq!(p.get("a.weight").unwrap().dims(), &[1, 2]);
    assert_eq!(p.get("b.ids").unwrap().to_vec::<i32>().unwrap(), [7, -9, i32::MAX]);
    assert_eq!(p.get("c").unwrap().to_vec::<u8>().unwrap(), [0, 1, 254, 255]);
    assert_eq!(p.get("c").unwrap().dims(), &[2, 2]);
    assert_eq!(p.metadata()["source"], MetaValue::Str("hand".into()));
    assert!(p.iter().all(|(_, t)| t.mem_type() == MemType::ParamsMmap));
}

/// Write F32, F16, BF16 and U8 tensors after a header of `header_pad` extra spaces,
/// so the data section starts at a chosen offset.
fn misaligned_file(dir: &Path, header_len_mod: usize) -> (PathBuf, Vec<f32>, Vec<f32>, Vec<f32>) {
    let mut rng = StdRng::seed_from_u64(3);
    let f = random_f32(&mut rng, 5);
    let h = random_f32(&mut rng, 3);
    let b = random_f32(&mut rng, 3);
    let header = concat!(
        r#"{"f":{"dtype":"F32","shape":[5],"data_offsets":[0,20]},"#,
        r#""h":{"dtype":"F16","shape":[3],"data_offsets":[20,26]},"#,
        r#""b":{"dtype":"BF16","shape":[3],"data_offsets":[26,32]},"#,
        r#""u":{"dtype":"U8","shape":[3],"data_offsets":[32,35]}}"#
    );
    let mut len = header.len();
    while len % 8 != header_len_mod {
        len += 1;
    }
    let header = format!("{header:<len$}");
    let mut data = le_f32(&f);
    data.extend(le_f16(&h));
    data.extend(le_bf16(&b));
    data.extend([9u8, 8, 7]);
    let path = write(dir, &format!("misaligned{header_len_mod}.safetensors"), &file_bytes(&header, &data));
    (path, f, h, b)
}

#[test]
fn unaligned_data_is_copied_and_read_correctly() {
    let dir = tempfile::tempdir().unwrap();
    // Header length 8k+1: data starts at an odd offset, nothing wider than a byte is aligned.
    let (path, f, h, b) = misaligned_file(dir.path(), 1);
    let p = ParameterFile::open(&path).unwrap();
    let get = |n: &str| p.get(n).unwrap();
    assert_eq!(get("f").to_vec::<f32>().unwrap(), f);
    assert_eq!(get("f").as_slice::<f32>().unwrap(), &f[..], "the copy is aligned");
    let h16: Vec<f16> = h.iter().map(|&x| f16::from_f32(x)).collect();
    assert_eq!(get("h").to_vec::<f16>().unwrap(), h16);
    let b16: Vec<bf16> = b.iter().map(|&x| bf16::from_f32(x)).collect();
    assert_eq!(get("b").to_vec::<bf16>().unwrap(), b16);
    assert_eq!(get("u").to_vec::<u8>().unwrap(), [9, 8, 7]);
    for n in ["f", "h", "b"] {
        assert_eq!(get(n).mem_type(), MemType::ParamsNormal, "{n} is misaligned and must be copied");
        assert_eq!(get(n).name(), Some(n));
    }
    assert_eq!(get("u").mem_type(), MemType::ParamsMmap, "bytes are always aligned");

    // Header length 8k+2: data starts 2 mod 4, so 2-byte types are mapped, f32 copied.
    let (path, f, _, b) = misaligned_file(dir.path(), 2);
    let p = ParameterFile::open(&path).unwrap();
    assert_eq!(p.get("f").unwrap().mem_type(), MemType::ParamsNormal);
    assert_eq!(p.get("f").unwrap().to_vec::<f32>().unwrap(), f);
    assert_eq!(p.get("h").unwrap().mem_type(), MemType::ParamsMmap);
    assert_eq!(p.get("b").unwrap().mem_type(), MemType::ParamsMmap);
    assert_eq!(p.get("b").unwrap().to_vec::<bf16>().unwrap(), b.iter().map(|&x| bf16::from_f32(x)).collect::<Vec<_>>());
}

#[test]
fn saving_over_a_mapped_file_keeps_old_tensors_intact() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("w.safetensors");
    let mut first = ParameterFile::create();
    first.push("w", Tensor::from_slice(&[1.0f32, 2.0, 3.0], &[3]).unwrap()).unwrap();
    first.save_safetensors(&path).unwrap();
    let old = ParameterFile::open(&path).unwrap();
    assert_eq!(old.get("w").unwrap().mem_type(), MemType::ParamsMmap);

    let mut second = ParameterFile::create();
    second.push("w", Tensor::from_slice(&[9.0f32, 8.0, 7.0, 6.0], &[4]).unwrap()).unwrap();
    second.save_safetensors(&path).unwrap();
    assert_eq!(old.get("w").unwrap().to_vec::<f32>().unwrap(), [1.0, 2.0, 3.0], "old map unchanged");
    assert_eq!(ParameterFile::open(&path).unwrap().get("w").unwrap().to_vec::<f32>().unwrap(), [9.0, 8.0, 7.0, 6.0]);
}

// ---- saving errors ----------------------------------------------------------------

fn dir_entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    v.sort();
    v
}

#[test]
fn saving_a_quantised_tensor_fails_and_leaves_the_old_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.safetensors");
    std::fs::write(&path, b"previous contents").unwrap();
    let mut params = ParameterFile::create();
    params.push("ok", Tensor::zeros(&[4], DType::F32).unwrap()).unwrap();
    params.push("blk.0.attn_q.weight", Tensor::zeros(&[2, 32], DType::Q4_0).unwrap()).unwrap();
    let msg = params.save_safetensors(&path).unwrap_err().to_string();
    assert_mentions(&msg, &["model.safetensors", "blk.0.attn_q.weight", "q4_0"]);
    assert_eq!(std::fs::read(&path).unwrap(), b"previous contents");
    assert_eq!(dir_entries(dir.path()), ["model.safetensors"], "no temporary file is left behind");
}

#[test]
fn saving_fails_cleanly_for_reserved_names_and_bad_paths() {
    let dir = tempfile::tempdir().unwrap();
    let mut params = ParameterFile::create();
    params.push("__metadata__", Tensor::zeros(&[1], DType::F32).unwrap()).unwrap();
    let msg = params.save_safetensors(dir.path().join("r.safetensors")).unwrap_err().to_string();
    assert_mentions(&msg, &["__metadata__", "reserved"]);

    let ok = ParameterFile::create();
    let missing_dir = dir.path().join("no/such/dir/x.safetensors");
    let msg = ok.save_safetensors(&missing_dir).unwrap_err().to_string();
    assert_mentions(&msg, &["x.safetensors"]);
    // A directory as destination: the rename fails, the temp file is removed.
    std::fs::create_dir(dir.path().join("d")).unwrap();
    std::fs::write(dir.path().join("d/keep"), b"x").unwrap();
    assert!(ok.save_safetensors(dir.path().join("d")).is_err());
    assert_eq!(dir_entries(dir.path()), ["d"]);
}

// ---- format detection -------------------------------------------------------------

#[test]
fn open_detects_formats_and_rejects_unknown_ones() {
    let dir = tempfile::tempdir().unwrap();
    let gguf = write(dir.path(), "m.gguf", b"GGUF\x03\x00\x00\x00rest");
    let msg = ParameterFile::open(&gguf).unwrap_err().to_string();
    // Detected as GGUF and handed to the GGUF reader, which finds it truncated.
    assert_mentions(&msg, &["m.gguf", "truncated"]);

    let junk = write(dir.path(), "junk.bin", b"PK\x03\x04 this is a zip, not a model");
    let msg = ParameterFile::open(&junk).unwrap_err().to_string();
    assert_mentions(&msg, &["junk.bin", "unrecognised format", "50 4b 03 04"]);

    let tiny = write(dir.path(), "tiny", b"{}");
    assert_mentions(&ParameterFile::open(&tiny).unwrap_err().to_string(), &["tiny", "unrecognised format"]);

    let err = ParameterFile::open(dir.path().join("absent.safetensors")).unwrap_err();
    assert!(matches!(err, Error::Io { .. }), "{err}");
    assert_mentions(&err.to_string(), &["absent.safetensors"]);

    assert_eq!(detect_format(b"GGUF"), Some(FileFormat::Gguf));
    assert_eq!(detect_format(b"\x02\0\0\0\0\0\0\0{}"), Some(FileFormat::Safetensors));
    assert_eq!(detect_format(b"\x02\0\0\0\0\0\0\0[]"), None);
    assert_eq!(detect_format(b""), None);
}

// ---- corrupt files: one test per problem --------------------------------------------

const GOOD_ENTRY: &str = r#""w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}"#;

#[test]
fn bad_file_shorter_than_8_bytes() {
    let msg = open_error(b"\x10\0\0\0\0");
    assert_mentions(&msg, &["5 bytes", "too short"]);
    assert_mentions(&open_error(b""), &["0 bytes", "too short"]);
}

#[test]
fn bad_header_length_larger_than_file() {
    let mut bytes = file_bytes(&format!("{{{GOOD_ENTRY}}}"), &[0; 8]);
    bytes[..8].copy_from_slice(&1000u64.to_le_bytes());
    assert_mentions(&open_error(&bytes), &["header length 1000", "past the end of the file"]);
}

#[test]
fn bad_header_length_absurd() {
    for n in [100_000_001u64, 1 << 40, u64::MAX] {
        let mut bytes = file_bytes("{}", &[]);
        bytes[..8].copy_from_slice(&n.to_le_bytes());
        assert_mentions(&open_error(&bytes), &[&format!("header length {n}"), "exceeds the limit"]);
    }
}

#[test]
fn bad_header_not_utf8() {
    let mut header = format!("{{{GOOD_ENTRY}}}").into_bytes();
    header[5] = 0xff;
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend(header);
    bytes.extend([0; 8]);
    assert_mentions(&open_error(&bytes), &["not valid UTF-8"]);
}

#[test]
fn bad_header_not_json() {
    assert_mentions(&open_error(&file_bytes(r#"{"w":{"dtype":"F32","#, &[])), &["not valid JSON"]);
    assert_mentions(&open_error(&file_bytes(&format!("{{{GOOD_ENTRY}}} trailing"), &[0; 8])), &["not valid JSON"]);
}

#[test]
fn bad_header_wrong_json_shape() {
    assert_mentions(&open_error(&file_bytes("[1, 2, 3]", &[])), &["expected a JSON object"]);
    assert_mentions(&open_error(&file_bytes(r#"{"w": 5}"#, &[])), &["tensor 'w'", "must be an object", "a number"]);
    let no_shape = r#"{"w":{"dtype":"F32","data_offsets":[0,8]}}"#;
    assert_mentions(&open_error(&file_bytes(no_shape, &[0; 8])), &["tensor 'w'", "missing field 'shape'"]);
    let shape_str = r#"{"w":{"dtype":"F32","shape":"2","data_offsets":[0,8]}}"#;
    assert_mentions(&open_error(&file_bytes(shape_str, &[0; 8])), &["tensor 'w'", "'shape' must be an array"]);
    let float_offsets = r#"{"w":{"dtype":"F32","shape":[2],"data_offsets":[0.0,8]}}"#;
    assert_mentions(&open_error(&file_bytes(float_offsets, &[0; 8])), &["tensor 'w'", "'data_offsets'"]);
    let three_offsets = r#"{"w":{"dtype":"F32","shape":[2],"data_offsets":[0,4,8]}}"#;
    assert_mentions(&open_error(&file_bytes(three_offsets, &[0; 8])), &["tensor 'w'", "[start, end]"]);
    let meta = format!(r#"{{"__metadata__":{{"n":3}},{GOOD_ENTRY}}}"#);
    assert_mentions(&open_error(&file_bytes(&meta, &[0; 8])), &["__metadata__", "'n'", "must be a string"]);
}

#[test]
fn bad_data_offsets_past_the_end() {
    // A truncated file: the header promises 8 bytes, 5 are there.
    let msg = open_error(&file_bytes(&format!("{{{GOOD_ENTRY}}}"), &[0; 5]));
    assert_mentions(&msg, &["tensor 'w'", "past the end of the data section", "5 bytes"]);
    // Offsets beyond anything addressable.
    let huge = r#"{"w":{"dtype":"U8","shape":[1],"data_offsets":[18446744073709551614,18446744073709551615]}}"#;
    assert_mentions(&open_error(&file_bytes(huge, &[0; 1])), &["tensor 'w'", "past the end"]);
}

#[test]
fn bad_data_offsets_end_before_start() {
    let h = r#"{"w":{"dtype":"F32","shape":[2],"data_offsets":[8,0]}}"#;
    assert_mentions(&open_error(&file_bytes(h, &[0; 8])), &["tensor 'w'", "[8, 0]", "end before"]);
}

#[test]
fn bad_data_offsets_overlap() {
    let h = concat!(
        r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"#,
        r#""b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}"#
    );
    assert_mentions(&open_error(&file_bytes(h, &[0; 12])), &["'a'", "'b'", "overlap"]);
    // The same range twice is an overlap too.
    let h = concat!(
        r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"#,
        r#""b":{"dtype":"I32","shape":[2],"data_offsets":[0,8]}}"#
    );
    assert_mentions(&open_error(&file_bytes(h, &[0; 8])), &["'a'", "'b'", "overlap"]);
}

#[test]
fn bad_data_offsets_leave_gaps() {
    let h = concat!(
        r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"#,
        r#""b":{"dtype":"F32","shape":[2],"data_offsets":[12,20]}}"#
    );
    assert_mentions(&open_error(&file_bytes(h, &[0; 20])), &["gap", "bytes 8..12", "tensor 'b'"]);
    let starts_late = r#"{"w":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}"#;
    assert_mentions(&open_error(&file_bytes(starts_late, &[0; 12])), &["gap", "bytes 0..4", "tensor 'w'"]);
    // Bytes after the last tensor.
    assert_mentions(&open_error(&file_bytes(&format!("{{{GOOD_ENTRY}}}"), &[0; 11])), &["gap", "bytes 8..11"]);
}

#[test]
fn bad_byte_length_for_shape_and_dtype() {
    let h = r#"{"w":{"dtype":"F32","shape":[2,2],"data_offsets":[0,12]}}"#;
    assert_mentions(&open_error(&file_bytes(h, &[0; 12])), &["tensor 'w'", "hold 12 bytes", "[2, 2]", "needs 16"]);
    let h = r#"{"w":{"dtype":"BF16","shape":[3],"data_offsets":[0,3]}}"#;
    assert_mentions(&open_error(&file_bytes(h, &[0; 3])), &["tensor 'w'", "hold 3 bytes", "needs 6"]);
}

#[test]
fn bad_shape_product_overflows() {
    let h = r#"{"w":{"dtype":"F32","shape":[4294967296,4294967296,2],"data_offsets":[0,8]}}"#;
    assert_mentions(&open_error(&file_bytes(h, &[0; 8])), &["tensor 'w'", "overflows"]);
    // Elements fit in usize but bytes do not.
    let h = r#"{"w":{"dtype":"F32","shape":[4611686018427387904],"data_offsets":[0,8]}}"#;
    assert_mentions(&open_error(&file_bytes(h, &[0; 8])), &["tensor 'w'", "overflows"]);
}

#[test]
fn bad_duplicate_tensor_names() {
    let h = concat!(
        r#"{"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"#,
        r#""w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#
    );
    assert_mentions(&open_error(&file_bytes(h, &[0; 8])), &["duplicate tensor name 'w'"]);
    let h = format!(r#"{{"__metadata__":{{}},"__metadata__":{{}},{GOOD_ENTRY}}}"#);
    assert_mentions(&open_error(&file_bytes(&h, &[0; 8])), &["__metadata__", "twice"]);
}

#[test]
fn bad_unknown_or_unsupported_dtype() {
    let h = r#"{"w":{"dtype":"F64","shape":[1],"data_offsets":[0,8]}}"#;
    let msg = open_error(&file_bytes(h, &[0; 8]));
    assert_mentions(&msg, &["tensor 'w'", "unsupported dtype F64"]);
    assert!(!msg.contains("not a safetensors dtype"), "{msg}");
    let h = r#"{"w":{"dtype":"Q9_Z","shape":[1],"data_offsets":[0,1]}}"#;
    assert_mentions(
        &open_error(&file_bytes(h, &[0; 1])),
        &["tensor 'w'", "unsupported dtype Q9_Z", "not a safetensors"],
    );
    let h = r#"{"w":{"dtype":32,"shape":[1],"data_offsets":[0,4]}}"#;
    assert_mentions(&open_error(&file_bytes(h, &[0; 4])), &["tensor 'w'", "'dtype' must be a string"]);
}

// ---- loading into nn modules ------------------------------------------------------

struct TwoLayer {
    registry: nn::Registry,
    fc1: nn::Linear,
    fc2: nn::Linear,
}

impl TwoLayer {
    fn new(name: &str) -> TwoLayer {
        let registry = nn::Registry::new(name);
        let fc1 = nn::Linear::new(&registry.child("fc1"), 5, 3);
        let fc2 = nn::Linear::no_bias(&registry.child("fc2"), 3, 2);
        TwoLayer { registry, fc1, fc2 }
    }
}

impl Module for TwoLayer {
    fn registry(&self) -> &nn::Registry {
        &self.registry
    }
    fn forward(&self, inputs: &[Tensor]) -> mllm::Result<Vec<Tensor>> {
        let h = self.fc1.apply(&inputs[0])?;
        Ok(vec![self.fc2.apply(&h)?])
    }
}

/// y = x W^T (+ b), row by row.
fn naive_linear(x: &[f32], rows: usize, w: &[f32], b: Option<&[f32]>, inp: usize, out: usize) -> Vec<f32> {
    let mut y = vec![0.0; rows * out];
    for r in 0..rows {
        for o in 0..out {
            let mut acc = b.map_or(0.0, |b| b[o]);
            for i in 0..inp {
                acc += x[r * inp + i] * w[o * inp + i];
            }
            y[r * out + o] = acc;
        }
    }
    y
}

#[test]
fn module_loads_parameters_saved_as_safetensors() {
    mllm::initialize_context();
    let mut rng = StdRng::seed_from_u64(21);
    let (w1, b1, w2) = (random_f32(&mut rng, 15), random_f32(&mut rng, 3), random_f32(&mut rng, 6));
    let mut params = ParameterFile::create();
    params.push("net.fc1.weight", Tensor::from_slice(&w1, &[3, 5]).unwrap()).unwrap();
    params.push("net.fc1.bias", Tensor::from_slice(&b1, &[3]).unwrap()).unwrap();
    params.push("net.fc2.weight", Tensor::from_slice(&w2, &[2, 3]).unwrap()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("net.safetensors");
    params.save_safetensors(&path).unwrap();

    let net = TwoLayer::new("net");
    net.load(&ParameterFile::open(&path).unwrap()).unwrap();
    assert!(net.params().iter().all(|p| p.get().unwrap().mem_type() == MemType::ParamsMmap));

    let x = random_f32(&mut rng, 4 * 5);
    let y = net.forward(&[Tensor::from_slice(&x, &[4, 5]).unwrap()]).unwrap();
    let h = naive_linear(&x, 4, &w1, Some(&b1), 5, 3);
    let expect = naive_linear(&h, 4, &w2, None, 3, 2);
    let got = y[0].to_vec::<f32>().unwrap();
    assert_eq!(y[0].dims(), &[4, 2]);
    for (g, e) in got.iter().zip(&expect) {
        assert!((g - e).abs() <= 1e-5 * (1.0 + e.abs()), "{got:?} vs {expect:?}");
    }
}

#[test]
fn module_load_lists_missing_unexpected_and_mismatched_together() {
    let mut params = ParameterFile::create();
    params.push("net.fc1.weight", Tensor::zeros(&[5, 3], DType::F32).unwrap()).unwrap(); // transposed shape
    params.push("net.fc1.bias", Tensor::zeros(&[3], DType::F32).unwrap()).unwrap();
    // net.fc2.weight is missing
    params.push("net.fc3.weight", Tensor::zeros(&[2, 2], DType::F32).unwrap()).unwrap(); // not declared
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("net.safetensors");
    params.save_safetensors(&path).unwrap();

    let net = TwoLayer::new("net");
    let err = net.load(&ParameterFile::open(&path).unwrap()).unwrap_err();
    let Error::Load { missing, unexpected, mismatched, .. } = &err else { panic!("expected a load error: {err}") };
    assert_eq!(missing, &["net.fc2.weight"]);
    assert_eq!(unexpected, &["net.fc3.weight"]);
    assert_eq!(mismatched.len(), 1);
    let msg = err.to_string();
    assert_mentions(&msg, &["net.fc2.weight", "net.fc3.weight", "net.fc1.weight", "[5, 3]", "[3, 5]"]);
    assert!(net.params().iter().all(|p| !p.is_loaded()), "nothing is loaded on error");
}
