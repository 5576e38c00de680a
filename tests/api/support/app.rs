//! spawn_app: the real broker in-process on ephemeral ports, on a fresh database,
//! and the calls tests make on it.
use super::config::Settings;
use super::db::{AuditRow, TestDb, audit_by, fresh_database};
use super::pki::{ADMIN, ORCH, Pki, VERIFIER, mtls_channel};
use super::proxy::Proxy;
use super::requests::{Mint, http_get, mint_request, start_request};
use mayfly::api::pb;
use mayfly::api::pb::admin_service_client::AdminServiceClient;
use mayfly::api::pb::task_service_client::TaskServiceClient;
use mayfly::api::pb::token_service_client::TokenServiceClient;
use mayfly::api::pb::verifier_service_client::VerifierServiceClient;
use mayfly::clock::ManualClock;
use mayfly::config::Config;
use mayfly::identity::devcerts::{Issued, SvidSpec};
use mayfly::store::SqlStore;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tonic::transport::Channel;

/// A broker running in the test's runtime, on ephemeral ports; shut down when
/// dropped (or by [`TestApp::stop`]).
pub struct TestApp {
    pub grpc: SocketAddr,
    pub http: SocketAddr,
    pub clock: ManualClock,
    pub pki: Arc<Pki>,
    pub db_url: String,
    _db: Option<TestDb>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    handle: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

pub async fn spawn_app() -> TestApp {
    spawn_with(Arc::new(Pki::new()), Settings::new()).await
}

/// The broker configured by `settings`, on a fresh database unless they name one.
pub async fn spawn_with(pki: Arc<Pki>, settings: Settings) -> TestApp {
    start(pki, settings, ManualClock::default()).await
}

/// The broker configured by `settings`, on `clock` (one that starts in the past,
/// say, so that what it writes is dated as the database's own clock would).
pub async fn spawn_on_clock(pki: Arc<Pki>, settings: Settings, clock: ManualClock) -> TestApp {
    start(pki, settings, clock).await
}

/// Another broker on `of`'s database and clock (replicas must agree on the time:
/// a token minted by one must not be "not yet valid" on another).
pub async fn spawn_replica(pki: Arc<Pki>, of: &TestApp, settings: Settings) -> TestApp {
    start(pki, settings.database(&of.db_url), of.clock.clone()).await
}

async fn start(pki: Arc<Pki>, settings: Settings, clock: ManualClock) -> TestApp {
    let (settings, db) = match settings.database_url() {
        Some(_) => (settings, None),
        None => {
            let db = fresh_database().await;
            (settings.database(&db.url), Some(db))
        }
    };
    let db_url = settings.database_url().unwrap().to_string();
    let cfg = Config::parse(&settings.render(&pki), "test").unwrap();
    cfg.validate().unwrap();
    let app = mayfly::app::build(cfg, Arc::new(clock.clone()))
        .await
        .expect("build app");
    let grpc = app.grpc_addr().unwrap();
    let http = app.http_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let handle = tokio::spawn(app.run(async move {
        let _ = rx.await;
    }));
    TestApp {
        grpc,
        http,
        clock,
        pki,
        db_url,
        _db: db,
        shutdown: Some(tx),
        handle: Some(handle),
    }
}

impl TestApp {
    /// Stops the app and waits until it has shut down.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        match self.handle.take() {
            Some(h) => h.await?,
            None => Ok(()),
        }
    }

    pub fn issue(&self, spec: &SvidSpec) -> Issued {
        self.pki.ca.issue(spec).unwrap()
    }

    pub async fn channel_with(
        &self,
        identity: Option<&Issued>,
    ) -> Result<Channel, tonic::transport::Error> {
        mtls_channel(self.grpc, &self.pki.ca, identity).await
    }

    /// A channel authenticated as a fresh, well-formed SVID for `spiffe_id`.
    pub async fn channel(&self, spiffe_id: &str) -> (Channel, Issued) {
        let id = self.pki.ca.svid(spiffe_id).unwrap();
        let ch = self.channel_with(Some(&id)).await.expect("connect");
        (ch, id)
    }

    pub async fn tasks(&self, id: &str) -> TaskServiceClient<Channel> {
        TaskServiceClient::new(self.channel(id).await.0)
    }
    pub async fn tokens(&self, id: &str) -> (TokenServiceClient<Channel>, Issued) {
        let (ch, issued) = self.channel(id).await;
        (TokenServiceClient::new(ch), issued)
    }
    pub async fn admin(&self, id: &str) -> AdminServiceClient<Channel> {
        AdminServiceClient::new(self.channel(id).await.0)
    }
    pub async fn verifier(&self, id: &str) -> VerifierServiceClient<Channel> {
        VerifierServiceClient::new(self.channel(id).await.0)
    }

    /// A store handle on the app's database, for checking what was persisted.
    pub async fn store(&self) -> SqlStore {
        SqlStore::postgres(&self.db_url, 2, Duration::from_secs(5))
            .await
            .unwrap()
    }

    /// Opens a support task for AGENT with the default scopes.
    pub async fn open_task(&self, agent: &str, duration: u64) -> pb::Task {
        self.open_task_with(start_request(agent, duration)).await
    }

    /// Opens the task `req` describes, as the orchestrator.
    pub async fn open_task_with(&self, req: pb::StartTaskRequest) -> pb::Task {
        self.tasks(ORCH)
            .await
            .start_task(req)
            .await
            .expect("start task")
            .into_inner()
            .task
            .unwrap()
    }

    /// Reads a task as the orchestrator.
    pub async fn get_task(&self, id: &str) -> pb::Task {
        self.tasks(ORCH)
            .await
            .get_task(pb::GetTaskRequest { task_id: id.into() })
            .await
            .expect("get task")
            .into_inner()
            .task
            .unwrap()
    }

    /// Mints as `agent` on a fresh connection.
    pub async fn mint(
        &self,
        agent: &str,
        task: &str,
        resource: &str,
        ttl: u64,
    ) -> pb::MintTokenResponse {
        self.tokens(agent)
            .await
            .0
            .minted(mint_request(task, resource, ttl))
            .await
    }

    /// Opens a revocation watch as the verifier.
    pub async fn watch(&self, after: u64) -> tonic::Streaming<pb::WatchRevocationsResponse> {
        self.verifier(VERIFIER)
            .await
            .watch_revocations(pb::WatchRevocationsRequest {
                after_sequence: after,
                ..Default::default()
            })
            .await
            .expect("watch")
            .into_inner()
    }

    /// The tokens of a task, as the admin sees them.
    pub async fn task_tokens(&self, task: &str) -> Vec<pb::TokenInfo> {
        self.admin(ADMIN)
            .await
            .list_tokens(pb::ListTokensRequest {
                task_id: task.into(),
                ..Default::default()
            })
            .await
            .expect("list tokens")
            .into_inner()
            .tokens
    }

    pub async fn http_get(&self, path: &str) -> (u16, String) {
        http_get(self.http, path).await
    }

    /// Commits `n` agent revocations through gRPC as the admin; their sequences.
    pub async fn revoke_agents(&self, tag: &str, n: usize) -> Vec<u64> {
        let mut admin = self.admin(ADMIN).await;
        let mut seqs = vec![];
        for i in 0..n {
            let agent = format!("spiffe://example.org/agent/{tag}-{i}");
            let r = admin
                .revoke(super::requests::revoke_request(
                    pb::revocation_target::Target::Agent(agent),
                    "drill",
                ))
                .await
                .expect("revoke")
                .into_inner();
            seqs.push(r.event.expect("the event").sequence);
        }
        seqs
    }

    /// Starts `revokers` admins revoking `each` agents at once (agents
    /// `r<revoker>-<i>`); join them to wait for every revocation.
    pub async fn revoke_concurrently(
        &self,
        revokers: usize,
        each: usize,
    ) -> Vec<tokio::task::JoinHandle<()>> {
        let mut joins = vec![];
        for r in 0..revokers {
            let mut admin = self.admin(ADMIN).await;
            joins.push(tokio::spawn(async move {
                for i in 0..each {
                    let agent = format!("spiffe://example.org/agent/r{r}-{i}");
                    admin
                        .revoke(super::requests::revoke_request(
                            pb::revocation_target::Target::Agent(agent),
                            "drill",
                        ))
                        .await
                        .unwrap();
                }
            }));
        }
        joins
    }

    /// The audit events under `task` (its id as the API shows it), in chain
    /// order, as stored.
    pub async fn task_audit(&self, task: &str) -> Vec<mayfly::domain::audit::AuditEvent> {
        use mayfly::store::AuditStore;
        let id = mayfly::domain::TaskId(task.parse().expect("a task id"));
        self.store().await.audit_for_task(id).await.unwrap()
    }

    /// The audit events `actor` caused, oldest first, as stored.
    pub async fn audit_by(&self, actor: &str) -> Vec<AuditRow> {
        audit_by(&self.store().await, actor).await
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// A broker whose database (a fresh one) it reaches through a [`Proxy`] the test
/// can cut; the database of `settings` is set here.
pub async fn spawn_behind_proxy(settings: Settings) -> (TestApp, Proxy, TestDb) {
    let direct = fresh_database().await;
    let proxy = Proxy::to_postgres().await;
    let settings = settings.database(&proxy.url_of(&direct));
    (
        spawn_with(Arc::new(Pki::new()), settings).await,
        proxy,
        direct,
    )
}
