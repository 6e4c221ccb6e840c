//! Real chat templates (tests/fixtures/chat_templates/*.jinja) render to the same text
//! as HF transformers' `apply_chat_template`, byte for byte, and fail where it fails.
//! The reference renderings are in cases.json, made by
//! scripts/make_chat_template_fixtures.py.

use std::collections::BTreeMap;
use std::path::PathBuf;

use mllm::models::tokenizer::{render_chat_template, ChatMessage};
use serde_json::Value;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/chat_templates")
}

fn load_cases() -> Vec<Value> {
    let text = std::fs::read_to_string(fixtures().join("cases.json")).expect("read cases.json");
    let doc: Value = serde_json::from_str(&text).expect("parse cases.json");
    doc["cases"].as_array().expect("cases is a list").clone()
}

fn case_name(case: &Value) -> String {
    format!(
        "{} / {} / add_generation_prompt={}",
        case["template"].as_str().unwrap(),
        case["conversation"].as_str().unwrap(),
        case["add_generation_prompt"]
    )
}

/// `expected` with each `strftime_now` text that transformers saw (under a fixed clock)
/// replaced by what our `strftime_now` gives now for the same format.
fn with_our_clock(case: &Value, expected: &str) -> String {
    let mut expected = expected.to_string();
    for call in case["strftime_now"].as_array().into_iter().flatten() {
        let (format, theirs) = (call[0].as_str().unwrap(), call[1].as_str().unwrap());
        let probe = format!("{{{{ strftime_now({}) }}}}", serde_json::to_string(format).unwrap());
        let ours = render_chat_template(&probe, &[ChatMessage::new("user", "x")], false, "", "").unwrap();
        expected = expected.replace(theirs, &ours);
    }
    expected
}

#[test]
fn chat_templates_match_transformers() {
    let cases = load_cases();
    let mut templates: BTreeMap<String, String> = BTreeMap::new();
    let mut failures = Vec::new();
    let mut per_template: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    for case in &cases {
        let name = case["template"].as_str().unwrap().to_string();
        let template = templates.entry(name.clone()).or_insert_with(|| {
            std::fs::read_to_string(fixtures().join(format!("{name}.jinja"))).expect("read template")
        });
        let messages: Vec<ChatMessage> = serde_json::from_value(case["messages"].clone()).unwrap();
        let agp = case["add_generation_prompt"].as_bool().unwrap();
        let bos = case["bos_token"].as_str().unwrap_or("");
        let eos = case["eos_token"].as_str().unwrap_or("");
        let got = render_chat_template(template, &messages, agp, bos, eos);
        let counts = per_template.entry(name).or_default();
        counts.1 += 1;
        let ok = if case["expected_error"].as_bool() == Some(true) {
            match got {
                Err(_) => true,
                Ok(text) => {
                    failures.push(format!(
                        "{}: transformers raises ({}) but we rendered {text:?}",
                        case_name(case),
                        case["error"]
                    ));
                    false
                }
            }
        } else {
            let expected = with_our_clock(case, case["expected"].as_str().unwrap());
            match got {
                Ok(text) if text == expected => true,
                Ok(text) => {
                    failures.push(format!("{}:\n  expected {expected:?}\n  got      {text:?}", case_name(case)));
                    false
                }
                Err(e) => {
                    failures.push(format!("{}: expected {expected:?}, got error {e}", case_name(case)));
                    false
                }
            }
        };
        if ok {
            counts.0 += 1;
        }
    }
    for (name, (pass, total)) in &per_template {
        eprintln!("{name}: {pass}/{total}");
    }
    assert!(failures.is_empty(), "{} of {} cases differ:\n{}", failures.len(), cases.len(), failures.join("\n"));
}

#[test]
fn fixtures_cover_the_families() {
    let cases = load_cases();
    for family in ["SmolLM2", "Qwen2.5", "Qwen3", "Mistral-Nemo", "Phi-3.5", "Llama-3.2"] {
        let n = cases.iter().filter(|c| c["template"].as_str().unwrap().contains(family)).count();
        assert!(n >= 20, "only {n} cases for {family}");
    }
    // Some combinations must raise in transformers (alternation, empty conversation).
    assert!(cases.iter().any(|c| c["expected_error"].as_bool() == Some(true)));
}

#[test]
fn raise_exception_message_reaches_the_caller() {
    let template = std::fs::read_to_string(fixtures().join("mistralai-Mistral-Nemo-Instruct-2407.jinja")).unwrap();
    let msgs = [ChatMessage::new("user", "a"), ChatMessage::new("user", "b")];
    let err = render_chat_template(&template, &msgs, true, "<s>", "</s>").unwrap_err().to_string();
    assert!(err.contains("conversation roles must alternate"), "{err}");
}

/// A template that writes `{{ bos_token }}` itself gets one BOS, not two (the tokenizer's
/// own add-BOS is skipped then, as transformers does); a template that does not gets the
/// tokenizer's BOS once. The tokenizer is a family fixture's (BOS `<|im_start|>`) with
/// add-BOS switched on.
#[test]
fn chat_encoding_has_one_bos_whoever_writes_it() {
    use mllm::models::tokenizer::Tokenizer;
    let src = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/families/hf/llama");
    for (template, what) in [
        ("{{ bos_token }}{% for m in messages %}{{ m['content'] }}{% endfor %}", "template writes BOS"),
        ("{% for m in messages %}{{ m['content'] }}{% endfor %}", "template without BOS"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        std::fs::copy(src.join("tokenizer.json"), dir.path().join("tokenizer.json")).unwrap();
        let mut config: Value =
            serde_json::from_str(&std::fs::read_to_string(src.join("tokenizer_config.json")).unwrap()).unwrap();
        config["add_bos_token"] = Value::Bool(true);
        config["chat_template"] = Value::String(template.into());
        std::fs::write(dir.path().join("tokenizer_config.json"), config.to_string()).unwrap();
        let tok = Tokenizer::from_folder(dir.path()).unwrap();
        let bos = tok.bos_id().expect("the fixture has a BOS");
        assert!(tok.adds_bos(), "{what}: add_bos_token was set");
        let ids = tok.encode_chat(&[ChatMessage::new("user", "hello there")], false).unwrap();
        assert_eq!(ids[0], bos, "{what}: starts with BOS");
        assert_eq!(ids.iter().filter(|&&i| i == bos).count(), 1, "{what}: exactly one BOS in {ids:?}");
        assert_eq!(tok.decode(&ids[1..]).unwrap(), "hello there", "{what}");
    }
}
