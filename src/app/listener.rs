//! Serving connections on a listener that anyone can reach: only a client that
//! proves an identity may cost the broker anything lasting.
//!
//! Per connection: a slot under the connection cap (the oldest anonymous one is
//! evicted to make room), a deadline for the whole TLS handshake, a handshake slot
//! taken only once the ClientHello is in (a silent client holds none), a deadline
//! for the first request, an idle deadline once no call is in flight (short for a
//! connection without a valid SVID), HTTP/2 keepalive and HTTP/1 header
//! deadlines. On the gRPC port a call without a valid SVID is refused before its
//! body is read (only `grpc.health.v1.Health/Check` is public). Closes and
//! refusals are counted in metrics and summed up in one log line per interval.
use super::slots::{Admit, Slot, Slots, Standing};
use super::tls::Tls;
use crate::config::LimitsConfig;
use crate::identity::{ConnInfo, TlsConn};
use crate::metrics::{self, Conn};
use axum::body::Body;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::{Pin, pin};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower_service::Service;
use tracing::{debug, warn};

/// How long a connection told to close (idle, shutdown) may take to finish what
/// it has in flight before it is dropped.
const CLOSE_GRACE: Duration = Duration::from_secs(1);
/// How long an HTTP-port connection may live, whatever it is doing (its clients
/// fetch small public documents; a client that stops reading one is let go).
const HTTP_LIFETIME: Duration = Duration::from_secs(60);
/// The one gRPC method a client without an SVID may call.
const PUBLIC_GRPC: &[&str] = &["/grpc.health.v1.Health/Check"];

/// What every listener of one broker shares: the limits, the connection and
/// handshake caps, the refusal counts, and the connection tasks (for draining).
pub struct Shared {
    pub limits: LimitsConfig,
    connections: Arc<Slots>,
    handshakes: Arc<Slots>,
    log: Arc<RefusalLog>,
    pub tasks: TaskTracker,
}

impl Shared {
    /// `max_connections` is the effective cap (see [`connection_cap`]).
    pub fn new(limits: LimitsConfig, max_connections: usize) -> Arc<Self> {
        Arc::new(Shared {
            connections: Slots::new(max_connections),
            handshakes: Slots::new(limits.max_handshakes),
            log: Arc::new(RefusalLog::default()),
            tasks: TaskTracker::new(),
            limits,
        })
    }

    /// Writes one summary line per interval while anything was refused.
    pub async fn summarize(self: Arc<Self>, cancel: CancellationToken) {
        let mut tick = tokio::time::interval(self.limits.log_summary_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tick.tick() => self.log.flush(self.limits.log_summary_interval),
            }
        }
    }
}

/// The connection cap that fits the process's file descriptor limit: what is
/// left after the database pool, a reserve for files, listeners and the store's
/// own connections, and the evictions that may be under way. Returns the cap
/// and, when it is below the configured one, the limit that forced it.
pub fn connection_cap(configured: usize, pool: u32) -> (usize, Option<u64>) {
    const RESERVE: u64 = 64 + super::slots::OVERSHOOT as u64;
    let Ok(limit) = rustix::process::getrlimit(rustix::process::Resource::Nofile)
        .current
        .ok_or(())
    else {
        return (configured, None); // unlimited
    };
    let room = limit.saturating_sub(RESERVE + u64::from(pool));
    let room = usize::try_from(room).unwrap_or(usize::MAX);
    if room < configured {
        (room, Some(limit))
    } else {
        (configured, None)
    }
}

/// Which listener: the gRPC port (mTLS, callers prove an SVID) or the plain HTTP
/// port (public documents, nobody proves anything).
#[derive(Clone)]
pub enum Kind {
    Grpc(watch::Receiver<Tls>),
    Http,
}

impl Kind {
    fn name(&self) -> &'static str {
        match self {
            Kind::Grpc(_) => "grpc",
            Kind::Http => "http",
        }
    }
}

