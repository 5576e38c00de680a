//! Shared by the load generators: a throwaway database, a dev CA with the broker's
//! files, the example policies with a budget a run cannot exhaust, the broker
//! in-process, and the parties and plan of the load driver (`mayfly::bench`,
//! `mayfly bench`'s) that mints against it.
use mayfly::api::pb;
use mayfly::api::pb::task_service_client::TaskServiceClient;
use mayfly::bench::{Edge, Parties, Plan, TaskPlan};
use mayfly::client::{Broker, Svid};
use mayfly::identity::devcerts::DevCa;
use sqlx::Connection;
use std::sync::Arc;
use std::time::Duration;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

/// The `p` quantile of sorted latencies.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// The config of a broker on ephemeral ports over `db_url`, with the files
/// [`broker_files`] wrote into `dir`, agents and orchestrators by path, and
/// `extra` (more sections) at the end.
pub fn broker_config(dir: &std::path::Path, db_url: &str, extra: &str) -> String {
    format!(
        r#"
[server]
issuer = "https://mayfly.bench"
grpc_addr = "127.0.0.1:0"
http_addr = "127.0.0.1:0"
cert = "{d}/broker.crt"
key = "{d}/broker.key"
[database]
url = "{db_url}"
max_connections = 32
[[trust_domains]]
name = "example.org"
bundle = "{d}/ca.pem"
[roles]
agent = ["spiffe://example.org/agent/*"]
orchestrator = ["spiffe://example.org/orchestrator/*"]
[policy]
dir = "{d}/policies"
environment = "prod-eu"
{extra}
"#,
        d = dir.display()
    )
}

/// An mTLS endpoint to the broker at `addr` as a fresh SVID for `id`.
pub fn channel(ca: &DevCa, addr: std::net::SocketAddr, id: &str) -> anyhow::Result<Endpoint> {
    let svid = ca.svid(id)?;
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca.cert_pem()))
        .identity(Identity::from_pem(svid.cert_pem, svid.key_pem))
        .domain_name("localhost");
    Ok(Channel::from_shared(format!("https://{addr}"))?.tls_config(tls)?)
}

/// A database created for one run, dropped by [`BenchDb::drop_now`].
pub struct BenchDb {
    pub url: String,
    admin: String,
    name: String,
}

impl BenchDb {
    /// Creates a fresh database on `DATABASE_URL` (default: the local server).
    pub async fn create() -> anyhow::Result<Self> {
        let admin = std::env::var("DATABASE_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
        let name = format!("mayfly_bench_{}", uuid::Uuid::new_v4().simple());
        let mut conn = sqlx::PgConnection::connect(&admin).await?;
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut conn)
            .await?;
        let base = admin.rsplit_once('/').map(|(b, _)| b).unwrap_or(&admin);
        Ok(BenchDb {
            url: format!("{base}/{name}"),
            admin,
            name,
        })
    }

    pub async fn drop_now(self) -> anyhow::Result<()> {
        let mut conn = sqlx::PgConnection::connect(&self.admin).await?;
        let sql = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .execute(&mut conn)
            .await?;
        Ok(())
    }
}

/// Writes `ca.pem`, `broker.crt`/`.key` and `policies/` into `dir`; returns the CA.
pub fn broker_files(dir: &std::path::Path) -> anyhow::Result<DevCa> {
    let ca = DevCa::new("example.org")?;
    let server = ca.server("spiffe://example.org/mayfly/broker", &["localhost"])?;
    std::fs::write(dir.join("ca.pem"), ca.cert_pem())?;
    std::fs::write(dir.join("broker.crt"), &server.cert_pem)?;
    std::fs::write(dir.join("broker.key"), &server.key_pem)?;
    // The example policies (every mint is a real Cedar decision), with a budget
    // that a load run cannot exhaust.
    let policies = dir.join("policies");
    std::fs::create_dir_all(&policies)?;
    let examples = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/policies");
    for entry in std::fs::read_dir(&examples)? {
        let path = entry?.path();
        if let Some(name) = path.file_name() {
            std::fs::copy(&path, policies.join(name))?;
        }
    }
    let entities = std::fs::read_to_string(policies.join("entities.json"))?;
    std::fs::write(
        policies.join("entities.json"),
        entities.replacen(
            "\"max_tokens\": 50,",
            &format!("\"max_tokens\": {BUDGET},"),
            1,
        ),
    )?;
    Ok(ca)
}

