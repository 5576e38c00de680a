//! Revocation propagation benchmark: two brokers in-process on one PostgreSQL
//! (replicas A and B), a verifier library instance following each. For every
//! revocation: the time from the `Revoke` reply (through A) until the verifier
//! rejects the token, on A (same replica) and on B (cross-replica, via
//! LISTEN/NOTIFY). Then the verifier's local checks per second on one core.
//!
//! cargo run --release --example revocation_load -- [revocations]
//! DATABASE_URL (default postgres://postgres@127.0.0.1:5432/postgres) must allow
//! CREATE DATABASE; a fresh database is created and dropped.
// Shared with the other load generators: this one runs brokers of its own.
#[allow(dead_code)]
mod common;

use mayfly::api::pb;
use mayfly::api::pb::admin_service_client::AdminServiceClient;
use mayfly::api::pb::token_service_client::TokenServiceClient;
use mayfly::clock::SystemClock;
use mayfly::config::Config;
use mayfly::verifier::{RequiredScope, Verdict, Verifier, VerifierConfig};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

const ISSUER: &str = "https://mayfly.bench";

fn config(dir: &std::path::Path, db_url: &str) -> anyhow::Result<Config> {
    let cfg = format!(
        r#"
[server]
grpc_addr = "127.0.0.1:0"
http_addr = "127.0.0.1:0"
cert = "{d}/broker.crt"
key = "{d}/broker.key"
issuer = "{ISSUER}"
[database]
url = "{db_url}"
max_connections = 16
[[trust_domains]]
name = "example.org"
bundle = "{d}/ca.pem"
[roles]
agent = ["spiffe://example.org/agent/*"]
orchestrator = ["spiffe://example.org/orchestrator/*"]
admin = ["spiffe://example.org/admin/*"]
verifier = ["spiffe://example.org/verifier/*"]
[revocation]
heartbeat = "1s"
poll_interval = "10s"
[policy]
dir = "{d}/policies"
environment = "prod-eu"
"#,
        d = dir.display()
    );
    let cfg = Config::parse(&cfg, "bench")?;
    cfg.validate()?;
    Ok(cfg)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let n: usize = std::env::args()
        .nth(1)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(1000);
    mayfly::app::install_crypto();

    let db = common::BenchDb::create().await?;
    let db_url = db.url.clone();
    let dir = tempfile::tempdir()?;
    let ca = common::broker_files(dir.path())?;

    // Two replicas on one database.
    let mut stops = vec![];
    let mut servers = vec![];
    let mut addrs = vec![];
    for _ in 0..2 {
        let app = mayfly::app::build(config(dir.path(), &db_url)?, Arc::new(SystemClock)).await?;
        addrs.push(app.grpc_addr()?);
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        stops.push(tx);
        servers.push(tokio::spawn(app.run(async move {
            let _ = rx.await;
        })));
    }
    let channel = |addr: std::net::SocketAddr, id: &str| -> anyhow::Result<Channel> {
        let svid = ca.svid(id)?;
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(ca.cert_pem()))
            .identity(Identity::from_pem(svid.cert_pem, svid.key_pem))
            .domain_name("localhost");
        Ok(Channel::from_shared(format!("https://{addr}"))?
            .tls_config(tls)?
            .connect_lazy())
    };
    let verifier = |addr| -> anyhow::Result<_> {
        let ch = channel(addr, "spiffe://example.org/verifier/crm-api")?;
        Ok(async move {
            let v = Verifier::connect(ch, VerifierConfig::new(ISSUER, "crm-api")).await?;
            tokio::time::timeout(Duration::from_secs(30), v.synced()).await?;
            anyhow::Ok(v)
        })
    };
    let on_a = Arc::new(verifier(addrs[0])?.await?);
    let on_b = Arc::new(verifier(addrs[1])?.await?);

    // Tokens to revoke, minted up front.
    let agent = common::AGENT;
    let agent_svid = ca.svid(agent)?;
    let orchestrator = || channel(addrs[0], "spiffe://example.org/orchestrator/main");
    let task_id = common::support_task(orchestrator()?, "revocation benchmark").await?;
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca.cert_pem()))
        .identity(Identity::from_pem(
            &agent_svid.cert_pem,
            &agent_svid.key_pem,
        ))
        .domain_name("localhost");
    let mut minter = TokenServiceClient::new(
        Channel::from_shared(format!("https://{}", addrs[0]))?
            .tls_config(tls)?
            .connect()
            .await?,
    );
    let mut tokens = Vec::with_capacity(n);
    for i in 0..n {
        let t = minter
            .mint_token(pb::MintTokenRequest {
                task_id: task_id.clone(),
                scope: Some(pb::Scope {
                    audience: "crm-api".into(),
                    resource: format!("customers/eu/{i}"),
                    action: "read".into(),
                }),
                ttl_seconds: 300,
            })
            .await?
            .into_inner();
        tokens.push((t.token, t.jti, format!("customers/eu/{i}")));
    }

    // Revoke one at a time through A; both verifiers poll until they reject.
    let mut admin = AdminServiceClient::new(channel(addrs[0], "spiffe://example.org/admin/bench")?);
    let cert = agent_svid.cert_der.clone();
    let (mut same, mut cross) = (vec![], vec![]);
    for (token, jti, resource) in &tokens {
        let required = RequiredScope::new("read", resource)?;
        for v in [&on_a, &on_b] {
            let verdict = v.check(token, &cert, &required).await;
            anyhow::ensure!(
                verdict.is_valid(),
                "token not valid before revocation: {verdict}"
            );
        }
        admin
            .revoke(pb::RevokeRequest {
                target: Some(pb::RevocationTarget {
                    target: Some(pb::revocation_target::Target::Token(jti.clone())),
                }),
                reason: "benchmark".into(),
            })
            .await?;
        let replied = Instant::now();
        let until_revoked =
            |v: Arc<Verifier>, token: String, required: RequiredScope, cert: Vec<u8>| async move {
                loop {
                    if let Verdict::Revoked { .. } = v.check(&token, &cert, &required).await {
                        return replied.elapsed();
                    }
                    tokio::task::yield_now().await;
                    if replied.elapsed() > Duration::from_secs(10) {
                        return Duration::MAX;
                    }
                }
            };
        let (a, b) = tokio::join!(
            until_revoked(on_a.clone(), token.clone(), required.clone(), cert.clone()),
            until_revoked(on_b.clone(), token.clone(), required.clone(), cert.clone())
        );
        anyhow::ensure!(
            a != Duration::MAX && b != Duration::MAX,
            "a revocation did not arrive within 10 s"
        );
        same.push(a);
        cross.push(b);
    }
    same.sort();
    cross.sort();
    for (what, lat) in [("same replica ", &same), ("cross-replica", &cross)] {
        println!(
            "propagation {what}: {} revocations, Revoke reply -> verifier rejects: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            lat.len(),
            common::percentile(lat, 0.50).as_secs_f64() * 1e3,
            common::percentile(lat, 0.99).as_secs_f64() * 1e3,
            common::percentile(lat, 1.0).as_secs_f64() * 1e3,
        );
    }

    // Local checks per second on one core: a valid token, over and over.
    let task2 = common::support_task(orchestrator()?, "check benchmark").await?;
    let valid = minter
        .mint_token(pb::MintTokenRequest {
            task_id: task2,
            scope: Some(pb::Scope {
                audience: "crm-api".into(),
                resource: "customers/eu/7".into(),
                action: "read".into(),
            }),
            ttl_seconds: 300,
        })
        .await?
        .into_inner()
        .token;
    let required = RequiredScope::new("read", "customers/eu/7")?;
    let checks = 100_000;
    let started = Instant::now();
    for _ in 0..checks {
        let v = on_a.check(&valid, &cert, &required).await;
        anyhow::ensure!(v.is_valid(), "{v}");
    }
    let elapsed = started.elapsed();
    println!(
        "verifier: {:.0} checks/s on one core ({:.1} us/check), {} revocations in the local set",
        checks as f64 / elapsed.as_secs_f64(),
        elapsed.as_secs_f64() * 1e6 / checks as f64,
        n
    );

    drop(on_a);
    drop(on_b);
    for s in stops {
        let _ = s.send(());
    }
    for s in servers {
        let _ = s.await;
    }
    db.drop_now().await?;
    Ok(())
}