/// Accepts connections until `cancel`, each served in a task of its own (tracked
/// by `shared.tasks`, so shutdown can wait for them).
pub async fn serve(
    listener: TcpListener,
    kind: Kind,
    router: axum::Router,
    shared: Arc<Shared>,
    cancel: CancellationToken,
) {
    let name = kind.name();
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = shared.connections.room() => {}
        }
        let (tcp, peer) = tokio::select! {
            _ = cancel.cancelled() => return,
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(error) => {
                    // Out of file descriptors (the cap should prevent it) or a
                    // connection reset before accept: counted, not logged each time.
                    shared.log.note(Reason::AcceptFailed, || error.to_string());
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
        };
        // An evicted connection counts itself, under its own listener.
        let slot = match shared.connections.admit() {
            Admit::Admitted(s) | Admit::Evicted(s) => s,
            Admit::Full => {
                metrics::CONNECTIONS_REFUSED
                    .get_or_create(&Conn {
                        listener: name,
                        reason: "cap",
                    })
                    .inc();
                shared.log.count(Reason::Refused);
                drop(tcp);
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let conn = Connection {
            shared: shared.clone(),
            slot,
            peer,
            listener: name,
            router: router.clone(),
            shutdown: cancel.clone(),
        };
        let kind = kind.clone();
        shared.tasks.spawn(async move {
            metrics::CONNECTIONS_OPEN.inc();
            match kind {
                Kind::Grpc(tls) => {
                    // The certificate and bundles in force now: a reload applies
                    // to new connections.
                    let tls = tls.borrow().clone();
                    conn.serve_tls(tcp, tls).await
                }
                Kind::Http => {
                    let info = ConnInfo {
                        remote: Some(peer),
                        identity: Err(crate::identity::VerifyError::NoCertificate),
                    };
                    conn.serve_http(tcp, info).await
                }
            }
            metrics::CONNECTIONS_OPEN.dec();
        });
    }
}

struct Connection {
    shared: Arc<Shared>,
    slot: Slot,
    peer: SocketAddr,
    listener: &'static str,
    router: axum::Router,
    shutdown: CancellationToken,
}

impl Connection {
    fn closed(&self, reason: Reason) {
        metrics::CONNECTIONS_CLOSED
            .get_or_create(&Conn {
                listener: self.listener,
                reason: reason.label(),
            })
            .inc();
        self.shared.log.count(reason);
    }

    async fn serve_tls(mut self, tcp: TcpStream, tls: Tls) {
        let deadline = Instant::now() + self.shared.limits.handshake_timeout;
        // The ClientHello first, holding no handshake slot: a client that never
        // sends one costs a file descriptor until the deadline, nothing more.
        let hello = tokio::select! {
            r = tokio::time::timeout_at(
                deadline,
                tokio_rustls::LazyConfigAcceptor::new(rustls::server::Acceptor::default(), tcp),
            ) => r,
            _ = self.slot.evicted() => return self.closed(Reason::Evicted),
        };
        let start = match hello {
            Ok(Ok(start)) => start,
            Ok(Err(error)) => {
                self.closed(Reason::HandshakeFailed);
                self.shared
                    .log
                    .sample(Reason::HandshakeFailed, self.peer, || error.to_string());
                return;
            }
            Err(_) => return self.closed(Reason::HandshakeTimeout),
        };
        // Getting somewhere: outlasts connections that sent nothing.
        self.slot.stand(Standing::Handshaking);
        let handshake = match self.shared.handshakes.admit() {
            Admit::Admitted(s) | Admit::Evicted(s) => s,
            // Handshake slots are never protected: there is always an oldest.
            Admit::Full => return self.closed(Reason::HandshakeEvicted),
        };
        metrics::HANDSHAKES_IN_PROGRESS.inc();
        let outcome = tokio::select! {
            r = tokio::time::timeout_at(deadline, start.into_stream(tls.acceptor.config().clone())) => match r {
                Ok(Ok(stream)) => Ok(stream),
                Ok(Err(error)) => Err((Reason::HandshakeFailed, Some(error))),
                Err(_) => Err((Reason::HandshakeTimeout, None)),
            },
            _ = handshake.evicted() => Err((Reason::HandshakeEvicted, None)),
            _ = self.slot.evicted() => Err((Reason::Evicted, None)),
        };
        metrics::HANDSHAKES_IN_PROGRESS.dec();
        drop(handshake);
        let stream = match outcome {
            Ok(stream) => stream,
            Err((reason, error)) => {
                self.closed(reason);
                if let Some(error) = error {
                    self.shared
                        .log
                        .sample(reason, self.peer, || error.to_string());
                }
                return;
            }
        };
        let conn = TlsConn::new(stream, &tls.bundles);
        let info = conn.info().clone();
        match &info.identity {
            Ok(caller) => {
                // Proved an identity: never evicted for a newcomer.
                self.slot.protect();
                debug!(peer = %self.peer, caller = %caller.id, "mTLS connection");
            }
            Err(why) => {
                // The first to go when room is needed.
                self.slot.stand(Standing::Anonymous);
                metrics::CONNECTIONS_UNAUTHENTICATED
                    .get_or_create(&Conn {
                        listener: self.listener,
                        reason: why.kind(),
                    })
                    .inc();
                self.shared.log.count(Reason::Unauthenticated);
                self.shared
                    .log
                    .sample(Reason::Unauthenticated, self.peer, || why.to_string());
            }
        }
        self.serve_http(conn, info).await
    }

    /// Serves HTTP/2 (gRPC port) or HTTP/1 (HTTP port) on an accepted stream.
    async fn serve_http<IO>(self, io: IO, info: ConnInfo)
    where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let limits = &self.shared.limits;
        let authenticated = info.identity.is_ok();
        let grpc = self.listener == "grpc";
        let activity = Activity::new();
        let service = ConnService {
            router: self.router.clone(),
            info: Arc::new(info),
            refuse_anonymous: grpc,
            activity: activity.clone(),
        };
        let io = TokioIo::new(io);
        // A connection that proved nothing gets one call and a short life: on
        // the gRPC port it is closed once its (refused, or health) call is done,
        // and on either port it is closed at a fixed age, calls in flight or not.
        let (idle_after, lifetime) = match (grpc, authenticated) {
            (_, true) => (limits.idle_timeout, None),
            // Time for its first call, and as long again for that call.
            (true, false) => (Duration::ZERO, Some(limits.first_request_timeout * 2)),
            (false, false) => (limits.first_request_timeout, Some(HTTP_LIFETIME)),
        };
        let idle = activity.idle(limits.first_request_timeout, idle_after);
        if grpc {
            let (streams, stream_window, conn_window) = if authenticated {
                (limits.max_concurrent_streams, 64 * 1024, 256 * 1024)
            } else {
                (2, 16 * 1024, 32 * 1024)
            };
            let mut b = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
            b.timer(TokioTimer::new())
                .keep_alive_interval(limits.keepalive_interval)
                .keep_alive_timeout(limits.keepalive_timeout)
                .max_concurrent_streams(streams)
                .max_header_list_size(limits.max_header_bytes)
                // Requests are small: a client cannot make the broker buffer much
                // of a body before it is read (or refused).
                .initial_stream_window_size(stream_window)
                .initial_connection_window_size(conn_window);
            let conn = b.serve_connection(io, service);
            self.drive(HttpConn::H2(conn), activity, idle, lifetime)
                .await
        } else {
            let mut b = hyper::server::conn::http1::Builder::new();
            b.timer(TokioTimer::new())
                .header_read_timeout(limits.header_read_timeout)
                .max_buf_size((limits.max_header_bytes as usize).max(8192))
                .keep_alive(true);
            let conn = b.serve_connection(io, service);
            self.drive(HttpConn::H1(conn), activity, idle, lifetime)
                .await
        }
    }

    /// Runs the connection until it ends, is evicted, idles out, reaches its
    /// `lifetime` or the broker shuts down. Asked to finish, it gets
    /// [`CLOSE_GRACE`]; then it is dropped, at once if it has a `lifetime` (it
    /// proved nothing), else once no call is in flight (the broker's shutdown
    /// grace bounds that).
    async fn drive<C>(
        self,
        conn: C,
        activity: Activity,
        idle: impl Future<Output = Reason>,
        lifetime: Option<Duration>,
    ) where
        C: Future<Output = Result<(), hyper::Error>> + GracefulShutdown,
    {
        let mut conn = pin!(conn);
        let mut idle = pin!(idle);
        let far = Instant::now() + Duration::from_secs(86_400 * 365);
        let end_at = lifetime.map_or(far, |d| Instant::now() + d);
        let mut closing: Option<Instant> = None;
        loop {
            let force_at = closing.unwrap_or(far);
            tokio::select! {
                r = conn.as_mut() => {
                    if let Err(error) = r {
                        debug!(peer = %self.peer, %error, "connection ended with an error");
                    }
                    return;
                }
                _ = self.slot.evicted() => return self.closed(Reason::Evicted),
                reason = &mut idle, if closing.is_none() => {
                    // A connection closed after its one anonymous call is routine.
                    if reason != Reason::IdleTimeout || lifetime.is_none() {
                        self.closed(reason);
                    }
                    conn.as_mut().graceful_shutdown();
                    closing = Some(Instant::now() + CLOSE_GRACE);
                }
                _ = tokio::time::sleep_until(end_at), if closing.is_none() => {
                    self.closed(Reason::Lifetime);
                    conn.as_mut().graceful_shutdown();
                    closing = Some(Instant::now() + CLOSE_GRACE);
                }
                _ = self.shutdown.cancelled(), if closing.is_none() => {
                    conn.as_mut().graceful_shutdown();
                    closing = Some(Instant::now() + CLOSE_GRACE);
                }
                // A client that ignores the GOAWAY (or never acknowledges its
                // PING) is dropped.
                _ = tokio::time::sleep_until(force_at), if closing.is_some() => {
                    if lifetime.is_some() || activity.in_flight() == 0 {
                        return;
                    }
                    closing = Some(Instant::now() + CLOSE_GRACE);
                }
            }
        }
    }
}