/// The support workflow's budget in the policies [`broker_files`] writes.
pub const BUDGET: u64 = 100_000_000;

/// The real broker, built from `cfg`, serving in this process until
/// [`InProcess::stop`].
pub struct InProcess {
    pub addr: std::net::SocketAddr,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

pub async fn serve(cfg: mayfly::config::Config) -> anyhow::Result<InProcess> {
    let app = mayfly::app::build(cfg, Arc::new(mayfly::clock::SystemClock)).await?;
    let addr = app.grpc_addr()?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(app.run(async move {
        let _ = stopped.await;
    }));
    Ok(InProcess { addr, stop, task })
}

impl InProcess {
    pub async fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.task.await;
    }
}

/// The support agent of the example policies.
pub const AGENT: &str = "spiffe://example.org/agent/support-eu-1";
pub const ORCHESTRATOR: &str = "spiffe://example.org/orchestrator/main";

/// The broker at `addr` (its CA as [`broker_files`] wrote it into `dir`), and
/// fresh SVIDs for [`AGENT`] and [`ORCHESTRATOR`] written beside it, as the
/// load driver reads them.
pub fn parties(
    dir: &std::path::Path,
    ca: &DevCa,
    addr: std::net::SocketAddr,
) -> anyhow::Result<Parties> {
    let svid = |name: &str, id: &str| -> anyhow::Result<Svid> {
        let issued = ca.svid(id)?;
        let (cert, key) = (
            dir.join(format!("{name}.crt")),
            dir.join(format!("{name}.key")),
        );
        std::fs::write(&cert, &issued.cert_pem)?;
        std::fs::write(&key, &issued.key_pem)?;
        Svid::read(("--cert", &cert), ("--key", &key))
    };
    Ok(Parties {
        broker: Broker::new(
            &format!("https://{addr}"),
            Some("localhost"),
            &dir.join("ca.pem"),
        )?,
        agent: svid("agent", AGENT)?,
        orchestrator: svid("orchestrator", ORCHESTRATOR)?,
    })
}

/// `concurrency` workers minting EU customer reads through `edge` over kept
/// connections, each in a support-triage task of its own (`one_task`: all in
/// one), within the budget of [`broker_files`]' policies.
pub fn plan(edge: Edge, concurrency: usize, one_task: bool) -> anyhow::Result<Plan> {
    Ok(Plan {
        edge,
        concurrency,
        new_connection: false,
        rate: None,
        hold: 0,
        ttl: Duration::from_secs(300),
        request_timeout: Duration::from_secs(10),
        tasks: TaskPlan {
            workflow: "support-triage".into(),
            scope: mayfly::domain::Scope::declared("crm-api", "customers/eu/*", "read")?,
            duration: Duration::from_secs(3000),
            budget: BUDGET,
            shared: one_task,
            objective: "load".into(),
        },
    })
}

/// Opens a support-triage task for [`AGENT`] reading EU customers.
pub async fn support_task(orchestrator: Channel, objective: &str) -> anyhow::Result<String> {
    let task = TaskServiceClient::new(orchestrator)
        .start_task(pb::StartTaskRequest {
            agent: AGENT.into(),
            workflow: "support-triage".into(),
            objective: objective.into(),
            scopes: vec![pb::Scope {
                audience: "crm-api".into(),
                resource: "customers/eu/*".into(),
                action: "read".into(),
            }],
            duration_seconds: 3000,
        })
        .await?
        .into_inner()
        .task
        .ok_or_else(|| anyhow::anyhow!("no task"))?;
    Ok(task.id)
}
