//! Wiring: `build(config)` loads keys and bundles, connects the store and binds the
//! listeners; `App::run(shutdown)` serves gRPC over mTLS and HTTP until shutdown.
use crate::api::pb::admin_service_server::AdminServiceServer;
use crate::api::pb::task_service_server::TaskServiceServer;
use crate::api::pb::token_service_server::TokenServiceServer;
use crate::api::pb::verifier_service_server::VerifierServiceServer;
use crate::api::{AdminApi, TaskApi, TokenApi, VerifierApi, pb};
use crate::broker::Broker;
use crate::clock::Clock;
use crate::config::Config;
use crate::identity::{TlsConn, TrustBundles};
use crate::policy::CedarPolicy;
use crate::store::{PgStore, SqliteStore, Store};
use anyhow::Context;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Json};
use axum::routing::get;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

/// How long a client may take to finish the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes in progress at once; past this, accepting waits (back-pressure
/// instead of unbounded tasks under a connection flood).
const MAX_HANDSHAKES: usize = 512;

pub struct App {
    broker: Arc<Broker>,
    policy: Arc<CedarPolicy>,
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    config: Config,
    tls: Tls,
    grpc: TcpListener,
    http: TcpListener,
}

/// Installs ring as the process's rustls provider (the only one built in).
pub fn install_crypto() {
    // Err means a provider is already installed: ring, since it is the only one.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Builds the broker from validated settings: bundles, TLS, store, key, listeners.
pub async fn build(config: Config, clock: Arc<dyn Clock>) -> anyhow::Result<App> {
    install_crypto();
    let tls = load_tls(&config)?;
    let url = config
        .database
        .url
        .as_ref()
        .context("database.url is not set")?;
    // Policies first: a broken policy set is refused before the database is
    // touched (no migrations run for a broker that cannot start).
    let policy = Arc::new(
        CedarPolicy::load(&config.policy.dir, &config.policy.environment).map_err(|e| {
            anyhow::anyhow!(
                "policy.dir {} is not a valid policy set:\n{e}",
                config.policy.dir.display()
            )
        })?,
    );
    let store: Arc<dyn Store> = if crate::config::sqlite_path(url.expose()).is_some() {
        Arc::new(
            SqliteStore::connect(
                url.expose(),
                config.database.max_connections,
                config.database.connect_timeout,
            )
            .await
            .with_context(|| format!("cannot use the SQLite database {}", url.expose()))?,
        )
    } else {
        let store = PgStore::connect_only(
            url.expose(),
            config.database.max_connections,
            config.database.connect_timeout,
        )
        .await
        .with_context(|| format!("cannot use the database at {}", redacted(url.expose())))?;
        if config.database.migrate {
            store.migrate().await.map(drop)
        } else {
            store.check_schema().await
        }
        .with_context(|| format!("cannot use the database at {}", redacted(url.expose())))?;
        Arc::new(store)
    };
    let policy_dyn: Arc<dyn crate::policy::Policy> = policy.clone();
    let broker = Broker::new(
        store.clone(),
        policy_dyn,
        clock.clone(),
        config.server.issuer.clone(),
        config.keys.heartbeat,
    )
    .await
    .map_err(|e| anyhow::anyhow!("starting the broker: {e}"))?
    .with_approval_ttl(config.tasks.approval_ttl)
    .with_notice_poll(config.revocation.poll_interval);
    let grpc = TcpListener::bind(config.server.grpc_addr)
        .await
        .with_context(|| {
            format!(
                "cannot listen on server.grpc_addr {}",
                config.server.grpc_addr
            )
        })?;
    let http = TcpListener::bind(config.server.http_addr)
        .await
        .with_context(|| {
            format!(
                "cannot listen on server.http_addr {}",
                config.server.http_addr
            )
        })?;
    Ok(App {
        broker: Arc::new(broker),
        policy,
        store,
        clock,
        config,
        tls,
        grpc,
        http,
    })
}

/// A database URL without its password, for messages.
pub fn redacted(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        // Not a URL (a key=value DSN, say): it may hold a password anywhere.
        return "<database URL, not shown: not a URL>".into();
    };
    let (rest, query) = match rest.split_once('?') {
        Some((r, q)) => (r, Some(q)),
        None => (rest, None),
    };
    let mut out = match rest.rsplit_once('@') {
        Some((_, host)) => format!("{scheme}://***@{host}"),
        None => format!("{scheme}://{rest}"),
    };
    if let Some(q) = query {
        let kept: Vec<String> = q
            .split('&')
            .map(|kv| match kv.split_once('=') {
                Some((k, _)) if k.eq_ignore_ascii_case("password") => format!("{k}=***"),
                _ => kv.to_string(),
            })
            .collect();
        out.push('?');
        out.push_str(&kept.join("&"));
    }
    out
}

