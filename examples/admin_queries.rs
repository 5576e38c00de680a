//! Benchmark of the admin and audit queries on a large store: seeds a fresh
//! PostgreSQL database with N tokens (in 10,000 tasks of 100 agents, 20 audiences)
//! and M sealed audit events, then runs each query 200 times through the store,
//! as the admin API does, and prints p50 and p99.
//!
//! cargo run --release --example admin_queries -- [tokens] [audit_events]
//! (defaults 1,000,000 and 2,000,000; DATABASE_URL as for mint_load; STORE=sqlite:
//! the embedded store in a temporary file instead)
// Shared with the load generators: this one needs only the throwaway database.
#[allow(dead_code)]
mod common;

use mayfly::domain::{SpiffeId, TaskId};
use mayfly::store::{AuditFilter, AuditStore, SqlStore, TokenFilter, TokenStore};
use std::future::Future;
use std::time::{Duration, Instant};
use time::OffsetDateTime;

const TASKS: u64 = 10_000;
const AGENTS: u64 = 100;
const RUNS: usize = 200;

fn task(i: u64) -> TaskId {
    TaskId(uuid::Uuid::from_u128(u128::from(i % TASKS + 1)))
}

fn agent(i: u64) -> SpiffeId {
    SpiffeId::parse(&format!("spiffe://example.org/agent/a{}", i % AGENTS)).expect("an ID")
}

async fn seed(pool: &sqlx::PgPool, tokens: u64, events: u64) -> anyhow::Result<()> {
    let steps = [
        format!(
            "INSERT INTO tasks (id, agent, workflow, objective, scopes, state, opened_by, created_at, expires_at, tokens_minted)
             SELECT lpad(to_hex(i), 32, '0')::uuid, 'spiffe://example.org/agent/a' || (i % {AGENTS}), 'support', 'o', '[]',
                    CASE WHEN i % 10 = 0 THEN 'active' ELSE 'completed' END, 'spiffe://example.org/orchestrator',
                    now() - i * interval '1 second', now() + interval '1 hour', 100
             FROM generate_series(1, {TASKS}) i"
        ),
        format!(
            "INSERT INTO tokens (jti, task_id, agent, workflow, audience, resource, action, kid, cert_thumbprint, issued_at, expires_at, depth)
             SELECT gen_random_uuid(), lpad(to_hex(i % {TASKS} + 1), 32, '0')::uuid,
                    'spiffe://example.org/agent/a' || ((i % {TASKS} + 1) % {AGENTS}), 'support', 'aud' || (i % 20),
                    'customers/eu/' || (i % 500), 'read', 'kid', 'x',
                    now() - i * interval '100 milliseconds', now() - i * interval '100 milliseconds' + interval '5 minutes', 0
             FROM generate_series(1, {tokens}) i"
        ),
        // Sealed already (positions and placeholder hashes): the queries read
        // sealed events only, and sealing millions takes minutes.
        format!(
            "INSERT INTO audit_events (at, actor, action, outcome, task_id, agent, detail, seq, prev_hash, hash)
             SELECT now() - i * interval '50 milliseconds', 'spiffe://example.org/agent/a' || (i % {AGENTS}),
                    'token_minted', 'permit', lpad(to_hex(i % {TASKS} + 1), 32, '0')::uuid,
                    'spiffe://example.org/agent/a' || (i % {AGENTS}), '{{}}', i, '\\x00', '\\x00'
             FROM generate_series(1, {events}) i"
        ),
        // One event of an agent that is otherwise silent: the rare case.
        format!(
            "INSERT INTO audit_events (at, actor, action, outcome, agent, detail, seq, prev_hash, hash)
             VALUES (now(), 'spiffe://example.org/orchestrator', 'task_opened', 'permit',
                     'spiffe://example.org/agent/rare', '{{}}', {events} + 1, '\\x00', '\\x00')"
        ),
        // As autovacuum leaves a table that has settled: index-only scans read no heap.
        "VACUUM ANALYZE".to_string(),
    ];
    for sql in steps {
        let t = Instant::now();
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql.clone()))
            .execute(pool)
            .await?;
        println!(
            "seeded in {:>6.1} s: {}",
            t.elapsed().as_secs_f64(),
            sql.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
        );
    }
    Ok(())
}

