//! Audit events sealed as they are written, on both databases: in the chain
//! from their commit (no sealer run), one gap-free chain from two stores
//! writing at once, nothing taken by a transaction that fails, and events an
//! older broker left unsealed still sealed after the newer ones. What the
//! conformance suite cannot see through the trait: a row's own columns, a
//! second store on one database, a row written as an older broker wrote it.
use crate::store_conformance::fixtures::*;
use crate::support::fresh_database;
use mayfly::domain::audit::chain::Verifier;
use mayfly::domain::audit::{Action, AuditEvent};
use mayfly::domain::{FreezeTarget, Target, TaskState};
use mayfly::store::*;
use serde_json::json;
use sqlx::Connection;
use std::time::Duration;

/// A store and a connection of its own to the same database.
struct Db {
    store: SqlStore,
    url: String,
    raw: Raw,
    _keep: Box<dyn std::any::Any>,
}

enum Raw {
    Pg(sqlx::PgConnection),
    Lite(sqlx::SqliteConnection),
}

async fn postgres() -> Db {
    let db = fresh_database().await;
    let store = SqlStore::postgres(&db.url, 8, Duration::from_secs(10))
        .await
        .unwrap();
    let raw = Raw::Pg(sqlx::PgConnection::connect(&db.url).await.unwrap());
    Db {
        store,
        url: db.url.clone(),
        raw,
        _keep: Box::new(db),
    }
}

async fn sqlite() -> Db {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mayfly.db");
    let store = SqlStore::sqlite(&path, 2, Duration::from_secs(10))
        .await
        .unwrap();
    let url = format!("sqlite://{}", path.display());
    let raw = Raw::Lite(sqlx::SqliteConnection::connect(&url).await.unwrap());
    Db {
        store,
        url,
        raw,
        _keep: Box::new(dir),
    }
}

impl Raw {
    /// Events stored, and those without a position.
    async fn counts(&mut self) -> (i64, i64) {
        let sql = "SELECT count(*) AS n, count(*) - count(seq) AS unsealed FROM audit_events";
        match self {
            Raw::Pg(c) => sqlx::query_as(sql).fetch_one(c).await.unwrap(),
            Raw::Lite(c) => sqlx::query_as(sql).fetch_one(c).await.unwrap(),
        }
    }

    /// Inserts an event as a broker from before sealed writes did: no position.
    async fn insert_unsealed(&mut self, e: &AuditEvent) {
        let sql = "INSERT INTO audit_events (at, actor, action, outcome, reason, detail)
                   VALUES ($1, $2, $3, $4, $5, $6)";
        let (action, outcome) = (e.action.as_str(), e.action.outcome());
        match self {
            Raw::Pg(c) => sqlx::query(sql)
                .bind(e.at)
                .bind(&e.actor)
                .bind(action)
                .bind(outcome)
                .bind(&e.reason)
                .bind(sqlx::types::Json(&e.detail))
                .execute(c)
                .await
                .map(drop),
            Raw::Lite(c) => sqlx::query(sql)
                .bind(e.at.unix_timestamp_nanos() as i64 / 1000)
                .bind(&e.actor)
                .bind(action)
                .bind(outcome)
                .bind(&e.reason)
                .bind(e.detail.to_string())
                .execute(c)
                .await
                .map(drop),
        }
        .unwrap();
    }

    /// Makes the database refuse to store an event with `reason`: a failure of
    /// the write a transaction's commit makes last.
    async fn refuse_events_with_reason(&mut self, reason: &str) {
        match self {
            Raw::Pg(c) => {
                for sql in [
                    "CREATE FUNCTION test_refuse() RETURNS trigger LANGUAGE plpgsql AS $$
                     BEGIN RAISE EXCEPTION 'refused by the test'; END $$"
                        .to_string(),
                    format!(
                        "CREATE TRIGGER test_refuse BEFORE INSERT ON audit_events FOR EACH ROW
                         WHEN (NEW.reason = '{reason}') EXECUTE FUNCTION test_refuse()"
                    ),
                ] {
                    sqlx::query(sqlx::AssertSqlSafe(sql))
                        .execute(&mut *c)
                        .await
                        .unwrap();
                }
            }
            Raw::Lite(c) => {
                let sql = format!(
                    "CREATE TRIGGER test_refuse BEFORE INSERT ON audit_events
                     WHEN NEW.reason = '{reason}'
                     BEGIN SELECT RAISE(ABORT, 'refused by the test'); END"
                );
                sqlx::query(sqlx::AssertSqlSafe(sql))
                    .execute(c)
                    .await
                    .unwrap();
            }
        }
    }
}

