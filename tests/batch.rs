//! `Decoder::forward_batch` against one `forward_tokens` call per sequence on the real model:
//! prompts of different lengths prefilled in one batch, then decode steps batched, with a
//! sequence joining late (continuous batching) — the logits must agree.

mod common;

use mllm::models::sampler::argmax;

#[test]
fn batched_steps_equal_separate_passes() {
    let decoder = &common::model().decoder;
    let prompts: [&[u32]; 3] = [&[504, 3575, 282, 4649, 314], &[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13], &[44]];
    let vocab = decoder.config().vocab_size;
    let mut solo: Vec<_> = prompts.iter().map(|_| decoder.new_cache(64).unwrap()).collect();
    let mut batch: Vec<_> = prompts.iter().map(|_| decoder.new_cache(64).unwrap()).collect();
    let mut next: Vec<Vec<u32>> = prompts.iter().map(|p| p.to_vec()).collect();
    let mut worst = 0f32;
    for step in 0..6 {
        // The third sequence joins at step 2 (its prompt then rides with the others' tokens).
        let active: Vec<usize> = (0..3).filter(|&i| i < 2 || step >= 2).collect();
        let want: Vec<Vec<f32>> = active
            .iter()
            .map(|&i| decoder.forward_tokens(&next[i], &mut solo[i]).unwrap().to_vec::<f32>().unwrap())
            .collect();
        let mut steps: Vec<(&[u32], &mut mllm::models::KvCache)> = Vec::new();
        for (i, cache) in batch.iter_mut().enumerate() {
            if active.contains(&i) {
                steps.push((&next[i], cache));
            }
        }
        let got = decoder.forward_batch(&mut steps).unwrap();
        assert_eq!(got.dims(), &[active.len(), vocab]);
        let got = got.to_vec::<f32>().unwrap();
        for (k, &i) in active.iter().enumerate() {
            let row = &got[k * vocab..(k + 1) * vocab];
            for (a, b) in row.iter().zip(&want[k]) {
                worst = worst.max((a - b).abs());
            }
            assert_eq!(batch[i].len(), solo[i].len(), "sequence {i} cache length");
            next[i] = vec![argmax(&want[k])];
        }
    }
    eprintln!("batched vs separate: worst logit difference {worst}");
    assert!(worst <= 1e-3, "batched logits differ from separate passes by {worst}");
    assert!(decoder.forward_batch(&mut []).is_err());
    let mut full = decoder.new_cache(2).unwrap();
    assert!(decoder.forward_batch(&mut [(&[1, 2, 3][..], &mut full)]).is_err(), "a step past the cache fails");
}

/// An f16 cache on the packed path stays close to the f32 one (keys and values rounded to
/// 11 significant bits) and agrees on the greedy token wherever the choice is clear.
#[test]
fn f16_cache_stays_close_to_f32() {
    let decoder = &common::model().decoder;
    let prompt = [504u32, 3575, 282, 4649, 314, 2, 18, 900, 44];
    let mut c32 = decoder.new_cache(64).unwrap();
    let mut c16 = decoder.new_cache_with(64, mllm::tensor::DType::F16).unwrap();
    assert_eq!(c16.dtype(), mllm::tensor::DType::F16);
    let (mut a, mut b) =
        (decoder.forward_tokens(&prompt, &mut c32).unwrap(), decoder.forward_tokens(&prompt, &mut c16).unwrap());
    let (mut worst, mut total, mut n) = (0f32, 0f64, 0usize);
    for step in 0..8 {
        let (la, lb) = (a.to_vec::<f32>().unwrap(), b.to_vec::<f32>().unwrap());
        for (x, y) in la.iter().zip(&lb) {
            worst = worst.max((x - y).abs());
            total += (x - y).abs() as f64;
            n += 1;
        }
        let next = argmax(&la);
        let mut sorted = la.clone();
        sorted.sort_by(|x, y| y.total_cmp(x));
        if sorted[0] - sorted[1] >= 0.5 {
            assert_eq!(next, argmax(&lb), "step {step}");
        }
        a = decoder.forward_tokens(&[next], &mut c32).unwrap();
        b = decoder.forward_tokens(&[next], &mut c16).unwrap();
    }
    let mean = total / n as f64;
    eprintln!("f16 vs f32 cache: worst logit difference {worst}, mean {mean}");
    assert!(worst < 1.5 && mean < 0.2, "f16 cache drifts: worst {worst}, mean {mean}");
}
