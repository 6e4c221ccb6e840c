//! fork/wait seen from outside: laziness, equal results to sequential calls, nesting
//! deeper than the pool without deadlock, errors and panics that name the module and
//! leave the pool usable, and awaiting a task from async code.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use mllm::prelude::*;
use mllm::Error;
use rand::{Rng, SeedableRng};

/// Runs `f` on its own thread and fails the test if it does not finish in `secs`.
fn within<T: Send + 'static>(secs: u64, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(Duration::from_secs(secs)).expect("did not finish in time: deadlock?")
}

fn random_tensor(dims: &[usize], seed: u64) -> Tensor {
    let mut r = rand::rngs::StdRng::seed_from_u64(seed);
    let n = dims.iter().product();
    Tensor::from_vec((0..n).map(|_| r.random_range(-1.0f32..1.0)).collect::<Vec<_>>(), dims).unwrap()
}

/// Counts its calls; returns its input.
#[derive(Clone)]
struct Counter {
    reg: nn::Registry,
    calls: Arc<AtomicUsize>,
}

impl nn::Module for Counter {
    fn registry(&self) -> &nn::Registry {
        &self.reg
    }
    fn forward(&self, inputs: &[Tensor]) -> mllm::Result<Vec<Tensor>> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        Ok(inputs.to_vec())
    }
}

#[test]
fn fork_is_lazy_until_waited() {
    let m = Counter { reg: nn::Registry::new("counter"), calls: Arc::new(AtomicUsize::new(0)) };
    let x = Tensor::zeros(&[2], DType::F32).unwrap();
    let t0 = mllm::fork(&m, vec![x.clone()]);
    let t1 = mllm::fork(&m, vec![x.clone()]);
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(m.calls.load(Ordering::SeqCst), 0, "fork must not run the module");
    assert_eq!(t0.label(), "counter");
    let out = mllm::wait(t0).unwrap();
    assert_eq!(m.calls.load(Ordering::SeqCst), 1);
    assert!(out[0].same_storage(&x));
    drop(t1); // a dropped task never runs
    assert_eq!(m.calls.load(Ordering::SeqCst), 1);
}

#[test]
fn forked_results_equal_sequential_results() {
    let reg = nn::Registry::new("proj");
    let lin = nn::Linear::new(&reg, 33, 17);
    let mut p = ParameterFile::create();
    p.push("proj.weight", random_tensor(&[17, 33], 1)).unwrap();
    p.push("proj.bias", random_tensor(&[17], 2)).unwrap();
    lin.load(&p).unwrap();
    let xs: Vec<Tensor> = (0..5).map(|i| random_tensor(&[3, 7, 33], 10 + i)).collect();
    let sequential: Vec<Vec<f32>> = xs.iter().map(|x| lin.apply(x).unwrap().to_vec::<f32>().unwrap()).collect();
    let tasks: Vec<_> = xs.iter().map(|x| mllm::fork(&lin, vec![x.clone()])).collect();
    let forked = mllm::wait_many(tasks).unwrap();
    for (f, s) in forked.iter().zip(&sequential) {
        assert_eq!(f[0].dims(), &[3, 7, 17]);
        assert_eq!(&f[0].to_vec::<f32>().unwrap(), s, "forked and sequential results must be identical");
    }
    let [a, b] =
        mllm::wait_all([mllm::fork(&lin, vec![xs[0].clone()]), mllm::fork(&lin, vec![xs[1].clone()])]).unwrap();
    assert_eq!(a[0].to_vec::<f32>().unwrap(), sequential[0]);
    assert_eq!(b[0].to_vec::<f32>().unwrap(), sequential[1]);
}

/// At depth d, forks `fanout` copies of itself at depth d-1 and waits on all of them
/// (the seed warns this can deadlock); leaves run a real matmul.
#[derive(Clone)]
struct Tree {
    reg: nn::Registry,
    depth: usize,
    fanout: usize,
    leaves: Arc<AtomicUsize>,
}

impl nn::Module for Tree {
    fn registry(&self) -> &nn::Registry {
        &self.reg
    }
    fn forward(&self, inputs: &[Tensor]) -> mllm::Result<Vec<Tensor>> {
        if self.depth == 0 {
            self.leaves.fetch_add(1, Ordering::SeqCst);
            let y = inputs[0].matmul(&inputs[0].transpose(0, 1)?)?;
            return Ok(vec![y]);
        }
        let child = Tree { depth: self.depth - 1, ..self.clone() };
        let tasks = (0..self.fanout).map(|_| mllm::fork(&child, inputs.to_vec())).collect();
        let outs = mllm::wait_many(tasks)?;
        // Also a single nested wait, the seed's exact pattern.
        let one = mllm::wait(mllm::fork(&child, inputs.to_vec()))?;
        Ok(vec![outs[0][0].clone(), one[0].clone()])
    }
}

