//! Shared by the load generators: a throwaway database, a dev CA with the broker's
//! files, the example policies with a budget a run cannot exhaust, and the
//! workers' minting loop (over gRPC here; mint_load adds the OAuth front door).
use mayfly::api::pb;
use mayfly::api::pb::task_service_client::TaskServiceClient;
use mayfly::api::pb::token_service_client::TokenServiceClient;
use mayfly::identity::devcerts::DevCa;
use sqlx::Connection;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
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
        entities.replacen("\"max_tokens\": 50,", "\"max_tokens\": 100000000,", 1),
    )?;
    Ok(ca)
}

/// The support agent of the example policies.
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

pub const AGENT: &str = "spiffe://example.org/agent/support-eu-1";

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

/// One load worker's way to mint: gRPC's `MintToken` ([`GrpcMinter`]), or the
/// OAuth front door (mint_load's HTTP workers).
pub trait Minter: Send + 'static {
    /// Mints one token; an error (a refusal included) is a failure, never a mint.
    fn mint(&mut self) -> impl Future<Output = anyhow::Result<()>> + Send;
}

/// A worker minting over a (shared, keep-alive HTTP/2) gRPC channel.
pub struct GrpcMinter {
    pub client: TokenServiceClient<Channel>,
    pub task_id: String,
    pub worker: usize,
    /// Mints so far: each asks for its own resource.
    pub count: u64,
}

impl Minter for GrpcMinter {
    async fn mint(&mut self) -> anyhow::Result<()> {
        self.count += 1;
        let req = pb::MintTokenRequest {
            task_id: self.task_id.clone(),
            scope: Some(pb::Scope {
                audience: "crm-api".into(),
                resource: format!("customers/eu/{}-{}", self.worker, self.count),
                action: "read".into(),
            }),
            ttl_seconds: 300,
        };
        self.client.mint_token(req).await?;
        Ok(())
    }
}

/// Runs every minter in a worker of its own until `stop`; hands the minters back
/// (their connections stay open for the next round) with the latencies of the
/// mints and the number of failures.
pub async fn run_until<M: Minter>(
    minters: Vec<M>,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<(Vec<M>, Vec<Duration>, u64)> {
    let mut workers = vec![];
    for (w, mut m) in minters.into_iter().enumerate() {
        let stop = stop.clone();
        workers.push(tokio::spawn(async move {
            let (mut lat, mut errors) = (Vec::new(), 0u64);
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                match m.mint().await {
                    Ok(()) => lat.push(t.elapsed()),
                    Err(e) => {
                        if errors == 0 {
                            eprintln!("worker {w}: mint failed: {e:#}");
                        }
                        errors += 1;
                    }
                }
            }
            (m, lat, errors)
        }));
    }
    let (mut minters, mut all, mut errors) = (vec![], vec![], 0);
    for w in workers {
        let (m, lat, e) = w.await?;
        minters.push(m);
        all.extend(lat);
        errors += e;
    }
    Ok((minters, all, errors))
}

/// Mints over gRPC from `concurrency` workers until `stop`; their latencies and
/// errors.
pub async fn mint_until(
    clients: &[TokenServiceClient<Channel>],
    tasks: &[String],
    concurrency: usize,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<(Vec<Duration>, u64)> {
    let minters = (0..concurrency)
        .map(|w| GrpcMinter {
            client: clients[w % clients.len()].clone(),
            task_id: tasks[w % tasks.len()].clone(),
            worker: w,
            count: 0,
        })
        .collect();
    let (_, all, errors) = run_until(minters, stop).await?;
    Ok((all, errors))
}
