//! The HTTP server loop of every listener (docs/security.md, "Limits"), in place of a bare
//! `axum::serve`: a header-read timeout, an idle timeout on connections with no
//! request in progress, a global connection limit (a semaphore whose permit lives as long as
//! the socket, WebSockets included), failed-authentication throttling per client address, and
//! graceful shutdown.
use crate::configuration::HttpArgs;
use axum::Router;
use axum::body::Body;
use axum::http::{HeaderValue, Request, Response, StatusCode, header};
use herald_telemetry::metrics;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tower::ServiceExt;

/// A request head may not be larger (hyper's read buffer; its minimum is 8 KiB).
const MAX_HEAD: usize = 64 * 1024;
/// Addresses the failed-auth throttle remembers at most; beyond, the oldest window is dropped.
pub const THROTTLE_ADDRESSES: usize = 65_536;
/// The kernel send buffer of every accepted connection (`SO_SNDBUF`; Linux doubles it, so
/// 256 KiB). Left to autotuning, a client that stops reading pins up to `tcp_wmem`'s maximum
/// (4 MiB by default) of kernel memory until the write deadline closes it, and longer while the
/// closed socket still holds the unsent data: 200 such clients held ~760 MB. Herald sends
/// events (small frames, batched to 16 KiB), for which this is ample.
pub const SEND_BUFFER: usize = 128 * 1024;
/// How long shutdown waits for requests in progress (WebSockets are closed by the gateway).
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// The peer as the listener saw it, in every request's extensions.
#[derive(Debug, Clone, Copy)]
pub struct ClientAddr(pub SocketAddr);

/// Milliseconds since the first call, never 0 (0 means "not set" below).
fn now_ms() -> u64 {
    static EPOCH: LazyLock<Instant> = LazyLock::new(Instant::now);
    u64::try_from(EPOCH.elapsed().as_millis())
        .unwrap_or(u64::MAX)
        .saturating_add(1)
}

/// What one connection's watcher reads. hyper's own header timer also runs while a kept-alive
/// connection waits for its next request, which would make the idle timeout the header
/// timeout; so both are kept here: the header clock starts with the first byte of a request
/// head (or with the connection), the idle clock with the last byte moved.
struct Clock {
    last_io: AtomicU64,
    /// When the head being received started; 0 while none is.
    head_since: AtomicU64,
    in_progress: AtomicUsize,
}

impl Clock {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            last_io: AtomicU64::new(now_ms()),
            head_since: AtomicU64::new(now_ms()),
            in_progress: AtomicUsize::new(0),
        })
    }

    /// Why the connection must close now, if it must.
    fn expired(&self, header: Duration, idle: Duration) -> Option<&'static str> {
        if self.in_progress.load(Ordering::Relaxed) > 0 {
            return None;
        }
        let since = |t: u64| Duration::from_millis(now_ms().saturating_sub(t));
        match self.head_since.load(Ordering::Relaxed) {
            0 => (since(self.last_io.load(Ordering::Relaxed)) >= idle).then_some("idle_timeout"),
            t => (since(t) >= header).then_some("header_timeout"),
        }
    }
}

/// A socket that holds its connection permit and feeds its connection's clock.
struct Tracked {
    stream: TcpStream,
    clock: Arc<Clock>,
    _permit: OwnedSemaphorePermit,
}

impl Drop for Tracked {
    fn drop(&mut self) {
        metrics().http_connections.dec();
    }
}

impl Tracked {
    fn touch(&self, read: bool) {
        let now = now_ms();
        self.clock.last_io.store(now, Ordering::Relaxed);
        // Bytes while no request is in progress begin the next head.
        if read && self.clock.in_progress.load(Ordering::Relaxed) == 0 {
            let _ = self.clock.head_since.compare_exchange(
                0,
                now,
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
        }
    }
}

impl AsyncRead for Tracked {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.stream).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.touch(true);
        }
        r
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.stream).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.touch(false);
        }
        r
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// Failed authentications per client address in fixed windows; an address over the limit is
/// refused until its window ends. Bounded: IPv6 addresses count per /64, and at most
/// `THROTTLE_ADDRESSES` windows are kept.
pub struct AuthThrottle {
    limit: usize,
    window: Duration,
    windows: Mutex<HashMap<IpAddr, (Instant, usize)>>,
}

impl AuthThrottle {
    pub fn new(limit: usize, window: Duration) -> Self {
        Self {
            limit,
            window,
            windows: Mutex::new(HashMap::new()),
        }
    }

