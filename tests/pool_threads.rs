//! Forks and the matmul's own threads share one pool: heavy nested work creates no
//! threads beyond the pool's workers. One test per file, since it counts the whole
//! process's threads.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use mllm::prelude::*;

fn thread_names() -> Vec<String> {
    let mut names = Vec::new();
    for entry in std::fs::read_dir("/proc/self/task").expect("Linux /proc") {
        let comm = entry.unwrap().path().join("comm");
        names.push(std::fs::read_to_string(comm).unwrap_or_default().trim().to_string());
    }
    names
}

fn census(names: &[String]) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for n in names {
        let key = if n.starts_with("mllm-worker") { "mllm-worker".to_string() } else { n.clone() };
        *m.entry(key).or_insert(0) += 1;
    }
    m
}

/// Records the pool size seen from inside the task, then runs a large matmul (which
/// splits across threads) in nested forks.
#[derive(Clone)]
struct Heavy {
    reg: nn::Registry,
    depth: usize,
    seen_pool: Arc<AtomicUsize>,
}

impl nn::Module for Heavy {
    fn registry(&self) -> &nn::Registry {
        &self.reg
    }
    fn forward(&self, inputs: &[Tensor]) -> mllm::Result<Vec<Tensor>> {
        assert!(rayon::current_thread_index().is_some(), "tasks run on pool threads");
        self.seen_pool.store(rayon::current_num_threads(), Ordering::SeqCst);
        if self.depth == 0 {
            return Ok(vec![inputs[0].matmul(&inputs[0])?]);
        }
        let child = Heavy { depth: self.depth - 1, ..self.clone() };
        let tasks = (0..4).map(|_| mllm::fork(&child, inputs.to_vec())).collect();
        Ok(mllm::wait_many(tasks)?.remove(0))
    }
}

#[test]
fn forks_and_matmul_threads_share_one_pool() {
    let ctx = mllm::context();
    let before = census(&thread_names());
    let seen = Arc::new(AtomicUsize::new(0));
    let m = Heavy { reg: nn::Registry::new("heavy"), depth: 2, seen_pool: seen.clone() };
    let x = Tensor::full(&[256, 256], 0.5).unwrap();
    let tasks = (0..4).map(|_| mllm::fork(&m, vec![x.clone()])).collect();
    let out = mllm::wait_many(tasks).unwrap();
    assert_eq!(out[0][0].dims(), &[256, 256]);
    assert_eq!(seen.load(Ordering::SeqCst), ctx.threads());
    let after = census(&thread_names());
    let workers = after.get("mllm-worker").copied().unwrap_or(0);
    let spawned = if ctx.adopted_thread() { ctx.threads() - 1 } else { ctx.threads() };
    assert_eq!(workers, spawned, "exactly the pool's workers, no second pool: {after:?}");
    for (name, n) in &after {
        if name != "mllm-worker" {
            assert!(
                before.get(name).copied().unwrap_or(0) >= *n,
                "unexpected new thread '{name}': {before:?} -> {after:?}"
            );
        }
    }
}
