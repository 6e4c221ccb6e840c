//! The process-wide context: the one thread pool that forks and intra-op parallelism
//! share, memory accounting and tracing. Every layer may use it; it uses none of them.

pub mod memory;
pub mod trace;

use std::path::PathBuf;
use std::sync::OnceLock;

use crate::{Error, Result};

static CONTEXT: OnceLock<Context> = OnceLock::new();

/// The engine's shared state. Get it with [`context()`] or [`initialize_context()`].
pub struct Context {
    pool: rayon::ThreadPool,
    threads: usize,
    adopted_thread: bool,
}

impl Context {
    /// A builder to choose the thread count and tracing before first use.
    pub fn builder() -> ContextBuilder {
        ContextBuilder::default()
    }

    /// The pool on which forks, waits and the kernels' parallel loops run.
    pub fn pool(&self) -> &rayon::ThreadPool {
        &self.pool
    }

    /// Number of compute threads (pool workers, including an adopted caller thread).
    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Whether the thread that initialised the context is itself a pool worker.
    pub fn adopted_thread(&self) -> bool {
        self.adopted_thread
    }
}

/// Chooses how the context is set up. Unset fields come from the environment:
/// `MLLM_NUM_THREADS` (default: the machine's cores) and `MLLM_TRACE` (a path).
#[derive(Clone, Debug, Default)]
pub struct ContextBuilder {
    threads: Option<usize>,
    trace: Option<PathBuf>,
    use_current_thread: Option<bool>,
}

impl ContextBuilder {
    /// Number of compute threads (at least 1).
    pub fn threads(mut self, n: usize) -> Self {
        self.threads = Some(n.max(1));
        self
    }

    /// Write a Chrome/Perfetto trace of forks, waits and ops to `path`.
    pub fn trace(mut self, path: impl Into<PathBuf>) -> Self {
        self.trace = Some(path.into());
        self
    }

    /// Make the calling thread worker 0 of the pool, so that its `wait` calls compute
    /// instead of sleeping (default: only when called from the process's main thread).
    /// Leave it off for a thread that will spend its life elsewhere (an async runtime).
    pub fn use_current_thread(mut self, yes: bool) -> Self {
        self.use_current_thread = Some(yes);
        self
    }

    /// Build and install the context. Fails if a context already exists with a
    /// different thread count, or if the pool or the trace file cannot be created.
    pub fn init(self) -> Result<&'static Context> {
        let mut err = None;
        let ctx = CONTEXT.get_or_init(|| match self.build() {
            Ok(c) => c,
            Err(e) => {
                err = Some(e);
                // Fall back to a plain pool so the process can still run.
                let threads = default_threads();
                Context { pool: plain_pool(threads), threads, adopted_thread: false }
            }
        });
        if let Some(e) = err {
            return Err(e);
        }
        if let Some(n) = self.threads {
            if n != ctx.threads {
                return Err(Error::invalid(format!(
                    "the context is already initialised with {} threads; cannot change to {n}",
                    ctx.threads
                )));
            }
        }
        Ok(ctx)
    }

    fn build(&self) -> Result<Context> {
        let threads = self.threads.unwrap_or_else(default_threads);
        let adopt = self.use_current_thread.unwrap_or_else(|| std::thread::current().name() == Some("main"));
        let mut b = rayon::ThreadPoolBuilder::new().num_threads(threads).thread_name(|i| format!("mllm-worker-{i}"));
        if adopt {
            b = b.use_current_thread();
        }
        let pool = b.build().map_err(|e| Error::invalid(format!("cannot start the thread pool: {e}")))?;
        let trace =
            self.trace.clone().or_else(|| std::env::var_os("MLLM_TRACE").filter(|p| !p.is_empty()).map(PathBuf::from));
        if let Some(path) = trace {
            trace::start(&path)?;
        }
        Ok(Context { pool, threads, adopted_thread: adopt })
    }
}

fn plain_pool(threads: usize) -> rayon::ThreadPool {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .thread_name(|i| format!("mllm-worker-{i}"))
        .build()
        .expect("a plain rayon pool can always be built")
}

fn default_threads() -> usize {
    std::env::var("MLLM_NUM_THREADS")
        .ok()
        .and_then(|s| s.trim().parse::<usize>().ok())
        .filter(|&n| n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1))
}

/// Initialise the engine with defaults (idempotent and thread-safe) and return it.
///
/// Calling it is optional: any engine call that needs the context initialises it
/// with the same defaults. Call it (or [`Context::builder`]) first when you want the
/// main thread to join the pool or want to choose the thread count.
pub fn initialize_context() -> &'static Context {
    if let Some(c) = CONTEXT.get() {
        return c;
    }
    match ContextBuilder::default().init() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("mllm: {e}; continuing with a default thread pool");
            CONTEXT.get().expect("init installs a context even on error")
        }
    }
}

/// The engine's context, initialised with defaults on first use.
pub fn context() -> &'static Context {
    initialize_context()
}
