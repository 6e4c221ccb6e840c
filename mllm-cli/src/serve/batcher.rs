//! Continuous batching: one thread gathers the next step of every active sequence (a new
//! prompt, or one generated token) and runs them as one `Decoder::forward_batch` on the
//! engine's pool, so each weight matrix is read once per step for all sequences instead
//! of once per sequence. Sequences join and leave between steps; a step waits for the
//! other active sequences at most `GATHER` before it runs with those that are ready.
//! A long prompt comes as several chunks (see `sequence.rs`), each one step, so other
//! sequences' tokens ride along with it instead of waiting for the whole prefill.

use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Result};
use mllm::models::{Decoder, KvCache, Sampler};
use tokio::sync::oneshot;

use super::logprobs::TokenLogprob;

/// How long a gathered step waits for the other active sequences' steps.
const GATHER: Duration = Duration::from_millis(3);

/// A sequence's state between steps: its cache, sampler and token history.
pub struct SeqState {
    pub cache: KvCache,
    pub sampler: Sampler,
    pub history: Vec<u32>,
    /// Score each sampled token, with this many alternatives (`None`: don't).
    pub logprobs: Option<usize>,
    /// The last sampled token's score, until the sequence takes it.
    pub scored: Option<TokenLogprob>,
}

impl SeqState {
    /// Sample the next token from `logits` (its row of the step), add it to the history
    /// and, if asked, score it from the same logits.
    pub fn sample(&mut self, logits: &[f32]) -> mllm::Result<u32> {
        let next = self.sampler.sample(logits, &self.history)?;
        if let Some(top) = self.logprobs {
            self.scored = Some(TokenLogprob::of(logits, next, top)?);
        }
        self.history.push(next);
        Ok(next)
    }
}

struct Job {
    input: Vec<u32>,
    state: SeqState,
    /// Whether to sample the next token (not after a prompt chunk that is not the last).
    sample: bool,
    reply: oneshot::Sender<Result<(SeqState, Option<u32>)>>,
}

/// Handle to the batching thread (cheap to clone; the thread ends with the last handle).
#[derive(Clone)]
pub struct Batcher {
    tx: mpsc::Sender<Job>,
    active: Arc<AtomicUsize>,
}

/// Membership of one generating sequence; the batcher waits only for members' steps.
pub struct Member {
    active: Arc<AtomicUsize>,
}

impl Drop for Member {
    fn drop(&mut self) {
        self.active.fetch_sub(1, Relaxed);
    }
}

impl Batcher {
    /// Start the batching thread for `decoder`; one step holds at most `max_rows` new tokens
    /// (more waits for the next step).
    pub fn start(decoder: Decoder, max_rows: usize) -> Result<Batcher> {
        let (tx, rx) = mpsc::channel::<Job>();
        let active = Arc::new(AtomicUsize::new(0));
        let act = active.clone();
        std::thread::Builder::new().name("mllm-batcher".into()).spawn(move || run(&decoder, &rx, &act, max_rows))?;
        Ok(Batcher { tx, active })
    }

    /// Register a sequence for the lifetime of the returned guard.
    pub fn join(&self) -> Member {
        self.active.fetch_add(1, Relaxed);
        Member { active: self.active.clone() }
    }

    /// Run `input` through the sequence's model state in the next batched step and sample
    /// its next token.
    pub async fn step(&self, input: Vec<u32>, state: SeqState) -> Result<(SeqState, u32)> {
        let (state, next) = self.send(input, state, true).await?;
        Ok((state, next.ok_or_else(|| anyhow!("the batching thread did not sample"))?))
    }

    /// Run `input` (a prompt chunk) through the sequence's model state in the next batched
    /// step, without sampling.
    pub async fn prefill(&self, input: Vec<u32>, state: SeqState) -> Result<SeqState> {
        Ok(self.send(input, state, false).await?.0)
    }

    async fn send(&self, input: Vec<u32>, state: SeqState, sample: bool) -> Result<(SeqState, Option<u32>)> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(Job { input, state, sample, reply }).map_err(|_| anyhow!("the batching thread has stopped"))?;
        rx.await.map_err(|_| anyhow!("the batching thread dropped a step"))?
    }
}

fn run(decoder: &Decoder, rx: &mpsc::Receiver<Job>, active: &AtomicUsize, max_rows: usize) {
    let mut carry: Option<Job> = None;
    loop {
        let first = match carry.take() {
            Some(j) => j,
            None => match rx.recv() {
                Ok(j) => j,
                Err(_) => return, // every handle is gone
            },
        };
        let mut rows = first.input.len();
        let mut jobs = vec![first];
        let deadline = Instant::now() + GATHER;
        while jobs.len() < active.load(Relaxed).max(1) && rows < max_rows {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(j) if rows + j.input.len() > max_rows => {
                    carry = Some(j);
                    break;
                }
                Ok(j) => {
                    rows += j.input.len();
                    jobs.push(j);
                }
                Err(_) => break,
            }
        }
        // Steps whose client has gone are dropped here (freeing their caches).
        jobs.retain(|j| !j.reply.is_closed());
        if jobs.is_empty() {
            continue;
        }
        mllm::context().pool().install(|| step_all(decoder, jobs));
    }
}

/// One batched pass and a sample per sequence; if the batch fails, each job is retried
/// alone so that only the faulty one gets the error.
fn step_all(decoder: &Decoder, mut jobs: Vec<Job>) {
    let logits = {
        let mut steps: Vec<(&[u32], &mut KvCache)> =
            jobs.iter_mut().map(|j| (j.input.as_slice(), &mut j.state.cache)).collect();
        decoder.forward_batch(&mut steps)
    };
    match logits.and_then(|l| l.to_vec::<f32>()) {
        Ok(all) => {
            let vocab = all.len() / jobs.len();
            for (job, row) in jobs.into_iter().zip(all.chunks_exact(vocab)) {
                let Job { mut state, reply, sample, .. } = job;
                if !sample {
                    let _ = reply.send(Ok((state, None)));
                    continue;
                }
                let result = match state.sample(row) {
                    Ok(next) => Ok((state, Some(next))),
                    Err(e) => Err(e.into()),
                };
                let _ = reply.send(result);
            }
        }
        Err(_) if jobs.len() > 1 => {
            for job in jobs {
                step_all(decoder, vec![job]);
            }
        }
        Err(e) => {
            let _ = jobs.pop().expect("one job").reply.send(Err(e.into()));
        }
    }
}