/// The same data in the SQLite schema (times in Unix microseconds, UUIDs as
/// text), through a connection of its own.
async fn seed_sqlite(path: &std::path::Path, tokens: u64, events: u64) -> anyhow::Result<()> {
    use sqlx::Connection;
    let us = "(unixepoch() * 1000000)";
    let task = |expr: &str| format!("printf('00000000-0000-0000-0000-%012x', {expr})");
    let steps = [
        format!(
            "WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < {TASKS})
             INSERT INTO tasks (id, agent, workflow, objective, scopes, state, opened_by, created_at, expires_at, tokens_minted)
             SELECT {}, 'spiffe://example.org/agent/a' || (i % {AGENTS}), 'support', 'o', '[]',
                    CASE WHEN i % 10 = 0 THEN 'active' ELSE 'completed' END, 'spiffe://example.org/orchestrator',
                    {us} - i * 1000000, {us} + 3600000000, 100
             FROM s",
            task("i")
        ),
        format!(
            "WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < {tokens})
             INSERT INTO tokens (jti, task_id, agent, workflow, audience, resource, action, kid, cert_thumbprint, issued_at, expires_at, depth)
             SELECT printf('00000001-0000-4000-8000-%012x', i), {},
                    'spiffe://example.org/agent/a' || ((i % {TASKS} + 1) % {AGENTS}), 'support', 'aud' || (i % 20),
                    'customers/eu/' || (i % 500), 'read', 'kid', 'x',
                    {us} - i * 100000, {us} - i * 100000 + 300000000, 0
             FROM s",
            task(&format!("i % {TASKS} + 1"))
        ),
        format!(
            "WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < {events})
             INSERT INTO audit_events (at, actor, action, outcome, task_id, agent, detail, seq, prev_hash, hash)
             SELECT {us} - i * 50000, 'spiffe://example.org/agent/a' || (i % {AGENTS}),
                    'token_minted', 'permit', {}, 'spiffe://example.org/agent/a' || (i % {AGENTS}), '{{}}', i, x'00', x'00'
             FROM s",
            task(&format!("i % {TASKS} + 1"))
        ),
        format!(
            "INSERT INTO audit_events (at, actor, action, outcome, agent, detail, seq, prev_hash, hash)
             VALUES ({us}, 'spiffe://example.org/orchestrator', 'task_opened', 'permit',
                     'spiffe://example.org/agent/rare', '{{}}', {events} + 1, x'00', x'00')"
        ),
        "ANALYZE".to_string(),
    ];
    let mut conn = sqlx::SqliteConnection::connect(&format!("sqlite://{}", path.display())).await?;
    for sql in steps {
        let t = Instant::now();
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql.clone()))
            .execute(&mut conn)
            .await?;
        println!(
            "seeded in {:>6.1} s: {}",
            t.elapsed().as_secs_f64(),
            sql.split_whitespace()
                .take(10)
                .collect::<Vec<_>>()
                .join(" ")
        );
    }
    Ok(())
}

async fn time<F, Fut, T>(name: &str, mut call: F) -> anyhow::Result<()>
where
    F: FnMut(u64) -> Fut,
    Fut: Future<Output = Result<T, mayfly::store::StoreError>>,
{
    let mut took: Vec<Duration> = Vec::with_capacity(RUNS);
    for i in 0..RUNS as u64 {
        let t = Instant::now();
        call(i * 7919).await?;
        took.push(t.elapsed());
    }
    took.sort();
    let at = |p: f64| took[((took.len() as f64 - 1.0) * p).round() as usize];
    println!(
        "{name:<36} p50 {:>8.2} ms  p99 {:>8.2} ms  max {:>8.2} ms",
        at(0.5).as_secs_f64() * 1e3,
        at(0.99).as_secs_f64() * 1e3,
        at(1.0).as_secs_f64() * 1e3
    );
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let tokens: u64 = args.next().map_or(Ok(1_000_000), |a| a.parse())?;
    let events: u64 = args.next().map_or(Ok(2_000_000), |a| a.parse())?;
    let db = common::BenchDb::create().await?;
    let dir = tempfile::tempdir()?;
    let store = if std::env::var("STORE").as_deref() == Ok("sqlite") {
        let path = dir.path().join("bench.db");
        let store = SqlStore::sqlite(&path, 4, Duration::from_secs(10)).await?;
        seed_sqlite(&path, tokens, events).await?;
        println!("SQLite:");
        store
    } else {
        let store = SqlStore::postgres(&db.url, 4, Duration::from_secs(10)).await?;
        let pool = store.postgres_pool().expect("a PostgreSQL store").clone();
        seed(&pool, tokens, events).await?;
        println!("PostgreSQL:");
        store
    };
    let s = &store;
    let now = OffsetDateTime::now_utc();
    println!("{tokens} tokens, {events} audit events; {RUNS} runs each, limit 100:");
    time("ListTokens by task", |i| async move {
        s.list_tokens(&TokenFilter {
            task: Some(task(i)),
            agent: None,
            active_at: None,
            limit: 100,
        })
        .await
    })
    .await?;
    time("ListTokens active", |_| async move {
        s.list_tokens(&TokenFilter {
            task: None,
            agent: None,
            active_at: Some(now),
            limit: 100,
        })
        .await
    })
    .await?;
    time("AuditAccess by audience", |i| async move {
        s.token_access(&format!("aud{}", i % 20), None, None).await
    })
    .await?;
    time("QueryAudit by agent", |i| async move {
        s.query_audit(&AuditFilter {
            agent: Some(agent(i)),
            limit: 100,
            ..Default::default()
        })
        .await
    })
    .await?;
    time("QueryAudit by a rarely seen agent", |_| async move {
        s.query_audit(&AuditFilter {
            agent: Some(SpiffeId::parse("spiffe://example.org/agent/rare").expect("an ID")),
            limit: 100,
            ..Default::default()
        })
        .await
    })
    .await?;
    time("QueryAudit by task", |i| async move {
        s.query_audit(&AuditFilter {
            task: Some(task(i)),
            limit: 100,
            ..Default::default()
        })
        .await
    })
    .await?;
    drop(store);
    db.drop_now().await
}