/// Both kinds of hyper connection can be asked to finish.
trait GracefulShutdown {
    fn graceful_shutdown(self: Pin<&mut Self>);
}

enum HttpConn<A, B> {
    H2(A),
    H1(B),
}

type H2<I> = hyper::server::conn::http2::Connection<I, ConnService, TokioExecutor>;
type H1<I> = hyper::server::conn::http1::Connection<I, ConnService>;

impl<I> Future for HttpConn<H2<I>, H1<I>>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    type Output = Result<(), hyper::Error>;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        // Both connection types are Unpin (their IO is).
        match self.get_mut() {
            HttpConn::H2(c) => Pin::new(c).poll(cx),
            HttpConn::H1(c) => Pin::new(c).poll(cx),
        }
    }
}

impl<I> GracefulShutdown for HttpConn<H2<I>, H1<I>>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    fn graceful_shutdown(self: Pin<&mut Self>) {
        match self.get_mut() {
            HttpConn::H2(c) => Pin::new(c).graceful_shutdown(),
            HttpConn::H1(c) => Pin::new(c).graceful_shutdown(),
        }
    }
}

/// The calls in flight on one connection, and whether it has had one.
#[derive(Clone)]
struct Activity(Arc<watch::Sender<(usize, bool)>>);

impl Activity {
    fn new() -> Self {
        Activity(Arc::new(watch::Sender::new((0, false))))
    }