#[cfg(test)]
mod redaction_tests {
    use super::redacted;

    #[test]
    fn no_password_survives_redaction() {
        for (url, shown) in [
            ("postgres://u:hunter2@db:5432/m", "postgres://***@db:5432/m"),
            (
                "postgres://db/m?password=hunter2&sslmode=require",
                "postgres://db/m?password=***&sslmode=require",
            ),
            (
                "postgres://u@db/m?PASSWORD=hunter2",
                "postgres://***@db/m?PASSWORD=***",
            ),
            (
                "host=db password=hunter2",
                "<database URL, not shown: not a URL>",
            ),
            ("sqlite:///var/lib/mayfly.db", "sqlite:///var/lib/mayfly.db"),
        ] {
            assert_eq!(redacted(url), shown);
            assert!(!redacted(url).contains("hunter2"));
        }
    }
}

/// The broker's side of mTLS: its certificate and key, and the trust bundles its
/// callers' SVIDs chain to. Swapped whole when the files change (SPIRE rotates
/// them), for new connections; open connections keep what they were verified with.
#[derive(Clone)]
struct Tls {
    acceptor: TlsAcceptor,
    bundles: TrustBundles,
    /// The files' state when they were read.
    files: FilesState,
}

/// Loads the certificate, key and bundles the configuration names, with the
/// files' state read before them (so a change during the load is seen later).
fn load_tls(config: &Config) -> anyhow::Result<Tls> {
    let files = tls_files_state(config);
    let bundles = TrustBundles::load(
        config
            .trust_domains
            .iter()
            .map(|t| (t.name.as_str(), t.bundle.as_path())),
    )?;
    let acceptor = server_tls(config, &bundles)?;
    Ok(Tls {
        acceptor,
        bundles,
        files,
    })
}

type FilesState = Vec<Option<(std::time::SystemTime, u64)>>;

/// What changes when any TLS file is rewritten or replaced: each file's
/// modification time and length (or its absence).
fn tls_files_state(config: &Config) -> FilesState {
    std::iter::once(&config.server.cert)
        .chain(std::iter::once(&config.server.key))
        .chain(config.trust_domains.iter().map(|t| &t.bundle))
        .map(|p| {
            std::fs::metadata(p)
                .ok()
                .and_then(|m| Some((m.modified().ok()?, m.len())))
        })
        .collect()
}

/// Loads that may fail before one is logged as an error: a rotation writes the
/// certificate, the key and the bundle one after another, and a check between
/// them sees a certificate without its key.
const QUIET_TLS_FAILURES: u32 = 2;

/// Reloads the certificate, key and trust bundles when their files change (and
/// on SIGHUP). A set that does not load (a half-written rotation, a key that does
/// not match, a file not readable) is refused, the previous one stays in force,
/// and the load is tried again at every check until one succeeds.
async fn watch_tls(
    config: Arc<Config>,
    every: Duration,
    current: tokio::sync::watch::Sender<Tls>,
    cancel: CancellationToken,
) {
    let mut hup = Hangup::listen("TLS files");
    // The state of the set in force; a failed load leaves it, so it is retried.
    let mut loaded = current.borrow().files.clone();
    let mut failures = 0u32;
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = hup.recv() => {}
            _ = tick.tick() => {
                if tls_files_state(&config) == loaded {
                    continue;
                }
            }
        }
        match load_tls(&config) {
            Ok(tls) => {
                loaded = tls.files.clone();
                failures = 0;
                let _ = current.send(tls);
                crate::metrics::TLS_RELOADS.inc();
                info!(cert = %config.server.cert.display(), "TLS certificate, key and trust bundles reloaded");
            }
            Err(error) => {
                failures += 1;
                crate::metrics::TLS_RELOAD_FAILURES.inc();
                let error = format!("{error:#}");
                if failures > QUIET_TLS_FAILURES {
                    error!(%error, failures, "TLS reload failed; the previous certificate and bundles stay in force")
                } else {
                    warn!(%error, "TLS files changed but do not load yet; retrying")
                }
            }
        }
    }
}

