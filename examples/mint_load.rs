//! Load generator: the real broker in-process (mTLS, PostgreSQL), N agents minting
//! concurrently over keep-alive connections, through gRPC's `MintToken` and/or the
//! OAuth front door's `POST /oauth/token` on the same port; plus the raw cost of
//! signing and verifying one token. Prints rates and latency percentiles, and
//! each edge's throughput against the first's.
//!
//! cargo run --release --example mint_load -- [concurrency] [seconds] [rounds]
//! (defaults 16, 10, 1. EDGE: the edges measured, comma-separated, default
//! `grpc`: `grpc` (4 shared HTTP/2 channels), `http` (the front door over
//! HTTP/1.1, one keep-alive connection per worker), `h2` (the front door over 4
//! shared HTTP/2 connections). Each round runs every edge for `seconds`, in
//! turn, the order reversed every other round so that a drift of the machine's
//! load favours none; every edge first mints for a second unrecorded.
//! ONE_TASK=1: every worker mints in the same task; STORE=sqlite: the embedded
//! SQLite store in a temporary file instead of PostgreSQL)
//! DATABASE_URL (default postgres://postgres@127.0.0.1:5432/postgres) must allow
//! CREATE DATABASE; a fresh database is created and dropped.
// `mint_until` (prune_load's gRPC-only loop) is not used here: each edge's
// workers go to `run_until` and come back for the next round.
#[allow(dead_code)]
mod common;

use axum::body::Body;
use common::{GrpcMinter, Minter};
use mayfly::api::pb::token_service_client::TokenServiceClient;
use mayfly::config::Config;
use mayfly::identity::devcerts::DevCa;
use mayfly::token::{Claims, Confirmation, KeyRecord, KeySet, SigningKey};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

fn crypto() -> anyhow::Result<()> {
    let key = SigningKey::generate().map_err(|_| anyhow::anyhow!("keygen"))?;
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let claims = Claims {
        iss: "mayfly".into(),
        sub: "spiffe://example.org/agent/a".into(),
        aud: "crm-api".into(),
        exp: now + 300,
        iat: now,
        nbf: now,
        jti: uuid::Uuid::new_v4().to_string(),
        scope: "read:customers/eu/42".into(),
        task: uuid::Uuid::new_v4().to_string(),
        wf: "support".into(),
        cnf: Confirmation {
            x5t_s256: "x".repeat(43),
        },
        act: None,
        client_id: "spiffe://example.org/agent/a".into(),
        depth: 0,
        ancestors: vec![],
    };
    let n = 50_000;
    let t = Instant::now();
    let mut token = String::new();
    for _ in 0..n {
        token = key.sign(&claims)?;
    }
    let sign = t.elapsed();
    let set = KeySet::from_records(&[KeyRecord {
        kid: key.kid().into(),
        public_key: key.public_key().to_vec(),
        created_at: time::OffsetDateTime::now_utc(),
        // Published past the verification below (a key is trusted only before its
        // `not_after`: one ending now refused every token when signing took under
        // a second).
        not_after: time::OffsetDateTime::now_utc() + time::Duration::hours(1),
    }]);
    let t = Instant::now();
    for _ in 0..n {
        set.verify(&token, now, 0)?;
    }
    let verify = t.elapsed();
    println!(
        "sign:   {:>8.0} tokens/s ({:.1} us/token, one core)",
        n as f64 / sign.as_secs_f64(),
        sign.as_secs_f64() * 1e6 / n as f64
    );
    println!(
        "verify: {:>8.0} tokens/s ({:.1} us/token, one core)",
        n as f64 / verify.as_secs_f64(),
        verify.as_secs_f64() * 1e6 / n as f64
    );
    Ok(())
}

/// A way in to the broker's mint.
#[derive(Clone, Copy, PartialEq)]
enum Edge {
    Grpc,
    Http1,
    Http2,
}

impl Edge {
    fn parse(s: &str) -> anyhow::Result<Edge> {
        match s.trim() {
            "grpc" => Ok(Edge::Grpc),
            "http" => Ok(Edge::Http1),
            "h2" => Ok(Edge::Http2),
            other => anyhow::bail!("EDGE: {other:?} is none of grpc, http, h2"),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Edge::Grpc => "grpc",
            Edge::Http1 => "http",
            Edge::Http2 => "h2",
        }
    }
}

/// The front door's address, the agent's TLS client config, and whether it
/// speaks HTTP/2 (else HTTP/1.1).
#[derive(Clone)]
struct FrontDoor {
    addr: SocketAddr,
    tls: tokio_rustls::TlsConnector,
    h2: bool,
}

/// An open keep-alive connection to the front door.
enum Conn {
    H1(hyper::client::conn::http1::SendRequest<Body>),
    H2(hyper::client::conn::http2::SendRequest<Body>),
}

