//! No token leaves the broker unless it is persisted: a mint whose write fails hands
//! back no token, driven directly on a broker over a store that can refuse the write.
use crate::helpers::*;
use async_trait::async_trait;
use mayfly::audit::AuditEvent;
use mayfly::broker::{Broker, BrokerError, MintRequest, StartTask};
use mayfly::clock::{Clock, ManualClock};
use mayfly::domain::{Scope, Task, TaskId, TaskState};
use mayfly::identity::{Caller, SpiffeId};
use mayfly::policy::CedarPolicy;
use mayfly::revocation::{Event, Revocation};
use mayfly::store::*;
use mayfly::token::KeyRecord;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;
use time::OffsetDateTime;
use tonic::Code;

/// A PostgreSQL store whose token inserts fail as unavailable, without writing,
/// while `failing` is set; everything else is delegated.
struct FailingInserts {
    inner: PgStore,
    failing: AtomicBool,
    insert_calls: AtomicUsize,
}

#[async_trait]
impl TaskStore for FailingInserts {
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
impl TokenStore for FailingInserts {
    async fn insert_token(
        &self,
        token: &TokenRecord,
        budget: u32,
        audit: &AuditEvent,
    ) -> Result<bool, StoreError> {
        self.insert_calls.fetch_add(1, Ordering::SeqCst);
        if self.failing.load(Ordering::SeqCst) {
            return Err(StoreError::Unavailable("connection reset".into()));
        }
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
impl RevocationStore for FailingInserts {
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
impl KeyStore for FailingInserts {
    async fn register_key(&self, key: &KeyRecord) -> Result<(), StoreError> {
        self.inner.register_key(key).await
    }
    async fn live_keys(&self, now: OffsetDateTime) -> Result<Vec<KeyRecord>, StoreError> {
        self.inner.live_keys(now).await
    }
}

#[async_trait]
impl AuditStore for FailingInserts {
    async fn append_audit(&self, event: &AuditEvent) -> Result<(), StoreError> {
        self.inner.append_audit(event).await
    }
    async fn audit_for_task(&self, task: TaskId) -> Result<Vec<AuditEvent>, StoreError> {
        self.inner.audit_for_task(task).await
    }
}

#[async_trait]
impl Store for FailingInserts {
    async fn ping(&self) -> Result<(), StoreError> {
        self.inner.ping().await
    }
}

/// A caller as the transport would build it from a verified SVID valid for an hour.
fn caller(id: &str, clock: &ManualClock) -> Caller {
    Caller {
        id: SpiffeId::parse(id).unwrap(),
        thumbprint: "dGh1bWJwcmludC1vZi10aGUtdGVzdC1jZXJ0aWZpY2F0ZQ".into(),
        valid_until: clock.now().unix_timestamp() + 3600,
    }
}

async fn tokens_of(store: &PgStore, task: TaskId) -> Vec<uuid::Uuid> {
    sqlx::query_scalar("SELECT jti FROM tokens WHERE task_id = $1")
        .bind(task.0)
        .fetch_all(store.pool())
        .await
        .unwrap()
}

fn read_customer() -> MintRequest {
    MintRequest {
        task: TaskId(uuid::Uuid::nil()),
        scope: Scope::requested("crm-api", "customers/eu/1", "read").unwrap(),
        ttl: Duration::from_secs(60),
    }
}

#[tokio::test]
async fn a_token_whose_insert_fails_is_never_returned() {
    let db = fresh_database().await;
    let pg = PgStore::connect(&db.url, 4, Duration::from_secs(5))
        .await
        .unwrap();
    let store = Arc::new(FailingInserts {
        inner: pg.clone(),
        failing: AtomicBool::new(true),
        insert_calls: AtomicUsize::new(0),
    });
    let clock = ManualClock::new();
    let dir = tempfile::tempdir().unwrap();
    let policy = Arc::new(CedarPolicy::load(&write_policies(dir.path(), 5), "test").unwrap());
    let broker = Broker::new(
        store.clone(),
        policy,
        Arc::new(clock.clone()),
        "https://mayfly.test".into(),
        Duration::from_secs(60),
    )
    .await
    .unwrap();
    let agent = caller(AGENT, &clock);
    let task = broker
        .start_task(
            &caller(ORCH, &clock),
            StartTask {
                agent: agent.id.clone(),
                workflow: "support".into(),
                objective: "answer ticket 4711".into(),
                scopes: vec![Scope::declared("crm-api", "customers/eu/*", "read").unwrap()],
                duration: Duration::from_secs(600),
            },
        )
        .await
        .unwrap();

    let failed = broker
        .mint(
            &agent,
            MintRequest {
                task: task.id,
                ..read_customer()
            },
        )
        .await;
    let err = match failed {
        Ok(minted) => panic!("a token was handed back: jti {}", minted.jti),
        Err(e) => e,
    };
    assert!(
        matches!(err, BrokerError::Store(StoreError::Unavailable(_))),
        "{err:?}"
    );
    assert_eq!(
        store.insert_calls.load(Ordering::SeqCst),
        1,
        "the refusal came from the failed insert, not from an earlier check"
    );
    assert_eq!(tonic::Status::from(err).code(), Code::Unavailable);
    assert_eq!(tokens_of(&pg, task.id).await, Vec::<uuid::Uuid>::new());
    assert_eq!(
        broker.get_task(task.id).await.unwrap().tokens_minted,
        0,
        "nothing was counted against the budget"
    );

    // The store is back: the next mint is persisted and returned.
    store.failing.store(false, Ordering::SeqCst);
    let minted = broker
        .mint(
            &agent,
            MintRequest {
                task: task.id,
                ..read_customer()
            },
        )
        .await
        .expect("mint once the store answers");
    assert!(!minted.token.is_empty());
    assert_eq!(tokens_of(&pg, task.id).await, vec![minted.jti]);
    assert!(broker.introspect(&minted.token).await.unwrap().is_some());
}
