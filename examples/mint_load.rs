//! Load generator: the real broker in-process (mTLS, PostgreSQL), N agents minting
//! concurrently over keep-alive HTTP/2 connections; plus the raw cost of signing
//! and verifying one token. Prints rates and latency percentiles.
//!
//! cargo run --release --example mint_load -- [concurrency] [seconds]
//! (ONE_TASK=1: every worker mints in the same task; STORE=sqlite: the embedded
//! SQLite store in a temporary file instead of PostgreSQL)
//! DATABASE_URL (default postgres://postgres@127.0.0.1:5432/postgres) must allow
//! CREATE DATABASE; a fresh database is created and dropped.
mod common;

use mayfly::api::pb::token_service_client::TokenServiceClient;
use mayfly::clock::SystemClock;
use mayfly::config::Config;
use mayfly::token::{Claims, Confirmation, KeyRecord, KeySet, SigningKey};
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

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let concurrency: usize = args.get(1).map(|s| s.parse()).transpose()?.unwrap_or(16);
    let seconds: u64 = args.get(2).map(|s| s.parse()).transpose()?.unwrap_or(10);
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
    let app = mayfly::app::build(cfg, Arc::new(SystemClock)).await?;
    let addr = app.grpc_addr()?;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server_task = tokio::spawn(app.run(async move {
        let _ = stop_rx.await;
    }));

    let channel = |id: &str| common::channel(&ca, addr, id);
    let orch = channel("spiffe://example.org/orchestrator/main")?
        .connect()
        .await?;
    let agent_id = common::AGENT;
    // One task per worker: each task's budget counter is a row that its mints
    // update in turn, so one task's mints are serialised by design.
    let task_count = if std::env::var("ONE_TASK").is_ok() {
        1
    } else {
        concurrency
    };
    let mut tasks = vec![];
    for _ in 0..task_count {
        tasks.push(common::support_task(orch.clone(), "load").await?);
    }

    // A few connections shared by the workers, as an agent fleet would hold them.
    let mut clients = vec![];
    for _ in 0..concurrency.clamp(1, 4) {
        clients.push(TokenServiceClient::new(channel(agent_id)?.connect().await?));
    }
    let stop = Arc::new(AtomicBool::new(false));
    let timer = {
        let stop = stop.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(seconds)).await;
            stop.store(true, Ordering::Relaxed);
        })
    };
    let started = Instant::now();
    let (mut all, errors) = common::mint_until(&clients, &tasks, concurrency, stop).await?;
    timer.await?;
    let elapsed = started.elapsed();
    all.sort();
    println!(
        "mint:   {:>8.0} tokens/s over {:.1}s, concurrency {concurrency}, {} tasks, {} ok, {errors} errors; latency p50 {:.2} ms, p99 {:.2} ms",
        all.len() as f64 / elapsed.as_secs_f64(),
        elapsed.as_secs_f64(),
        tasks.len(),
        all.len(),
        common::percentile(&all, 0.50).as_secs_f64() * 1e3,
        common::percentile(&all, 0.99).as_secs_f64() * 1e3,
    );
    let _ = stop_tx.send(());
    let _ = server_task.await;
    db.drop_now().await?;
    Ok(())
}