    fn in_flight(&self) -> usize {
        self.0.borrow().0
    }

    fn begin(&self) -> InFlight {
        self.0.send_modify(|(n, any)| {
            *n += 1;
            *any = true;
        });
        InFlight(self.clone())
    }

    /// Resolves once the connection has had no call in flight for
    /// `first` (before its first call) or `after` (since its last one).
    fn idle(&self, first: Duration, after: Duration) -> impl Future<Output = Reason> + use<> {
        let mut rx = self.0.subscribe();
        async move {
            loop {
                let (n, any) = *rx.borrow_and_update();
                if n > 0 {
                    if rx.changed().await.is_err() {
                        return std::future::pending().await;
                    }
                    continue;
                }
                let (wait, reason) = if any {
                    (after, Reason::IdleTimeout)
                } else {
                    (first, Reason::FirstRequestTimeout)
                };
                tokio::select! {
                    _ = tokio::time::sleep(wait) => return reason,
                    r = rx.changed() => if r.is_err() { return std::future::pending().await },
                }
            }
        }
    }
}

/// One call in flight; it ends when the response body is dropped (for a
/// stream, when the stream ends).
struct InFlight(Activity);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.0.send_modify(|(n, _)| *n = n.saturating_sub(1));
    }
}

/// The per-connection hyper service: attaches what the transport knows, refuses
/// anonymous gRPC calls unread, and tracks calls in flight.
#[derive(Clone)]
struct ConnService {
    router: axum::Router,
    info: Arc<ConnInfo>,
    refuse_anonymous: bool,
    activity: Activity,
}