    fn key(ip: IpAddr) -> IpAddr {
        match ip {
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => IpAddr::V4(v4),
                None => IpAddr::V6((u128::from(v6) & !((1u128 << 64) - 1)).into()),
            },
            v4 => v4,
        }
    }

    /// `Some(time left)` while `ip` is over the limit.
    pub fn blocked(&self, ip: IpAddr, now: Instant) -> Option<Duration> {
        let map = self.windows.lock().ok()?;
        let (start, failures) = map.get(&Self::key(ip))?;
        let left = self.window.checked_sub(now.duration_since(*start))?;
        (*failures >= self.limit && !left.is_zero()).then_some(left)
    }

    pub fn failed(&self, ip: IpAddr, now: Instant) {
        let Ok(mut map) = self.windows.lock() else {
            return;
        };
        let window = self.window;
        if map.len() >= THROTTLE_ADDRESSES && !map.contains_key(&Self::key(ip)) {
            map.retain(|_, (start, _)| now.duration_since(*start) < window);
            if map.len() >= THROTTLE_ADDRESSES
                && let Some(oldest) = map.iter().min_by_key(|(_, (s, _))| *s).map(|(k, _)| *k)
            {
                map.remove(&oldest);
            }
        }
        let entry = map.entry(Self::key(ip)).or_insert((now, 0));
        if now.duration_since(entry.0) >= window {
            *entry = (now, 0);
        }
        entry.1 += 1;
    }

    pub fn tracked(&self) -> usize {
        self.windows.lock().map_or(0, |m| m.len())
    }
}

/// What every connection of one listener shares.
pub struct Limits {
    pub http: HttpArgs,
    pub throttle: AuthThrottle,
}

impl Limits {
    pub fn new(http: HttpArgs) -> Arc<Self> {
        let throttle = AuthThrottle::new(http.auth_failure_limit, http.auth_failure_window);
        Arc::new(Self { http, throttle })
    }

    /// The address the throttle and the gateway's per-address cap count: the last one of the
    /// configured proxy header, else the peer.
    fn client_ip(&self, req: &Request<Incoming>, peer: SocketAddr) -> IpAddr {
        self.http
            .client_address_header
            .as_deref()
            .and_then(|name| req.headers().get_all(name).iter().next_back())
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.rsplit(',').next())
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(peer.ip())
    }
}

/// A small plain-text refusal.
pub fn refusal(status: StatusCode, reason: &'static str, text: &str) -> Response<Body> {
    metrics().http_refused.with(reason).inc();
    let mut r = Response::new(Body::from(format!("{text}\n")));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// Serves `router` on `listener` under `limits` until `shutdown` resolves, then stops
/// accepting, lets requests in progress finish (bounded) and returns.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: Arc<Limits>,
    shutdown: impl Future<Output = ()> + Send,
) -> io::Result<()> {
    let permits = Arc::new(Semaphore::new(limits.http.http_max_connections));
    let (closing, closing_rx) = watch::channel(false);
    let mut last_refusal_log: Option<Instant> = None;
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of descriptors or memory: say so and give the process a moment
                    // instead of spinning.
                    tracing::warn!(error = %e, "accepting an HTTP connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            // Best effort, never waiting: a refusal the client can read, then close.
            let _ = stream.try_write(
                b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\nContent-Length: 25\r\nConnection: close\r\n\r\nconnection limit reached\n",
            );
            metrics().http_refused.with("connection_limit").inc();
            if last_refusal_log.is_none_or(|t| t.elapsed() >= Duration::from_secs(10)) {
                last_refusal_log = Some(Instant::now());
                tracing::warn!(
                    limit = limits.http.http_max_connections,
                    "HTTP connection limit reached: refusing connections (HERALD_HTTP_MAX_CONNECTIONS)"
                );
            }
            continue;
        };
        let _ = stream.set_nodelay(true);
        if let Err(e) = socket2::SockRef::from(&stream).set_send_buffer_size(SEND_BUFFER) {
            tracing::debug!(error = %e, "setting the send buffer size failed");
        }
        metrics().http_connections.inc();
        let io = Tracked {
            stream,
            clock: Clock::new(),
            _permit: permit,
        };
        tokio::spawn(connection(
            io,
            peer,
            router.clone(),
            limits.clone(),
            closing_rx.clone(),
        ));
    }
    drop(listener);
    drop(closing_rx);
    let _ = closing.send(true);
    let _ = tokio::time::timeout(SHUTDOWN_GRACE, closing.closed()).await;
    Ok(())
}