/// Verifies the whole chain as `mayfly audit verify` does; its positions.
async fn verified(s: &SqlStore) -> Vec<u64> {
    let head = s.audit_head().await.unwrap();
    assert_eq!(head.max_seq, head.seq, "events stored past the head");
    let mut v = Verifier::default();
    let mut seqs = vec![];
    loop {
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

/// Every event stored is in the chain, which verifies: no sealer ran.
async fn all_sealed(db: &mut Db, events: i64) {
    assert_eq!(db.raw.counts().await, (events, 0), "(events, unsealed)");
    let n = events as u64;
    assert_eq!(verified(&db.store).await, (1..=n).collect::<Vec<_>>());
}

fn refusal(secs: i64) -> AuditEvent {
    AuditEvent::new(at(secs), AGENT, Action::CallDenied)
        .reason("the caller holds none of the roles the call requires")
        .detail(json!({"method": "mayfly.v1.AdminService/Revoke", "n": secs}))
}

async fn sealed_at_commit(mut db: Db) {
    let s = db.store.clone();
    let t = open(&s, task(AGENT, 0, 600)).await;
    all_sealed(&mut db, 1).await;
    freeze(&s, FreezeTarget::Agent(agent_id(AGENT2)), 10).await;
    unfreeze(&s, &FreezeTarget::Agent(agent_id(AGENT2)), 11).await;
    all_sealed(&mut db, 3).await;
    revoke_ok(&s, Target::Task(t.id), 20).await;
    all_sealed(&mut db, 5).await;
    let other = open(&s, task(AGENT2, 30, 600)).await;
    complete(&s, &other, 40).await;
    s.append_audit(&refusal(50)).await.unwrap();
    all_sealed(&mut db, 9).await;
    // In commit order, and readable at once.
    let actions: Vec<Action> = s
        .query_audit(&AuditFilter {
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_iter()
        .map(|(_, e)| e.action)
        .collect();
    use Action::*;
    let committed = [
        TaskOpened,
        IssuanceFrozen,
        IssuanceUnfrozen,
        TaskRevoked,
        Revocation,
        TaskOpened,
        TaskCompleted,
        Revocation,
        CallDenied,
    ];
    assert_eq!(actions, committed);
    assert_eq!(
        db.store.seal_audit(100).await.unwrap(),
        0,
        "nothing unsealed"
    );
}

#[tokio::test]
async fn postgresql_seals_an_event_as_its_transaction_commits() {
    sealed_at_commit(postgres().await).await;
}

#[tokio::test]
async fn sqlite_seals_an_event_as_its_transaction_commits() {
    sealed_at_commit(sqlite().await).await;
}

async fn failed_write_takes_nothing(mut db: Db) {
    let s = db.store.clone();
    open(&s, task(AGENT, 0, 600)).await;
    db.raw.refuse_events_with_reason("refuse me").await;
    // The task and its event commit together, or neither does.
    let t = task(AGENT2, 10, 600);
    let audit = opened(&t).reason("refuse me");
    assert!(s.insert_task(&t, &audit).await.is_err());
    assert_eq!(s.get_task(t.id).await.unwrap(), None);
    assert!(
        s.append_audit(&refusal(20).reason("refuse me"))
            .await
            .is_err()
    );
    let head = s.audit_head().await.unwrap();
    assert_eq!((head.seq, head.max_seq), (1, 1), "the head moved");
    // The next event takes the next position: no gap.
    s.append_audit(&refusal(30)).await.unwrap();
    all_sealed(&mut db, 2).await;
}

#[tokio::test]
async fn postgresql_a_transaction_whose_events_fail_commits_nothing_and_leaves_no_gap() {
    failed_write_takes_nothing(postgres().await).await;
}

#[tokio::test]
async fn sqlite_a_transaction_whose_events_fail_commits_nothing_and_leaves_no_gap() {
    failed_write_takes_nothing(sqlite().await).await;
}

/// 200 writes of one store: refusals on their own, tasks opened and completed
/// (the revocation counter, the task's row, then the chain's head); the events
/// it wrote.
async fn writes(s: SqlStore, who: i64) -> i64 {
    let mut events = 0;
    let mut current = None;
    for i in 0..200 {
        let secs = who * 1000 + i;
        match i % 4 {
            0 | 1 => {
                s.append_audit(&refusal(secs)).await.unwrap();
                events += 1;
            }
            2 => {
                current = Some(open(&s, task(AGENT, secs, 600)).await);
                events += 1;
            }
            _ => {
                let t = current.take().expect("opened before");
                let (revocation, audit) = ending(&t, TaskState::Completed, secs);
                let ended = s.end_task(t.id, TaskState::Completed, &revocation, &audit);
                assert!(matches!(ended.await.unwrap(), EndOutcome::Ended { .. }));
                events += audit.len() as i64;
            }
        }
    }
    events
}

#[tokio::test]
async fn two_stores_writing_at_once_extend_one_gap_free_chain() {
    let mut db = postgres().await;
    // Another broker's store: a pool of its own on the same database.
    let other = SqlStore::postgres(&db.url, 8, Duration::from_secs(10))
        .await
        .unwrap();
    let a = tokio::spawn(writes(db.store.clone(), 1));
    let b = tokio::spawn(writes(other, 2));
    let events = a.await.unwrap() + b.await.unwrap();
    assert_eq!(events, 500);
    all_sealed(&mut db, events).await;
    let Raw::Pg(c) = &mut db.raw else {
        unreachable!("a PostgreSQL database")
    };
    let (distinct, low, high): (i64, i64, i64) =
        sqlx::query_as("SELECT count(DISTINCT seq), min(seq), max(seq) FROM audit_events")
            .fetch_one(c)
            .await
            .unwrap();
    assert_eq!((distinct, low, high), (events, 1, events));
}

async fn unsealed_rows_sealed_after(mut db: Db) {
    let s = db.store.clone();
    let (e1, e2, e3, e4) = (refusal(1), refusal(2), refusal(3), refusal(4));
    let legacy: Vec<AuditEvent> = (0..3)
        .map(|i| refusal(10 + i).reason("written by an older broker"))
        .collect();
    s.append_audit(&e1).await.unwrap();
    s.append_audit(&e2).await.unwrap();
    for e in &legacy {
        db.raw.insert_unsealed(e).await;
    }
    s.append_audit(&e3).await.unwrap();

    // Not in the chain until sealed: the chain is what was sealed.
    let all = AuditFilter {
        limit: 100,
        ..Default::default()
    };
    let found = s.query_audit(&all).await.unwrap();
    assert_eq!(
        found,
        vec![(1, e1.clone()), (2, e2.clone()), (3, e3.clone())]
    );
    assert_eq!(db.raw.counts().await, (6, 3));
    assert_eq!(verified(&s).await, [1, 2, 3]);

    // Sealed after every event sealed before, oldest first, one batch at a time.
    assert_eq!(s.seal_audit(2).await.unwrap(), 2);
    let head = s.audit_head().await.unwrap();
    assert_eq!((head.seq, head.max_seq), (5, 5));
    assert_eq!(s.seal_audit(100).await.unwrap(), 1);
    assert_eq!(s.seal_audit(100).await.unwrap(), 0);
    s.append_audit(&e4).await.unwrap();
    all_sealed(&mut db, 7).await;
    let found: Vec<AuditEvent> = s
        .query_audit(&all)
        .await
        .unwrap()
        .into_iter()
        .map(|(_, e)| e)
        .collect();
    let mut want = vec![e1, e2, e3];
    want.extend(legacy);
    want.push(e4);
    assert_eq!(found, want);
}

#[tokio::test]
async fn postgresql_seals_what_an_older_broker_left_unsealed_after_the_newer_events() {
    unsealed_rows_sealed_after(postgres().await).await;
}

#[tokio::test]
async fn sqlite_seals_what_an_older_broker_left_unsealed_after_the_newer_events() {
    unsealed_rows_sealed_after(sqlite().await).await;
}
