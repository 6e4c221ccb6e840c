//! Every decoder family against HF transformers on tiny random-weight models (made by
//! scripts/make_family_fixtures.py with llama.cpp's own GGUF converter; see
//! tests/fixtures/families/README.md): logits at every position of a 24-token sequence,
//! from the f32 file and from its Q8_0 twin, and a greedy continuation. No downloads.

use mllm::models::{Decoder, TextModel};
use mllm::params::MetaValue;
use mllm::tensor::ops::MatmulPrecision;
use mllm::ParameterFile;
use serde_json::Value;

const FAMILIES: [&str; 6] = ["llama", "qwen2", "qwen3", "mistral", "phi3", "gemma3"];

fn dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/families")
}

fn fixture(family: &str) -> Value {
    serde_json::from_str(&std::fs::read_to_string(dir().join(format!("{family}.json"))).unwrap()).unwrap()
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
}

fn rows(v: &Value) -> Vec<Vec<f32>> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect())
        .collect()
}

/// Largest and mean |difference| between our logits `[T, vocab]` and the reference's.
fn compare(model: &Decoder, tokens: &[u32], want: &[Vec<f32>]) -> (f32, f32) {
    let mut cache = model.new_cache(tokens.len()).unwrap();
    let got = model.forward_all_logits(tokens, &mut cache).unwrap().to_vec::<f32>().unwrap();
    let vocab = want[0].len();
    let (mut worst, mut total) = (0f32, 0f32);
    for (g, w) in got.chunks_exact(vocab).zip(want) {
        for (a, b) in g.iter().zip(w) {
            worst = worst.max((a - b).abs());
            total += (a - b).abs();
        }
    }
    (worst, total / got.len() as f32)
}

#[test]
fn every_family_matches_transformers_exactly_on_f32_weights() {
    for family in FAMILIES {
        let fx = fixture(family);
        let m = TextModel::load(dir().join(format!("{family}-f32.gguf"))).unwrap();
        let arch = if family == "mistral" { "llama" } else { family };
        assert_eq!(m.decoder.family().name, arch);
        let exact = m.decoder.clone().with_precision(MatmulPrecision::Exact);
        let tokens = ids(&fx["tokens"]);
        let (worst, mean) = compare(&exact, &tokens, &rows(&fx["logits"]));
        eprintln!("{family} f32: worst {worst:.2e}, mean {mean:.2e}");
        assert!(worst < 1e-3, "{family}: f32 logits differ by up to {worst}");

        // Greedy continuation after the first tokens.
        let n = fx["greedy_prompt_len"].as_u64().unwrap() as usize;
        let want = ids(&fx["greedy"]);
        let mut cache = exact.new_cache(n + want.len()).unwrap();
        let mut logits = exact.forward_tokens(&tokens[..n], &mut cache).unwrap();
        let mut got = Vec::new();
        for _ in 0..want.len() {
            let next = mllm::models::sampler::argmax(logits.as_slice::<f32>().unwrap());
            got.push(next);
            logits = exact.forward_tokens(&[next], &mut cache).unwrap();
        }
        assert_eq!(got, want, "{family}: greedy continuation");
    }
}

/// The Q8_0 files: the exact path (f32 activations) agrees with transformers on the same
/// dequantised weights to float rounding; the default fast path (packed weights, 8-bit
/// activations) within the error of its activation rounding. Measured here (AMD EPYC,
/// AVX2 only: this VM had no AVX-512) on logits of std 2.7-3.5: exact worst 5e-5; fast worst 0.24-0.56 and mean
/// 0.044-0.067 over all 24 x 1024 logits (the random weights' init is large on purpose,
/// so each layer moves the logits a lot). The bounds are 1.5x the worst family.
#[test]
fn every_family_matches_transformers_on_q8_0_weights_on_both_paths() {
    for family in FAMILIES {
        let fx = fixture(family);
        let m = Decoder::from_file(&ParameterFile::open(dir().join(format!("{family}-q8_0.gguf"))).unwrap()).unwrap();
        assert!(m.is_packed(), "{family}: q8_0 weights run packed");
        let (tokens, want) = (ids(&fx["tokens"]), rows(&fx["logits_q8_0"]));
        let (worst, mean) = compare(&m.clone().with_precision(MatmulPrecision::Exact), &tokens, &want);
        eprintln!("{family} q8_0 exact: worst {worst:.2e}, mean {mean:.2e}");
        assert!(worst < 1e-3, "{family}: exact q8_0 logits differ by up to {worst}");
        let (worst, mean) = compare(&m, &tokens, &want);
        eprintln!("{family} q8_0 fast: worst {worst:.3}, mean {mean:.4}");
        assert!(worst < 0.85 && mean < 0.1, "{family}: fast q8_0 logits differ by up to {worst} (mean {mean})");
    }
}

