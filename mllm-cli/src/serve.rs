//! `mllm serve`: an OpenAI-compatible HTTP server (axum on tokio). Each request is one
//! sequence with its own KV cache; the next steps of all active sequences run as one
//! batched model pass on the engine's shared pool (or, with `--no-batch`, each step as its
//! own forked task); the async side only reads, checks, queues and streams.

mod batcher;
mod conn;
mod embeddings;
mod guard;
mod logprobs;
mod metrics;
mod prefix;
mod request;
mod sequence;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Weak};
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
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};
use tokio_stream::wrappers::UnboundedReceiverStream;
use tokio_stream::StreamExt as _;
use tower::ServiceExt as _;

use crate::commands::{self, loggable, ModelArgs};
use logprobs::{LegacyLogprobs, TokenLogprob};
use metrics::Metrics;
use request::{ApiError, Endpoint, Prompt, Request};
use sequence::SeqStats;

#[derive(Args)]
#[command(
    after_help = "Endpoints: POST /v1/chat/completions, POST /v1/completions (both with \"stream\": true for server-sent events), GET /v1/models, GET /health.\n\
With an embedding model (--model minilm or an encoder folder): POST /v1/embeddings instead (OpenAI's shape: input as a string, strings or token id arrays; encoding_format float or base64).\n\
Request defaults follow the OpenAI API (temperature 1, top_p 1; chat answers may fill the context, completions stop at 16 tokens); extensions: top_k, min_p, repetition_penalty, ignore_eos.\n\
Log-probabilities (the model's log-softmax over the whole vocabulary, before temperature, top-k/p or penalties): chat \"logprobs\": true with \"top_logprobs\" 0-20; completions \"logprobs\": 0-20, with \"echo\": true scoring the prompt too (\"max_tokens\": 0: the prompt alone).\n\
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
    /// Another name clients may give as "model" (repeatable); the file's stem and, for a
    /// known model, its short name (such as smollm2) are always accepted
    #[arg(long = "alias", value_name = "NAME")]
    aliases: Vec<String>,
    /// API key clients must send as 'Authorization: Bearer KEY' on /v1 routes and
    /// /metrics (repeatable: any of them is accepted); /health stays open
    #[arg(long = "api-key", value_name = "KEY", env = "MLLM_API_KEY", hide_env_values = true)]
    api_keys: Vec<String>,
    /// A host name clients may use in the Host header besides localhost and the listening
    /// address (repeatable; '*' allows any, giving up the DNS-rebinding check)
    #[arg(long = "allowed-host", value_name = "HOST")]
    allowed_hosts: Vec<String>,
    /// A browser origin (scheme://host[:port]) that may call the API, with CORS
    /// (repeatable; '*' allows any); requests from other origins get 403
    #[arg(long = "allowed-origin", value_name = "ORIGIN")]
    allowed_origins: Vec<String>,
    /// Prefill long prompts in chunks of this many tokens, each one batched step, so that
    /// other requests' tokens go on between them (0: a whole prompt in one step)
    #[arg(long, default_value_t = 256, value_name = "TOKENS")]
    prefill_chunk: usize,
    /// Keep the keys and values of finished requests, up to this many token positions in
    /// all, so that a prompt starting with the same tokens (a system prompt, the next turn
    /// of a chat) skips that part of its prefill (0: off)
    #[arg(long, default_value_t = 4096, value_name = "TOKENS")]
    prefix_cache: usize,
    /// Seconds a client has to send a whole request head (from its first byte, or from
    /// connecting)
    #[arg(long, default_value = "10", value_parser = seconds, value_name = "SECS")]
    header_timeout: Duration,
    /// Seconds a client has to send a request body
    #[arg(long, default_value = "30", value_parser = seconds, value_name = "SECS")]
    body_timeout: Duration,
    /// Seconds a kept-alive connection may sit idle before the server closes it
    #[arg(long, default_value = "15", value_parser = seconds, value_name = "SECS")]
    idle_timeout: Duration,
    /// Connections open at once; more are answered 503 and closed [default: 256, or fewer
    /// if the open-file limit is lower]
    #[arg(long)]
    max_connections: Option<usize>,
    /// On SIGTERM or SIGINT, seconds running answers may go on before they are ended
    /// (a streamed one with a last chunk whose finish_reason is "abort"); a second signal
    /// ends them at once
    #[arg(long, default_value = "10", value_parser = seconds, value_name = "SECS")]
    shutdown_timeout: Duration,
}

