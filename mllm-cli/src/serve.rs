//! `mllm serve`: an OpenAI-compatible HTTP server (axum on tokio). Each request is one
//! sequence with its own KV cache; the next steps of all active sequences run as one
//! batched model pass on the engine's shared pool (or, with `--no-batch`, each step as its
//! own forked task); the async side only reads, checks, queues and streams.

mod batcher;
mod embeddings;
mod request;
mod sequence;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context as _, Result};
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use clap::Args;
use mllm::models::{FinishReason, GenerateOptions, Generation, TextModel};
use serde_json::{json, Value};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio_stream::wrappers::UnboundedReceiverStream;
use tokio_stream::StreamExt as _;

use crate::commands::{self, ModelArgs};
use request::{ApiError, Endpoint, Prompt, Request};

#[derive(Args)]
#[command(
    after_help = "Endpoints: POST /v1/chat/completions, POST /v1/completions (both with \"stream\": true for server-sent events), GET /v1/models, GET /health.\n\
With an embedding model (--model minilm or an encoder folder): POST /v1/embeddings instead (OpenAI's shape: input as a string, strings or token id arrays; encoding_format float or base64).\n\
Request defaults follow the OpenAI API (temperature 1, top_p 1; chat answers may fill the context, completions stop at 16 tokens); extensions: top_k, min_p, repetition_penalty.\n\
Example: mllm serve --port 8080 & curl localhost:8080/v1/chat/completions \
-d '{\"messages\":[{\"role\":\"user\",\"content\":\"Hi\"}],\"max_tokens\":16}'"
)]
pub struct ServeArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Address to listen on
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Port to listen on (0: any free port; the address is printed on stderr)
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// Requests generating at the same time (their steps run together as one batched pass)
    #[arg(long, default_value_t = 8)]
    max_concurrent: usize,
    /// Requests that may wait for a turn; beyond this the server answers 503 at once
    #[arg(long, default_value_t = 64)]
    queue: usize,
    /// Context size in tokens per request (prompt + generated); default: the model's
    #[arg(long)]
    ctx: Option<usize>,
    /// Largest request body accepted, in bytes
    #[arg(long, default_value_t = 1 << 20)]
    max_body: usize,
    /// Run each sequence's model passes as separate forked tasks that take turns on the
    /// pool, instead of one batched pass over all active sequences (slower; see BENCHMARKS.md)
    #[arg(long)]
    no_batch: bool,
}

/// New tokens in one batched step at most (a longer prompt runs alone).
const MAX_BATCH_ROWS: usize = 1024;

/// The chat endpoint's default answer length is the rest of the context; the legacy
/// completions endpoint's is 16 tokens, as in the OpenAI API.
const COMPLETIONS_DEFAULT_MAX_TOKENS: usize = 16;
/// A client has this long to send its request body.
const BODY_TIMEOUT: Duration = Duration::from_secs(30);
/// Of an oversized body, read at most this many bytes (so the client can read the 413).
const DRAIN_LIMIT: usize = 64 << 20;

struct ServerState {
    model: TextModel,
    batcher: Option<batcher::Batcher>,
    model_id: String,
    created: u64,
    ctx: usize,
    max_body: usize,
    max_concurrent: usize,
    queue: usize,
    /// Permits for requests admitted (running or waiting): `max_concurrent + queue`.
    admitted: Arc<Semaphore>,
    /// Permits for requests generating: `max_concurrent`.
    slots: Arc<Semaphore>,
    running: AtomicUsize,
    waiting: AtomicUsize,
    next_id: AtomicU64,
}

type Shared = Arc<ServerState>;