#[test]
fn nested_forks_deeper_than_the_pool_do_not_deadlock() {
    let threads = mllm::context().threads();
    let leaves = Arc::new(AtomicUsize::new(0));
    let tree = Tree { reg: nn::Registry::new("tree"), depth: 4, fanout: 3, leaves: leaves.clone() };
    let x = random_tensor(&[64, 48], 7);
    let expect = x.matmul(&x.transpose(0, 1).unwrap()).unwrap().to_vec::<f32>().unwrap();
    let out = within(120, move || {
        let tasks = (0..3).map(|_| mllm::fork(&tree, vec![x.clone()])).collect();
        mllm::wait_many(tasks)
    })
    .unwrap();
    // (fanout + 1)^depth leaves per top-level task, far more than pool threads.
    let per_root = 4usize.pow(4);
    assert!(3 * per_root > 10 * threads);
    assert_eq!(leaves.load(Ordering::SeqCst), 3 * per_root);
    for o in &out {
        assert_eq!(o[0].to_vec::<f32>().unwrap(), expect);
        assert_eq!(o[1].to_vec::<f32>().unwrap(), expect);
    }
}

/// Fails or panics on demand, from inside a nested fork.
#[derive(Clone)]
struct Faulty {
    reg: nn::Registry,
    panic: bool,
}

impl nn::Module for Faulty {
    fn registry(&self) -> &nn::Registry {
        &self.reg
    }
    fn forward(&self, inputs: &[Tensor]) -> mllm::Result<Vec<Tensor>> {
        if self.panic {
            panic!("deliberate panic in {}", self.name());
        }
        // A real error from an op: shapes that do not multiply.
        inputs[0].matmul(&inputs[0])?;
        unreachable!("the matmul above must fail")
    }
}

#[test]
fn errors_and_panics_come_back_naming_the_module_and_the_pool_survives() {
    let x = random_tensor(&[3, 5], 3);
    let bad = Faulty { reg: nn::Registry::new("outer").child("bad"), panic: false };
    let err = mllm::wait(mllm::fork(&bad, vec![x.clone()])).unwrap_err();
    assert!(matches!(&err, Error::Task { module, .. } if module == "outer.bad"), "{err}");
    assert!(err.to_string().contains("matmul") && err.to_string().contains("outer.bad"), "{err}");

    let boom = Faulty { reg: nn::Registry::new("boom"), panic: true };
    let prev_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {})); // keep the expected panic out of the test log
    let ok = Counter { reg: nn::Registry::new("ok"), calls: Arc::new(AtomicUsize::new(0)) };
    let r = mllm::wait_all([mllm::fork(&ok, vec![x.clone()]), mllm::fork(&boom, vec![x.clone()])]);
    std::panic::set_hook(prev_hook);
    let err = r.unwrap_err();
    assert!(
        matches!(&err, Error::Panic { module, message } if module == "boom" && message.contains("deliberate")),
        "{err}"
    );
    assert_eq!(ok.calls.load(Ordering::SeqCst), 1, "the healthy task still ran");

    // The pool keeps working, for many tasks at once.
    let tasks = (0..32).map(|_| mllm::fork(&ok, vec![x.clone()])).collect();
    assert_eq!(within(60, move || mllm::wait_many(tasks)).unwrap().len(), 32);
}

#[test]
fn mixed_result_types_with_the_wait_macro() {
    let a = mllm::Task::lazy("answer", || Ok(42u32));
    let b = mllm::Task::lazy("greeting", || Ok(String::from("hi")));
    let (n, s) = mllm::wait!(a, b).unwrap();
    assert_eq!((n, s.as_str()), (42, "hi"));
}

/// A minimal executor: poll, park until woken.
fn block_on<F: std::future::Future>(f: F) -> F::Output {
    use std::task::{Context, Poll, Wake, Waker};
    struct Unpark(std::thread::Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut f = std::pin::pin!(f);
    loop {
        match f.as_mut().poll(&mut cx) {
            Poll::Ready(v) => return v,
            Poll::Pending => std::thread::park(),
        }
    }
}

#[test]
fn tasks_can_be_awaited_from_async_code() {
    let m = Counter { reg: nn::Registry::new("awaited"), calls: Arc::new(AtomicUsize::new(0)) };
    let x = random_tensor(&[4], 5);
    let task = mllm::fork(&m, vec![x.clone()]);
    let out = within(30, move || block_on(async move { task.await })).unwrap();
    assert!(out[0].same_storage(&x));
    assert_eq!(m.calls.load(Ordering::SeqCst), 1);

    let boom = Faulty { reg: nn::Registry::new("async_bad"), panic: false };
    let task = mllm::fork(&boom, vec![x]);
    let err = within(30, move || block_on(task.into_future_boxed())).unwrap_err();
    assert!(err.to_string().contains("async_bad"), "{err}");
}

trait BoxedFuture<T> {
    fn into_future_boxed(self) -> std::pin::Pin<Box<dyn std::future::Future<Output = mllm::Result<T>> + Send>>;
}

impl<T: Send + 'static> BoxedFuture<T> for mllm::Task<T> {
    fn into_future_boxed(self) -> std::pin::Pin<Box<dyn std::future::Future<Output = mllm::Result<T>> + Send>> {
        Box::pin(std::future::IntoFuture::into_future(self))
    }
}
