//! `mllm embed` and `POST /v1/embeddings` seen from outside, on all-MiniLM-L6-v2 (fetched
//! once by `mllm pull minilm`): shapes, agreement with the transformers reference
//! (tests/fixtures/minilm-reference.json), base64 answers decoding to the float ones,
//! usage counts, and clear errors for bad input and for the wrong kind of model.

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, OnceLock};
use std::time::Duration;

use serde_json::{json, Value};

fn mllm() -> Command {
    Command::new(env!("CARGO_BIN_EXE_mllm"))
}

fn pull(name: &str) -> String {
    let out = mllm().args(["pull", name]).output().expect("running mllm");
    assert!(out.status.success(), "mllm pull {name} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn minilm() -> &'static str {
    static PATH: OnceLock<String> = OnceLock::new();
    PATH.get_or_init(|| pull("minilm"))
}

/// (text, reference vector) of the fixture's cases.
fn reference() -> Vec<(String, Vec<f32>)> {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/minilm-reference.json"))
        .expect("reading the reference fixture");
    let v: Value = serde_json::from_str(&text).unwrap();
    v["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["text"].as_str().unwrap().to_string(), floats(&c["embedding"])))
        .collect()
}

fn floats(v: &Value) -> Vec<f32> {
    v.as_array().expect("an array of numbers").iter().map(|x| x.as_f64().unwrap() as f32).collect()
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(&x, &y)| x as f64 * y as f64).sum();
    let n = |v: &[f32]| v.iter().map(|&x| x as f64 * x as f64).sum::<f64>().sqrt();
    dot / (n(a) * n(b))
}

fn run(args: &[&str], stdin: &str) -> (bool, String, String) {
    let mut child = mllm()
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running mllm");
    child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

fn lines(stdout: &str) -> Vec<Value> {
    stdout.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"))).collect()
}

#[test]
fn cli_embeds_arguments_stdin_and_files_as_json_lines() {
    let refs = reference();
    let (ok, out, err) = run(&["embed", "-m", minilm(), "-t", "2", &refs[1].0, &refs[0].0], "");
    assert!(ok, "{err}");
    let got = lines(&out);
    assert_eq!(got.len(), 2);
    for (i, (line, want)) in got.iter().zip([&refs[1].1, &refs[0].1]).enumerate() {
        assert_eq!(line["index"], i);
        let v = floats(&line["embedding"]);
        assert_eq!(v.len(), 384);
        assert!(cosine(&v, want) >= 0.9999, "line {i}");
    }
    assert_eq!(got[1]["tokens"], 2, "the empty text is [CLS] [SEP]");
    // stdin and a file: one text per line, every line (an empty one too) in order.
    let text = format!("{}\n\n{}\n", refs[2].0, refs[5].0);
    let (ok, out, err) = run(&["embed", "-m", minilm()], &text);
    assert!(ok, "{err}");
    let from_stdin = lines(&out);
    assert_eq!(from_stdin.len(), 3);
    assert!(cosine(&floats(&from_stdin[0]["embedding"]), &refs[2].1) >= 0.9999);
    assert!(cosine(&floats(&from_stdin[1]["embedding"]), &refs[0].1) >= 0.9999);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("texts.txt");
    std::fs::write(&file, &text).unwrap();
    let (ok, out, err) = run(&["embed", "-m", minilm(), "--file", file.to_str().unwrap(), "--batching", "forked"], "");
    assert!(ok, "{err}");
    let from_file = lines(&out);
    for (a, b) in from_file.iter().zip(&from_stdin) {
        assert!(cosine(&floats(&a["embedding"]), &floats(&b["embedding"])) >= 0.99999);
    }
    // --bench prints sentences/s per batch size as JSON.
    let (ok, out, err) = run(&["embed", "-m", minilm(), "--bench", "1,2", "--reps", "1", "a", "b", "c"], "");
    assert!(ok, "{err}");
    let b: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(b["tests"].as_array().unwrap().len(), 2);
    assert!(b["tests"][1]["samples"][0].as_f64().unwrap() > 0.0);
}

#[test]
fn cli_refuses_bad_arguments_and_the_wrong_kind_of_model() {
    let (ok, _, err) = run(&["embed", "-m", "no-such-model", "x"], "");
    assert!(!ok && err.contains("minilm"), "{err}");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("config.json"), r#"{"model_type": "llama"}"#).unwrap();
    let (ok, _, err) = run(&["embed", "-m", dir.path().to_str().unwrap(), "x"], "");
    assert!(!ok && err.contains("not an embedding model"), "{err}");
    let (ok, _, err) = run(&["embed", "-m", minilm(), "--bench", "0", "x"], "");
    assert!(!ok && err.contains("at least 1"), "{err}");
    let (ok, _, err) = run(&["embed", "-m", minilm()], "");
    assert!(!ok && err.contains("no texts"), "{err}");
    let (ok, _, err) = run(&["run", "-m", minilm(), "-p", "hi"], "");
    assert!(!ok && err.contains("embedding model"), "{err}");
}

/// A running `mllm serve` on an ephemeral loopback port, killed when dropped.
struct Server {
    child: Child,
    addr: String,
}

impl Server {
    fn start(model: &str) -> Server {
        let mut child = mllm()
            .args(["serve", "--model", model, "--host", "127.0.0.1", "--port", "0", "--threads", "2"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting mllm serve");
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("[server] {line}");
                if let Some(rest) = line.split(" on http://").nth(1) {
                    let _ = tx.send(rest.split_whitespace().next().unwrap_or("").to_string());
                }
            }
        });
        let addr = rx.recv_timeout(Duration::from_secs(120)).expect("the server did not start");
        Server { child, addr }
    }

    /// POST `body` to `path`: (status, JSON answer).
    fn post(&self, path: &str, body: &str) -> (u16, Value) {
        let mut s = std::net::TcpStream::connect(&self.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
        write!(
            s,
            "POST {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            self.addr,
            body.len()
        )
        .unwrap();
        let mut answer = String::new();
        s.read_to_string(&mut answer).unwrap();
        let status: u16 = answer.split_whitespace().nth(1).unwrap().parse().unwrap();
        let json = answer.split_once("\r\n\r\n").map_or("", |(_, b)| b);
        (status, serde_json::from_str(json).unwrap_or_else(|e| panic!("answer is not JSON ({e}): {answer}")))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn base64_decode(s: &str) -> Vec<u8> {
    let val = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        b'/' => 63,
        _ => panic!("not base64: {c}"),
    } as u32;
    let mut out = Vec::new();
    for chunk in s.as_bytes().chunks(4) {
        let pad = chunk.iter().filter(|&&c| c == b'=').count();
        let n = chunk.iter().map(|&c| if c == b'=' { 0 } else { val(c) }).fold(0, |n, v| n << 6 | v);
        out.extend(&[(n >> 16) as u8, (n >> 8) as u8, n as u8][..3 - pad]);
    }
    out
}

#[test]
fn server_embeds_in_openai_shape() {
    let refs = reference();
    let server = Server::start(minilm());
    let texts: Vec<&str> = refs.iter().skip(1).map(|(t, _)| t.as_str()).collect();
    let (status, v) = server.post("/v1/embeddings", &json!({"input": texts, "model": "minilm"}).to_string());
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["object"], "list");
    let data = v["data"].as_array().unwrap();
    assert_eq!(data.len(), texts.len());
    for (i, (d, (_, want))) in data.iter().zip(refs.iter().skip(1)).enumerate() {
        assert_eq!(d["object"], "embedding");
        assert_eq!(d["index"], i);
        assert!(cosine(&floats(&d["embedding"]), want) >= 0.9999, "input {i}");
    }
    let tokens = v["usage"]["prompt_tokens"].as_u64().unwrap();
    assert!(tokens > 256, "the long text counts its 256 tokens: {tokens}");
    assert_eq!(v["usage"]["total_tokens"], tokens);
    // One string, base64: the same vector as the float answer.
    let (status, b) =
        server.post("/v1/embeddings", &json!({"input": texts[0], "encoding_format": "base64"}).to_string());
    assert_eq!(status, 200, "{b}");
    let bytes = base64_decode(b["data"][0]["embedding"].as_str().unwrap());
    let decoded: Vec<f32> = bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
    assert_eq!(decoded, floats(&data[0]["embedding"]));
    assert_eq!(b["usage"]["prompt_tokens"], 5);
    // Token ids: [CLS] hello world ! [SEP] as ids gives the same vector; an array of them too.
    let ids = json!([101, 7592, 2088, 999, 102]);
    let (status, t) = server.post("/v1/embeddings", &json!({"input": ids}).to_string());
    assert_eq!(status, 200, "{t}");
    assert!(cosine(&floats(&t["data"][0]["embedding"]), &refs[1].1) >= 0.9999);
    // Without [CLS] [SEP] (tokenized with add_special_tokens=False): they are added.
    let (status, t) = server.post("/v1/embeddings", &json!({"input": [7592, 2088, 999]}).to_string());
    assert_eq!(status, 200, "{t}");
    assert!(cosine(&floats(&t["data"][0]["embedding"]), &refs[1].1) >= 0.9999);
    assert_eq!(t["usage"]["prompt_tokens"], 5, "the added [CLS] [SEP] count");
    let (status, t) = server.post("/v1/embeddings", &json!({"input": [ids, [101, 102]]}).to_string());
    assert_eq!(status, 200, "{t}");
    assert_eq!(t["data"].as_array().unwrap().len(), 2);
    assert!(cosine(&floats(&t["data"][1]["embedding"]), &refs[0].1) >= 0.9999);
    // Errors: 400 in OpenAI's error shape, naming the parameter.
    for (body, says) in [
        (json!({"input": ""}), "empty string"),
        (json!({"input": []}), "empty array"),
        (json!({"input": 3}), "got an integer"),
        (json!({"input": ["a", 3]}), "input[1]"),
        (json!({"input": [[101, 999999]]}), "outside the vocabulary"),
        (json!({"input": "a", "encoding_format": "int8"}), "encoding_format"),
        (json!({"input": "a", "dimensions": 128}), "384 dimensions"),
    ] {
        let (status, e) = server.post("/v1/embeddings", &body.to_string());
        assert_eq!(status, 400, "{body}: {e}");
        assert!(e["error"]["message"].as_str().unwrap().contains(says), "{body}: {e}");
    }
    let (status, e) = server.post("/v1/embeddings", "{not json");
    assert_eq!(status, 400, "{e}");
    let (status, e) =
        server.post("/v1/chat/completions", &json!({"messages": [{"role": "user", "content": "hi"}]}).to_string());
    assert_eq!(status, 400, "{e}");
    assert!(e["error"]["message"].as_str().unwrap().contains("embedding model"), "{e}");
}

#[test]
fn a_text_generation_server_answers_embeddings_with_a_clear_error() {
    let server = Server::start(&pull("smollm2"));
    let (status, e) = server.post("/v1/embeddings", &json!({"input": "hi"}).to_string());
    assert_eq!(status, 400, "{e}");
    let msg = e["error"]["message"].as_str().unwrap();
    assert!(msg.contains("does not embed") && msg.contains("minilm"), "{e}");
}
