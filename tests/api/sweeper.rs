//! The expiry sweep, driven directly on a broker with a manual clock: one task that
//! cannot be ended does not shield the others, and an outage stops the sweep at once.
use crate::faulty::Faults;
use crate::support::*;
use mayfly::broker::{Broker, BrokerError};
use mayfly::clock::{Clock, ManualClock};
use mayfly::domain::{TaskId, TaskState};
use mayfly::policy::CedarPolicy;
use mayfly::store::*;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use time::OffsetDateTime;

async fn broker_on(store: Arc<dyn Store>, clock: &ManualClock) -> (Broker, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let policies = write_policies(dir.path(), 5);
    let policy = Arc::new(CedarPolicy::load(&policies, "test").unwrap());
    let broker = Broker::new(
        store,
        policy,
        Arc::new(clock.clone()),
        "https://mayfly.test".into(),
        Duration::from_secs(60),
    )
    .await
    .unwrap();
    (broker, dir)
}

/// Inserts an active task with deadline `expires_at`; a `corrupt` one has scopes
/// that do not decode, so ending it fails inside its transaction.
async fn insert_task(store: &SqlStore, expires_at: OffsetDateTime, corrupt: bool) -> TaskId {
    let id = uuid::Uuid::new_v4();
    let scopes = if corrupt {
        serde_json::json!("not a list of scopes")
    } else {
        serde_json::json!([{"audience": "crm-api", "resource": "customers/eu/*", "action": "read"}])
    };
    sqlx::query(
        "INSERT INTO tasks (id, agent, workflow, objective, scopes, state, opened_by, created_at, expires_at)
         VALUES ($1, $2, 'support', 'sweep test', $3, 'active', $4, $5, $6)",
    )
    .bind(id)
    .bind(AGENT)
    .bind(sqlx::types::Json(scopes))
    .bind(ORCH)
    .bind(expires_at - time::Duration::hours(1))
    .bind(expires_at)
    .execute(store.postgres_pool().expect("a PostgreSQL store"))
    .await
    .unwrap();
    TaskId(id)
}

async fn count_in_state(store: &SqlStore, state: TaskState) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM tasks WHERE state = $1")
        .bind(state.as_str())
        .fetch_one(store.postgres_pool().expect("a PostgreSQL store"))
        .await
        .unwrap()
}

#[tokio::test]
async fn tasks_that_cannot_be_ended_are_skipped_and_the_sweep_ends_the_others() {
    let db = fresh_database().await;
    let store = SqlStore::postgres(&db.url, 4, Duration::from_secs(5))
        .await
        .unwrap();
    let clock = ManualClock::new();
    let (broker, _dir) = broker_on(Arc::new(store.clone()), &clock).await;
    let now = clock.now();
    // More bad tasks than one page, all due first: a sweep that re-read them
    // would never reach the good ones, or never finish.
    for i in 0..120 {
        insert_task(
            &store,
            now - time::Duration::hours(3) + time::Duration::seconds(i),
            true,
        )
        .await;
    }
    for _ in 0..30 {
        insert_task(&store, now - time::Duration::hours(1), false).await;
    }
    let not_due = insert_task(&store, now + time::Duration::hours(1), false).await;

    let sweep = tokio::time::timeout(Duration::from_secs(60), broker.sweep_expired())
        .await
        .expect("the sweep finishes");
    assert!(sweep.stopped.is_none(), "{:?}", sweep.stopped);
    assert_eq!((sweep.ended, sweep.failed), (30, 120));
    assert_eq!(count_in_state(&store, TaskState::Expired).await, 30);
    assert_eq!(count_in_state(&store, TaskState::Active).await, 121);
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM revocations")
        .fetch_one(store.postgres_pool().expect("a PostgreSQL store"))
        .await
        .unwrap();
    assert_eq!(n, 30, "one revocation per expired task");
    let still: String = sqlx::query_scalar("SELECT state FROM tasks WHERE id = $1")
        .bind(not_due.0)
        .fetch_one(store.postgres_pool().expect("a PostgreSQL store"))
        .await
        .unwrap();
    assert_eq!(still, "active");

    // Once the clock passes its deadline, the next sweep ends it; the bad ones are
    // retried (and fail again).
    clock.advance(Duration::from_secs(2 * 3600));
    let sweep = broker.sweep_expired().await;
    assert_eq!((sweep.ended, sweep.failed), (1, 120));
}

#[tokio::test]
async fn an_unavailable_store_stops_the_sweep_at_the_first_failure() {
    let db = fresh_database().await;
    let pg = SqlStore::postgres(&db.url, 4, Duration::from_secs(5))
        .await
        .unwrap();
    let (store, faults) = Faults::over(pg.clone());
    let clock = ManualClock::new();
    let (broker, _dir) = broker_on(store.clone(), &clock).await;
    for _ in 0..5 {
        insert_task(&pg, clock.now() - time::Duration::minutes(1), false).await;
    }
    faults.down.store(true, Ordering::SeqCst);

    let sweep = broker.sweep_expired().await;
    assert!(
        matches!(
            sweep.stopped,
            Some(BrokerError::Store(StoreError::Unavailable(_)))
        ),
        "{:?}",
        sweep.stopped
    );
    assert_eq!((sweep.ended, sweep.failed), (0, 0));
    assert_eq!(
        faults.end_calls.load(Ordering::SeqCst),
        1,
        "no further task is tried once the store is unavailable"
    );

    // Back up: the next sweep ends them all.
    faults.down.store(false, Ordering::SeqCst);
    let sweep = broker.sweep_expired().await;
    assert!(sweep.stopped.is_none());
    assert_eq!(sweep.ended, 5);
}