impl FrontDoor {
    /// The agent's certificate, offering `h2` or `http/1.1` only.
    fn new(ca: &DevCa, addr: SocketAddr, id: &str, h2: bool) -> anyhow::Result<Self> {
        let svid = ca.svid(id)?;
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_slice_iter(ca.cert_pem().as_bytes()) {
            roots.add(c?)?;
        }
        let chain = CertificateDer::pem_slice_iter(svid.cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()?;
        let key = PrivateKeyDer::from_pem_slice(svid.key_pem.as_bytes())?;
        let mut cfg = rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)?;
        let alpn: &[u8] = if h2 { b"h2" } else { b"http/1.1" };
        cfg.alpn_protocols = vec![alpn.to_vec()];
        Ok(FrontDoor {
            addr,
            tls: tokio_rustls::TlsConnector::from(Arc::new(cfg)),
            h2,
        })
    }

    async fn connect(&self) -> anyhow::Result<Conn> {
        let tcp = tokio::net::TcpStream::connect(self.addr).await?;
        // As tonic's channels do: a request is one small write, sent at once.
        tcp.set_nodelay(true)?;
        let tls = self
            .tls
            .connect(ServerName::try_from("localhost")?, tcp)
            .await?;
        let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
        anyhow::ensure!(
            h2 == self.h2,
            "the broker chose another protocol than offered"
        );
        let io = hyper_util::rt::TokioIo::new(tls);
        Ok(if h2 {
            let (send, conn) =
                hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io)
                    .await?;
            tokio::spawn(conn);
            Conn::H2(send)
        } else {
            let (send, conn) = hyper::client::conn::http1::handshake(io).await?;
            tokio::spawn(conn);
            Conn::H1(send)
        })
    }
}

impl Conn {
    fn is_closed(&self) -> bool {
        match self {
            Conn::H1(s) => s.is_closed(),
            Conn::H2(s) => s.is_closed(),
        }
    }

    async fn send(
        &mut self,
        req: hyper::Request<Body>,
    ) -> hyper::Result<hyper::Response<hyper::body::Incoming>> {
        match self {
            Conn::H1(s) => {
                s.ready().await?;
                s.send_request(req).await
            }
            Conn::H2(s) => {
                s.ready().await?;
                s.send_request(req).await
            }
        }
    }
}

/// What a successful mint answers (RFC 6749 §5.1), the part checked here.
#[derive(serde::Deserialize)]
struct TokenAnswer {
    access_token: String,
    token_type: String,
}

/// A worker minting through `POST /oauth/token` over its connection: a form
/// like any OAuth client's, a 200 with a Bearer token or a failure.
struct HttpMinter {
    door: FrontDoor,
    conn: Option<Conn>,
    task_id: String,
    worker: usize,
    count: u64,
}

impl Minter for HttpMinter {
    async fn mint(&mut self) -> anyhow::Result<()> {
        self.count += 1;
        let body = form_urlencoded::Serializer::new(String::new())
            .append_pair("grant_type", "client_credentials")
            .append_pair("task_id", &self.task_id)
            .append_pair("audience", "crm-api")
            .append_pair(
                "scope",
                &format!("read:customers/eu/{}-{}", self.worker, self.count),
            )
            .append_pair("ttl_seconds", "300")
            .finish();
        let conn = match &mut self.conn {
            Some(c) => c,
            // Broken by an earlier failure: a new connection, its handshake
            // counted in this mint's latency.
            None => self.conn.insert(self.door.connect().await?),
        };
        // HTTP/2 requests carry the authority in the URI; HTTP/1.1 ones in Host.
        let uri = match conn {
            Conn::H1(_) => "/oauth/token".to_string(),
            Conn::H2(_) => format!("https://localhost:{}/oauth/token", self.door.addr.port()),
        };
        let req = hyper::Request::post(uri)
            .header(hyper::header::HOST, "localhost")
            .header(
                hyper::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            )
            .body(Body::from(body))?;
        let resp = match conn.send(req).await {
            Ok(r) => r,
            Err(e) => {
                self.conn = None;
                return Err(e.into());
            }
        };
        let status = resp.status();
        let bytes = match axum::body::to_bytes(Body::new(resp.into_body()), 64 * 1024).await {
            Ok(b) => b,
            Err(e) => {
                self.conn = None;
                return Err(e.into());
            }
        };
        if status != hyper::StatusCode::OK {
            anyhow::bail!("{status}: {}", String::from_utf8_lossy(&bytes));
        }
        let answer: TokenAnswer = serde_json::from_slice(&bytes)?;
        if answer.access_token.is_empty() || answer.token_type != "Bearer" {
            anyhow::bail!("no Bearer token in {}", String::from_utf8_lossy(&bytes));
        }
        Ok(())
    }
}

