//! What the server tests share: the model (fetched once by `mllm pull`), one server at a
//! time, and a running `mllm serve` on loopback with an ephemeral port. Each test file
//! uses part of it.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};
pub fn model() -> &'static str {
    static PATH: OnceLock<String> = OnceLock::new();
    PATH.get_or_init(|| {
        let out = Command::new(env!("CARGO_BIN_EXE_mllm")).args(["pull", "smollm2"]).output().expect("running mllm");
        assert!(out.status.success(), "mllm pull failed: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    })
}

/// One server at a time: the machine has two cores, and the timing of each test (the
/// 503, the slots given back) should not depend on what the other tests are doing.
pub fn one_at_a_time() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|p| p.into_inner())
}

/// A running `mllm serve` on 127.0.0.1 with an ephemeral port, killed when dropped
/// (also when a test fails).
pub struct Server {
    pub child: Child,
    pub base: String,
    /// Every line the server wrote on stderr so far.
    pub log: std::sync::Arc<Mutex<Vec<String>>>,
}

impl Server {
    pub fn start(extra: &[&str]) -> Server {
        Server::start_with_env(extra, &[])
    }

    pub fn start_with_env(extra: &[&str], env: &[(&str, &str)]) -> Server {
        Server::launch(model(), extra, env)
    }

    pub fn launch(model: &str, extra: &[&str], env: &[(&str, &str)]) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_mllm"))
            .args(["serve", "--model", model, "--host", "127.0.0.1", "--port", "0", "--threads", "2"])
            .args(extra)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting mllm serve");
        // The server prints the address it listens on; everything it says is passed
        // on to the test's output (shown when a test fails).
        let stderr = child.stderr.take().expect("piped stderr");
        let (tx, rx) = mpsc::channel();
        let log = std::sync::Arc::new(Mutex::new(Vec::new()));
        let lines = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("[server] {line}");
                lines.lock().unwrap_or_else(|p| p.into_inner()).push(line.clone());
                if let Some(rest) = line.split(" on http://").nth(1) {
                    let _ = tx.send(rest.split_whitespace().next().unwrap_or("").to_string());
                }
            }
        });
        let mut server = Server { child, base: String::new(), log };
        let addr = rx.recv_timeout(Duration::from_secs(60)).expect("the server did not report its address in 60 s");
        assert!(addr.starts_with("127.0.0.1:"), "listening on {addr}");
        server.base = format!("http://{addr}");
        let t0 = Instant::now();
        loop {
            if let Ok(r) = agent().get(format!("{}/health", server.base)).call() {
                if r.status() == 200 {
                    break;
                }
            }
            assert!(t0.elapsed() < Duration::from_secs(30), "no /health answer in 30 s");
            std::thread::sleep(Duration::from_millis(50));
        }
        server
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub fn chat(&self) -> String {
        self.url("/v1/chat/completions")
    }

    pub fn completions(&self) -> String {
        self.url("/v1/completions")
    }

    /// `host:port` for raw sockets.
    pub fn addr(&self) -> &str {
        self.base.trim_start_matches("http://")
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill").args([sig, &self.child.id().to_string()]).status().expect("running kill");
        assert!(ok.success(), "kill {sig} failed");
    }

    /// Waits up to `limit` for the process to end; its exit status and how long it took.
    pub fn wait_exit(&mut self, limit: Duration) -> (std::process::ExitStatus, Duration) {
        let t0 = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("waiting for the server") {
                return (status, t0.elapsed());
            }
            assert!(t0.elapsed() < limit, "the server still runs {limit:?} after the signal");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(150)))
        .build()
        .into()
}
