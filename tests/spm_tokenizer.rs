//! SentencePiece-style (`tokenizer.ggml.model` = `llama`) tokenizers through the public
//! `Tokenizer`, against HF transformers' ids for the Gemma 3 270M GGUF's vocabulary
//! (`tests/fixtures/gemma3-tokenizer.json`; how it was made is in its `note`): the file as
//! it is (`gemma3`), and its vocabulary as a LLaMA or Phi-3 file would carry it.
//!
//! The same comparison runs as a unit test of `src/models/spm.rs` on the tokenizer it
//! builds; this one checks what `Tokenizer::from_gguf_metadata` adds (BOS, decoding, ids).

use std::collections::BTreeMap;

use mllm::models::fetch::{ensure, GEMMA3_270M_Q4_K_M};
use mllm::models::Tokenizer;
use mllm::params::MetaValue;

fn fixture() -> serde_json::Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/gemma3-tokenizer.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array().unwrap().iter().map(|i| i.as_u64().unwrap() as u32).collect()
}

/// The Gemma file's metadata, made to look like `variant`'s file.
fn variant_metadata(gemma: &BTreeMap<String, MetaValue>, variant: &serde_json::Value) -> BTreeMap<String, MetaValue> {
    let mut m = gemma.clone();
    m.insert("general.architecture".into(), MetaValue::Str(variant["architecture"].as_str().unwrap().into()));
    if variant["scores"] == "-index" {
        let n = m["tokenizer.ggml.tokens"].as_array().unwrap().len();
        m.insert(
            "tokenizer.ggml.scores".into(),
            MetaValue::Array((0..n).map(|i| MetaValue::Float(-(i as f64))).collect()),
        );
    }
    m
}

#[test]
fn sentencepiece_tokenizers_match_transformers() -> mllm::Result<()> {
    let path = ensure(&GEMMA3_270M_Q4_K_M, &mut |_| {})?;
    let file = mllm::ParameterFile::open(&path)?;
    let fixture = fixture();
    let variants = fixture["variants"].as_object().unwrap();
    assert_eq!(variants.len(), 4);
    for (name, variant) in variants {
        let m = variant_metadata(file.metadata(), variant);
        let tok = Tokenizer::from_gguf_metadata(&m)?;
        assert_eq!(tok.vocab_size(), 262_144, "{name}");
        // The file asks for a BOS (tokenizer.ggml.add_bos_token), as transformers adds one.
        let bos = tok.encode("")?;
        assert_eq!(bos, [2], "{name}");
        for case in variant["cases"].as_array().unwrap() {
            let text = case["text"].as_str().unwrap();
            let got = tok.encode(text)?;
            assert_eq!(got[..1], bos[..], "{name}: {text:?}");
            assert_eq!(got[1..], ids(&case["ids"])[..], "{name}: {text:?}");
            assert_eq!(tok.decode(&got[1..])?, case["decoded"].as_str().unwrap(), "{name}: decoding {text:?}");
            // Gemma decodes what it encodes (where transformers does).
            if name == "gemma3" && case["decoded"] == case["text"] {
                let mut stream = tok.stream();
                let mut streamed = String::new();
                for &id in &got[1..] {
                    streamed.extend(stream.push(id)?);
                }
                streamed.push_str(&stream.finish()?);
                assert_eq!(streamed, text, "{name}: streaming {text:?}");
            }
        }
        for case in variant["with_bos"].as_array().unwrap() {
            let text = case["text"].as_str().unwrap();
            assert_eq!(tok.encode(text)?, ids(&case["ids"]), "{name} with BOS: {text:?}");
        }
        if name == "gemma3" {
            let types = m["tokenizer.ggml.token_type"].as_array().unwrap();
            for (i, t) in types.iter().enumerate() {
                assert_eq!(tok.is_special(i as u32), t.as_i64() == Some(3), "{name}: token {i}");
            }
        }
    }
    Ok(())
}

/// The `tokenizer` section of the Gemma 3 golden file (made separately, by
/// `scripts/golden_gemma3.py`), when it is there.
#[test]
fn gemma3_matches_the_golden_tokenizer_section() -> mllm::Result<()> {
    let file = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/gemma3-q4km-transformers.json");
    let Ok(text) = std::fs::read_to_string(file) else {
        eprintln!("skipped: no {file}");
        return Ok(());
    };
    let golden: serde_json::Value = serde_json::from_str(&text).unwrap();
    let Some(cases) = golden["tokenizer"].as_array() else {
        eprintln!("skipped: {file} has no 'tokenizer' section");
        return Ok(());
    };
    let path = ensure(&GEMMA3_270M_Q4_K_M, &mut |_| {})?;
    let tok = Tokenizer::from_gguf_metadata(mllm::ParameterFile::open(&path)?.metadata())?;
    assert!(!cases.is_empty());
    for case in cases {
        let text = case["text"].as_str().unwrap();
        let got = tok.encode(text)?;
        assert_eq!(got[1..], ids(&case["ids"])[..], "{text:?}");
        if !case["ids_with_bos"].is_null() {
            assert_eq!(got, ids(&case["ids_with_bos"]), "{text:?} with BOS");
        }
    }
    Ok(())
}
