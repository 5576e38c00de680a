//! The databases themselves guard archiving, for any writer short of the tables'
//! owner past their triggers: an audit event is deleted only if it is sealed at
//! or below the anchor; the anchor moves only forward, to a sealed event with
//! exactly its hash, never past the head, and is never deleted or replaced.
//! What the conformance suite cannot reach through the trait: raw statements.
use crate::support::fresh_database;
use mayfly::domain::audit::chain::{Checkpoint, Sealed, Verifier};
use mayfly::domain::audit::{Action, AuditEvent};
use mayfly::store::{Anchoring, AuditStore, SqlStore};
use sqlx::Connection;
use std::time::Duration;
use time::OffsetDateTime;

/// A connection of an ordinary writer (the triggers apply).
enum Raw {
    Pg(sqlx::PgConnection),
    Lite(sqlx::SqliteConnection),
}

impl Raw {
    /// Runs `sql` with `$1` bound to `seq` and `$2` to `hash` (where it names them).
    async fn run(&mut self, sql: &str, seq: i64, hash: &[u8]) -> Result<u64, String> {
        let (one, two) = (sql.contains("$1"), sql.contains("$2"));
        let sql = || sqlx::AssertSqlSafe(sql.to_string());
        let done = match self {
            Raw::Pg(c) => {
                let q = sqlx::query(sql());
                let q = if one { q.bind(seq) } else { q };
                let q = if two { q.bind(hash.to_vec()) } else { q };
                q.execute(&mut *c).await.map(|r| r.rows_affected())
            }
            Raw::Lite(c) => {
                let q = sqlx::query(sql());
                let q = if one { q.bind(seq) } else { q };
                let q = if two { q.bind(hash.to_vec()) } else { q };
                q.execute(&mut *c).await.map(|r| r.rows_affected())
            }
        };
        done.map_err(|e| e.to_string())
    }
}

/// Five sealed events, the anchor at the second (its own event sealed at 6),
/// and an ordinary writer.
async fn anchored(store: &SqlStore) -> Vec<Sealed> {
    let t0 = OffsetDateTime::from_unix_timestamp(1_795_428_000).unwrap();
    for i in 0..5 {
        let e = AuditEvent::new(t0 + Duration::from_secs(i), "mayfly", Action::CallDenied);
        store.append_audit(&e).await.unwrap();
    }
    assert_eq!(
        store.audit_head().await.unwrap().seq,
        5,
        "sealed as written"
    );
    let chain = store.audit_chain(0, 5, 100).await.unwrap();
    let two = Checkpoint::new(2, chain[1].hash.clone());
    let archived = AuditEvent::new(t0, "mayfly", Action::AuditArchived);
    let genesis = Checkpoint::genesis();
    let moved = store.anchor_audit(&genesis, &two, &archived).await;
    assert_eq!(moved.unwrap(), Anchoring::Moved);
    chain
}

/// What the database refuses and allows, on either.
async fn guards(store: &SqlStore, raw: &mut Raw, postgres: bool) {
    let chain = anchored(store).await;
    let refused = |r: Result<u64, String>, what: &str| {
        let err = r.expect_err(what);
        assert!(
            err.contains("append-only") || err.contains("audit anchor"),
            "{what}: {err}"
        );
    };
    let h = |seq: usize| chain[seq - 1].hash.clone();

    // Above the anchor, unsealed (as an older broker wrote it), or all at once.
    let del = "DELETE FROM audit_events WHERE seq = $1";
    refused(
        raw.run(del, 3, &[]).await,
        "a sealed event above the anchor",
    );
    let older = match postgres {
        true => {
            "INSERT INTO audit_events (at, actor, action, outcome)
                 VALUES (now(), 'mayfly', 'call_denied', 'deny')"
        }
        // Unix microseconds.
        false => {
            "INSERT INTO audit_events (at, actor, action, outcome)
                  VALUES (1795428000000000, 'mayfly', 'call_denied', 'deny')"
        }
    };
    assert_eq!(raw.run(older, 0, &[]).await, Ok(1));
    let unsealed = "DELETE FROM audit_events WHERE seq IS NULL";
    refused(raw.run(unsealed, 0, &[]).await, "an unsealed event");
    refused(
        raw.run("DELETE FROM audit_events", 0, &[]).await,
        "every event",
    );
    if postgres {
        refused(raw.run("TRUNCATE audit_events", 0, &[]).await, "truncate");
    }
    // At or below it: archived, removable.
    let below = "DELETE FROM audit_events WHERE seq <= $1";
    assert_eq!(raw.run(below, 2, &[]).await, Ok(2));

    // The anchor: not backward, not to where it stands, not to another hash,
    // not past the head (6, the archive's event; 7 is the unsealed one),
    // never deleted.
    let set = "UPDATE audit_anchor SET seq = $1, hash = $2";
    refused(raw.run(set, 1, &h(1)).await, "backward");
    refused(raw.run(set, 2, &h(2)).await, "where it stands");
    refused(raw.run(set, 4, &h(3)).await, "another event's hash");
    refused(raw.run(set, 7, &h(5)).await, "past the head");
    refused(raw.run(set, 99, &h(5)).await, "far past the head");
    refused(raw.run("DELETE FROM audit_anchor", 0, &[]).await, "deleted");
    if postgres {
        refused(raw.run("TRUNCATE audit_anchor", 0, &[]).await, "truncated");
        let upsert = "INSERT INTO audit_anchor (id, seq, hash) VALUES (true, $1, $2)
                      ON CONFLICT (id) DO UPDATE SET seq = excluded.seq, hash = excluded.hash";
        refused(raw.run(upsert, 1, &h(1)).await, "an upsert backward");
    } else {
        let replace = "INSERT OR REPLACE INTO audit_anchor (id, seq, hash) VALUES (1, $1, $2)";
        refused(raw.run(replace, 1, &h(1)).await, "replaced");
        let moved = "UPDATE audit_anchor SET id = 2";
        refused(raw.run(moved, 0, &[]).await, "a second row");
    }

    // Still anchored at 2; the stored chain verifies from there (the older
    // broker's event once sealed, after the archive's).
    assert_eq!(store.seal_audit(100).await.unwrap(), 1);
    let head = store.audit_head().await.unwrap();
    assert_eq!(head.anchor, Checkpoint::new(2, h(2)));
    let mut v = Verifier::after(head.anchor.clone());
    for e in store.audit_chain(2, head.seq, 100).await.unwrap() {
        v.push(&e).unwrap();
    }
    v.finish(head.seq, &head.hash).unwrap();
    assert_eq!(v.checked(), 5);
}

#[tokio::test]
async fn postgresql_deletes_only_archived_events_and_guards_the_anchor() {
    let db = fresh_database().await;
    let store = SqlStore::postgres(&db.url, 2, Duration::from_secs(10))
        .await
        .unwrap();
    let mut raw = Raw::Pg(sqlx::PgConnection::connect(&db.url).await.unwrap());
    guards(&store, &mut raw, true).await;
}

#[tokio::test]
async fn sqlite_deletes_only_archived_events_and_guards_the_anchor() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mayfly.db");
    let store = SqlStore::sqlite(&path, 2, Duration::from_secs(10))
        .await
        .unwrap();
    // Without recursive_triggers: a REPLACE must not get past the guards either.
    let conn = sqlx::SqliteConnection::connect(&format!("sqlite://{}", path.display()));
    let mut raw = Raw::Lite(conn.await.unwrap());
    guards(&store, &mut raw, false).await;
}