/// A duration given in seconds (fractions allowed).
fn seconds(s: &str) -> Result<Duration, String> {
    let x: f64 = s.trim().parse().map_err(|_| format!("'{s}' is not a number of seconds"))?;
    if !(0.0..=1e6).contains(&x) {
        return Err(format!("'{s}' must be between 0 and 1000000 seconds"));
    }
    Ok(Duration::from_secs_f64(x))
}

/// New tokens in one batched step at most (a longer prompt runs alone).
const MAX_BATCH_ROWS: usize = 1024;

/// The chat endpoint's default answer length is the rest of the context; the legacy
/// completions endpoint's is 16 tokens, as in the OpenAI API.
const COMPLETIONS_DEFAULT_MAX_TOKENS: usize = 16;
/// A step still running this long after the shutdown deadline is abandoned (its answer
/// ends without waiting for it).
const STEP_GRACE: Duration = Duration::from_secs(1);
/// Of an oversized body, read at most this many bytes (so the client can read the 413).
const DRAIN_LIMIT: usize = 64 << 20;

struct ServerState {
    model: TextModel,
    batcher: Option<batcher::Batcher>,
    model_id: String,
    /// Other names of the served model, accepted in "model" and listed by /v1/models.
    aliases: Vec<String>,
    created: u64,
    ctx: usize,
    max_body: usize,
    body_timeout: Duration,
    prefill_chunk: usize,
    prefixes: Option<prefix::PrefixCache>,
    max_concurrent: usize,
    queue: usize,
    life: conn::Lifecycle,
    /// Permits for requests admitted (running or waiting): `max_concurrent + queue`.
    admitted: Arc<Semaphore>,
    /// Permits for requests generating: `max_concurrent`.
    slots: Arc<Semaphore>,
    running: AtomicUsize,
    waiting: AtomicUsize,
    next_id: AtomicU64,
    metrics: Arc<Metrics>,
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
    for (flag, d) in [
        ("--header-timeout", args.header_timeout),
        ("--body-timeout", args.body_timeout),
        ("--idle-timeout", args.idle_timeout),
    ] {
        if d.is_zero() {
            bail!("{flag} must be above 0 seconds");
        }
    }
    if args.api_keys.iter().any(|k| k.trim().is_empty()) {
        bail!("--api-key (or MLLM_API_KEY) must not be empty");
    }
    if let Some(o) =
        args.allowed_origins.iter().find(|o| *o != "*" && !(o.starts_with("http://") || o.starts_with("https://")))
    {
        bail!("--allowed-origin '{o}' must be scheme://host[:port], such as http://localhost:3000");
    }
    let policy = guard::Policy::new(&args.api_keys, &args.host, &args.allowed_hosts, &args.allowed_origins);
    let limits = conn::Limits {
        header_timeout: args.header_timeout,
        idle_timeout: args.idle_timeout,
        max_connections: match args.max_connections {
            Some(0) => bail!("--max-connections must be at least 1"),
            Some(n) => n,
            None => conn::default_max_connections(),
        },
    };
    // The pool must not adopt this thread: it will run the async runtime, and a pool
    // worker that blocks there would stall every generation.
    let mut b = mllm::Context::builder().use_current_thread(false);
    if let Some(n) = args.model.threads()? {
        b = b.threads(n);
    }
    b.init()?;
    if let Some(model) = commands::embedding_model(&args.model)? {
        return embeddings::serve(args, model, limits, policy);
    }
    let model = commands::load(&args.model)?;
    let trained = model.decoder.config().context_length;
    let ctx = match args.ctx {
        Some(c) if c > trained => bail!("--ctx {c} is larger than the model's context of {trained} tokens"),
        Some(c) => c,
        None => trained,
    };
    let model_id = model.path.file_stem().map_or_else(|| "model".to_string(), |s| s.to_string_lossy().into_owned());
    let file_name = model.path.file_name().map(|f| f.to_string_lossy().into_owned());
    let known = mllm::models::fetch::KNOWN_MODELS.iter().filter(|k| file_name.as_deref() == Some(k.file_name));
    let mut aliases: Vec<String> = Vec::new();
    for name in known.map(|k| k.alias.to_string()).chain(args.aliases.iter().cloned()) {
        if name.trim().is_empty() {
            bail!("--alias must not be empty");
        }
        if name != model_id && !aliases.contains(&name) {
            aliases.push(name);
        }
    }
    let batcher =
        if args.no_batch { None } else { Some(batcher::Batcher::start(model.decoder.clone(), MAX_BATCH_ROWS)?) };
    let (life, shutdown) = lifecycle(args.shutdown_timeout);
    let state = Arc::new_cyclic(|weak: &Weak<ServerState>| {
        let weak = weak.clone();
        let metrics = Arc::new(Metrics::new(&model_id, Some(Box::new(move || gauges(&weak)))));
        ServerState {
            metrics,
            model,
            batcher,
            model_id,
            aliases,
            created: unix_now(),
            ctx,
            max_body: args.max_body,
            body_timeout: args.body_timeout,
            prefill_chunk: args.prefill_chunk,
            prefixes: (args.prefix_cache > 0).then(|| prefix::PrefixCache::new(args.prefix_cache)),
            life,
            max_concurrent: args.max_concurrent,
            queue: args.queue,
            admitted: Arc::new(Semaphore::new(
                args.max_concurrent.saturating_add(args.queue).min(Semaphore::MAX_PERMITS),
            )),
            slots: Arc::new(Semaphore::new(args.max_concurrent.min(Semaphore::MAX_PERMITS))),
            running: AtomicUsize::new(0),
            waiting: AtomicUsize::new(0),
            next_id: AtomicU64::new(0),
        }
    });
    let (ctx, max_concurrent, queue) = (state.ctx, state.max_concurrent, state.queue);
    let banner = move |addr: SocketAddr, id: &str, max_connections: usize| {
        format!(
            "serving {id} on http://{addr} (context {ctx} tokens, {max_concurrent} at once, {queue} more queued, \
             {} compute threads, at most {max_connections} connections)",
            mllm::context().threads(),
        )
    };
    let site = Site {
        app: router(state.clone()),
        model_id: state.model_id.clone(),
        life: state.life.clone(),
        metrics: state.metrics.clone(),
    };
    run_runtime(site, (args.host, args.port), limits, shutdown, policy, banner)
}

