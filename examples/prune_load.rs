//! Benchmark: mint latency while the broker prunes a large backlog. The real
//! broker in-process (mTLS, PostgreSQL or SQLite), N agents minting over
//! keep-alive connections; first for `seconds` with nothing to prune, then with
//! R tokens long expired added to the store, while the broker's own pruner
//! (every second, batches of `retention.batch`) deletes them, until it has.
//! Prints mint throughput and p50/p99/p99.9 of both phases, and the prune rate.
//! The agents are `mayfly::bench`'s workers (the driver of `mayfly bench`).
//!
//! cargo run --release --example prune_load -- [concurrency] [seconds] [rows]
//! (defaults 8, 10 and 1,000,000; STORE=sqlite: the embedded store in a
//! temporary file; BATCH: `retention.batch`, default 500; DATABASE_URL as for
//! mint_load)
// `support_task`, `channel` and `percentile` (the other load generators') are
// not used here.
#[allow(dead_code)]
mod common;

use mayfly::bench::{Bench, Edge, Figures};
use mayfly::config::Config;
use sqlx::Connection;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// Old tasks the backlog's tokens belong to (ended three days ago).
const OLD_TASKS: u64 = 1000;

fn report(phase: &str, f: &Figures) {
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "{phase:<22} {:>6.0} mints/s over {:>5.1} s, {} ok, {} errors; p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, max {:.2} ms",
        f.rate(),
        f.elapsed.as_secs_f64(),
        f.mints(),
        f.errors(),
        ms(f.latency.quantile(0.50)),
        ms(f.latency.quantile(0.99)),
        ms(f.latency.quantile(0.999)),
        ms(f.latency.max()),
    );
    for k in f.error_kinds() {
        eprintln!("  {} x{}: {}", k.kind, k.count, k.examples.join(" | "));
    }
}

/// Tokens (and the tasks they belong to) that expired three days ago.
async fn seed(db_url: &str, rows: u64) -> anyhow::Result<()> {
    let steps: Vec<String> = if db_url.starts_with("sqlite:") {
        let day = 86_400_000_000i64;
        vec![
            format!(
                "WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < {OLD_TASKS})
                 INSERT INTO tasks (id, agent, workflow, objective, scopes, state, opened_by, created_at, expires_at, ended_at, end_reason, tokens_minted)
                 SELECT printf('00000000-0000-4000-8000-%012x', i), 'spiffe://example.org/agent/old', 'support-triage', 'o', '[]',
                        'completed', 'spiffe://example.org/orchestrator/main',
                        (unixepoch() * 1000000) - 4 * {day}, (unixepoch() * 1000000) - 3 * {day}, (unixepoch() * 1000000) - 3 * {day}, 'done', 1000
                 FROM s"
            ),
            format!(
                "WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < {rows})
                 INSERT INTO tokens (jti, task_id, agent, workflow, audience, resource, action, kid, cert_thumbprint, issued_at, expires_at, depth)
                 SELECT printf('00000001-0000-4000-8000-%012x', i), printf('00000000-0000-4000-8000-%012x', i % {OLD_TASKS} + 1),
                        'spiffe://example.org/agent/old', 'support-triage', 'crm-api', 'customers/eu/' || (i % 500), 'read', 'kid', 'x',
                        (unixepoch() * 1000000) - 4 * {day} + i * 1000, (unixepoch() * 1000000) - 4 * {day} + i * 1000 + 300000000, 0
                 FROM s"
            ),
        ]
    } else {
        vec![
            format!(
                "INSERT INTO tasks (id, agent, workflow, objective, scopes, state, opened_by, created_at, expires_at, ended_at, end_reason, tokens_minted)
                 SELECT lpad(to_hex(i), 32, '0')::uuid, 'spiffe://example.org/agent/old', 'support-triage', 'o', '[]',
                        'completed', 'spiffe://example.org/orchestrator/main',
                        now() - interval '4 days', now() - interval '3 days', now() - interval '3 days', 'done', 1000
                 FROM generate_series(1, {OLD_TASKS}) i"
            ),
            format!(
                "INSERT INTO tokens (jti, task_id, agent, workflow, audience, resource, action, kid, cert_thumbprint, issued_at, expires_at, depth)
                 SELECT gen_random_uuid(), lpad(to_hex(i % {OLD_TASKS} + 1), 32, '0')::uuid,
                        'spiffe://example.org/agent/old', 'support-triage', 'crm-api', 'customers/eu/' || (i % 500), 'read', 'kid', 'x',
                        now() - interval '4 days' + i * interval '1 millisecond',
                        now() - interval '4 days' + i * interval '1 millisecond' + interval '5 minutes', 0
                 FROM generate_series(1, {rows}) i"
            ),
            "ANALYZE tokens".to_string(),
        ]
    };
    let postgres = !db_url.starts_with("sqlite:");
    for sql in steps {
        let t = Instant::now();
        if db_url.starts_with("sqlite:") {
            let mut c = sqlx::SqliteConnection::connect(db_url).await?;
            sqlx::raw_sql(sqlx::AssertSqlSafe(sql.clone()))
                .execute(&mut c)
                .await?;
        } else {
            let mut c = sqlx::PgConnection::connect(db_url).await?;
            sqlx::raw_sql(sqlx::AssertSqlSafe(sql.clone()))
                .execute(&mut c)
                .await?;
        }
        println!(
            "seeded in {:>5.1} s: {}",
            t.elapsed().as_secs_f64(),
            sql.split_whitespace().take(8).collect::<Vec<_>>().join(" ")
        );
    }
    if postgres {
        // What a token costs on disk, with its indexes: for sizing retention.
        let mut c = sqlx::PgConnection::connect(db_url).await?;
        let (bytes, n): (i64, i64) = sqlx::query_as(
            "SELECT pg_total_relation_size('tokens'), (SELECT count(*) FROM tokens)",
        )
        .fetch_one(&mut c)
        .await?;
        println!(
            "tokens: {n} rows, {:.0} MB with their indexes ({:.0} bytes a token)",
            bytes as f64 / 1e6,
            bytes as f64 / n.max(1) as f64
        );
    }
    Ok(())
}