/// One edge's workers, of whichever kind.
enum Worker {
    Grpc(GrpcMinter),
    Http(HttpMinter),
}

impl Worker {
    /// Reopens a front-door connection that the broker closed while this edge
    /// waited for its turn (an idle HTTP/1.1 connection is closed after
    /// `limits.header_read_timeout`), so that a round measures mints over open
    /// connections; whether it did.
    async fn reopen(&mut self) -> anyhow::Result<bool> {
        match self {
            Worker::Http(m) if m.conn.as_ref().is_none_or(Conn::is_closed) => {
                m.conn = Some(m.door.connect().await?);
                Ok(true)
            }
            _ => Ok(false),
        }
    }
}

impl Minter for Worker {
    async fn mint(&mut self) -> anyhow::Result<()> {
        match self {
            Worker::Grpc(m) => m.mint().await,
            Worker::Http(m) => m.mint().await,
        }
    }
}

/// What one edge measured: latencies of its mints, failures, time spent, and
/// the CPU time this process (broker and load generator) spent meanwhile.
#[derive(Default)]
struct Figures {
    lat: Vec<Duration>,
    errors: u64,
    took: Duration,
    cpu: Option<Duration>,
}

/// This process's CPU time, user and system, all threads (`/proc/self/stat`,
/// in USER_HZ ticks: 100 a second on Linux); None where there is no procfs.
/// Unlike a rate, it hardly moves when other work shares the cores.
fn cpu_time() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The fields after the command name, which is in parentheses: state first,
    // utime and stime the 12th and 13th.
    let mut fields = stat.rsplit_once(')')?.1.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(Duration::from_millis((utime + stime) * 10))
}

impl Figures {
    fn rate(&self) -> f64 {
        self.lat.len() as f64 / self.took.as_secs_f64()
    }

    fn add(&mut self, other: &Figures) {
        self.cpu = match self.took.is_zero() {
            true => other.cpu,
            false => self.cpu.zip(other.cpu).map(|(a, b)| a + b),
        };
        self.lat.extend_from_slice(&other.lat);
        self.errors += other.errors;
        self.took += other.took;
    }

    fn print(&mut self, label: &str) {
        self.lat.sort();
        let ms = |p| common::percentile(&self.lat, p).as_secs_f64() * 1e3;
        let cpu = match self.cpu {
            Some(c) if !self.lat.is_empty() => format!(
                "; process CPU {:.0} us/mint",
                c.as_secs_f64() * 1e6 / self.lat.len() as f64
            ),
            _ => String::new(),
        };
        println!(
            "{label:<16} {:>7.0} tokens/s over {:>5.1} s, {} ok, {} errors; latency p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms{cpu}",
            self.rate(),
            self.took.as_secs_f64(),
            self.lat.len(),
            self.errors,
            ms(0.50),
            ms(0.99),
            ms(0.999),
        );
    }
}

