//! The expiry sweep, driven directly on a broker with a manual clock: one task that
//! cannot be ended does not shield the others, and an outage stops the sweep at once.
use crate::helpers::*;
use async_trait::async_trait;
use mayfly::audit::AuditEvent;
use mayfly::broker::{Broker, BrokerError};
use mayfly::clock::{Clock, ManualClock};
use mayfly::domain::{Task, TaskId, TaskState};
use mayfly::policy::CedarPolicy;
use mayfly::revocation::{Event, Revocation};
use mayfly::store::*;
use mayfly::token::KeyRecord;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
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
async fn insert_task(store: &PgStore, expires_at: OffsetDateTime, corrupt: bool) -> TaskId {
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
    .execute(store.pool())
    .await
    .unwrap();
    TaskId(id)
}

async fn count_in_state(store: &PgStore, state: TaskState) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM tasks WHERE state = $1")
        .bind(state.as_str())
        .fetch_one(store.pool())
        .await
        .unwrap()
}

#[tokio::test]
async fn tasks_that_cannot_be_ended_are_skipped_and_the_sweep_ends_the_others() {
    let db = fresh_database().await;
    let store = PgStore::connect(&db.url, 4, Duration::from_secs(5))
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
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert_eq!(n, 30, "one revocation per expired task");
    let still: String = sqlx::query_scalar("SELECT state FROM tasks WHERE id = $1")
        .bind(not_due.0)
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert_eq!(still, "active");

    // Once the clock passes its deadline, the next sweep ends it; the bad ones are
    // retried (and fail again).
    clock.advance(Duration::from_secs(2 * 3600));
    let sweep = broker.sweep_expired().await;
    assert_eq!((sweep.ended, sweep.failed), (1, 120));
}

/// A store whose task writes fail as unavailable once `down` is set, while task
/// listing still answers: the store going away in the middle of a sweep.
struct Outage {
    inner: PgStore,
    down: AtomicBool,
    end_calls: AtomicUsize,
}

#[async_trait]
impl TaskStore for Outage {
    async fn insert_task(&self, task: &Task, audit: &AuditEvent) -> Result<(), StoreError> {
        self.inner.insert_task(task, audit).await
    }
    async fn get_task(&self, id: TaskId) -> Result<Option<Task>, StoreError> {
        self.inner.get_task(id).await
    }
    async fn list_tasks(&self, filter: &TaskFilter) -> Result<Vec<Task>, StoreError> {
        self.inner.list_tasks(filter).await
    }
    async fn end_task(
        &self,
        id: TaskId,
        to: TaskState,
        revocation: &Revocation,
        audit: &[AuditEvent],
    ) -> Result<EndOutcome, StoreError> {
        if self.down.load(Ordering::SeqCst) {
            self.end_calls.fetch_add(1, Ordering::SeqCst);
            return Err(StoreError::Unavailable("connection refused".into()));
        }
        self.inner.end_task(id, to, revocation, audit).await
    }
    async fn overdue_tasks(
        &self,
        now: OffsetDateTime,
        after: Option<(OffsetDateTime, TaskId)>,
        limit: u32,
    ) -> Result<Vec<(OffsetDateTime, TaskId)>, StoreError> {
        self.inner.overdue_tasks(now, after, limit).await
    }
}

#[async_trait]
impl TokenStore for Outage {
    async fn insert_token(
        &self,
        token: &TokenRecord,
        budget: u32,
        audit: &AuditEvent,
    ) -> Result<bool, StoreError> {
        self.inner.insert_token(token, budget, audit).await
    }
    async fn token_status(&self, jti: uuid::Uuid) -> Result<Option<TokenStatus>, StoreError> {
        self.inner.token_status(jti).await
    }
    async fn list_tokens(&self, filter: &TokenFilter) -> Result<Vec<TokenRecord>, StoreError> {
        self.inner.list_tokens(filter).await
    }
}

#[async_trait]
impl RevocationStore for Outage {
    async fn revoke(
        &self,
        revocation: &Revocation,
        audit: &AuditEvent,
    ) -> Result<Option<Revoked>, StoreError> {
        self.inner.revoke(revocation, audit).await
    }
    async fn revocations_after(&self, after: u64, limit: u32) -> Result<Vec<Event>, StoreError> {
        self.inner.revocations_after(after, limit).await
    }
    async fn last_revocation_seq(&self) -> Result<u64, StoreError> {
        self.inner.last_revocation_seq().await
    }
    async fn revocation_feed(&self) -> Result<Box<dyn RevocationFeed>, StoreError> {
        self.inner.revocation_feed().await
    }
}

#[async_trait]
impl KeyStore for Outage {
    async fn register_key(&self, key: &KeyRecord) -> Result<(), StoreError> {
        self.inner.register_key(key).await
    }
    async fn live_keys(&self, now: OffsetDateTime) -> Result<Vec<KeyRecord>, StoreError> {
        self.inner.live_keys(now).await
    }
}

#[async_trait]
impl AuditStore for Outage {
    async fn append_audit(&self, event: &AuditEvent) -> Result<(), StoreError> {
        self.inner.append_audit(event).await
    }
    async fn audit_for_task(&self, task: TaskId) -> Result<Vec<AuditEvent>, StoreError> {
        self.inner.audit_for_task(task).await
    }
}

#[async_trait]
impl Store for Outage {
    async fn ping(&self) -> Result<(), StoreError> {
        self.inner.ping().await
    }
}

#[tokio::test]
async fn an_unavailable_store_stops_the_sweep_at_the_first_failure() {
    let db = fresh_database().await;
    let pg = PgStore::connect(&db.url, 4, Duration::from_secs(5))
        .await
        .unwrap();
    let store = Arc::new(Outage {
        inner: pg.clone(),
        down: AtomicBool::new(false),
        end_calls: AtomicUsize::new(0),
    });
    let clock = ManualClock::new();
    let (broker, _dir) = broker_on(store.clone(), &clock).await;
    for _ in 0..5 {
        insert_task(&pg, clock.now() - time::Duration::minutes(1), false).await;
    }
    store.down.store(true, Ordering::SeqCst);

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
        store.end_calls.load(Ordering::SeqCst),
        1,
        "no further task is tried once the store is unavailable"
    );

    // Back up: the next sweep ends them all.
    store.down.store(false, Ordering::SeqCst);
    let sweep = broker.sweep_expired().await;
    assert!(sweep.stopped.is_none());
    assert_eq!(sweep.ended, 5);
}
