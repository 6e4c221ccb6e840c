//! Connections: the accept loop, how many sockets may be open, how long one may wait for a
//! request head or sit idle, and how they close at shutdown. Hyper's HTTP/1 driver serves
//! each socket; this file owns only the sockets' lifetimes and knows nothing of the API
//! (every request goes to the `handler` it is given).

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::http::{Request, Response};
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;

/// Limits on every connection.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// From the connection's first byte (or its opening) to a whole request head.
    pub header_timeout: Duration,
    /// With no request in flight and no byte received, a connection closes after this.
    pub idle_timeout: Duration,
    /// Connections open at once; one more is answered 503 and closed at once.
    pub max_connections: usize,
}

/// After the shutdown deadline, connections still open get this long to send their last
/// chunk before they are cut.
const LAST_WORDS: Duration = Duration::from_secs(2);

/// The shutdown's two moments, seen by every connection and request.
#[derive(Clone)]
pub struct Lifecycle {
    /// True once a signal asked the server to stop: no new connections, no keep-alive.
    pub stopping: watch::Receiver<bool>,
    /// True once the shutdown deadline has passed: running answers end now.
    pub expired: watch::Receiver<bool>,
}

impl Lifecycle {
    pub fn is_expired(&self) -> bool {
        *self.expired.borrow()
    }

    /// Resolves once the deadline has passed (or the server is gone).
    pub async fn until_expired(&self) {
        let mut rx = self.expired.clone();
        let _ = rx.wait_for(|&e| e).await;
    }
}

const NONE: u64 = u64::MAX;

/// What one connection is doing, shared by its socket wrapper, its requests and its watchdog.
struct ConnState {
    opened: Instant,
    /// Requests whose response has not been sent in full.
    in_flight: AtomicUsize,
    /// When the head of the next request began (ms since `opened`), or `NONE`.
    head_since: AtomicU64,
    /// When the connection last became idle (ms since `opened`).
    idle_since: AtomicU64,
}

impl ConnState {
    fn new() -> ConnState {
        // A new connection owes a request head from the start.
        ConnState {
            opened: Instant::now(),
            in_flight: AtomicUsize::new(0),
            head_since: AtomicU64::new(0),
            idle_since: AtomicU64::new(0),
        }
    }

    fn now_ms(&self) -> u64 {
        self.opened.elapsed().as_millis() as u64
    }

    fn bytes_arrived(&self) {
        if self.in_flight.load(Relaxed) == 0 {
            let _ = self.head_since.compare_exchange(NONE, self.now_ms(), Relaxed, Relaxed);
        }
    }

    /// `Err(why)` when the connection has overstayed; else how long until the next look.
    fn check(&self, limits: &Limits) -> Result<Duration, &'static str> {
        let recheck = limits.header_timeout.min(limits.idle_timeout);
        if self.in_flight.load(Relaxed) > 0 {
            return Ok(recheck);
        }
        let now = self.now_ms();
        let (since, limit, why) = match self.head_since.load(Relaxed) {
            NONE => (self.idle_since.load(Relaxed), limits.idle_timeout, "idle"),
            head => (head, limits.header_timeout, "no complete request head in time"),
        };
        let deadline = since.saturating_add(limit.as_millis() as u64);
        if now >= deadline {
            Err(why)
        } else {
            Ok(Duration::from_millis(deadline - now))
        }
    }
}

/// One request on a connection, from its head until its response is sent or dropped.
struct InFlight(Arc<ConnState>);

impl InFlight {
    fn new(conn: Arc<ConnState>) -> InFlight {
        conn.in_flight.fetch_add(1, Relaxed);
        conn.head_since.store(NONE, Relaxed);
        InFlight(conn)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.idle_since.store(self.0.now_ms(), Relaxed);
        self.0.in_flight.fetch_sub(1, Relaxed);
    }
}

/// A response body that keeps its request counted as in flight until it is sent in full.
struct TrackedBody {
    inner: Body,
    _request: InFlight,
}

impl http_body::Body for TrackedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.get_mut().inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The socket, noting when bytes of a new request head arrive.
struct Watched {
    io: TcpStream,
    conn: Arc<ConnState>,
}

impl AsyncRead for Watched {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let r = Pin::new(&mut this.io).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            this.conn.bytes_arrived();
        }
        r
    }
}