/// The chat server's gauges for /metrics (none once the server is gone).
fn gauges(state: &Weak<ServerState>) -> Vec<metrics::Gauge> {
    let Some(s) = state.upgrade() else { return Vec::new() };
    let kv = mllm::memory_report().mem_type(mllm::MemType::KvCache);
    vec![
        metrics::Gauge {
            name: "mllm_queue_depth",
            help: "Requests admitted and waiting for a generation slot.",
            value: s.waiting.load(Relaxed) as f64,
        },
        metrics::Gauge {
            name: "mllm_active_sequences",
            help: "Requests generating (holding a slot).",
            value: s.running.load(Relaxed) as f64,
        },
        metrics::Gauge {
            name: "mllm_kv_cache_bytes",
            help: "Bytes of key/value caches allocated: running sequences and the prefix cache.",
            value: kv.live as f64,
        },
        metrics::Gauge {
            name: "mllm_kv_cache_peak_bytes",
            help: "Most bytes of key/value caches allocated at once since the start.",
            value: kv.peak as f64,
        },
    ]
}

/// What one server serves: its routes, the model's name, its lifecycle signals, and its
/// metrics (counted and served by the frame around the routes, for every kind of model).
struct Site {
    app: Router,
    model_id: String,
    life: conn::Lifecycle,
    metrics: Arc<Metrics>,
}

/// The async runtime around [`run`], shut down briefly after it returns.
fn run_runtime(
    site: Site,
    addr: (String, u16),
    limits: conn::Limits,
    shutdown: Shutdown,
    policy: guard::Policy,
    banner: impl FnOnce(SocketAddr, &str, usize) -> String,
) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("mllm-http")
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let result = runtime.block_on(run(site, addr, limits, shutdown, policy, banner));
    // Tokenizing tasks are short; the batching thread ends with the process.
    runtime.shutdown_timeout(Duration::from_secs(1));
    result
}

/// A lifecycle and its shutdown for a server: `stopping` once a signal comes, `expired`
/// at the deadline after it.
fn lifecycle(timeout: Duration) -> (conn::Lifecycle, Shutdown) {
    let (stopping_tx, stopping) = watch::channel(false);
    let (expired_tx, expired) = watch::channel(false);
    (conn::Lifecycle { stopping, expired }, Shutdown { stopping: stopping_tx, expired: expired_tx, timeout })
}

