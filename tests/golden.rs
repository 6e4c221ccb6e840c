//! The real model against an independent reference: HF transformers on CPU PyTorch,
//! f32, on the same GGUF (tests/fixtures/smollm2-q41-transformers.json, made by
//! scripts/golden.py). Token ids, next-token logits along each reference continuation
//! (teacher-forced), and the 32-token greedy continuations.
//!
//! This checks the f32-activation path (weights' blocks dequantised inside the dot
//! product, activations kept in f32), which computes the same function as the reference
//! up to summation order, so logits must agree closely; see LOGIT_TOL.

mod common;

use mllm::models::ChatMessage;
use serde_json::Value;

/// Largest allowed |ours - reference| for a top-10 logit. The reference dequantises the
/// same Q4_1/Q8_0 blocks to f32 and computes in f32 (PyTorch); we compute the same sums
/// in another order. Measured worst case over all 4 x 32 x 10 logits: 3e-5 (logits are
/// 12..35 in size, so that is f32 rounding through 30 layers); the bound leaves ~60x
/// room while still catching any real error (a wrong RoPE pair or norm moves logits by
/// whole units). The smallest reference margin is 0.013, so top-1 is stable too.
const LOGIT_TOL: f32 = 2e-3;

fn ids(v: &Value) -> Vec<u32> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
}

#[test]
fn tokenizer_matches_reference_ids() {
    let m = common::model();
    let r = common::reference();
    for case in r["tokenizer"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        let want = ids(&case["ids"]);
        assert_eq!(m.tokenizer.encode(text).unwrap(), want, "encoding {text:?}");
        assert_eq!(m.tokenizer.decode(&want).unwrap(), text, "decoding back {text:?}");
    }
    for g in r["generation"].as_array().unwrap() {
        let want = ids(&g["prompt_ids"]);
        let got = if g["kind"] == "chat" {
            let msgs: Vec<ChatMessage> = serde_json::from_value(g["prompt"].clone()).unwrap();
            let text = m.tokenizer.apply_chat_template(&msgs, true).unwrap();
            assert_eq!(text, g["text"].as_str().unwrap(), "chat template rendering");
            m.encode_chat(&msgs).unwrap()
        } else {
            m.encode_prompt(g["prompt"].as_str().unwrap(), false).unwrap()
        };
        assert_eq!(got, want, "prompt ids of {}", g["prompt"]);
    }
}

#[test]
fn logits_and_greedy_continuations_match_reference() {
    let m = common::model();
    let r = common::reference();
    let mut worst = 0.0f32;
    for g in r["generation"].as_array().unwrap() {
        let prompt = ids(&g["prompt_ids"]);
        let steps = g["steps"].as_array().unwrap();
        let mut cache = m.llama.new_cache(prompt.len() + steps.len()).unwrap();
        let mut logits = m.llama.forward_tokens(&prompt, &mut cache).unwrap();
        let mut ours = Vec::new();
        for (i, step) in steps.iter().enumerate() {
            let l = logits.as_slice::<f32>().unwrap();
            let top1 = mllm::models::sampler::argmax(l);
            ours.push(top1);
            for pair in step["top10"].as_array().unwrap() {
                let (id, want) = (pair[0].as_u64().unwrap() as usize, pair[1].as_f64().unwrap() as f32);
                let diff = (l[id] - want).abs();
                worst = worst.max(diff);
                assert!(diff <= LOGIT_TOL, "{}: step {i}, token {id}: {} vs reference {want}", g["prompt"], l[id]);
            }
            // Teacher forcing: continue with the reference's token, so every step is compared.
            let next = step["next_id"].as_u64().unwrap() as u32;
            if i + 1 < steps.len() {
                logits = m.llama.forward_tokens(&[next], &mut cache).unwrap();
            }
        }
        // Same argmax at every teacher-forced step means the free-running greedy
        // continuation is the reference's, token for token, for all 32 tokens.
        let want: Vec<u32> = steps.iter().map(|s| s["next_id"].as_u64().unwrap() as u32).collect();
        assert_eq!(ours, want, "greedy continuation of {}", g["prompt"]);
    }
    eprintln!("worst top-10 logit difference from the reference: {worst:.5}");
}

#[test]
fn tokenizer_round_trips_arbitrary_utf8() {
    use rand::{Rng, SeedableRng};
    let m = common::model();
    let mut r = rand::rngs::StdRng::seed_from_u64(42);
    // Every character whose UTF-8 bytes have tokens. SmolLM2's vocabulary has no token
    // for the bytes 0x04, 0x06, 0x13, 0x14, 0x16, 0x1d, 0xf1 and 0xf2 (so not for
    // U+40000..U+BFFFF either): see `uncovered_bytes_become_the_unknown_token`.
    let ranges: [(u32, u32); 8] = [
        (0x07, 0x12),       // control characters the vocabulary covers, incl. \t \n \r
        (0x20, 0x7f),       // ASCII
        (0xa0, 0x24f),      // Latin
        (0x300, 0x36f),     // combining marks
        (0x370, 0x3ff),     // Greek
        (0x4e00, 0x9fff),   // CJK
        (0x1f300, 0x1faff), // emoji
        (0xc0000, 0x10ffff),
    ];
    for case in 0..300 {
        let len = r.random_range(0..40);
        let s: String = (0..len)
            .filter_map(|_| {
                let (lo, hi) = ranges[r.random_range(0..ranges.len())];
                char::from_u32(r.random_range(lo..=hi))
            })
            .collect();
        let ids = m.tokenizer.encode(&s).unwrap();
        assert_eq!(m.tokenizer.decode(&ids).unwrap(), s, "case {case}: {s:?} -> {ids:?}");
        // Streaming decode, one id at a time, gives the same text.
        let mut stream = m.tokenizer.stream();
        let mut text = String::new();
        for &id in &ids {
            if let Some(piece) = stream.push(id).unwrap() {
                text.push_str(&piece);
            }
        }
        text.push_str(&stream.finish().unwrap());
        assert_eq!(text, s, "case {case}: streaming decode");
    }
}

#[test]
fn uncovered_bytes_become_the_unknown_token() {
    let m = common::model();
    let unk = 0; // tokenizer.ggml.unknown_token_id
    let ids = m.tokenizer.encode("a\u{4}b").unwrap();
    assert!(ids.contains(&unk), "byte 0x04 has no token: it must show as <unk>, not vanish: {ids:?}");
    assert_eq!(m.tokenizer.decode(&ids).unwrap(), "a<|endoftext|>b");
}