impl AsyncWrite for Watched {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

/// Accept connections until `life.stopping`, then wait for the open ones to finish (those
/// with no request in flight close at once) until `life.expired` plus a short grace.
/// `on_refused` is called for each connection refused because `max_connections` are open.
pub async fn serve<H, F>(listener: TcpListener, limits: Limits, life: Lifecycle, handler: H, on_refused: impl Fn())
where
    H: Fn(Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<Body>> + Send + 'static,
{
    let open = Arc::new(Semaphore::new(limits.max_connections.min(Semaphore::MAX_PERMITS)));
    // Refused sockets are held a moment (so the client reads its 503): a few at a time.
    let refusing = Arc::new(Semaphore::new(32));
    let mut conns = JoinSet::new();
    let mut stopping = life.stopping.clone();
    let mut last_complaint: Option<Instant> = None;
    loop {
        tokio::select! {
            _ = stopping.wait_for(|&s| s) => break,
            accepted = listener.accept() => match accepted {
                Ok((sock, _peer)) => match open.clone().try_acquire_owned() {
                    Ok(permit) => {
                        let (life, handler) = (life.clone(), handler.clone());
                        conns.spawn(async move {
                            connection(sock, limits, life, handler).await;
                            drop(permit);
                        });
                    }
                    Err(_) => {
                        on_refused();
                        if last_complaint.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
                            last_complaint = Some(Instant::now());
                            eprintln!("--- refusing connections: {} are open (--max-connections)", limits.max_connections);
                        }
                        if let Ok(p) = refusing.clone().try_acquire_owned() {
                            tokio::spawn(async move {
                                refuse(sock).await;
                                drop(p);
                            });
                        }
                    }
                },
                Err(e) => {
                    // Out of descriptors, most likely: wait for some to close rather than spin.
                    if last_complaint.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
                        last_complaint = Some(Instant::now());
                        eprintln!("--- cannot accept a connection: {e}");
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    drop(listener);
    let open_now = conns.len();
    if open_now > 0 {
        eprintln!("--- no longer accepting; {open_now} connections open");
    }
    let cut = async {
        life.until_expired().await;
        tokio::time::sleep(LAST_WORDS).await;
    };
    tokio::pin!(cut);
    loop {
        tokio::select! {
            next = conns.join_next() => if next.is_none() { break },
            _ = &mut cut => {
                eprintln!("--- closing {} connections that outlived the shutdown deadline", conns.len());
                conns.abort_all();
                break;
            }
        }
    }
}

/// Answer 503 on a connection over the limit, then close it.
async fn refuse(mut sock: TcpStream) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let body = r#"{"error":{"message":"too many open connections; try again later","type":"server_error","param":null,"code":"server_overloaded"}}"#;
    let answer = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
         retry-after: 1\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = sock.try_write(answer.as_bytes());
    let _ = sock.shutdown().await;
    // Read what the client sent (briefly): closing with unread data would reset the
    // connection, and the client might lose the answer.
    let mut sink = [0u8; 4096];
    let drain = async {
        let mut left = 64usize << 10;
        while left > 0 {
            match sock.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => left = left.saturating_sub(n),
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_millis(500), drain).await;
}

async fn connection<H, F>(sock: TcpStream, limits: Limits, life: Lifecycle, handler: H)
where
    H: Fn(Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<Body>> + Send + 'static,
{
    let _ = sock.set_nodelay(true);
    let state = Arc::new(ConnState::new());
    let io = TokioIo::new(Watched { io: sock, conn: state.clone() });
    let st = state.clone();
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let request = InFlight::new(st.clone());
        let answer = handler(req);
        async move {
            let resp = answer.await;
            Ok::<_, Infallible>(resp.map(|inner| TrackedBody { inner, _request: request }))
        }
    });
    let conn = hyper::server::conn::http1::Builder::new().keep_alive(true).serve_connection(io, service);
    tokio::pin!(conn);
    let mut stopping = life.stopping.clone();
    let mut draining = false;
    loop {
        let wait = match state.check(&limits) {
            Ok(wait) => wait,
            Err(_why) => return, // dropping the connection closes the socket
        };
        if draining && state.in_flight.load(Relaxed) == 0 {
            // Idle, or half a request head: nothing worth waiting for.
            return;
        }
        tokio::select! {
            _ = conn.as_mut() => return,
            _ = stopping.wait_for(|&s| s), if !draining => {
                draining = true;
                conn.as_mut().graceful_shutdown();
            }
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

/// The default connection cap: 256, or fewer when the process may not open that many
/// descriptors (leaving room for the model file, the runtime and a few spare).
pub fn default_max_connections() -> usize {
    const WANTED: usize = 256;
    const RESERVE: usize = 64;
    #[cfg(unix)]
    {
        let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        // SAFETY: getrlimit writes one rlimit struct, which `lim` is.
        if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0 && lim.rlim_cur != libc::RLIM_INFINITY {
            let soft = usize::try_from(lim.rlim_cur).unwrap_or(usize::MAX);
            return WANTED.min(soft.saturating_sub(RESERVE)).max(1);
        }
    }
    WANTED
}