/// Listen, then serve `site` through the policy's checks with the connection limits
/// until a signal and its deadline (the same path for every kind of model).
async fn run(
    site: Site,
    (host, port): (String, u16),
    limits: conn::Limits,
    shutdown: Shutdown,
    policy: guard::Policy,
    banner: impl FnOnce(SocketAddr, &str, usize) -> String,
) -> Result<()> {
    // Handlers first: a signal from now on starts a graceful shutdown, not the default death.
    let signals = Signals::new()?;
    let listener = tokio::net::TcpListener::bind((host.as_str(), port))
        .await
        .with_context(|| format!("cannot listen on {host}:{port}"))?;
    let addr: SocketAddr = listener.local_addr()?;
    eprintln!("{}", banner(addr, &site.model_id, limits.max_connections));
    tokio::spawn(shutdown.run(signals));
    let Site { app, life, metrics, .. } = site;
    let policy = Arc::new(policy);
    let metrics_of_handler = metrics.clone();
    let handler = move |req: axum::http::Request<hyper::body::Incoming>| {
        let (app, policy, metrics) = (app.clone(), policy.clone(), metrics_of_handler.clone());
        async move {
            let route = metrics::route_label(req.uri().path());
            let r = guarded(&policy, &metrics, app, req).await;
            metrics.request(route, r.status().as_u16());
            r
        }
    };
    let refused = move || metrics.refused_connections.add(1);
    conn::serve(listener, limits, life, handler, refused).await;
    eprintln!("server stopped");
    Ok(())
}

/// The request through the policy's checks, then the routes (`/metrics` answered here);
/// CORS headers for allowed origins.
async fn guarded(
    policy: &guard::Policy,
    metrics: &Metrics,
    app: Router,
    req: axum::http::Request<hyper::body::Incoming>,
) -> Response {
    let verdict = policy.check(req.method(), req.uri().path(), req.headers());
    let cors_origin = match verdict {
        guard::Verdict::Refuse(e) => {
            eprintln!(
                "{} {} {}: {}",
                e.status.as_u16(),
                req.method(),
                loggable(req.uri().path()),
                loggable(&e.message)
            );
            let unauthorized = e.status == StatusCode::UNAUTHORIZED;
            let mut r = e.into_response();
            if unauthorized {
                r.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            return r;
        }
        guard::Verdict::Preflight(origin, asked) => {
            let mut r = StatusCode::NO_CONTENT.into_response();
            let h = r.headers_mut();
            h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
            h.insert(header::ACCESS_CONTROL_ALLOW_METHODS, HeaderValue::from_static("GET, POST, OPTIONS"));
            h.insert(
                header::ACCESS_CONTROL_ALLOW_HEADERS,
                asked.unwrap_or_else(|| HeaderValue::from_static("authorization, content-type")),
            );
            h.insert(header::ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static("600"));
            h.insert(header::VARY, HeaderValue::from_static("origin"));
            return r;
        }
        guard::Verdict::Pass(p) => p.cors_origin,
    };
    let mut r = if req.uri().path() == "/metrics" {
        metrics_response(req.method(), metrics)
    } else {
        match app.oneshot(req).await {
            Ok(r) => r,
            Err(never) => match never {},
        }
    };
    if let Some(origin) = cors_origin {
        r.headers_mut().insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        r.headers_mut().append(header::VARY, HeaderValue::from_static("origin"));
    }
    r
}

/// SIGTERM and SIGINT, as often as they come.
struct Signals {
    #[cfg(unix)]
    term: tokio::signal::unix::Signal,
    #[cfg(unix)]
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> Result<Signals> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            Ok(Signals {
                term: signal(SignalKind::terminate()).context("cannot handle SIGTERM")?,
                int: signal(SignalKind::interrupt()).context("cannot handle SIGINT")?,
            })
        }
        #[cfg(not(unix))]
        Ok(Signals {})
    }

    async fn next(&mut self) -> &'static str {
        #[cfg(unix)]
        {
            tokio::select! {
                _ = self.term.recv() => "SIGTERM",
                _ = self.int.recv() => "SIGINT",
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
            "Ctrl-C"
        }
    }
}

/// The shutdown sequence: the first signal stops accepting, the deadline (or a second
/// signal) ends the running answers.
struct Shutdown {
    stopping: watch::Sender<bool>,
    expired: watch::Sender<bool>,
    timeout: Duration,
}

impl Shutdown {
    async fn run(self, mut signals: Signals) {
        let first = signals.next().await;
        eprintln!(
            "--- {first}: shutting down; running answers may take up to {:.1} s more (a second signal ends them now)",
            self.timeout.as_secs_f64()
        );
        let _ = self.stopping.send(true);
        tokio::select! {
            _ = tokio::time::sleep(self.timeout) => eprintln!("--- shutdown deadline reached: ending running answers"),
            s = signals.next() => eprintln!("--- {s} again: ending running answers now"),
        }
        let _ = self.expired.send(true);
    }
}

