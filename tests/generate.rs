//! `generate` on the real model: stop strings cut the text and are never streamed, text
//! handed to the callback adds up to the answer, cancelling and the length limit end it.

mod common;

use mllm::models::{generate, FinishReason, GenerateOptions};

fn opts(max_tokens: usize, stops: &[&str]) -> GenerateOptions {
    let mut o = GenerateOptions {
        max_tokens,
        stop_at_eos: false,
        stop_strings: stops.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    };
    o.sampling.temperature = 0.0;
    o
}

#[test]
fn stop_strings_length_and_cancel() {
    let m = common::model();
    let prompt = m.encode_prompt("The capital of France is", false).unwrap();
    let mut pieces = String::new();
    let free = generate(&m.decoder, &m.tokenizer, &prompt, &opts(24, &[]), &mut |t| {
        pieces.push_str(t);
        true
    })
    .unwrap();
    assert_eq!((free.finish, free.tokens.len()), (FinishReason::Length, 24));
    assert_eq!(pieces, free.text, "streamed pieces add up to the answer");

    // A stop string from the middle of that answer: the text ends just before it.
    let words: Vec<&str> = free.text.split_whitespace().collect();
    assert!(words.len() >= 4, "{:?}", free.text);
    let stop = format!(" {}", words[3]);
    let at = free.text.find(&stop).unwrap();
    let mut streamed = String::new();
    let cut = generate(&m.decoder, &m.tokenizer, &prompt, &opts(24, &[&stop, "never appears"]), &mut |t| {
        streamed.push_str(t);
        true
    })
    .unwrap();
    assert_eq!(cut.finish, FinishReason::Stop);
    assert_eq!(cut.text, free.text[..at]);
    assert_eq!(streamed, cut.text, "no part of the stop string was streamed");

    // The callback refusing ends the answer as cancelled, with nothing more streamed.
    let mut calls = 0;
    let stopped = generate(&m.decoder, &m.tokenizer, &prompt, &opts(24, &[]), &mut |_| {
        calls += 1;
        false
    })
    .unwrap();
    assert_eq!((stopped.finish, calls), (FinishReason::Cancelled, 1));
    assert!(stopped.tokens.len() < 24);
}
