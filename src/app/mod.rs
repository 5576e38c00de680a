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
use crate::policy::CedarPolicy;
use crate::store::{DatabaseUrl, Health, SqlStore, Store, redacted};
use anyhow::Context;
use axum::Router;
use axum::routing::get;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

mod background;
mod calls;
mod http;
mod listener;
mod refusals;
mod slots;
mod tls;

use background::{supervise, watch_policies};
use http::HttpState;
use tls::{Tls, load_tls, watch_tls};

/// The longest the store probe waits for an answer (less if
/// `database.connect_timeout` is shorter): `SELECT 1` on a live database takes
/// milliseconds, and a dead one should be found out soon.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// The largest `grpc.health.v1` request (a service name).
const HEALTH_MESSAGE_BYTES: usize = 1024;
/// How often the active-task gauge is recounted (a scrape never queries the store).
const GAUGE_INTERVAL: Duration = Duration::from_secs(5);

pub struct App {
    broker: Arc<Broker>,
    policy: Arc<CedarPolicy>,
    /// The store behind the fail-fast gate (its ping, the probe's, is not gated).
    store: Arc<dyn Store>,
    health: Arc<Health>,
    /// The connection cap after fitting it to the file descriptor limit.
    max_connections: usize,
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

/// The broker's two listeners: the mTLS port (gRPC and the OAuth front door)
/// and the plain HTTP port.
pub struct Listeners {
    pub grpc: TcpListener,
    pub http: TcpListener,
}

impl Listeners {
    /// Binds `server.grpc_addr` and `server.http_addr`.
    pub async fn bind(grpc: SocketAddr, http: SocketAddr) -> anyhow::Result<Listeners> {
        let grpc = TcpListener::bind(grpc)
            .await
            .with_context(|| format!("cannot listen on server.grpc_addr {grpc}"))?;
        let http = TcpListener::bind(http)
            .await
            .with_context(|| format!("cannot listen on server.http_addr {http}"))?;
        Ok(Listeners { grpc, http })
    }
}

/// Builds the broker from validated settings: bundles, TLS, store, key,
/// listeners on the configured addresses.
pub async fn build(config: Config, clock: Arc<dyn Clock>) -> anyhow::Result<App> {
    let listeners = Listeners::bind(config.server.grpc_addr, config.server.http_addr).await?;
    build_on(config, clock, listeners).await
}

/// Builds the broker on listeners already bound (`mayfly dev` names its
/// issuer after the port it got).
pub async fn build_on(
    config: Config,
    clock: Arc<dyn Clock>,
    listeners: Listeners,
) -> anyhow::Result<App> {
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
    let store = match DatabaseUrl::parse(url.expose())
        .map_err(|why| anyhow::anyhow!("database.url {why}"))?
    {
        DatabaseUrl::Sqlite(path) => SqlStore::sqlite(
            &path,
            config.database.max_connections,
            config.database.connect_timeout,
        )
        .await
        .with_context(|| format!("cannot use the SQLite database {}", path.display()))?,
        DatabaseUrl::Postgres(url) => {
            let shown = redacted(&url);
            let store = SqlStore::postgres_unmigrated(
                &url,
                config.database.max_connections,
                config.database.connect_timeout,
            )
            .await
            .with_context(|| format!("cannot use the database at {shown}"))?;
            if config.database.migrate {
                store.migrate().await.map(drop)
            } else {
                store.check_schema().await
            }
            .with_context(|| format!("cannot use the database at {shown}"))?;
            store
        }
    };
    let health = Health::new();
    // Every call fails fast while the probe finds the store down; the probe's
    // own ping is not gated.
    let store: Arc<dyn Store> = Arc::new(store.gated(health.clone()));
    let (max_connections, fd_limit) = listener::connection_cap(
        config.limits.max_connections,
        config.database.max_connections,
    );
    if let Some(fd_limit) = fd_limit {
        if max_connections < 16 {
            anyhow::bail!(
                "the file descriptor limit ({fd_limit}) leaves room for {max_connections} connections after the database pool; raise it (ulimit -n) or lower database.max_connections"
            );
        }
        warn!(
            configured = config.limits.max_connections,
            effective = max_connections,
            fd_limit,
            "limits.max_connections lowered to fit the file descriptor limit"
        );
    }
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
    let Listeners { grpc, http } = listeners;
    Ok(App {
        broker: Arc::new(broker),
        policy,
        store,
        health,
        max_connections,
        clock,
        config,
        tls,
        grpc,
        http,
    })
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
        let l = &self.config.limits;
        // Health answers callers without an SVID (app/listener.rs): its requests
        // are a service name, so its limit is tiny.
        let grpc_router =
            tonic::service::Routes::new(health_svc.max_decoding_message_size(HEALTH_MESSAGE_BYTES))
                .add_service(reflection.max_decoding_message_size(l.admin_message_bytes))
                .add_service(
                    TaskServiceServer::new(TaskApi {
                        broker: b.clone(),
                        auth: auth.clone(),
                    })
                    .max_decoding_message_size(l.task_message_bytes),
                )
                .add_service(
                    TokenServiceServer::new(TokenApi {
                        broker: b.clone(),
                        auth: auth.clone(),
                    })
                    .max_decoding_message_size(l.token_message_bytes),
                )
                .add_service(
                    AdminServiceServer::new(AdminApi {
                        broker: b.clone(),
                        auth: auth.clone(),
                    })
                    .max_decoding_message_size(l.admin_message_bytes),
                )
                .add_service(
                    VerifierServiceServer::new(VerifierApi {
                        broker: b.clone(),
                        auth: auth.clone(),
                        shutdown: cancel.clone(),
                        poll: self.config.revocation.poll_interval,
                        heartbeat: self.config.revocation.heartbeat,
                    })
                    .max_decoding_message_size(l.verifier_message_bytes),
                )
                .prepare()
                .into_axum_router();
        // The OAuth front door shares the mTLS port: one address, one
        // certificate and the same limits for everything that needs an SVID.
        let c = &self.config;
        let oauth = crate::api::oauth::OauthState::new(
            b.clone(),
            auth,
            crate::api::oauth::Metadata::new(
                &c.server.issuer,
                c.oauth.base_url(&c.server.issuer),
                c.revocation.heartbeat,
                c.oauth.poll_interval,
            ),
            crate::api::oauth::Tuning {
                form_bytes: l.token_message_bytes,
                form_deadline: l.first_request_timeout,
                poll_interval: c.oauth.poll_interval,
                watch: crate::api::oauth::Pace {
                    poll: c.revocation.poll_interval,
                    heartbeat: c.revocation.heartbeat,
                },
            },
            cancel.clone(),
        );
        let grpc_router = grpc_router
            .merge(crate::api::oauth::router(oauth))
            .fallback(crate::api::oauth::fallback);

        let shared = listener::Shared::new(l.clone(), self.max_connections);
        let (tls_tx, tls_rx) = tokio::sync::watch::channel(self.tls);
        let tls_reloader = supervise("tls_reloader", cancel.clone(), {
            let (config, tls_tx, cancel) = (
                Arc::new(self.config.clone()),
                Arc::new(tls_tx),
                cancel.clone(),
            );
            move || {
                let every = config.server.reload_interval;
                watch_tls(config.clone(), every, tls_tx.clone(), cancel.clone())
            }
        });
        let mut grpc = tokio::spawn(listener::serve(
            self.grpc,
            listener::Kind::Grpc(tls_rx),
            grpc_router,
            shared.clone(),
            cancel.clone(),
        ));

        let http_router = Router::new()
            .route("/.well-known/jwks.json", get(http::jwks))
            .route("/healthz", get(|| async { "ok" }))
            .route("/readyz", get(http::readyz))
            .route("/metrics", get(http::metrics))
            .with_state(HttpState {
                broker: b.clone(),
                health: self.health.clone(),
                policy: self.policy.clone(),
            });
        let mut http = tokio::spawn(listener::serve(
            self.http,
            listener::Kind::Http,
            http_router,
            shared.clone(),
            cancel.clone(),
        ));
        // Every worker is supervised: one that panics is logged, counted and
        // started again (background::supervise).
        let c = &self.config;
        let workers = [
            supervise("refusal_summary", cancel.clone(), {
                let (shared, cancel) = (shared.clone(), cancel.clone());
                move || shared.clone().summarize(cancel.clone())
            }),
            supervise("store_probe", cancel.clone(), {
                let (store, health, cancel) =
                    (self.store.clone(), self.health.clone(), cancel.clone());
                let (every, timeout) = (
                    c.database.probe_interval,
                    c.database.connect_timeout.min(PROBE_TIMEOUT),
                );
                move || {
                    background::probe(
                        store.clone(),
                        health.clone(),
                        every,
                        timeout,
                        cancel.clone(),
                    )
                }
            }),
            supervise("active_task_gauge", cancel.clone(), {
                let (b, cancel) = (b.clone(), cancel.clone());
                move || background::active_task_gauge(b.clone(), GAUGE_INTERVAL, cancel.clone())
            }),
            supervise("expiry_sweeper", cancel.clone(), {
                let (b, cancel, every) = (b.clone(), cancel.clone(), c.tasks.sweep_interval);
                move || background::expiry_sweeper(b.clone(), every, cancel.clone())
            }),
            supervise("pruner", cancel.clone(), {
                let (b, cancel, every) = (b.clone(), cancel.clone(), c.retention.interval);
                let retention = c.retention.retention();
                move || background::pruner(b.clone(), retention, every, cancel.clone())
            }),
            supervise("key_heartbeat", cancel.clone(), {
                let (b, cancel, every) = (b.clone(), cancel.clone(), c.keys.heartbeat);
                move || background::key_heartbeat(b.clone(), every, cancel.clone())
            }),
            supervise("key_notices", cancel.clone(), {
                let (b, cancel) = (b.clone(), cancel.clone());
                move || background::key_notices(b.clone(), cancel.clone())
            }),
            supervise("audit_sealer", cancel.clone(), {
                let (b, cancel, every) = (b.clone(), cancel.clone(), c.audit.seal_interval);
                move || background::audit_sealer(b.clone(), every, cancel.clone())
            }),
            supervise("policy_reloader", cancel.clone(), {
                let (policy, cancel, every) = (
                    self.policy.clone(),
                    cancel.clone(),
                    c.policy.reload_interval,
                );
                move || watch_policies(policy.clone(), every, cancel.clone())
            }),
            supervise("revocation_follower", cancel.clone(), {
                let (store, hub, cancel) = (self.store.clone(), b.hub().clone(), cancel.clone());
                move || crate::revocation::follow_store(store.clone(), hub.clone(), cancel.clone())
            }),
            tls_reloader,
        ];

        info!(grpc = %self.config.server.grpc_addr, http = %self.config.server.http_addr, kid = b.kid(), "mayfly serving");
        // A listener ends only at shutdown: one that stops before (it panicked)
        // stops the broker, rather than leaving a process that accepts nothing.
        let stopped = tokio::select! {
            _ = shutdown => None,
            r = &mut grpc => Some(("gRPC", r)),
            r = &mut http => Some(("HTTP", r)),
        };
        if let Some((which, r)) = stopped {
            cancel.cancel();
            let why = match r {
                Err(e) if e.is_panic() => background::panic_message(e.into_panic()),
                _ => "it ended".to_string(),
            };
            error!(listener = which, %why, "a listener stopped; the broker stops");
            anyhow::bail!("the {which} listener stopped: {why}");
        }
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
            let g = grpc.await;
            let h = http.await;
            // Every connection was asked to finish (GOAWAY, or closing after the
            // response in flight); watch streams ended with `cancel`.
            shared.tasks.close();
            shared.tasks.wait().await;
            for worker in workers {
                let _ = worker.await;
            }
            (g, h)
        })
        .await;
        match drained {
            Ok((g, h)) => {
                g.context("gRPC listener task")?;
                h.context("HTTP listener task")?;
                info!("shut down cleanly");
            }
            Err(_) => {
                warn!(grace = ?grace, "open calls did not finish within the shutdown grace period")
            }
        }
        Ok(())
    }
}
