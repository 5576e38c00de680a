//! The SQLite store's audit chain against whoever can write the database file
//! (past its append-only triggers): what the conformance suite cannot reach
//! through the trait, since it needs the database's own rows. (audit.rs does the
//! same for PostgreSQL through a running broker.)
use mayfly::domain::TaskId;
use mayfly::domain::audit::chain::Verifier;
use mayfly::domain::audit::{Action, AuditEvent};
use mayfly::store::{AuditStore, SqlStore};
use sqlx::Connection;
use std::time::Duration;
use time::OffsetDateTime;
use uuid::Uuid;

/// Verifies the whole chain as `mayfly audit verify` does; the first broken
/// position, if any.
async fn first_broken(s: &SqlStore) -> Option<u64> {
    let head = s.audit_head().await.unwrap();
    let mut v = Verifier::default();
    for e in s.audit_chain(0, head.seq, 1000).await.unwrap() {
        if let Err(b) = v.push(&e) {
            return Some(b.seq);
        }
    }
    v.finish(head.seq, &head.hash).err().map(|b| b.seq)
}

/// A SQLite store with one sealed event about a task and a token, and a
/// connection past its append-only triggers (whoever can write the file).
async fn sealed_sqlite() -> (
    tempfile::TempDir,
    SqlStore,
    sqlx::SqliteConnection,
    TaskId,
    Uuid,
) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mayfly.db");
    let store = SqlStore::sqlite(&path, 2, Duration::from_secs(10))
        .await
        .unwrap();
    let (task, jti) = (TaskId(Uuid::new_v4()), Uuid::new_v4());
    let e = AuditEvent::new(
        OffsetDateTime::from_unix_timestamp(1_795_428_000).unwrap(),
        "spiffe://example.org/agent/a1",
        Action::TokenMinted,
    )
    .task(task)
    .jti(jti)
    .agent("spiffe://example.org/agent/a1");
    store.append_audit(&e).await.unwrap();
    assert_eq!(
        store.audit_head().await.unwrap().seq,
        1,
        "sealed as written"
    );
    assert_eq!(store.seal_audit(10).await.unwrap(), 0);
    assert_eq!(first_broken(&store).await, None, "intact before tampering");
    let mut raw = sqlx::SqliteConnection::connect(&format!("sqlite://{}", path.display()))
        .await
        .unwrap();
    sqlx::query("DROP TRIGGER audit_events_append_only")
        .execute(&mut raw)
        .await
        .unwrap();
    (dir, store, raw, task, jti)
}

/// The chain's hash covers the stored text of an event's task: respelling it
/// (the same UUID in capitals) hides the event from the task's trail
/// (`task_id = $1`), so it must not verify: the hash is over the text as
/// stored, not the UUID parsed and printed again.
#[tokio::test]
async fn a_respelled_task_id_breaks_the_audit_chain() {
    let (_dir, store, mut raw, task, _) = sealed_sqlite().await;
    sqlx::query("UPDATE audit_events SET task_id = upper(task_id) WHERE seq = 1")
        .execute(&mut raw)
        .await
        .unwrap();
    // The edit matters: the event is gone from the task's trail.
    assert!(store.audit_for_task(task).await.unwrap().is_empty());
    assert_eq!(first_broken(&store).await, Some(1), "the edit verified");
}

/// The same for an event's token: without hyphens, the jti no longer matches
/// `jti = $1`, and the chain must say so.
#[tokio::test]
async fn a_respelled_jti_breaks_the_audit_chain() {
    let (_dir, store, mut raw, _, _) = sealed_sqlite().await;
    sqlx::query("UPDATE audit_events SET jti = replace(jti, '-', '') WHERE seq = 1")
        .execute(&mut raw)
        .await
        .unwrap();
    assert_eq!(first_broken(&store).await, Some(1), "the edit verified");
}