fn metrics_response(method: &axum::http::Method, metrics: &Metrics) -> Response {
    if method != axum::http::Method::GET && method != axum::http::Method::HEAD {
        return ApiError::invalid(None, "method not allowed on this endpoint")
            .with_status(StatusCode::METHOD_NOT_ALLOWED)
            .into_response();
    }
    let mut r = (StatusCode::OK, metrics.render()).into_response();
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"));
    r
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
    // A stopping server says so, so that a load balancer sends no more work its way.
    let stopping = *s.life.stopping.borrow();
    json_response(
        if stopping { StatusCode::SERVICE_UNAVAILABLE } else { StatusCode::OK },
        json!({
            "status": if stopping { "stopping" } else { "ok" },
            "model": s.model_id,
            "aliases": s.aliases,
            "running": s.running.load(Relaxed),
            "waiting": s.waiting.load(Relaxed),
            "max_concurrent": s.max_concurrent,
            "queue": s.queue,
            "context": s.ctx,
        }),
    )
}

/// One entry of /v1/models: the served model under `id` (its own name or an alias).
fn model_object(s: &ServerState, id: &str) -> Value {
    json!({"id": id, "object": "model", "created": s.created, "owned_by": "mllm", "root": s.model_id})
}

impl ServerState {
    fn serves(&self, name: &str) -> bool {
        name == self.model_id || self.aliases.iter().any(|a| a == name)
    }

    fn names(&self) -> impl Iterator<Item = &str> {
        std::iter::once(self.model_id.as_str()).chain(self.aliases.iter().map(String::as_str))
    }

    fn model_not_found(&self, name: &str) -> ApiError {
        let shown: String = name.chars().take(100).collect();
        let also = if self.aliases.is_empty() {
            String::new()
        } else {
            format!(" (also called '{}')", self.aliases.join("', '"))
        };
        ApiError::invalid(
            Some("model"),
            format!("the model '{shown}' does not exist; this server has '{}'{also}", self.model_id),
        )
        .with_status(StatusCode::NOT_FOUND)
        .with_code("model_not_found")
    }
}

async fn list_models(State(s): State<Shared>) -> Response {
    let data: Vec<Value> = s.names().map(|n| model_object(&s, n)).collect();
    json_response(StatusCode::OK, json!({"object": "list", "data": data}))
}

async fn get_model(State(s): State<Shared>, Path(id): Path<String>) -> Response {
    if s.serves(&id) {
        json_response(StatusCode::OK, model_object(&s, &id))
    } else {
        s.model_not_found(&id).into_response()
    }
}

async fn chat_completions(State(s): State<Shared>, body: Body) -> Response {
    handle(s, body, Endpoint::Chat).await.unwrap_or_else(|e| log_error(Endpoint::Chat, e))
}

async fn completions(State(s): State<Shared>, body: Body) -> Response {
    handle(s, body, Endpoint::Completions).await.unwrap_or_else(|e| log_error(Endpoint::Completions, e))
}

fn log_error(endpoint: Endpoint, e: ApiError) -> Response {
    eprintln!("{} {}: {}", e.status.as_u16(), path_of(endpoint), loggable(&e.message));
    e.into_response()
}

fn path_of(endpoint: Endpoint) -> &'static str {
    match endpoint {
        Endpoint::Chat => "/v1/chat/completions",
        Endpoint::Completions => "/v1/completions",
    }
}