/// One connection: hyper, with the header and idle timeouts and shutdown watched beside it.
async fn connection(
    io: Tracked,
    peer: SocketAddr,
    router: Router,
    limits: Arc<Limits>,
    mut closing: watch::Receiver<bool>,
) {
    let clock = io.clock.clone();
    let service = {
        let (limits, clock) = (limits.clone(), clock.clone());
        hyper::service::service_fn(move |req: Request<Incoming>| {
            let (router, limits) = (router.clone(), limits.clone());
            let guard = InProgress::new(clock.clone());
            async move {
                Ok::<_, std::convert::Infallible>(handle(req, peer, router, &limits, guard).await)
            }
        })
    };
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder.max_buf_size(MAX_HEAD);
    let conn = builder
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades();
    tokio::pin!(conn);
    let (header, idle) = (
        limits.http.http_header_timeout,
        limits.http.http_idle_timeout,
    );
    let tick = (header.min(idle) / 4).clamp(Duration::from_millis(50), Duration::from_secs(1));
    let mut stopping = false;
    loop {
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(%peer, error = %e, "HTTP connection ended");
                }
                return;
            }
            _ = closing.changed(), if !stopping => {
                stopping = true;
                conn.as_mut().graceful_shutdown();
            }
            () = tokio::time::sleep(tick) => {
                // Nothing is in progress: dropping the connection loses no response.
                if let Some(reason) = clock.expired(header, idle) {
                    metrics().http_refused.with(reason).inc();
                    tracing::debug!(%peer, reason, "HTTP connection closed");
                    return;
                }
            }
        }
    }
}

/// Counts a request as in progress from its parsed head until its response body is dropped
/// (written or abandoned); the idle clock restarts from then.
struct InProgress(Arc<Clock>);

impl InProgress {
    fn new(clock: Arc<Clock>) -> Self {
        clock.in_progress.fetch_add(1, Ordering::Relaxed);
        clock.head_since.store(0, Ordering::Relaxed);
        Self(clock)
    }
}

impl Drop for InProgress {
    fn drop(&mut self) {
        self.0.last_io.store(now_ms(), Ordering::Relaxed);
        self.0.in_progress.fetch_sub(1, Ordering::Relaxed);
    }
}

async fn handle(
    mut req: Request<Incoming>,
    peer: SocketAddr,
    router: Router,
    limits: &Limits,
    guard: InProgress,
) -> Response<Body> {
    let ip = limits.client_ip(&req, peer);
    // Probes and scrapes take no credential: a throttled address (a proxy's, say) keeps them.
    let unauthenticated = matches!(req.uri().path(), "/healthz" | "/readyz" | "/metrics");
    if !unauthenticated && let Some(left) = limits.throttle.blocked(ip, Instant::now()) {
        let mut r = refusal(
            StatusCode::TOO_MANY_REQUESTS,
            "auth_throttled",
            "too many failed authentications from this address",
        );
        let secs = left.as_secs().max(1).to_string();
        if let Ok(v) = HeaderValue::from_str(&secs) {
            r.headers_mut().insert(header::RETRY_AFTER, v);
        }
        return keep_in_progress(r, guard);
    }
    req.extensions_mut().insert(ClientAddr(peer));
    // The gateway's per-address connection cap counts the same address as the throttle.
    req.extensions_mut()
        .insert(herald_gateway::ClientAddress(ip));
    let response = match router.oneshot(req).await {
        Ok(r) => r,
        Err(never) => match never {},
    };
    if response.status() == StatusCode::UNAUTHORIZED {
        limits.throttle.failed(ip, Instant::now());
    }
    keep_in_progress(response, guard)
}

fn keep_in_progress(r: Response<Body>, guard: InProgress) -> Response<Body> {
    r.map(|body| {
        Body::new(body.map_frame(move |frame| {
            let _ = &guard;
            frame
        }))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_throttle_blocks_an_address_over_the_limit_until_its_window_ends() {
        let t = AuthThrottle::new(3, Duration::from_secs(60));
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let now = Instant::now();
        for _ in 0..3 {
            assert!(t.blocked(a, now).is_none());
            t.failed(a, now);
        }
        assert!(t.blocked(a, now).is_some());
        assert!(t.blocked(b, now).is_none(), "per address");
        assert!(t.blocked(a, now + Duration::from_secs(61)).is_none());
        t.failed(a, now + Duration::from_secs(61));
        assert!(
            t.blocked(a, now + Duration::from_secs(61)).is_none(),
            "a new window"
        );
    }

    #[test]
    fn the_throttle_is_bounded_and_counts_ipv6_per_64() {
        let t = AuthThrottle::new(1, Duration::from_secs(60));
        let now = Instant::now();
        let x: IpAddr = "2001:db8::1".parse().unwrap();
        t.failed(x, now);
        assert!(t.blocked("2001:db8::ffff".parse().unwrap(), now).is_some());
        for i in 0..(THROTTLE_ADDRESSES as u32 + 10) {
            t.failed(IpAddr::V4(i.into()), now);
        }
        assert!(t.tracked() <= THROTTLE_ADDRESSES);
    }
}