fn server_tls(config: &Config, bundles: &TrustBundles) -> anyhow::Result<TlsAcceptor> {
    let cert_path = &config.server.cert;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert_path)
        .with_context(|| format!("server.cert: cannot read {}", cert_path.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| {
            format!(
                "server.cert: {} is not a PEM certificate chain",
                cert_path.display()
            )
        })?;
    if chain.is_empty() {
        anyhow::bail!("server.cert: {} holds no certificate", cert_path.display());
    }
    let key = PrivateKeyDer::from_pem_file(&config.server.key).with_context(|| {
        format!(
            "server.key: cannot read a PEM private key from {}",
            config.server.key.display()
        )
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .context("TLS protocol versions")?
        .with_client_cert_verifier(bundles.handshake_verifier())
        .with_single_cert(chain, key)
        .context("server.cert and server.key do not form a usable pair")?;
    tls.alpn_protocols = vec![b"h2".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(tls)))
}

impl App {
    pub fn grpc_addr(&self) -> std::io::Result<SocketAddr> {
        self.grpc.local_addr()
    }

    pub fn http_addr(&self) -> std::io::Result<SocketAddr> {
        self.http.local_addr()
    }

    pub fn broker(&self) -> Arc<Broker> {
        self.broker.clone()
    }

    /// Serves until `shutdown` resolves, then stops accepting, ends watch streams
    /// and waits (up to `server.shutdown_grace`) for in-flight calls to finish.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let cancel = CancellationToken::new();
        let auth = crate::api::Auth {
            roles: Arc::new(self.config.role_map()),
            clock: self.clock.clone(),
            broker: self.broker.clone(),
        };
        let grace = self.config.server.shutdown_grace;

        let (health, health_svc) = tonic_health::server::health_reporter();
        health.set_serving::<TaskServiceServer<TaskApi>>().await;
        health.set_serving::<TokenServiceServer<TokenApi>>().await;
        health.set_serving::<AdminServiceServer<AdminApi>>().await;
        health
            .set_serving::<VerifierServiceServer<VerifierApi>>()
            .await;
        let reflection = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1()
            .context("building the reflection service")?;

        let b = &self.broker;
        let router = tonic::transport::Server::builder()
            // Find and drop dead peers, so their connections and streams do not linger.
            .http2_keepalive_interval(Some(Duration::from_secs(30)))
            .http2_keepalive_timeout(Some(Duration::from_secs(10)))
            .add_service(health_svc)
            .add_service(reflection)
            .add_service(TaskServiceServer::new(TaskApi {
                broker: b.clone(),
                auth: auth.clone(),
            }))
            .add_service(TokenServiceServer::new(TokenApi {
                broker: b.clone(),
                auth: auth.clone(),
            }))
            .add_service(AdminServiceServer::new(AdminApi {
                broker: b.clone(),
                auth: auth.clone(),
            }))
            .add_service(VerifierServiceServer::new(VerifierApi {
                broker: b.clone(),
                auth,
                shutdown: cancel.clone(),
                poll: self.config.revocation.poll_interval,
                heartbeat: self.config.revocation.heartbeat,
            }));

        let (conn_tx, conn_rx) = tokio::sync::mpsc::channel::<Result<TlsConn, std::io::Error>>(64);
        let (tls_tx, tls_rx) = tokio::sync::watch::channel(self.tls);
        let tls_reloader = tokio::spawn(watch_tls(
            Arc::new(self.config.clone()),
            self.config.server.reload_interval,
            tls_tx,
            cancel.clone(),
        ));
        let accept = tokio::spawn(accept_loop(self.grpc, tls_rx, conn_tx, cancel.clone()));
        let grpc = tokio::spawn(router.serve_with_incoming_shutdown(
            tokio_stream::wrappers::ReceiverStream::new(conn_rx),
            cancel.clone().cancelled_owned(),
        ));

        let http_router = Router::new()
            .route("/.well-known/jwks.json", get(jwks))
            .route("/healthz", get(|| async { "ok" }))
            .route("/readyz", get(readyz))
            .route("/metrics", get(metrics))
            .with_state(HttpState {
                broker: b.clone(),
                store: self.store.clone(),
                policy: self.policy.clone(),
            });
        let http = tokio::spawn(
            axum::serve(self.http, http_router)
                .with_graceful_shutdown(cancel.clone().cancelled_owned())
                .into_future(),
        );

        let sweeper = tokio::spawn(every(self.config.tasks.sweep_interval, cancel.clone(), {
            let b = b.clone();
            move || {
                let b = b.clone();
                async move {
                    // At most one line per sweep beyond the per-task errors, so an
                    // outage does not flood the log.
                    let s = b.sweep_expired().await;
                    if let Some(error) = &s.stopped {
                        warn!(%error, ended = s.ended, failed = s.failed, "expiry sweep stopped early; will retry");
                    } else if s.failed > 0 {
                        warn!(
                            ended = s.ended,
                            failed = s.failed,
                            "expiry sweep could not end some tasks; will retry"
                        );
                    } else if s.ended > 0 {
                        info!(
                            tasks = s.ended,
                            "expired tasks ended and their tokens revoked"
                        );
                    }
                }
            }
        }));
        let heartbeat = tokio::spawn(every(self.config.keys.heartbeat, cancel.clone(), {
            let b = b.clone();
            move || {
                let b = b.clone();
                async move {
                    if let Err(error) = b.renew_key().await {
                        warn!(%error, "could not renew the signing key registration; will retry");
                    }
                    // Also forget keys that other replicas stopped publishing.
                    if let Err(error) = b.refresh_keys().await {
                        warn!(%error, "could not refresh the published keys; will retry");
                    }
                }
            }
        }));

        let sealer = tokio::spawn(every(self.config.audit.seal_interval, cancel.clone(), {
            let b = b.clone();
            // One line when sealing starts failing and one when it recovers, not
            // one per interval.
            let failing = Arc::new(std::sync::atomic::AtomicBool::new(false));
            move || {
                let (b, failing) = (b.clone(), failing.clone());
                async move {
                    use std::sync::atomic::Ordering::SeqCst;
                    match b.seal_audit().await {
                        Err(error) if !failing.swap(true, SeqCst) => {
                            warn!(%error, "cannot seal audit events into the chain; will retry");
                        }
                        Ok(_) if failing.swap(false, SeqCst) => {
                            info!("sealing audit events into the chain again");
                        }
                        _ => {}
                    }
                }
            }
        }));

        let reloader = tokio::spawn(watch_policies(
            self.policy.clone(),
            self.config.policy.reload_interval,
            cancel.clone(),
        ));

        let follower = tokio::spawn(crate::revocation::follow_store(
            self.store.clone(),
            b.hub().clone(),
            cancel.clone(),
        ));

        info!(grpc = %self.config.server.grpc_addr, http = %self.config.server.http_addr, kid = b.kid(), "mayfly serving");
        shutdown.await;
        info!("shutting down: draining open calls and streams");
        // Probes and load balancers stop routing here before the listener closes:
        // every service and the server as a whole ("") report NOT_SERVING.
        health.set_not_serving::<TaskServiceServer<TaskApi>>().await;
        health
            .set_not_serving::<TokenServiceServer<TokenApi>>()
            .await;
        health
            .set_not_serving::<AdminServiceServer<AdminApi>>()
            .await;
        health
            .set_not_serving::<VerifierServiceServer<VerifierApi>>()
            .await;
        health
            .set_service_status("", tonic_health::ServingStatus::NotServing)
            .await;
        cancel.cancel();
        let drained = tokio::time::timeout(grace, async {
            let _ = accept.await;
            let g = grpc.await;
            let h = http.await;
            let _ = sweeper.await;
            let _ = heartbeat.await;
            let _ = sealer.await;
            let _ = reloader.await;
            let _ = tls_reloader.await;
            let _ = follower.await;
            (g, h)
        })
        .await;
        match drained {
            Ok((g, h)) => {
                g.context("gRPC server task")?.context("gRPC server")?;
                h.context("HTTP server task")?.context("HTTP server")?;
                info!("shut down cleanly");
            }
            Err(_) => {
                warn!(grace = ?grace, "open calls did not finish within the shutdown grace period")
            }
        }
        Ok(())
    }
}

