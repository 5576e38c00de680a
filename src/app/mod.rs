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
use crate::identity::TlsConn;
use crate::policy::CedarPolicy;
use crate::store::{PgStore, SqliteStore, Store};
use anyhow::Context;
use axum::Router;
use axum::routing::get;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

mod background;
mod http;
mod tls;

use background::{every, watch_policies};
use http::HttpState;
use tls::{Tls, load_tls, watch_tls};

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
            .route("/.well-known/jwks.json", get(http::jwks))
            .route("/healthz", get(|| async { "ok" }))
            .route("/readyz", get(http::readyz))
            .route("/metrics", get(http::metrics))
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