fn with_meta(file: &ParameterFile, key: &str, v: MetaValue) -> ParameterFile {
    let mut f = file.clone();
    f.set_metadata(key, v);
    f
}

#[test]
fn broken_family_files_are_refused_by_name() {
    let open = |f: &str| ParameterFile::open(dir().join(f)).unwrap();
    let err = |f: &ParameterFile| Decoder::from_file(f).err().expect("must fail").to_string();

    let qwen3 = open("qwen3-f32.gguf");
    let e = err(&with_meta(&qwen3, "general.architecture", MetaValue::Str("mamba".into())));
    assert!(e.contains("'mamba' is not supported") && e.contains("qwen3"), "{e}");

    // Hyper-parameters that contradict the tensors: the head width.
    let narrow = with_meta(&qwen3, "qwen3.attention.key_length", MetaValue::UInt(16));
    let e = err(&with_meta(&narrow, "qwen3.attention.value_length", MetaValue::UInt(16)));
    assert!(e.contains("blk.0.attn_q.weight") && e.contains("shape"), "{e}");

    // A missing tensor (qwen2 without its k bias), an extra one.
    let qwen2 = open("qwen2-f32.gguf");
    let mut broken = ParameterFile::create();
    for (k, v) in qwen2.metadata() {
        broken.set_metadata(k.clone(), v.clone());
    }
    for (name, t) in qwen2.iter() {
        if name != "blk.1.attn_k.bias" {
            broken.push(name, t.clone()).unwrap();
        }
    }
    broken.push("blk.1.attn_q_norm.weight", qwen2.get("output_norm.weight").unwrap().clone()).unwrap();
    let e = err(&broken);
    assert!(
        e.contains("missing (1): blk.1.attn_k.bias") && e.contains("unexpected (1): blk.1.attn_q_norm.weight"),
        "{e}"
    );

    // RoPE scaling we do not implement is named.
    let phi3 = open("phi3-f32.gguf");
    let e = err(&with_meta(&phi3, "phi3.rope.scaling.attn_factor", MetaValue::Float(1.19)));
    assert!(e.contains("longrope"), "{e}");
    let e = err(&with_meta(&open("llama-f32.gguf"), "llama.rope.scaling.type", MetaValue::Str("yarn".into())));
    assert!(e.contains("yarn"), "{e}");
}

/// Batched steps of sequences of different families' shapes equal separate passes
/// (qwen3: heads wider than hidden / heads, q/k norms).
#[test]
fn batched_steps_equal_separate_passes_on_qwen3() {
    let m = Decoder::from_file(&ParameterFile::open(dir().join("qwen3-q8_0.gguf")).unwrap()).unwrap();
    let tokens = ids(&fixture("qwen3")["tokens"]);
    let (a, b) = (&tokens[..9], &tokens[9..20]);
    let (mut ca, mut cb) = (m.new_cache(32).unwrap(), m.new_cache(32).unwrap());
    let solo = [m.forward_tokens(a, &mut ca).unwrap(), m.forward_tokens(b, &mut cb).unwrap()];
    let (mut ba, mut bb) = (m.new_cache(32).unwrap(), m.new_cache(32).unwrap());
    let both = m.forward_batch(&mut [(a, &mut ba), (b, &mut bb)]).unwrap().to_vec::<f32>().unwrap();
    for (i, s) in solo.iter().enumerate() {
        let s = s.to_vec::<f32>().unwrap();
        for (x, y) in s.iter().zip(&both[i * s.len()..]) {
            assert!((x - y).abs() < 1e-4, "sequence {i}: {x} vs {y}");
        }
    }
}