pub fn serve(args: ServeArgs) -> Result<()> {
    if args.max_concurrent == 0 {
        bail!("--max-concurrent must be at least 1");
    }
    if args.ctx == Some(0) {
        bail!("--ctx must be at least 1");
    }
    if args.max_body == 0 {
        bail!("--max-body must be at least 1");
    }
    // The pool must not adopt this thread: it will run the async runtime, and a pool
    // worker that blocks there would stall every generation.
    let mut b = mllm::Context::builder().use_current_thread(false);
    if let Some(n) = args.model.threads().filter(|&n| n > 0) {
        b = b.threads(n);
    }
    b.init()?;
    if let Some(model) = commands::embedding_model(&args.model)? {
        return embeddings::serve(args, model);
    }
    let model = commands::load(&args.model)?;
    let trained = model.decoder.config().context_length;
    let ctx = match args.ctx {
        Some(c) if c > trained => bail!("--ctx {c} is larger than the model's context of {trained} tokens"),
        Some(c) => c,
        None => trained,
    };
    let model_id = model.path.file_stem().map_or_else(|| "model".to_string(), |s| s.to_string_lossy().into_owned());
    let batcher =
        if args.no_batch { None } else { Some(batcher::Batcher::start(model.decoder.clone(), MAX_BATCH_ROWS)?) };
    let state = Arc::new(ServerState {
        model,
        batcher,
        model_id,
        created: unix_now(),
        ctx,
        max_body: args.max_body,
        max_concurrent: args.max_concurrent,
        queue: args.queue,
        admitted: Arc::new(Semaphore::new(args.max_concurrent.saturating_add(args.queue).min(Semaphore::MAX_PERMITS))),
        slots: Arc::new(Semaphore::new(args.max_concurrent.min(Semaphore::MAX_PERMITS))),
        running: AtomicUsize::new(0),
        waiting: AtomicUsize::new(0),
        next_id: AtomicU64::new(0),
    });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("mllm-http")
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(run(state, args.host, args.port))
}

async fn run(state: Shared, host: String, port: u16) -> Result<()> {
    let listener = tokio::net::TcpListener::bind((host.as_str(), port))
        .await
        .with_context(|| format!("cannot listen on {host}:{port}"))?;
    let addr: SocketAddr = listener.local_addr()?;
    eprintln!(
        "serving {} on http://{addr} (context {} tokens, {} at once, {} more queued, {} compute threads)",
        state.model_id,
        state.ctx,
        state.max_concurrent,
        state.queue,
        mllm::context().threads()
    );
    axum::serve(listener, router(state)).with_graceful_shutdown(shutdown_signal()).await?;
    eprintln!("server stopped");
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}

fn router(state: Shared) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/v1/models", get(list_models))
        .route("/v1/models/{*id}", get(get_model))
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/completions", post(completions))
        .route("/v1/embeddings", post(embeddings::not_an_embedding_model))
        .fallback(|| async { ApiError::invalid(None, "no such endpoint").with_status(StatusCode::NOT_FOUND) })
        .method_not_allowed_fallback(|| async {
            ApiError::invalid(None, "method not allowed on this endpoint").with_status(StatusCode::METHOD_NOT_ALLOWED)
        })
        .with_state(state)
}

fn json_response(status: StatusCode, v: Value) -> Response {
    let mut r = (status, v.to_string()).into_response();
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

async fn health(State(s): State<Shared>) -> Response {
    json_response(
        StatusCode::OK,
        json!({
            "status": "ok",
            "model": s.model_id,
            "running": s.running.load(Relaxed),
            "waiting": s.waiting.load(Relaxed),
            "max_concurrent": s.max_concurrent,
            "queue": s.queue,
            "context": s.ctx,
        }),
    )
}

fn model_object(s: &ServerState) -> Value {
    json!({"id": s.model_id, "object": "model", "created": s.created, "owned_by": "mllm"})
}

async fn list_models(State(s): State<Shared>) -> Response {
    json_response(StatusCode::OK, json!({"object": "list", "data": [model_object(&s)]}))
}

async fn get_model(State(s): State<Shared>, Path(id): Path<String>) -> Response {
    if id == s.model_id {
        json_response(StatusCode::OK, model_object(&s))
    } else {
        ApiError::invalid(Some("model"), format!("the model '{id}' does not exist; this server has '{}'", s.model_id))
            .with_status(StatusCode::NOT_FOUND)
            .with_code("model_not_found")
            .into_response()
    }
}

async fn chat_completions(State(s): State<Shared>, body: Body) -> Response {
    handle(s, body, Endpoint::Chat).await.unwrap_or_else(|e| log_error(Endpoint::Chat, e))
}

async fn completions(State(s): State<Shared>, body: Body) -> Response {
    handle(s, body, Endpoint::Completions).await.unwrap_or_else(|e| log_error(Endpoint::Completions, e))
}

fn log_error(endpoint: Endpoint, e: ApiError) -> Response {
    eprintln!("{} {}: {}", e.status.as_u16(), path_of(endpoint), e.message);
    e.into_response()
}

fn path_of(endpoint: Endpoint) -> &'static str {
    match endpoint {
        Endpoint::Chat => "/v1/chat/completions",
        Endpoint::Completions => "/v1/completions",
    }
}

