//! Opt-in Chrome/Perfetto trace of forks, waits and ops (`MLLM_TRACE=out.json`).
//! Events stream into a JSON array. Each flush writes the closing bracket and steps
//! back over it, so the file is valid JSON after every flush; between flushes it is an
//! unterminated array, which the trace viewers also accept.

use std::cell::Cell;
use std::fs::File;
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

use crate::{Error, Result};

static ENABLED: AtomicBool = AtomicBool::new(false);
struct Sink {
    out: BufWriter<File>,
    events: u64,
}

static SINK: Mutex<Option<Sink>> = Mutex::new(None);
static EPOCH: OnceLock<Instant> = OnceLock::new();
static NEXT_TID: AtomicU64 = AtomicU64::new(1);

thread_local! {
    static TID: Cell<u64> = const { Cell::new(0) };
}

/// Whether a trace is being written. Cheap: one relaxed load.
#[inline]
pub fn enabled() -> bool {
    ENABLED.load(Relaxed)
}

pub(crate) fn start(path: &Path) -> Result<()> {
    let file = File::create(path).map_err(|e| Error::io(format!("cannot create trace file {}", path.display()), e))?;
    let mut out = BufWriter::new(file);
    out.write_all(b"[").map_err(|e| Error::io("writing trace", e))?;
    EPOCH.get_or_init(Instant::now);
    *SINK.lock().unwrap_or_else(|p| p.into_inner()) = Some(Sink { out, events: 0 });
    ENABLED.store(true, Relaxed);
    Ok(())
}

fn thread_id() -> u64 {
    TID.with(|c| {
        if c.get() == 0 {
            let id = NEXT_TID.fetch_add(1, Relaxed);
            c.set(id);
            let name = std::thread::current().name().unwrap_or("thread").to_string();
            write_line(&format!(
                r#"{{"ph":"M","name":"thread_name","pid":1,"tid":{id},"args":{{"name":{}}}}}"#,
                json_str(&name)
            ));
        }
        c.get()
    })
}

fn micros(t: Instant) -> f64 {
    t.duration_since(*EPOCH.get_or_init(Instant::now)).as_secs_f64() * 1e6
}

fn json_str(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"?\"".into())
}

fn write_line(line: &str) {
    let mut g = SINK.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(s) = g.as_mut() {
        // A failing trace write must not break inference: drop the event.
        let sep: &[u8] = if s.events == 0 { b"\n" } else { b",\n" };
        let _ = s.out.write_all(sep).and_then(|_| s.out.write_all(line.as_bytes()));
        s.events += 1;
    }
}

/// A span that is recorded as a complete ("X") event when dropped.
#[must_use = "a span measures until it is dropped"]
pub struct Span {
    inner: Option<(&'static str, String, Instant)>,
}

impl Span {
    /// Start a span named `name` in category `cat` (no-op when tracing is off).
    #[inline]
    pub fn new(cat: &'static str, name: impl FnOnce() -> String) -> Span {
        if enabled() {
            Span { inner: Some((cat, name(), Instant::now())) }
        } else {
            Span { inner: None }
        }
    }
}

impl Drop for Span {
    fn drop(&mut self) {
        if let Some((cat, name, start)) = self.inner.take() {
            let tid = thread_id();
            let ts = micros(start);
            let dur = micros(Instant::now()) - ts;
            write_line(&format!(
                r#"{{"ph":"X","cat":"{cat}","name":{},"pid":1,"tid":{tid},"ts":{ts:.3},"dur":{dur:.3}}}"#,
                json_str(&name)
            ));
        }
    }
}

/// Record an instant ("i") event, such as a fork.
pub fn instant(cat: &'static str, name: impl FnOnce() -> String) {
    if enabled() {
        let tid = thread_id();
        let ts = micros(Instant::now());
        write_line(&format!(
            r#"{{"ph":"i","s":"t","cat":"{cat}","name":{},"pid":1,"tid":{tid},"ts":{ts:.3}}}"#,
            json_str(&name())
        ));
    }
}

/// Push buffered events to the trace file. Called after each top-level wait and by
/// `memory_report`; call it yourself before exiting if you trace other work.
pub fn flush() {
    if enabled() {
        let mut g = SINK.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = g.as_mut() {
            // Close the array, then step back so later events overwrite the bracket.
            let _ = s.out.write_all(b"\n]").and_then(|_| s.out.seek(SeekFrom::Current(-2))).and_then(|_| s.out.flush());
        }
    }
}
