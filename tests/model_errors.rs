//! A model file whose tensors do not fit its metadata is refused with one error that
//! names every missing, unexpected and mismatched tensor; nothing half-loaded is used.

mod common;

use mllm::models::Decoder;
use mllm::ParameterFile;

#[test]
fn mismatched_model_files_list_every_problem() {
    let real = ParameterFile::open(common::model_path()).unwrap();
    let mut broken = ParameterFile::create();
    for (k, v) in real.metadata() {
        broken.set_metadata(k.clone(), v.clone());
    }
    for (name, t) in real.iter() {
        match name {
            "blk.3.attn_q.weight" => continue, // missing
            "blk.7.ffn_up.weight" => broken.push(name, t.narrow(0, 0, 32).unwrap()).unwrap(), // wrong shape
            _ => broken.push(name, t.clone()).unwrap(),
        }
    }
    broken.push("blk.99.attn_q.weight", real.get("blk.0.attn_q.weight").unwrap().clone()).unwrap(); // unexpected
    let err = Decoder::from_file(&broken).err().expect("must fail").to_string();
    for needle in [
        "missing (1): blk.3.attn_q.weight",
        "unexpected (1): blk.99.attn_q.weight",
        "blk.7.ffn_up.weight: shape [32, 576]",
    ] {
        assert!(err.contains(needle), "error lacks {needle:?}:\n{err}");
    }

    // Metadata that disagrees with the tensors (a wrong hidden size) is caught the same way.
    let mut wrong = real.clone();
    wrong.set_metadata("llama.feed_forward_length", mllm::params::MetaValue::UInt(1024));
    let err = Decoder::from_file(&wrong).err().expect("must fail").to_string();
    assert!(err.contains("mismatched (90)"), "30 layers x 3 FFN matrices: {err}");

    // The embedding is also the tied output head: a wrong vocabulary size is told once.
    let mut wrong = real.clone();
    wrong.set_metadata("llama.vocab_size", mllm::params::MetaValue::UInt(49000));
    let err = Decoder::from_file(&wrong).err().expect("must fail").to_string();
    assert!(err.contains("mismatched (1): token_embd.weight"), "{err}");
}