/// The body, at most `limit` bytes; a larger one is read on (up to a bound) and refused.
async fn read_body(body: Body, limit: usize) -> Result<Vec<u8>, ApiError> {
    let mut stream = body.into_data_stream();
    let mut buf = Vec::new();
    let mut total = 0usize;
    let read = async {
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| ApiError::invalid(None, format!("cannot read the request body: {e}")))?;
            total = total.saturating_add(chunk.len());
            if total <= limit {
                buf.extend_from_slice(&chunk);
            } else if total > DRAIN_LIMIT {
                break;
            }
        }
        Ok::<(), ApiError>(())
    };
    tokio::time::timeout(BODY_TIMEOUT, read).await.map_err(|_| {
        ApiError::invalid(None, "timed out reading the request body").with_status(StatusCode::REQUEST_TIMEOUT)
    })??;
    if total > limit {
        return Err(ApiError::invalid(None, format!("the request body is larger than the limit of {limit} bytes"))
            .with_status(StatusCode::PAYLOAD_TOO_LARGE)
            .with_code("request_too_large"));
    }
    Ok(buf)
}

/// A request's place in the server: admitted (waiting) until it takes a slot, then
/// running until dropped. It travels into the generation task, so a slot is given
/// back only when the generation has really ended.
struct Seat {
    state: Shared,
    _admitted: OwnedSemaphorePermit,
    slot: Option<OwnedSemaphorePermit>,
}

impl ServerState {
    /// A seat, or 503 at once when `max_concurrent + queue` requests are already in.
    fn admit(self: &Arc<Self>) -> Result<Seat, ApiError> {
        let permit = self.admitted.clone().try_acquire_owned().map_err(|_| ApiError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            message: format!(
                "the server is busy ({} requests running, {} waiting); try again later",
                self.running.load(Relaxed),
                self.waiting.load(Relaxed)
            ),
            kind: "server_error",
            param: None,
            code: Some("server_overloaded"),
        })?;
        self.waiting.fetch_add(1, Relaxed);
        Ok(Seat { state: self.clone(), _admitted: permit, slot: None })
    }
}

impl Seat {
    /// Wait for one of the `max_concurrent` slots.
    async fn take_slot(&mut self) {
        let slot = self.state.slots.clone().acquire_owned().await.expect("the slot semaphore is never closed");
        self.state.waiting.fetch_sub(1, Relaxed);
        self.state.running.fetch_add(1, Relaxed);
        self.slot = Some(slot);
    }
}

impl Drop for Seat {
    fn drop(&mut self) {
        if self.slot.is_some() {
            self.state.running.fetch_sub(1, Relaxed);
        } else {
            self.state.waiting.fetch_sub(1, Relaxed);
        }
    }
}

/// A checked request with its prompt tokenized and its limits fixed.
struct Job {
    endpoint: Endpoint,
    ids: Vec<u32>,
    opts: GenerateOptions,
    include_usage: bool,
}

async fn handle(s: Shared, body: Body, endpoint: Endpoint) -> Result<Response, ApiError> {
    let t0 = Instant::now();
    let bytes = read_body(body, s.max_body).await?;
    let req = request::parse(&bytes, endpoint)?;
    drop(bytes);
    let seat = s.admit()?;
    let stream = req.stream;
    let job = prepare(&s, req, endpoint).await?;
    let id = format!(
        "{}-{:x}{:06x}",
        if endpoint == Endpoint::Chat { "chatcmpl" } else { "cmpl" },
        rand::random::<u32>(),
        s.next_id.fetch_add(1, Relaxed)
    );
    let chunks = Chunks {
        id: id.into(),
        created: unix_now(),
        model: s.model_id.as_str().into(),
        endpoint,
        include_usage: job.include_usage,
    };
    if stream {
        Ok(stream_answer(s, seat, job, chunks, t0))
    } else {
        whole_answer(s, seat, job, chunks, t0).await
    }
}