/// Runs `workers` for `seconds`; hands them back (connections open) with what
/// they measured.
async fn round(workers: Vec<Worker>, seconds: f64) -> anyhow::Result<(Vec<Worker>, Figures)> {
    let stop = Arc::new(AtomicBool::new(false));
    let timer = {
        let stop = stop.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs_f64(seconds)).await;
            stop.store(true, Ordering::Relaxed);
        })
    };
    let (started, cpu_before) = (Instant::now(), cpu_time());
    let (workers, lat, errors) = common::run_until(workers, stop).await?;
    timer.await?;
    let took = started.elapsed();
    let cpu = cpu_time()
        .zip(cpu_before)
        .map(|(after, before)| after - before);
    Ok((
        workers,
        Figures {
            lat,
            errors,
            took,
            cpu,
        },
    ))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let concurrency: usize = args.get(1).map(|s| s.parse()).transpose()?.unwrap_or(16);
    let seconds: u64 = args.get(2).map(|s| s.parse()).transpose()?.unwrap_or(10);
    let rounds: usize = args.get(3).map(|s| s.parse()).transpose()?.unwrap_or(1);
    let edges = std::env::var("EDGE")
        .unwrap_or_else(|_| "grpc".into())
        .split(',')
        .map(Edge::parse)
        .collect::<anyhow::Result<Vec<_>>>()?;
    mayfly::app::install_crypto();
    crypto()?;

    let db = common::BenchDb::create().await?;
    let dir = tempfile::tempdir()?;
    let db_url = match std::env::var("STORE").as_deref() {
        Ok("sqlite") => format!("sqlite://{}/bench.db", dir.path().display()),
        _ => db.url.clone(),
    };
    let ca = common::broker_files(dir.path())?;
    let cfg = common::broker_config(dir.path(), &db_url, "");
    let cfg = Config::parse(&cfg, "bench")?;
    cfg.validate()?;
    let broker = common::serve(cfg).await?;
    let addr = broker.addr;

    let channel = |id: &str| common::channel(&ca, addr, id);
    let orch = channel("spiffe://example.org/orchestrator/main")?
        .connect()
        .await?;
    let agent_id = common::AGENT;
    // One task per worker: each task's budget counter is a row that its mints
    // update in turn, so one task's mints are serialised by design. Every edge's
    // worker w mints in task w.
    let task_count = if std::env::var("ONE_TASK").is_ok() {
        1
    } else {
        concurrency
    };
    let mut tasks = vec![];
    for _ in 0..task_count {
        tasks.push(common::support_task(orch.clone(), "load").await?);
    }

    // Every edge's connections are opened before any is measured, and stay open
    // from round to round. Multiplexing edges share a few connections, as an
    // agent fleet would hold them; HTTP/1.1 has one call in flight per
    // connection, so each of its workers holds its own.
    let shared = concurrency.clamp(1, 4);
    let mut pools: Vec<(Edge, Vec<Worker>, Figures)> = vec![];
    for &edge in &edges {
        let mut workers = vec![];
        match edge {
            Edge::Grpc => {
                let mut clients = vec![];
                for _ in 0..shared {
                    clients.push(TokenServiceClient::new(channel(agent_id)?.connect().await?));
                }
                for w in 0..concurrency {
                    workers.push(Worker::Grpc(GrpcMinter {
                        client: clients[w % clients.len()].clone(),
                        task_id: tasks[w % tasks.len()].clone(),
                        worker: w,
                        count: 0,
                    }));
                }
            }
            Edge::Http1 | Edge::Http2 => {
                let door = FrontDoor::new(&ca, addr, agent_id, edge == Edge::Http2)?;
                let mut h2_conns = vec![];
                while door.h2 && h2_conns.len() < shared {
                    if let Conn::H2(s) = door.connect().await? {
                        h2_conns.push(s);
                    }
                }
                for w in 0..concurrency {
                    let conn = match h2_conns.get(w % shared) {
                        Some(s) => Conn::H2(s.clone()),
                        None => door.connect().await?,
                    };
                    workers.push(Worker::Http(HttpMinter {
                        door: door.clone(),
                        conn: Some(conn),
                        task_id: tasks[w % tasks.len()].clone(),
                        worker: w,
                        count: 0,
                    }));
                }
            }
        }
        // Unrecorded: the store's statements prepared on its pool connections,
        // the connections' flow-control windows grown, for every edge alike.
        let (workers, _) = round(workers, 1.0).await?;
        pools.push((edge, workers, Figures::default()));
    }
    println!(
        "mint: concurrency {concurrency}, {} tasks, {rounds} round(s) of {seconds} s per edge",
        tasks.len()
    );

    // Per round, each edge's rate over the first edge's in the same round.
    let mut ratios: Vec<Vec<f64>> = vec![vec![]; pools.len()];
    for r in 0..rounds {
        let mut order: Vec<usize> = (0..pools.len()).collect();
        if r % 2 == 1 {
            order.reverse();
        }
        let mut rates = vec![0.0; pools.len()];
        for i in order {
            let (edge, workers, total) = &mut pools[i];
            let mut reopened = 0;
            for w in workers.iter_mut() {
                reopened += usize::from(w.reopen().await?);
            }
            if reopened > 0 {
                println!(
                    "{}: {reopened} connections closed by the broker since the last round, reopened",
                    edge.name()
                );
            }
            let (back, mut figures) = round(std::mem::take(workers), seconds as f64).await?;
            *workers = back;
            figures.print(&format!("{} round {}", edge.name(), r + 1));
            rates[i] = figures.rate();
            total.add(&figures);
        }
        for (i, rate) in rates.iter().enumerate() {
            ratios[i].push(rate / rates[0]);
        }
    }
    if rounds > 1 || pools.len() > 1 {
        for (edge, _, total) in &mut pools {
            total.print(&format!("{} all rounds", edge.name()));
        }
    }
    let first = pools[0].2.rate();
    for (i, (edge, _, total)) in pools.iter().enumerate().skip(1) {
        let each: Vec<String> = ratios[i].iter().map(|q| format!("{q:.2}")).collect();
        // The median round: one round disturbed by other work on the machine
        // moves the overall ratio, hardly the median.
        let mut sorted = ratios[i].clone();
        sorted.sort_by(f64::total_cmp);
        let n = sorted.len();
        let median = match n {
            0 => f64::NAN,
            _ if n % 2 == 1 => sorted[n / 2],
            _ => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
        };
        println!(
            "{} / {}: {:.2} of the throughput (rounds: {}; median round {median:.2})",
            edge.name(),
            pools[0].0.name(),
            total.rate() / first,
            each.join(", ")
        );
    }
    broker.stop().await;
    db.drop_now().await?;
    Ok(())
}