/// Gemma 3's local layers keep only their window of the KV cache (the tiny model's window
/// is 4 positions, its sequence 24): fed one token at a time, so the local layers drop old
/// rows many times, the logits still match transformers at every position, and the local
/// layers hold a fraction of the global layers' rows.
#[test]
fn gemma3_local_layers_keep_only_their_window_and_still_match() {
    let fx = fixture("gemma3");
    let m = TextModel::load(dir().join("gemma3-f32.gguf")).unwrap();
    let exact = m.decoder.clone().with_precision(MatmulPrecision::Exact);
    let (tokens, want) = (ids(&fx["tokens"]), rows(&fx["logits"]));
    let mut cache = exact.new_cache(tokens.len()).unwrap();
    let mut worst = 0f32;
    for (t, w) in tokens.iter().zip(&want) {
        let got = exact.forward_tokens(&[*t], &mut cache).unwrap().to_vec::<f32>().unwrap();
        worst = got.iter().zip(w).fold(worst, |m, (a, b)| m.max((a - b).abs()));
    }
    assert!(worst < 1e-3, "one token at a time: logits differ by up to {worst}");
    let windows: Vec<Option<usize>> = exact.blocks().iter().map(|b| b.attn.window).collect();
    let rows = cache.allocated_per_layer();
    for (l, (w, r)) in windows.iter().zip(&rows).enumerate() {
        match w {
            Some(w) => assert!(*r <= 2 * w, "local layer {l} holds {r} rows for a window of {w}"),
            None => assert_eq!(*r, tokens.len(), "global layer {l}"),
        }
    }
    assert!(windows.iter().filter(|w| w.is_some()).count() >= 4, "{windows:?}");
}

/// The Hugging Face folders the GGUF files were converted from (tests/fixtures/families/hf)
/// load directly: exact logits match transformers as closely as the GGUF route's, greedy
/// continuations are equal, the tokenizer from tokenizer.json gives the GGUF tokenizer's
/// ids, and quantised on load to q8_0 the folder equals the q8_0 file (same logits on the
/// exact path, same bounds on the fast one).
#[test]
fn every_family_runs_from_its_hugging_face_folder() {
    for family in FAMILIES {
        let fx = fixture(family);
        let folder = dir().join("hf").join(family);
        let m = TextModel::load(&folder).unwrap_or_else(|e| panic!("{family}: {e}"));
        let arch = if family == "mistral" { "llama" } else { family };
        assert_eq!(m.decoder.family().name, arch);
        let exact = m.decoder.clone().with_precision(MatmulPrecision::Exact);
        let tokens = ids(&fx["tokens"]);
        let (worst, mean) = compare(&exact, &tokens, &rows(&fx["logits"]));
        eprintln!("{family} folder f32: worst {worst:.2e}, mean {mean:.2e}");
        assert!(worst < 1e-3, "{family}: folder logits differ by up to {worst}");

        let n = fx["greedy_prompt_len"].as_u64().unwrap() as usize;
        let want = ids(&fx["greedy"]);
        let mut cache = exact.new_cache(n + want.len()).unwrap();
        let mut logits = exact.forward_tokens(&tokens[..n], &mut cache).unwrap();
        let mut got = Vec::new();
        for _ in 0..want.len() {
            let next = mllm::models::sampler::argmax(logits.as_slice::<f32>().unwrap());
            got.push(next);
            logits = exact.forward_tokens(&[next], &mut cache).unwrap();
        }
        assert_eq!(got, want, "{family}: greedy continuation from the folder");

        let gguf = TextModel::load(dir().join(format!("{family}-f32.gguf"))).unwrap();
        for text in ["Hello world, 123 times!", "<|im_start|>user\nhi<|im_end|>", "  spaces\n\nand tabs\t."] {
            assert_eq!(m.tokenizer.encode(text).unwrap(), gguf.tokenizer.encode(text).unwrap(), "{family}: {text:?}");
        }
        assert_eq!(m.tokenizer.stop_ids(), gguf.tokenizer.stop_ids(), "{family}: stop ids");
        assert_eq!(m.tokenizer.chat_template(), gguf.tokenizer.chat_template(), "{family}: chat template");

        let q = TextModel::load_with(&folder, Some(mllm::kernels::quant::WeightFormat::Q8_0)).unwrap();
        assert!(q.decoder.is_packed(), "{family}: quantised on load, the folder runs packed");
        // Quantised here as llama.cpp's converter does it: the q8_0 file's reference holds.
        let want = rows(&fx["logits_q8_0"]);
        let (worst, _) = compare(&q.decoder.clone().with_precision(MatmulPrecision::Exact), &tokens, &want);
        eprintln!("{family} folder --quantize q8_0 exact: worst {worst:.2e}");
        assert!(worst < 1e-3, "{family}: q8_0 quantised on load differs from the converter's by up to {worst}");
        let (worst, mean) = compare(&q.decoder, &tokens, &want);
        eprintln!("{family} folder --quantize q8_0 fast: worst {worst:.3}, mean {mean:.4}");
        assert!(worst < 0.85 && mean < 0.1, "{family}: quantised folder logits differ by up to {worst} (mean {mean})");
    }
}