/// Runs `f` every `period` until cancelled.
async fn every<F, Fut>(period: Duration, cancel: CancellationToken, f: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = ()>,
{
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => f().await,
        }
    }
}

/// Accepts TCP connections and completes TLS handshakes in their own tasks, so a
/// slow client never holds up others. Failed handshakes never reach tonic, so
/// they are logged here with the reason.
async fn accept_loop(
    listener: TcpListener,
    tls: tokio::sync::watch::Receiver<Tls>,
    out: tokio::sync::mpsc::Sender<Result<TlsConn, std::io::Error>>,
    cancel: CancellationToken,
) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_HANDSHAKES));
    loop {
        let slot = tokio::select! {
            _ = cancel.cancelled() => return,
            s = slots.clone().acquire_owned() => match s {
                Ok(s) => s,
                Err(_) => return,
            },
        };
        let (tcp, peer) = tokio::select! {
            _ = cancel.cancelled() => return,
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(error) => {
                    warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = tcp.set_nodelay(true);
        // The certificate and bundles in force now: a reload applies to new
        // connections.
        let Tls {
            acceptor, bundles, ..
        } = tls.borrow().clone();
        let out = out.clone();
        tokio::spawn(async move {
            let handshake = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await;
            drop(slot);
            match handshake {
                Ok(Ok(stream)) => {
                    let conn = TlsConn::new(stream, &bundles);
                    match &conn.info().identity {
                        Ok(c) => debug!(%peer, caller = %c.id, "mTLS connection"),
                        Err(why) => {
                            warn!(%peer, %why, "connection without a valid X.509-SVID; its calls will be refused")
                        }
                    }
                    let _ = out.send(Ok(conn)).await;
                }
                Ok(Err(why)) => warn!(%peer, %why, "TLS handshake failed"),
                Err(_) => warn!(%peer, "TLS handshake timed out"),
            }
        });
    }
}

#[derive(Clone)]
struct HttpState {
    broker: Arc<Broker>,
    store: Arc<dyn Store>,
    policy: Arc<CedarPolicy>,
}

async fn jwks(State(s): State<HttpState>) -> axum::response::Response {
    match s.broker.jwks().await {
        Ok(jwks) => (
            [(axum::http::header::CACHE_CONTROL, "public, max-age=60")],
            Json(jwks),
        )
            .into_response(),
        Err(error) => {
            error!(%error, "JWKS: store unavailable");
            (StatusCode::SERVICE_UNAVAILABLE, "store unavailable").into_response()
        }
    }
}

/// Prometheus text exposition. The active-task count is the store's; when the
/// store does not answer in time it is left at its last reading.
async fn metrics(State(s): State<HttpState>) -> axum::response::Response {
    let active =
        match tokio::time::timeout(Duration::from_secs(2), s.store.count_active_tasks()).await {
            Ok(Ok(n)) => Some(n),
            _ => None,
        };
    let body =
        s.broker
            .metrics()
            .encode(active, s.broker.hub().watchers(), s.policy.status().reloads);
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        body,
    )
        .into_response()
}

