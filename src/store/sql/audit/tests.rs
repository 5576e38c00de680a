//! A transaction's audit events, on both databases: written sealed by its commit,
//! as its last statement (the chain head's lock is the last it takes), and not
//! at all when it rolls back or is dropped; a transaction without events never
//! touches the head.
use super::*;
use crate::domain::audit::chain::Verifier;
use sqlx::Connection;
use std::time::Duration;

fn event(n: i64) -> AuditEvent {
    AuditEvent::new(
        OffsetDateTime::from_unix_timestamp(1_795_428_000 + n).unwrap(),
        "spiffe://example.org/orchestrator",
        Action::CallDenied,
    )
    .reason("the caller holds none of the roles the call requires")
    .detail(serde_json::json!({"n": n, "nested": {"b": [1, "two"], "a": null}}))
}

/// The chain as `mayfly audit verify` checks it: intact, and its positions.
async fn verified(s: &SqlStore) -> Vec<u64> {
    let head = s.audit_head().await.unwrap();
    assert_eq!(head.max_seq, head.seq, "events stored past the head");
    let mut v = Verifier::default();
    let mut seqs = vec![];
    loop {
        // Pages of at most 1000, as the broker reads them.
        let page = s.audit_chain(v.last_seq(), head.seq, 1000).await.unwrap();
        for e in &page {
            v.push(e).unwrap_or_else(|b| panic!("{b}"));
            seqs.push(e.seq);
        }
        if page.len() < 1000 {
            break;
        }
    }
    v.finish(head.seq, &head.hash)
        .unwrap_or_else(|b| panic!("{b}"));
    seqs
}

/// Events stored, sealed or not.
async fn stored(s: &SqlStore) -> u64 {
    let row =
        s.db.fetch_one(query("SELECT count(*) AS n FROM audit_events"))
            .await
            .unwrap();
    row.u64("n").unwrap()
}

/// Recorded, then rolled back or dropped: nothing written, the head where it
/// was; committed: sealed in the order recorded, the next positions, no gap.
async fn rollbacks_write_nothing_and_commits_seal(s: &SqlStore) {
    let (one, two, three) = (event(1), event(2), event(3));
    let mut tx = s.db.begin(Write::AppendAudit).await.unwrap();
    insert_audit(&mut tx, &[&one, &two]).await.unwrap();
    tx.rollback().await.unwrap();
    let mut tx = s.db.begin(Write::AppendAudit).await.unwrap();
    insert_audit(&mut tx, &[&three]).await.unwrap();
    drop(tx);
    assert_eq!(s.audit_head().await.unwrap().seq, 0);
    assert_eq!(stored(s).await, 0);

    let mut tx = s.db.begin(Write::AppendAudit).await.unwrap();
    insert_audit(&mut tx, &[&one]).await.unwrap();
    insert_audit(&mut tx, &[&two, &three]).await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(verified(s).await, [1, 2, 3]);
    let found = s
        .query_audit(&AuditFilter {
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(found, vec![(1, one), (2, two), (3, three)]);

    // A transaction of many events takes as many positions, after the others.
    let many: Vec<AuditEvent> = (10..1210).map(event).collect();
    let mut tx = s.db.begin(Write::AppendAudit).await.unwrap();
    insert_audit(&mut tx, &many.iter().collect::<Vec<_>>())
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(verified(s).await, (1..=1203).collect::<Vec<_>>());
    assert_eq!(s.seal_audit(100).await.unwrap(), 0, "nothing left unsealed");
}

#[tokio::test]
async fn sqlite_seals_a_transactions_events_at_its_commit_and_a_rollback_writes_none() {
    let dir = tempfile::tempdir().unwrap();
    let s = SqlStore::sqlite(&dir.path().join("mayfly.db"), 2, Duration::from_secs(5))
        .await
        .unwrap();
    rollbacks_write_nothing_and_commits_seal(&s).await;
}

#[tokio::test]
async fn postgresql_seals_a_transactions_events_at_its_commit_and_a_rollback_writes_none() {
    let db = Scratch::new().await;
    rollbacks_write_nothing_and_commits_seal(&db.store().await).await;
}

#[tokio::test]
async fn postgresql_takes_the_chain_head_only_at_the_commit_of_a_transaction_with_events() {
    let db = Scratch::new().await;
    let s = db.store().await;
    // Someone holds the head (a sealer, another broker's commit).
    let mut holder = sqlx::PgConnection::connect(&db.url).await.unwrap();
    sqlx::query("BEGIN").execute(&mut holder).await.unwrap();
    sqlx::query("SELECT last_seq FROM audit_chain FOR UPDATE")
        .execute(&mut holder)
        .await
        .unwrap();

    // A transaction without events never waits for it.
    let mut tx = s.db.begin(Write::Freeze).await.unwrap();
    tx.execute(query("SELECT 1")).await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), tx.commit())
        .await
        .expect("a transaction without events waited for the head")
        .unwrap();

    // One with events runs every statement, and waits only at its commit.
    let e = event(1);
    let mut tx = s.db.begin(Write::AppendAudit).await.unwrap();
    insert_audit(&mut tx, &[&e]).await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), tx.execute(query("SELECT 1")))
        .await
        .expect("a statement after the events waited for the head")
        .unwrap();
    let commit = tokio::spawn(tx.commit());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!commit.is_finished(), "committed past the head's lock");
    assert_eq!(s.audit_head().await.unwrap().seq, 0);
    sqlx::query("COMMIT").execute(&mut holder).await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), commit)
        .await
        .expect("the commit did not follow the head's release")
        .unwrap()
        .unwrap();
    assert_eq!(verified(&s).await, [1]);
}

/// A PostgreSQL database of one test (`DATABASE_URL`'s server), dropped after it.
struct Scratch {
    url: String,
    admin: String,
    name: String,
}

impl Scratch {
    async fn new() -> Self {
        let admin = std::env::var("DATABASE_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
        let name = format!("mayfly_unit_{}", uuid::Uuid::new_v4().simple());
        let mut conn = sqlx::PgConnection::connect(&admin)
            .await
            .expect("connect to PostgreSQL (DATABASE_URL)");
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut conn)
            .await
            .unwrap();
        let base = admin.rsplit_once('/').map_or(admin.as_str(), |(b, _)| b);
        Scratch {
            url: format!("{base}/{name}"),
            admin,
            name,
        }
    }

    async fn store(&self) -> SqlStore {
        SqlStore::postgres(&self.url, 4, Duration::from_secs(10))
            .await
            .unwrap()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        // Inside the test's runtime: the async work on a thread of its own.
        let (admin, name) = (self.admin.clone(), self.name.clone());
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async {
                if let Ok(mut conn) = sqlx::PgConnection::connect(&admin).await {
                    let drop = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)");
                    let _ = sqlx::query(sqlx::AssertSqlSafe(drop))
                        .execute(&mut conn)
                        .await;
                }
            });
        })
        .join();
    }
}
