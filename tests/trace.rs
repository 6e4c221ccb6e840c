//! `MLLM_TRACE` / `Context::builder().trace(path)` writes a Chrome trace with forks,
//! tasks, waits and ops, valid JSON after each top-level wait. One test per file: the
//! context (and its trace) is process-wide.

use mllm::prelude::*;

#[test]
fn trace_records_forks_tasks_waits_and_ops() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("trace.json");
    mllm::Context::builder().threads(2).trace(&path).init().unwrap();

    let reg = nn::Registry::new("traced");
    let lin = nn::Linear::no_bias(&reg, 8, 4);
    let mut p = ParameterFile::create();
    p.push("traced.weight", Tensor::full(&[4, 8], 0.25).unwrap()).unwrap();
    lin.load(&p).unwrap();
    let x = Tensor::full(&[3, 8], 1.0).unwrap();
    let [a, _b] = mllm::wait_all([mllm::fork(&lin, vec![x.clone()]), mllm::fork(&lin, vec![x])]).unwrap();
    assert_eq!(a[0].to_vec::<f32>().unwrap(), vec![2.0; 12]);

    let text = std::fs::read_to_string(&path).unwrap();
    let events: Vec<serde_json::Value> = serde_json::from_str(&text).expect("valid JSON after a top-level wait");
    let named = |name: &str, ph: &str| events.iter().filter(|e| e["name"] == name && e["ph"] == ph).count();
    assert_eq!(named("fork traced", "i"), 2);
    assert_eq!(named("task traced", "X"), 2);
    assert_eq!(named("linear", "X"), 2);
    assert_eq!(named("wait_all 2 tasks", "X"), 1);
    for e in events.iter().filter(|e| e["ph"] == "X") {
        assert!(e["dur"].as_f64().unwrap() >= 0.0 && e["ts"].as_f64().unwrap() >= 0.0, "{e}");
        assert!(e["tid"].as_u64().unwrap() >= 1);
    }
    assert!(events.iter().any(|e| e["ph"] == "M" && e["name"] == "thread_name"));
}