#[test]
fn broken_folders_are_refused_by_name() {
    let tmp = tempfile::tempdir().unwrap();
    let src = dir().join("hf").join("qwen2");
    let copy = |skip: &str| {
        let d = tmp.path().join(skip.replace('.', "_"));
        std::fs::create_dir_all(&d).unwrap();
        for f in std::fs::read_dir(&src).unwrap() {
            let f = f.unwrap();
            if f.file_name() != skip {
                std::fs::copy(f.path(), d.join(f.file_name())).unwrap();
            }
        }
        d
    };
    let err = |d: &std::path::Path| match TextModel::load(d) {
        Ok(_) => panic!("{} loaded", d.display()),
        Err(e) => e.to_string(),
    };
    let e = err(&copy("model.safetensors"));
    assert!(e.contains("no model.safetensors"), "{e}");
    let e = err(&copy("tokenizer.json"));
    assert!(e.contains("no tokenizer.json"), "{e}");
    let e = err(tmp.path());
    assert!(e.contains("without config.json"), "{e}");
    let d = copy("none");
    let mut cfg: Value = serde_json::from_str(&std::fs::read_to_string(d.join("config.json")).unwrap()).unwrap();
    cfg["num_hidden_layers"] = 3.into();
    std::fs::write(d.join("config.json"), cfg.to_string()).unwrap();
    let e = err(&d);
    assert!(e.contains("blk.2"), "a missing layer is named: {e}");
    cfg["model_type"] = "mamba".into();
    std::fs::write(d.join("config.json"), cfg.to_string()).unwrap();
    let e = err(&d);
    assert!(e.contains("'mamba' is not supported"), "{e}");
    std::fs::write(d.join("config.json"), "{not json").unwrap();
    let e = err(&d);
    assert!(e.contains("config.json") && e.contains("invalid JSON"), "{e}");
}

/// `score::perplexity` over one window of the fixture's 24 tokens equals the perplexity
/// computed from transformers' own logits (second half of the window scored).
#[test]
fn perplexity_matches_the_reference_logits() {
    use mllm::models::score;
    for family in ["llama", "gemma3"] {
        let fx = fixture(family);
        let (tokens, want) = (ids(&fx["tokens"]), rows(&fx["logits"]));
        let ctx = tokens.len();
        let mut nll = 0.0;
        for i in ctx / 2..ctx - 1 {
            nll -= score::log_prob(&want[i], tokens[i + 1]).unwrap();
        }
        let reference = (nll / (ctx - 1 - ctx / 2) as f64).exp();
        let m = TextModel::load(dir().join(format!("{family}-f32.gguf"))).unwrap();
        let exact = m.decoder.with_precision(MatmulPrecision::Exact);
        let mut seen = 0;
        let r = score::perplexity(&exact, &tokens, ctx, None, None, &mut |done, total, _| seen = done * 10 + total)
            .unwrap();
        assert_eq!((r.windows, r.scored, seen), (1, ctx - 1 - ctx / 2, 11));
        assert!((r.ppl / reference - 1.0).abs() < 1e-4, "{family}: {} vs {reference}", r.ppl);
        let e = score::perplexity(&exact, &tokens, ctx + 1, None, None, &mut |_, _, _| {}).unwrap_err();
        assert!(e.to_string().contains("fewer than one window"), "{e}");
        let e = score::perplexity(&exact, &tokens, 1 << 20, None, None, &mut |_, _, _| {}).unwrap_err();
        assert!(e.to_string().contains("exceeds the model's context"), "{e}");
    }
}