/// Whether any of the backlog is left.
async fn left(db_url: &str) -> anyhow::Result<bool> {
    const Q: &str =
        "SELECT EXISTS (SELECT 1 FROM tokens WHERE agent = 'spiffe://example.org/agent/old') AS e";
    Ok(if db_url.starts_with("sqlite:") {
        let mut c = sqlx::SqliteConnection::connect(db_url).await?;
        sqlx::query_scalar::<_, bool>(Q).fetch_one(&mut c).await?
    } else {
        let mut c = sqlx::PgConnection::connect(db_url).await?;
        sqlx::query_scalar::<_, bool>(Q).fetch_one(&mut c).await?
    })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let concurrency: usize = args.get(1).map(|s| s.parse()).transpose()?.unwrap_or(8);
    let seconds: u64 = args.get(2).map(|s| s.parse()).transpose()?.unwrap_or(10);
    let rows: u64 = args
        .get(3)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(1_000_000);
    mayfly::app::install_crypto();

    let db = common::BenchDb::create().await?;
    let dir = tempfile::tempdir()?;
    let db_url = match std::env::var("STORE").as_deref() {
        Ok("sqlite") => format!("sqlite://{}/bench.db", dir.path().display()),
        _ => db.url.clone(),
    };
    let ca = common::broker_files(dir.path())?;
    let batch = std::env::var("BATCH").unwrap_or_else(|_| "500".into());
    let cfg = common::broker_config(
        dir.path(),
        &db_url,
        &format!("[retention]\ninterval = \"1s\"\ntokens = \"2h\"\nbatch = {batch}"),
    );
    let cfg = Config::parse(&cfg, "bench")?;
    cfg.validate()?;
    let batch = cfg.retention.batch;
    let broker = common::serve(cfg).await?;
    let parties = common::parties(dir.path(), &ca, broker.addr)?;
    let mut bench = Bench::start(common::plan(Edge::Grpc, concurrency, false)?, &parties).await?;

    // Phase 1: nothing to prune (the pruner runs, and finds nothing).
    let f = bench.run_for(Duration::from_secs(seconds)).await;
    report("nothing to prune:", &f);

    // Phase 2: the backlog lands; minting goes on while the pruner deletes it.
    seed(&db_url, rows).await?;
    let stop = CancellationToken::new();
    let t = Instant::now();
    let watcher = {
        let (stop, url) = (stop.clone(), db_url.clone());
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(500)).await;
                match left(&url).await {
                    Ok(false) => break,
                    Ok(true) => {}
                    Err(e) => eprintln!("reading what is left: {e}"),
                }
                if t.elapsed() > Duration::from_secs(600) {
                    eprintln!("pruning did not finish in 10 minutes");
                    break;
                }
            }
            stop.cancel();
            t.elapsed()
        })
    };
    let f = bench.run_until(stop).await;
    let pruned_in = watcher.await?;
    report("pruning the backlog:", &f);
    println!(
        "pruned {rows} tokens in {:.1} s ({:.0} rows/s, batches of {batch}) while minting",
        pruned_in.as_secs_f64(),
        rows as f64 / pruned_in.as_secs_f64(),
    );

    bench.stop();
    broker.stop().await;
    db.drop_now().await?;
    Ok(())
}
