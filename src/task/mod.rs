//! Lazy tasks on the shared pool: a [`Task`] does nothing until it is waited on
//! (or awaited). Waiting from a pool thread runs other queued work meanwhile, so
//! nested forks never deadlock. Knows nothing of modules: `nn::fork` builds tasks.

use std::future::{Future, IntoFuture};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context as PollContext, Poll, Waker};

use rayon::prelude::*;

use crate::context::{context, trace};
use crate::tensor::Tensor;
use crate::{Error, Result};

type Job<T> = Box<dyn FnOnce() -> Result<T> + Send + 'static>;

/// A unit of work that has not run yet. Run it with [`wait`], [`wait_all`] or `.await`.
#[must_use = "a task does nothing until it is waited on"]
pub struct Task<T = Vec<Tensor>> {
    label: Arc<str>,
    job: Job<T>,
}

impl<T: Send + 'static> Task<T> {
    /// A task named `label` (errors and traces use the name) that will run `job`.
    pub fn lazy(label: impl Into<Arc<str>>, job: impl FnOnce() -> Result<T> + Send + 'static) -> Self {
        let label = label.into();
        trace::instant("fork", || format!("fork {label}"));
        Task { label, job: Box::new(job) }
    }

    /// The name given when the task was made (the module's name for `fork`).
    pub fn label(&self) -> &str {
        &self.label
    }

    /// Run on the current thread, turning errors and panics into an `Err` that names
    /// the task.
    fn run(self) -> Result<T> {
        let Task { label, job } = self;
        let _span = trace::Span::new("task", || format!("task {label}"));
        match catch_unwind(AssertUnwindSafe(job)) {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(Error::Task { module: label.to_string(), source: Box::new(e) }),
            Err(payload) => Err(Error::Panic { module: label.to_string(), message: panic_message(&payload) }),
        }
    }
}

fn panic_message(payload: &Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        s.to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "(non-string panic payload)".to_string()
    }
}

/// Run `f` inside the context's pool (`what` names the wait in a trace and is only
/// built when tracing is on): inline if this thread is one of its workers
/// (so a waiting worker keeps stealing work), else by handing it over and blocking.
fn in_pool<R: Send>(what: impl FnOnce() -> String, f: impl FnOnce() -> R + Send) -> R {
    let on_pool = rayon::current_thread_index().is_some();
    let r = {
        let _span = trace::Span::new("wait", what);
        context().pool().install(f)
    };
    if !on_pool {
        trace::flush();
    }
    r
}

/// Run one task and return its result. Called from a pool thread (inside another
/// task), the thread keeps running other queued work while it waits.
pub fn wait<T: Send + 'static>(task: Task<T>) -> Result<T> {
    let label = task.label.clone();
    in_pool(|| format!("wait {label}"), move || task.run())
}

/// Run all tasks concurrently on the pool and return their results in order.
/// If any fail, the first failure (in input order) is returned, after all finished.
pub fn wait_all<T: Send + 'static, const N: usize>(tasks: [Task<T>; N]) -> Result<[T; N]> {
    let v = wait_many(Vec::from(tasks))?;
    Ok(v.try_into().unwrap_or_else(|_| unreachable!("wait_many returns one result per task")))
}

/// Like [`wait_all`] for a run-time number of tasks.
pub fn wait_many<T: Send + 'static>(tasks: Vec<Task<T>>) -> Result<Vec<T>> {
    let n = tasks.len();
    let results: Vec<Result<T>> = in_pool(
        || format!("wait_all {n} tasks"),
        move || {
            // One task per split, so each can be stolen by an idle worker.
            tasks.into_par_iter().with_max_len(1).map(Task::run).collect()
        },
    );
    results.into_iter().collect()
}

/// Waits on a mix of task types at once: `let (a, b) = wait!(t0, t1)?;` where `t0`
/// and `t1` may produce different types.
#[macro_export]
macro_rules! wait {
    ($a:expr, $b:expr $(,)?) => {
        $crate::task::join2($a, $b)
    };
}

/// Run two tasks of different result types concurrently.
pub fn join2<A: Send + 'static, B: Send + 'static>(a: Task<A>, b: Task<B>) -> Result<(A, B)> {
    let (la, lb) = (a.label.clone(), b.label.clone());
    let (ra, rb) = in_pool(|| format!("wait {la} + {lb}"), move || rayon::join(move || a.run(), move || b.run()));
    Ok((ra?, rb?))
}

// ---- async bridge ------------------------------------------------------------

struct Shared<T> {
    result: Option<Result<T>>,
    waker: Option<Waker>,
}

/// The future of an awaited [`Task`]: the task starts on the pool when awaited and
/// the awaiting executor thread is never blocked.
pub struct TaskFuture<T> {
    shared: Arc<Mutex<Shared<T>>>,
}

impl<T: Send + 'static> IntoFuture for Task<T> {
    type Output = Result<T>;
    type IntoFuture = TaskFuture<T>;

    fn into_future(self) -> TaskFuture<T> {
        let shared = Arc::new(Mutex::new(Shared { result: None, waker: None }));
        let done = shared.clone();
        context().pool().spawn(move || {
            let r = self.run();
            let mut g = done.lock().unwrap_or_else(|p| p.into_inner());
            g.result = Some(r);
            if let Some(w) = g.waker.take() {
                w.wake();
            }
        });
        TaskFuture { shared }
    }
}

impl<T> Future for TaskFuture<T> {
    type Output = Result<T>;

    fn poll(self: Pin<&mut Self>, cx: &mut PollContext<'_>) -> Poll<Result<T>> {
        let mut g = self.shared.lock().unwrap_or_else(|p| p.into_inner());
        match g.result.take() {
            Some(r) => Poll::Ready(r),
            None => {
                g.waker = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}
