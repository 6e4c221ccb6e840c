//! The real model's modules are ordinary `nn::Module`s: its blocks can be forked and
//! waited on like the seed's `FooNet`, and a chain of forked blocks computes what the
//! model's own forward pass does.

mod common;

use mllm::nn::Module;

#[test]
fn forked_blocks_of_the_real_model_equal_the_model() {
    let m = &common::model().decoder;
    let ids = [1u32, 504, 3575, 282, 4649, 314, 2, 18, 900, 44];
    let x = m.embed_tokens(&ids).unwrap();
    let blocks = m.blocks();
    // Two different blocks on the same input, as two concurrent tasks.
    let [a, b] =
        mllm::wait_all([mllm::fork(&blocks[0], vec![x.clone()]), mllm::fork(&blocks[1], vec![x.clone()])]).unwrap();
    assert_eq!(
        a[0].to_vec::<f32>().unwrap(),
        blocks[0].forward(std::slice::from_ref(&x)).unwrap()[0].to_vec::<f32>().unwrap()
    );
    assert_eq!(
        b[0].to_vec::<f32>().unwrap(),
        blocks[1].forward(std::slice::from_ref(&x)).unwrap()[0].to_vec::<f32>().unwrap()
    );
    assert_ne!(a[0].to_vec::<f32>().unwrap(), b[0].to_vec::<f32>().unwrap(), "two blocks, two results");

    // Every block as a forked task, one after another, then the head: the model's logits.
    let mut h = x;
    for block in blocks.iter() {
        h = mllm::wait(mllm::fork(block, vec![h])).unwrap().remove(0);
    }
    let chained = m.head(&h).unwrap().to_vec::<f32>().unwrap();
    let mut cache = m.new_cache(ids.len()).unwrap();
    let direct = m.forward_all_logits(&ids, &mut cache).unwrap().to_vec::<f32>().unwrap();
    let worst = chained.iter().zip(&direct).map(|(p, q)| (p - q).abs()).fold(0f32, f32::max);
    assert!(worst < 1e-3, "forked chain vs forward pass: worst logit difference {worst}");

    // The whole model forked as a module (token ids in, logits out).
    let ids_t = mllm::Tensor::from_vec(ids.iter().map(|&i| i as i32).collect::<Vec<_>>(), &[ids.len()]).unwrap();
    let forked = mllm::wait(mllm::fork(m, vec![ids_t])).unwrap().remove(0).to_vec::<f32>().unwrap();
    assert_eq!(forked, direct);

    // Bad input names the block.
    let wrong = mllm::Tensor::zeros(&[2, 7], mllm::DType::F32).unwrap();
    let err = mllm::wait(mllm::fork(&blocks[3], vec![wrong.clone()])).unwrap_err().to_string();
    assert!(err.contains("blk.3"), "{err}");
    assert!(m.head(&wrong).unwrap_err().to_string().contains("not [T, 576]"));
    let vocab = m.config().vocab_size as u32;
    assert!(m.embed_tokens(&[1, vocab]).unwrap_err().to_string().contains("outside the vocabulary"));
}