impl hyper::service::Service<hyper::Request<Incoming>> for ConnService {
    type Response = hyper::Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn call(&self, mut req: hyper::Request<Incoming>) -> Self::Future {
        let in_flight = self.activity.begin();
        if self.refuse_anonymous
            && let Err(why) = &self.info.identity
            && !PUBLIC_GRPC.contains(&req.uri().path())
        {
            // Refused on its headers: the body is never read, and dropping it
            // tells the client to stop sending (RST_STREAM).
            let resp = crate::error::unauthenticated(why).into_http::<Body>();
            drop(req);
            return Box::pin(std::future::ready(Ok(Tracked::response(resp, in_flight))));
        }
        req.extensions_mut().insert((*self.info).clone());
        let mut router = self.router.clone();
        Box::pin(async move {
            let resp = match router.call(req.map(Body::new)).await {
                Ok(r) => r,
                Err(never) => match never {},
            };
            Ok(Tracked::response(resp, in_flight))
        })
    }
}

/// A response body that keeps its call counted as in flight until it is done.
struct Tracked {
    inner: Body,
    _in_flight: InFlight,
}

impl Tracked {
    fn response(resp: hyper::Response<Body>, in_flight: InFlight) -> hyper::Response<Body> {
        resp.map(|inner| {
            Body::new(Tracked {
                inner,
                _in_flight: in_flight,
            })
        })
    }
}

impl http_body::Body for Tracked {
    type Data = axum::body::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// Why the broker closed or refused a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reason {
    Refused,
    Evicted,
    HandshakeTimeout,
    HandshakeFailed,
    HandshakeEvicted,
    Unauthenticated,
    FirstRequestTimeout,
    IdleTimeout,
    Lifetime,
    AcceptFailed,
}

const REASONS: [Reason; 10] = [
    Reason::Refused,
    Reason::Evicted,
    Reason::HandshakeTimeout,
    Reason::HandshakeFailed,
    Reason::HandshakeEvicted,
    Reason::Unauthenticated,
    Reason::FirstRequestTimeout,
    Reason::IdleTimeout,
    Reason::Lifetime,
    Reason::AcceptFailed,
];

impl Reason {
    fn label(self) -> &'static str {
        match self {
            Reason::Refused => "refused_at_cap",
            Reason::Evicted => "evicted",
            Reason::HandshakeTimeout => "handshake_timeout",
            Reason::HandshakeFailed => "handshake_failed",
            Reason::HandshakeEvicted => "handshake_evicted",
            Reason::Unauthenticated => "without_valid_svid",
            Reason::FirstRequestTimeout => "first_request_timeout",
            Reason::IdleTimeout => "idle_timeout",
            Reason::Lifetime => "lifetime",
            Reason::AcceptFailed => "accept_failed",
        }
    }

    /// Worth a warning in the summary: idle connections closing is routine.
    fn is_refusal(self) -> bool {
        !matches!(self, Reason::IdleTimeout | Reason::Lifetime)
    }
}