async fn readyz(State(s): State<HttpState>) -> axum::response::Response {
    // A failed policy reload does not make the broker unready (the last good set
    // keeps serving), but it is reported here for operators.
    let status = s.policy.status();
    let mut policy = format!(
        "\npolicy: {} policies, {} reloads, {} failed reloads",
        status.policies, status.reloads, status.failed_reloads
    );
    if let Some(e) = status.last_error {
        policy.push_str(&format!(
            "\npolicy reload failed, still serving the previous set:\n{e}"
        ));
    }
    match tokio::time::timeout(Duration::from_secs(2), s.store.ping()).await {
        Ok(Ok(())) => (StatusCode::OK, format!("ready{policy}")).into_response(),
        Ok(Err(error)) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {error}{policy}"),
        )
            .into_response(),
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: the store did not answer within 2s{policy}"),
        )
            .into_response(),
    }
}

/// SIGHUP, for a reloader: one listener each (every listener gets the signal).
/// Where it cannot be listened for, it never arrives and files reload on change.
struct Hangup {
    #[cfg(unix)]
    signal: Option<tokio::signal::unix::Signal>,
}

impl Hangup {
    fn listen(what: &str) -> Self {
        #[cfg(unix)]
        {
            let signal = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            {
                Ok(s) => Some(s),
                Err(error) => {
                    warn!(%error, "cannot listen for SIGHUP; {what} reload on change only");
                    None
                }
            };
            Hangup { signal }
        }
        #[cfg(not(unix))]
        {
            let _ = what;
            Hangup {}
        }
    }

    async fn recv(&mut self) {
        #[cfg(unix)]
        if let Some(s) = self.signal.as_mut() {
            if s.recv().await.is_some() {
                return;
            }
            // The signal driver is gone (the runtime is shutting down).
            self.signal = None;
        }
        std::future::pending::<()>().await
    }
}

/// Reloads the policy directory on SIGHUP and whenever its files change.
async fn watch_policies(policy: Arc<CedarPolicy>, every: Duration, cancel: CancellationToken) {
    let mut hup = Hangup::listen("policies");
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let result = tokio::select! {
            _ = cancel.cancelled() => return,
            _ = hup.recv() => policy.reload().map(|_| true),
            _ = tick.tick() => policy.reload_if_changed(),
        };
        match result {
            Ok(true) => {
                info!(dir = %policy.dir().display(), policies = policy.status().policies, "policies reloaded")
            }
            Ok(false) => {}
            Err(e) => {
                error!(dir = %policy.dir().display(), error = %e, "policy reload failed; the previous policy set stays in force")
            }
        }
    }
}