/// The body, at most `limit` bytes; a larger one is read on (up to a bound) and refused.
async fn read_body(body: Body, limit: usize, timeout: Duration) -> Result<Vec<u8>, ApiError> {
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
    tokio::time::timeout(timeout, read).await.map_err(|_| {
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
    /// Alternatives per token when log-probabilities are asked for.
    logprobs: Option<usize>,
    /// With `echo`: the prompt's text, which the answer starts with.
    echo: Option<String>,
}

impl Job {
    /// Whether the prompt's own tokens are scored (`echo` with `logprobs`).
    fn scores_prompt(&self) -> bool {
        self.echo.is_some() && self.logprobs.is_some()
    }
}

async fn handle(s: Shared, body: Body, endpoint: Endpoint) -> Result<Response, ApiError> {
    let t0 = Instant::now();
    let bytes = read_body(body, s.max_body, s.body_timeout).await?;
    let req = request::parse(&bytes, endpoint)?;
    drop(bytes);
    if let Some(m) = req.model.as_deref().filter(|m| !s.serves(m)) {
        return Err(s.model_not_found(m));
    }
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
    let Request { prompt, max_tokens, sampling, stop, include_usage, logprobs, echo, ignore_eos, .. } = req;
    let model = s.model.clone();
    let (ids, echo) = tokio::task::spawn_blocking(move || {
        let text = match (&prompt, echo) {
            (Prompt::Text(t), true) => Some(t.clone()),
            (Prompt::Tokens(ids), true) => model.tokenizer.decode(ids).ok(),
            _ => None,
        };
        encode(&model, prompt, param).map(|ids| (ids, text))
    })
    .await
    .map_err(|e| server_error(format!("tokenizing the prompt failed: {e}")))??;
    let n = ids.len();
    if n == 0 {
        return Err(ApiError::invalid(Some(param), format!("'{param}' is empty: it makes no tokens")));
    }
    // Only scoring the prompt (echo, max_tokens 0) needs no room for an answer.
    let no_answer = max_tokens == Some(0);
    if n > ctx || (n == ctx && !no_answer) {
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
    let opts = GenerateOptions {
        max_tokens,
        sampling,
        stop_strings: stop,
        stop_at_eos: !ignore_eos,
        context_limit: Some(ctx),
    };
    Ok(Job { endpoint, ids, opts, include_usage, logprobs, echo })
}

/// What `run_job` gives its caller besides the generation: the scores of the prompt's
/// tokens (`echo` with `logprobs`) once they are known, and each piece of the answer's
/// text with the scores of its tokens.
struct Outputs<'a> {
    on_prompt: &'a mut (dyn FnMut(Option<Vec<Option<TokenLogprob>>>) + Send),
    on_text: &'a mut (dyn FnMut(&str, Vec<TokenLogprob>) -> bool + Send),
}

/// Runs a job that holds a slot: the prompt's scoring pass when asked for, then the
/// generation, unless `max_tokens` is 0. `None`: the shutdown deadline cut a step.
async fn run_job(
    s: &Shared,
    job: &Job,
    label: &str,
    out: Outputs<'_>,
    stop: &(dyn Fn() -> bool + Sync),
    stats: &mut SeqStats,
) -> Option<anyhow::Result<Generation>> {
    let capacity = job.ids.len() + job.opts.max_tokens;
    let mut primed = None;
    if job.scores_prompt() {
        let top = job.logprobs.unwrap_or(0);
        let scored = tokio::select! {
            r = logprobs::score_prompt(&s.model, label, &job.ids, top, capacity, stop) => r,
            _ = s.past_grace() => return None,
        };
        match scored {
            Ok(Some((entries, cache))) => {
                (out.on_prompt)(Some(entries));
                primed = Some(cache);
            }
            Ok(None) => return Some(Ok(nothing_generated(job, FinishReason::Cancelled))),
            Err(e) => return Some(Err(e)),
        }
    } else if job.echo.is_some() {
        (out.on_prompt)(None);
    }
    if job.opts.max_tokens == 0 {
        return Some(Ok(nothing_generated(job, FinishReason::Length)));
    }
    tokio::select! {
        r = sequence::generate(&s.model, s.batcher.as_ref(), label, &job.ids, s.prefill_chunk, s.prefixes.as_ref(), primed, &job.opts, job.logprobs, out.on_text, stop, stats) => Some(r),
        _ = s.past_grace() => None,
    }
}

fn nothing_generated(job: &Job, finish: FinishReason) -> Generation {
    Generation {
        text: String::new(),
        tokens: Vec::new(),
        prompt_tokens: job.ids.len(),
        finish,
        prefill_time: Duration::ZERO,
        decode_time: Duration::ZERO,
    }
}

fn encode(model: &TextModel, prompt: Prompt, param: &str) -> Result<Vec<u32>, ApiError> {
    match prompt {
        Prompt::Chat(messages) => {
            model.encode_chat(&messages).map_err(|e| ApiError::invalid(Some(param), e.to_string()))
        }
        // A client's text is text: typed control-token strings do not become control tokens.
        Prompt::Text(text) => {
            model.tokenizer.encode_literal(&text).map_err(|e| ApiError::invalid(Some(param), e.to_string()))
        }
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

/// The prompt's tokens for the legacy lists: with their scores when the prompt was scored
/// (echo with logprobs), none at all otherwise.
fn prompt_entries<'a>(
    ids: &'a [u32],
    scores: Option<&'a [Option<TokenLogprob>]>,
) -> impl Iterator<Item = (u32, Option<&'a TokenLogprob>)> + 'a {
    scores.into_iter().flat_map(move |s| ids.iter().copied().zip(s.iter().map(Option::as_ref)))
}

fn server_error(message: String) -> ApiError {
    ApiError { status: StatusCode::INTERNAL_SERVER_ERROR, message, kind: "server_error", param: None, code: None }
}

/// The finish reason of a finished generation; one cancelled because the shutdown
/// deadline passed is an "abort" (as vLLM names an aborted request).
fn finish_reason(f: FinishReason, expired: bool) -> &'static str {
    match f {
        FinishReason::Length => "length",
        FinishReason::Cancelled if expired => ABORT,
        FinishReason::Stop | FinishReason::Cancelled => "stop",
    }
}

const ABORT: &str = "abort";

fn shutting_down() -> ApiError {
    ApiError {
        status: StatusCode::SERVICE_UNAVAILABLE,
        message: "the server is shutting down".into(),
        kind: "server_error",
        param: None,
        code: Some("server_shutting_down"),
    }
}

impl ServerState {
    /// Resolves `STEP_GRACE` after the shutdown deadline: a step still running then is
    /// not waited for.
    async fn past_grace(&self) {
        self.life.until_expired().await;
        tokio::time::sleep(STEP_GRACE).await;
    }
}

fn usage(g: &Generation, stats: &SeqStats) -> Value {
    json!({
        "prompt_tokens": g.prompt_tokens,
        "completion_tokens": g.tokens.len(),
        "total_tokens": g.prompt_tokens + g.tokens.len(),
        "prompt_tokens_details": {"cached_tokens": stats.cached_tokens},
    })
}

impl ServerState {
    /// Count a generation's tokens and timings in the metrics (`t0`: the request's arrival);
    /// `g` is `None` for one that failed or was cut, whose timings still count.
    fn record(&self, g: Option<&Generation>, stats: &SeqStats, t0: Instant) {
        let m = &self.metrics;
        if let Some(g) = g {
            m.prompt_tokens.add(g.prompt_tokens as u64);
            m.generated_tokens.add(g.tokens.len() as u64);
            m.cached_prompt_tokens.add(stats.cached_tokens as u64);
        }
        if let Some(first) = stats.first_token {
            m.time_to_first_token.observe(first.saturating_duration_since(t0));
        }
        for &gap in &stats.token_gaps {
            m.time_per_token.observe(gap);
        }
    }
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
    tokio::select! {
        _ = seat.take_slot() => {}
        _ = s.life.until_expired() => {
            gone.armed = false;
            return Err(shutting_down());
        }
    }
    let queued = t0.elapsed();
    let expired = || s.life.is_expired();
    let mut prompt_scores = None;
    let mut scores: Vec<TokenLogprob> = Vec::new();
    let mut on_prompt = |p: Option<Vec<Option<TokenLogprob>>>| prompt_scores = p;
    let mut on_text = |_: &str, lp: Vec<TokenLogprob>| {
        scores.extend(lp);
        true
    };
    let mut stats = SeqStats::default();
    let out = Outputs { on_prompt: &mut on_prompt, on_text: &mut on_text };
    let Some(result) = run_job(&s, &job, &chunks.id, out, &expired, &mut stats).await else {
        gone.armed = false;
        s.record(None, &stats, t0);
        eprintln!("--- {} {}: cut by the shutdown deadline during a step", path_of(job.endpoint), chunks.id);
        return Err(shutting_down());
    };
    gone.armed = false;
    s.record(result.as_ref().ok(), &stats, t0);
    let g = result.map_err(|e| server_error(format!("generation failed: {e:#}")))?;
    drop(seat);
    log_done(&job, &chunks.id, &g, queued, None, t0);
    let reason = finish_reason(g.finish, s.life.is_expired());
    let tok = &s.model.tokenizer;
    let logprobs = match (job.endpoint, job.logprobs) {
        (_, None) => Value::Null,
        (Endpoint::Chat, Some(_)) => logprobs::chat_object(tok, &scores),
        (Endpoint::Completions, Some(_)) => LegacyLogprobs::new(tok).object(
            prompt_entries(&job.ids, prompt_scores.as_deref()).chain(scores.iter().map(|e| (e.token, Some(e)))),
        ),
    };
    let text = match &job.echo {
        Some(prompt) => format!("{prompt}{}", g.text),
        None => g.text.clone(),
    };
    let body = match job.endpoint {
        Endpoint::Chat => json!({
            "id": &*chunks.id,
            "object": "chat.completion",
            "created": chunks.created,
            "model": &*chunks.model,
            "system_fingerprint": null,
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "logprobs": logprobs,
                "finish_reason": reason,
            }],
            "usage": usage(&g, &stats),
        }),
        Endpoint::Completions => json!({
            "id": &*chunks.id,
            "object": "text_completion",
            "created": chunks.created,
            "model": &*chunks.model,
            "system_fingerprint": null,
            "choices": [{"index": 0, "text": text, "logprobs": logprobs, "finish_reason": reason}],
            "usage": usage(&g, &stats),
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

    fn choice(&self, text: Option<&str>, role: bool, finish: Option<&str>, logprobs: Value) -> Event {
        let choice = match self.endpoint {
            Endpoint::Chat => {
                let mut delta = json!({});
                if role {
                    delta["role"] = json!("assistant");
                }
                if let Some(t) = text {
                    delta["content"] = json!(t);
                }
                json!({"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish})
            }
            Endpoint::Completions => {
                json!({"index": 0, "text": text.unwrap_or(""), "logprobs": logprobs, "finish_reason": finish})
            }
        };
        self.event(json!([choice]), Value::Null)
    }

    fn text(&self, piece: &str, logprobs: Value) -> Event {
        self.choice(Some(piece), false, None, logprobs)
    }
}

fn stream_answer(s: Shared, mut seat: Seat, job: Job, chunks: Chunks, t0: Instant) -> Response {
    let (tx, rx) = mpsc::unbounded_channel::<Event>();
    if job.endpoint == Endpoint::Chat {
        let _ = tx.send(chunks.choice(Some(""), true, None, Value::Null));
    }
    tokio::spawn(async move {
        let abort = |why: &str| {
            eprintln!("--- {} {}: {why}", path_of(job.endpoint), chunks.id);
            let _ = tx.send(chunks.choice(None, false, Some(ABORT), Value::Null));
            let _ = tx.send(Event::default().data("[DONE]"));
        };
        // A client that leaves while waiting gives its place up.
        tokio::select! {
            _ = seat.take_slot() => {}
            _ = tx.closed() => return,
            _ = s.life.until_expired() => return abort("ended by the shutdown deadline while waiting"),
        }
        let queued = t0.elapsed();
        let mut first = None;
        let tok = &s.model.tokenizer;
        // The legacy lists' text offsets run on from the echoed prompt's chunk.
        let legacy = std::sync::Mutex::new(LegacyLogprobs::new(tok));
        let lp_of =
            |prompt: &[(u32, Option<&TokenLogprob>)], scores: &[TokenLogprob]| match (job.endpoint, job.logprobs) {
                (_, None) => Value::Null,
                (Endpoint::Chat, Some(_)) => logprobs::chat_object(tok, scores),
                (Endpoint::Completions, Some(_)) => legacy
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .object(prompt.iter().copied().chain(scores.iter().map(|e| (e.token, Some(e))))),
            };
        let mut on_prompt = |p: Option<Vec<Option<TokenLogprob>>>| {
            let entries: Vec<_> = prompt_entries(&job.ids, p.as_deref()).collect();
            let text = job.echo.as_deref().unwrap_or("");
            let _ = tx.send(chunks.text(text, lp_of(&entries, &[])));
        };
        // Sending fails once the client has gone (the receiver is dropped with the
        // response body): that stops generation and frees the KV cache.
        let mut on_text = |piece: &str, lp: Vec<TokenLogprob>| {
            first.get_or_insert_with(|| t0.elapsed());
            tx.send(chunks.text(piece, lp_of(&[], &lp))).is_ok()
        };
        let stop = || tx.is_closed() || s.life.is_expired();
        let mut stats = SeqStats::default();
        let out = Outputs { on_prompt: &mut on_prompt, on_text: &mut on_text };
        let Some(result) = run_job(&s, &job, &chunks.id, out, &stop, &mut stats).await else {
            s.record(None, &stats, t0);
            return abort("cut by the shutdown deadline during a step");
        };
        drop(seat);
        s.record(result.as_ref().ok(), &stats, t0);
        let expired = s.life.is_expired();
        match result {
            Ok(g) if g.finish == FinishReason::Cancelled && !expired => {
                eprintln!(
                    "--- {} {}: client went away after {} tokens",
                    path_of(job.endpoint),
                    chunks.id,
                    g.tokens.len()
                );
            }
            Ok(g) => {
                let _ = tx.send(chunks.choice(None, false, Some(finish_reason(g.finish, expired)), Value::Null));
                if chunks.include_usage {
                    let _ = tx.send(chunks.event(json!([]), usage(&g, &stats)));
                }
                let _ = tx.send(Event::default().data("[DONE]"));
                log_done(&job, &chunks.id, &g, queued, first, t0);
            }
            Err(e) => {
                let err = server_error(format!("generation failed: {e:#}"));
                eprintln!("500 {} {}: {}", path_of(job.endpoint), chunks.id, err.message);
                let _ = tx.send(Event::default().data(err.body().to_string()));
                let _ = tx.send(Event::default().data("[DONE]"));
            }
        }
    });
    Sse::new(UnboundedReceiverStream::new(rx).map(Ok::<Event, Infallible>)).into_response()
}