/// Tokenize (off the async threads) and check the request against the context.
async fn prepare(s: &Shared, req: Request, endpoint: Endpoint) -> Result<Job, ApiError> {
    let param = if endpoint == Endpoint::Chat { "messages" } else { "prompt" };
    let ctx = s.ctx;
    if let Some(m) = req.max_tokens.filter(|&m| m > ctx) {
        return Err(ApiError::invalid(
            Some("max_tokens"),
            format!("max_tokens is {m}, but this server's context holds {ctx} tokens (prompt included)"),
        ));
    }
    let Request { prompt, max_tokens, sampling, stop, include_usage, .. } = req;
    let model = s.model.clone();
    let ids = tokio::task::spawn_blocking(move || encode(&model, prompt, param))
        .await
        .map_err(|e| server_error(format!("tokenizing the prompt failed: {e}")))??;
    let n = ids.len();
    if n == 0 {
        return Err(ApiError::invalid(Some(param), format!("'{param}' is empty: it makes no tokens")));
    }
    if n >= ctx {
        return Err(ApiError::invalid(
            Some(param),
            format!("this server's context holds {ctx} tokens, but the {param} come to {n} tokens, leaving no room for an answer"),
        )
        .with_code("context_length_exceeded"));
    }
    let room = ctx - n;
    let max_tokens = match (max_tokens, endpoint) {
        (Some(m), _) if m > room => {
            return Err(ApiError::invalid(
                Some("max_tokens"),
                format!(
                    "this server's context holds {ctx} tokens, but {n} tokens of {param} + {m} of max_tokens make {}; \
                     lower max_tokens or shorten the {param}",
                    n + m
                ),
            )
            .with_code("context_length_exceeded"))
        }
        (Some(m), _) => m,
        (None, Endpoint::Chat) => room,
        (None, Endpoint::Completions) => COMPLETIONS_DEFAULT_MAX_TOKENS.min(room),
    };
    sampling.validate().map_err(|e| ApiError::invalid(None, e.to_string()))?;
    let opts =
        GenerateOptions { max_tokens, sampling, stop_strings: stop, stop_at_eos: true, context_limit: Some(ctx) };
    Ok(Job { endpoint, ids, opts, include_usage })
}

fn encode(model: &TextModel, prompt: Prompt, param: &str) -> Result<Vec<u32>, ApiError> {
    match prompt {
        Prompt::Chat(messages) => {
            model.encode_chat(&messages).map_err(|e| ApiError::invalid(Some(param), e.to_string()))
        }
        Prompt::Text(text) => model.tokenizer.encode(&text).map_err(|e| ApiError::invalid(Some(param), e.to_string())),
        Prompt::Tokens(ids) => {
            let vocab = model.tokenizer.vocab_size();
            match ids.iter().find(|&&i| i as usize >= vocab) {
                Some(bad) => Err(ApiError::invalid(
                    Some(param),
                    format!("token id {bad} is outside the vocabulary of {vocab} tokens"),
                )),
                None => Ok(ids),
            }
        }
    }
}

fn server_error(message: String) -> ApiError {
    ApiError { status: StatusCode::INTERNAL_SERVER_ERROR, message, kind: "server_error", param: None, code: None }
}

fn finish_reason(f: FinishReason) -> &'static str {
    match f {
        FinishReason::Length => "length",
        FinishReason::Stop | FinishReason::Cancelled => "stop",
    }
}

fn usage(g: &Generation) -> Value {
    json!({
        "prompt_tokens": g.prompt_tokens,
        "completion_tokens": g.tokens.len(),
        "total_tokens": g.prompt_tokens + g.tokens.len(),
    })
}

/// Logs a whole-answer request whose client left before the answer was ready.
struct ClientGone {
    endpoint: Endpoint,
    id: Arc<str>,
    armed: bool,
}

impl Drop for ClientGone {
    fn drop(&mut self) {
        if self.armed && !std::thread::panicking() {
            eprintln!("--- {} {}: client went away", path_of(self.endpoint), self.id);
        }
    }
}

fn log_done(job: &Job, id: &str, g: &Generation, queued: Duration, first: Option<Duration>, t0: Instant) {
    eprintln!(
        "200 {} {id}: {} prompt + {} generated tokens, {:?}, waited {:.0} ms, first text {} ms, total {:.0} ms",
        path_of(job.endpoint),
        g.prompt_tokens,
        g.tokens.len(),
        g.finish,
        queued.as_secs_f64() * 1e3,
        first.map_or_else(|| "-".to_string(), |d| format!("{:.0}", d.as_secs_f64() * 1e3)),
        t0.elapsed().as_secs_f64() * 1e3
    );
}

