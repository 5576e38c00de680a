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
use super::calls::{Activity, ConnService};
use super::refusals::{Reason, RefusalLog};
use super::slots::{Admit, Slot, Slots, Standing};
use super::tls::Tls;
use crate::config::LimitsConfig;
use crate::identity::{ConnInfo, TlsConn};
use crate::metrics::{self, Conn};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::debug;

/// How long a connection told to close (idle, shutdown) may take to finish what
/// it has in flight before it is dropped.
const CLOSE_GRACE: Duration = Duration::from_secs(1);
/// How long an HTTP-port connection may live, whatever it is doing (its clients
/// fetch small public documents; a client that stops reading one is let go).
const HTTP_LIFETIME: Duration = Duration::from_secs(60);

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

/// The longest an accepted connection waits for evicted ones to leave before it
/// is refused.
const BUSY_WAIT: Duration = Duration::from_secs(1);

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
        // An evicted connection counts itself, under its own listener. While
        // evicted members are still leaving (the other listener admitted since
        // `room`), the accepted connection waits, as it would in the backlog.
        let admitted = loop {
            match shared.connections.admit() {
                Admit::Admitted(s) | Admit::Evicted(s) => break Some(s),
                Admit::Full => break None,
                Admit::Busy => tokio::select! {
                    _ = cancel.cancelled() => return,
                    waited = tokio::time::timeout(BUSY_WAIT, shared.connections.room()) => {
                        if waited.is_err() {
                            break None;
                        }
                    }
                },
            }
        };
        let slot = match admitted {
            Some(s) => s,
            None => {
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
                    conn.serve_http(tcp, info, false).await
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
            Admit::Full | Admit::Busy => return self.closed(Reason::HandshakeEvicted),
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
        let h2 = conn.is_h2();
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
        self.serve_http(conn, info, h2).await
    }

    /// Serves HTTP/2 (`h2`: gRPC and the OAuth front door) or HTTP/1 (the HTTP
    /// port, and the front door's HTTP/1.1 clients) on an accepted stream.
    async fn serve_http<IO>(self, io: IO, info: ConnInfo, h2: bool)
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
        if h2 {
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
            // hyper's HTTP/1 header timer also runs while a keep-alive
            // connection waits for its next request: for a client that proved
            // an SVID (the front door's HTTP/1.1 clients) it is the idle
            // deadline, as on HTTP/2, or every agent minting less often than
            // `header_read_timeout` would pay a new handshake; a client that
            // proved nothing keeps the short one.
            let header_deadline = if authenticated {
                limits.idle_timeout
            } else {
                limits.header_read_timeout
            };
            let mut b = hyper::server::conn::http1::Builder::new();
            b.timer(TokioTimer::new())
                .header_read_timeout(header_deadline)
                .max_buf_size((limits.max_header_bytes as usize).max(8192))
                // On the mTLS port a client that proved nothing gets one call
                // (a public document): no keep-alive, so requests it pipelined
                // behind the first are never read.
                .keep_alive(authenticated || !grpc);
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