/// Refusals since the last summary, and a few distinct examples of each kind
/// with a reason worth showing (a handshake error, an SVID check), so the log
/// says what is going on without growing with the attack.
#[derive(Default)]
struct RefusalLog {
    counts: [AtomicU64; REASONS.len()],
    /// Examples offered this interval: past [`EXAMPLE_TRIES`] of a kind, no more
    /// are looked at (nor formatted).
    tries: [AtomicU64; REASONS.len()],
    /// (kind, what went wrong, who): at most [`EXAMPLES`] per kind.
    examples: Mutex<Vec<(Reason, String, String)>>,
}

/// The longest example quoted in a summary, and how many distinct ones of a
/// kind are kept per interval.
const EXAMPLE_CHARS: usize = 160;
const EXAMPLES: usize = 3;
const EXAMPLE_TRIES: u64 = 32;

impl RefusalLog {
    fn count(&self, r: Reason) {
        self.counts[r as usize].fetch_add(1, Ordering::Relaxed);
    }

    fn note(&self, r: Reason, why: impl FnOnce() -> String) {
        self.count(r);
        self.keep(r, String::new(), why);
    }

    fn sample(&self, r: Reason, peer: SocketAddr, why: impl FnOnce() -> String) {
        self.keep(r, peer.to_string(), why);
    }

    fn keep(&self, r: Reason, who: String, why: impl FnOnce() -> String) {
        if self.tries[r as usize].fetch_add(1, Ordering::Relaxed) >= EXAMPLE_TRIES {
            return;
        }
        let mut ex = self.examples.lock().unwrap_or_else(|p| p.into_inner());
        if ex.iter().filter(|(k, ..)| *k == r).count() >= EXAMPLES {
            return;
        }
        let why: String = why().chars().take(EXAMPLE_CHARS).collect();
        if !ex.iter().any(|(k, w, _)| *k == r && *w == why) {
            ex.push((r, why, who));
        }
    }

    /// One line for everything refused in the last `every`, if anything was.
    fn flush(&self, every: Duration) {
        for t in &self.tries {
            t.store(0, Ordering::Relaxed);
        }
        let counts: Vec<(Reason, u64)> = REASONS
            .iter()
            .map(|r| (*r, self.counts[*r as usize].swap(0, Ordering::Relaxed)))
            .filter(|(_, n)| *n > 0)
            .collect();
        let examples =
            std::mem::take(&mut *self.examples.lock().unwrap_or_else(|p| p.into_inner()));
        if !counts.iter().any(|(r, _)| r.is_refusal()) {
            return;
        }
        let counts = counts
            .iter()
            .map(|(r, n)| format!("{}={n}", r.label()))
            .collect::<Vec<_>>()
            .join(" ");
        let examples = examples
            .iter()
            .map(|(r, why, who)| format!("{} ({who}): {why}", r.label()))
            .collect::<Vec<_>>()
            .join("; ");
        warn!(
            period_s = every.as_secs(),
            %counts,
            %examples,
            "connections refused or closed by the broker (details in mayfly_connections_* metrics)"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_summary_counts_every_refusal_and_keeps_a_few_short_distinct_examples() {
        let log = RefusalLog::default();
        let peer: SocketAddr = "127.0.0.1:9".parse().unwrap();
        for i in 0..1000 {
            log.count(Reason::HandshakeFailed);
            let why = format!("{} {}", i % 2, "x".repeat(500));
            log.sample(Reason::HandshakeFailed, peer, || why);
        }
        let failed = || log.counts[Reason::HandshakeFailed as usize].load(Ordering::Relaxed);
        assert_eq!(failed(), 1000);
        let ex = log.examples.lock().unwrap().clone();
        // Two distinct reasons: kept once each.
        assert_eq!(ex.len(), 2);
        assert!(ex[0].1.starts_with("0 x") && ex[1].1.starts_with("1 x"));
        assert_eq!(ex[0].1.chars().count(), EXAMPLE_CHARS);
        assert_eq!(ex[0].2, "127.0.0.1:9");
        log.flush(Duration::from_secs(60));
        assert_eq!(failed(), 0);
        assert!(log.examples.lock().unwrap().is_empty());
    }
}