async fn whole_answer(s: Shared, mut seat: Seat, job: Job, chunks: Chunks, t0: Instant) -> Result<Response, ApiError> {
    // If the client goes away, this future is dropped and generation stops between steps.
    let mut gone = ClientGone { endpoint: job.endpoint, id: chunks.id.clone(), armed: true };
    seat.take_slot().await;
    let queued = t0.elapsed();
    let result =
        sequence::generate(&s.model, s.batcher.as_ref(), &chunks.id, &job.ids, &job.opts, &mut |_| true, &|| false)
            .await;
    gone.armed = false;
    let g = result.map_err(|e| server_error(format!("generation failed: {e}")))?;
    drop(seat);
    log_done(&job, &chunks.id, &g, queued, None, t0);
    let reason = finish_reason(g.finish);
    let body = match job.endpoint {
        Endpoint::Chat => json!({
            "id": &*chunks.id,
            "object": "chat.completion",
            "created": chunks.created,
            "model": &*chunks.model,
            "system_fingerprint": null,
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": g.text},
                "logprobs": null,
                "finish_reason": reason,
            }],
            "usage": usage(&g),
        }),
        Endpoint::Completions => json!({
            "id": &*chunks.id,
            "object": "text_completion",
            "created": chunks.created,
            "model": &*chunks.model,
            "system_fingerprint": null,
            "choices": [{"index": 0, "text": g.text, "logprobs": null, "finish_reason": reason}],
            "usage": usage(&g),
        }),
    };
    Ok(json_response(StatusCode::OK, body))
}

/// Builds the server-sent events of one streamed answer in the OpenAI chunk format.
#[derive(Clone)]
struct Chunks {
    id: Arc<str>,
    created: u64,
    model: Arc<str>,
    endpoint: Endpoint,
    include_usage: bool,
}

impl Chunks {
    fn event(&self, choices: Value, usage: Value) -> Event {
        let object = match self.endpoint {
            Endpoint::Chat => "chat.completion.chunk",
            Endpoint::Completions => "text_completion",
        };
        let mut v = json!({
            "id": &*self.id,
            "object": object,
            "created": self.created,
            "model": &*self.model,
            "system_fingerprint": null,
            "choices": choices,
        });
        // With include_usage every chunk carries the field (null until the last one).
        if self.include_usage {
            v["usage"] = usage;
        }
        Event::default().data(v.to_string())
    }

    fn choice(&self, text: Option<&str>, role: bool, finish: Option<&str>) -> Event {
        let choice = match self.endpoint {
            Endpoint::Chat => {
                let mut delta = json!({});
                if role {
                    delta["role"] = json!("assistant");
                }
                if let Some(t) = text {
                    delta["content"] = json!(t);
                }
                json!({"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish})
            }
            Endpoint::Completions => {
                json!({"index": 0, "text": text.unwrap_or(""), "logprobs": null, "finish_reason": finish})
            }
        };
        self.event(json!([choice]), Value::Null)
    }

    fn text(&self, piece: &str) -> Event {
        self.choice(Some(piece), false, None)
    }
}

fn stream_answer(s: Shared, mut seat: Seat, job: Job, chunks: Chunks, t0: Instant) -> Response {
    let (tx, rx) = mpsc::unbounded_channel::<Event>();
    if job.endpoint == Endpoint::Chat {
        let _ = tx.send(chunks.choice(Some(""), true, None));
    }
    tokio::spawn(async move {
        // A client that leaves while waiting gives its place up.
        tokio::select! {
            _ = seat.take_slot() => {}
            _ = tx.closed() => return,
        }
        let queued = t0.elapsed();
        let mut first = None;
        // Sending fails once the client has gone (the receiver is dropped with the
        // response body): that stops generation and frees the KV cache.
        let mut on_text = |piece: &str| {
            first.get_or_insert_with(|| t0.elapsed());
            tx.send(chunks.text(piece)).is_ok()
        };
        let gone = || tx.is_closed();
        let result =
            sequence::generate(&s.model, s.batcher.as_ref(), &chunks.id, &job.ids, &job.opts, &mut on_text, &gone)
                .await;
        drop(seat);
        match result {
            Ok(g) if g.finish == FinishReason::Cancelled => {
                eprintln!(
                    "--- {} {}: client went away after {} tokens",
                    path_of(job.endpoint),
                    chunks.id,
                    g.tokens.len()
                );
            }
            Ok(g) => {
                let _ = tx.send(chunks.choice(None, false, Some(finish_reason(g.finish))));
                if chunks.include_usage {
                    let _ = tx.send(chunks.event(json!([]), usage(&g)));
                }
                let _ = tx.send(Event::default().data("[DONE]"));
                log_done(&job, &chunks.id, &g, queued, first, t0);
            }
            Err(e) => {
                let err = server_error(format!("generation failed: {e}"));
                eprintln!("500 {} {}: {}", path_of(job.endpoint), chunks.id, err.message);
                let _ = tx.send(Event::default().data(err.body().to_string()));
                let _ = tx.send(Event::default().data("[DONE]"));
            }
        }
    });
    Sse::new(UnboundedReceiverStream::new(rx).map(Ok::<Event, Infallible>)).into_response()
}