/// The bytes a decode step reads: the prepared weights once, plus keys and values that
/// grow with the position, except in sliding-window layers.
#[test]
fn decode_bytes_count_weights_and_the_attended_cache() {
    for family in ["llama", "gemma3"] {
        let m = TextModel::load(dir().join(format!("{family}-q8_0.gguf"))).unwrap().decoder;
        let cfg = m.config().clone();
        let row = cfg.kv_dim() * 4 * 2;
        let at = |p: usize| m.decode_bytes(p, mllm::DType::F32).unwrap();
        let windows: Vec<Option<usize>> = m.blocks().iter().map(|b| b.attn.window).collect();
        let growing = windows.iter().filter(|w| w.is_none()).count();
        assert_eq!(at(101) - at(100), growing * row, "{family}");
        let w = windows.iter().flatten().min().copied().unwrap_or(usize::MAX);
        if w < 100 {
            // below the window every layer's share grows
            assert_eq!(at(1) - at(0), cfg.n_layers * row, "{family}");
        }
        let weights = at(0) - cfg.n_layers * row;
        assert!(weights > cfg.n_layers * cfg.hidden * cfg.hidden / 2, "{family}: {weights} bytes of weights");
        assert_eq!(m.decode_bytes(0, mllm::DType::F16).unwrap(), weights + cfg.n_layers * row / 2);
    }
}

/// Every HF folder rewritten in bf16 and in f16 runs on the 16-bit weights as stored (the
/// prepared weights take half the f32 folder's bytes) and gives the logits of an f32
/// folder holding the same rounded values (so the native kernel equals widening), and
/// stays near transformers' f32 logits and greedy choice.
#[test]
fn every_family_runs_from_a_16_bit_folder_as_stored() {
    let tmp = tempfile::tempdir().unwrap();
    for family in FAMILIES {
        let fx = fixture(family);
        let src = dir().join("hf").join(family);
        let tokens = ids(&fx["tokens"]);
        let f32_bytes = TextModel::load(&src).unwrap().decoder.decode_bytes(0, mllm::DType::F32).unwrap();
        for dtype in [mllm::DType::BF16, mllm::DType::F16] {
            // The folder in `dtype`, and an f32 folder of the same rounded values.
            let folder = |name: &str, convert: &dyn Fn(&mllm::Tensor) -> mllm::Tensor| {
                let out = tmp.path().join(format!("{family}-{name}"));
                std::fs::create_dir_all(&out).unwrap();
                for e in std::fs::read_dir(&src).unwrap() {
                    let p = e.unwrap().path();
                    if p.file_name().unwrap() != "model.safetensors" {
                        std::fs::copy(&p, out.join(p.file_name().unwrap())).unwrap();
                    }
                }
                let mut file = ParameterFile::create();
                for (n, t) in ParameterFile::open(src.join("model.safetensors")).unwrap().iter() {
                    file.push(n, convert(t)).unwrap();
                }
                file.save_safetensors(out.join("model.safetensors")).unwrap();
                TextModel::load(&out).unwrap_or_else(|e| panic!("{family} {name}: {e}")).decoder
            };
            let half = folder(&format!("{dtype}"), &|t| t.to_dtype(dtype).unwrap());
            let rounded =
                folder(&format!("{dtype}-f32"), &|t| t.to_dtype(dtype).unwrap().to_dtype(mllm::DType::F32).unwrap());
            let half_bytes = half.decode_bytes(0, mllm::DType::F32).unwrap();
            assert!(2 * half_bytes < f32_bytes + f32_bytes / 8, "{family} {dtype}: {half_bytes} of {f32_bytes} bytes");

            let exact = |d: &Decoder| d.clone().with_precision(MatmulPrecision::Exact);
            let mut cache = rounded.new_cache(tokens.len()).unwrap();
            let want = exact(&rounded).forward_all_logits(&tokens, &mut cache).unwrap().to_vec::<f32>().unwrap();
            let want: Vec<Vec<f32>> =
                want.chunks(fx["logits"][0].as_array().unwrap().len()).map(<[f32]>::to_vec).collect();
            let (worst, _) = compare(&exact(&half), &tokens, &want);
            eprintln!("{family} {dtype} folder against its values widened: worst {worst:.2e}");
            assert!(worst < 1e-4, "{family} {dtype}: the 16-bit folder differs from its widened twin by {worst}");

            let reference = rows(&fx["logits"]);
            let (worst, mean) = compare(&exact(&half), &tokens, &reference);
            eprintln!("{family} {dtype} folder against transformers f32: worst {worst:.3}, mean {mean:.4}");
            assert!(worst < 0.5 && mean < 0.05, "{family} {dtype}: logits differ by up to {worst} (mean {mean})");
        }
    }
}
