//! A store wrapper that fails on demand, for tests that drive the broker through
//! an outage.
use async_trait::async_trait;
use mayfly::audit::AuditEvent;
use mayfly::domain::*;
use mayfly::domain::{Event, Revocation};
use mayfly::domain::{Scope, Task, TaskId, TaskState};
use mayfly::store::*;
use mayfly::token::KeyRecord;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use time::OffsetDateTime;

/// A PostgreSQL store that fails on demand, as an unavailable store does:
/// token inserts (without writing) while `fail_inserts` is set, task endings
/// while `down` is set; everything else is delegated.
pub struct Faulty {
    inner: PgStore,
    pub fail_inserts: AtomicBool,
    /// Every token insert attempted.
    pub insert_calls: AtomicUsize,
    pub down: AtomicBool,
    /// Task endings attempted while `down`.
    pub end_calls: AtomicUsize,
}

impl Faulty {
    pub fn new(inner: PgStore) -> Self {
        Faulty {
            inner,
            fail_inserts: AtomicBool::new(false),
            insert_calls: AtomicUsize::new(0),
            down: AtomicBool::new(false),
            end_calls: AtomicUsize::new(0),
        }
    }
}

#[async_trait]
impl TaskStore for Faulty {
    async fn insert_task(&self, task: &Task, audit: &AuditEvent) -> Result<(), StoreError> {
        self.inner.insert_task(task, audit).await
    }
    async fn get_task(&self, id: TaskId) -> Result<Option<Task>, StoreError> {
        self.inner.get_task(id).await
    }
    async fn list_tasks(&self, filter: &TaskFilter) -> Result<Vec<Task>, StoreError> {
        self.inner.list_tasks(filter).await
    }
    async fn count_active_tasks(&self) -> Result<u64, StoreError> {
        self.inner.count_active_tasks().await
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
impl TokenStore for Faulty {
    async fn insert_token(
        &self,
        token: &TokenRecord,
        budget: u32,
        audit: &AuditEvent,
    ) -> Result<bool, StoreError> {
        self.insert_calls.fetch_add(1, Ordering::SeqCst);
        if self.fail_inserts.load(Ordering::SeqCst) {
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
    async fn get_token(&self, jti: uuid::Uuid) -> Result<Option<TokenRecord>, StoreError> {
        self.inner.get_token(jti).await
    }
}

/// Redemptions and step-up spends are token inserts too: they fail with them.
#[async_trait]
impl DelegationStore for Faulty {
    async fn insert_delegation(
        &self,
        d: &Delegation,
        open_limit: u32,
        audit: &AuditEvent,
    ) -> Result<bool, StoreError> {
        self.inner.insert_delegation(d, open_limit, audit).await
    }
    async fn get_delegation(&self, id: uuid::Uuid) -> Result<Option<Delegation>, StoreError> {
        self.inner.get_delegation(id).await
    }
    async fn redeem_delegation(
        &self,
        id: uuid::Uuid,
        child: &TokenRecord,
        budget: u32,
        audit: &AuditEvent,
    ) -> Result<Redeem, StoreError> {
        self.insert_calls.fetch_add(1, Ordering::SeqCst);
        if self.fail_inserts.load(Ordering::SeqCst) {
            return Err(StoreError::Unavailable("connection reset".into()));
        }
        self.inner.redeem_delegation(id, child, budget, audit).await
    }
}

#[async_trait]
impl ApprovalStore for Faulty {
    async fn standing_approval(
        &self,
        task: TaskId,
        requester: &str,
        scope: &Scope,
        now: OffsetDateTime,
    ) -> Result<Option<Approval>, StoreError> {
        self.inner
            .standing_approval(task, requester, scope, now)
            .await
    }
    async fn insert_approval(&self, a: &Approval, audit: &AuditEvent) -> Result<bool, StoreError> {
        self.inner.insert_approval(a, audit).await
    }
    async fn get_approval(&self, id: uuid::Uuid) -> Result<Option<Approval>, StoreError> {
        self.inner.get_approval(id).await
    }
    async fn list_approvals(&self, filter: &ApprovalFilter) -> Result<Vec<Approval>, StoreError> {
        self.inner.list_approvals(filter).await
    }
    async fn decide_approval(
        &self,
        id: uuid::Uuid,
        approve: bool,
        by: &str,
        reason: &str,
        now: OffsetDateTime,
        audit: &AuditEvent,
    ) -> Result<Decide, StoreError> {
        self.inner
            .decide_approval(id, approve, by, reason, now, audit)
            .await
    }
    async fn spend_approval(
        &self,
        id: uuid::Uuid,
        token: &TokenRecord,
        budget: u32,
        audit: &AuditEvent,
    ) -> Result<Spend, StoreError> {
        self.insert_calls.fetch_add(1, Ordering::SeqCst);
        if self.fail_inserts.load(Ordering::SeqCst) {
            return Err(StoreError::Unavailable("connection reset".into()));
        }
        self.inner.spend_approval(id, token, budget, audit).await
    }
    async fn count_step_up_refusal(
        &self,
        task: TaskId,
        approval: uuid::Uuid,
        now: OffsetDateTime,
        audit: &AuditEvent,
    ) -> Result<Option<u32>, StoreError> {
        self.inner
            .count_step_up_refusal(task, approval, now, audit)
            .await
    }
}

#[async_trait]
impl FreezeStore for Faulty {
    async fn freeze(&self, f: &Freeze, audit: &AuditEvent) -> Result<Freeze, StoreError> {
        self.inner.freeze(f, audit).await
    }
    async fn unfreeze(
        &self,
        target: &FreezeTarget,
        audit: &AuditEvent,
    ) -> Result<Option<Freeze>, StoreError> {
        self.inner.unfreeze(target, audit).await
    }
    async fn list_freezes(&self) -> Result<Vec<Freeze>, StoreError> {
        self.inner.list_freezes().await
    }
    async fn freeze_covering(
        &self,
        agents: &[&str],
        workflow: &str,
    ) -> Result<Option<Freeze>, StoreError> {
        self.inner.freeze_covering(agents, workflow).await
    }
}

#[async_trait]
impl RevocationStore for Faulty {
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
impl KeyStore for Faulty {
    async fn register_key(&self, key: &KeyRecord) -> Result<(), StoreError> {
        self.inner.register_key(key).await
    }
    async fn live_keys(&self, now: OffsetDateTime) -> Result<Vec<KeyRecord>, StoreError> {
        self.inner.live_keys(now).await
    }
}

#[async_trait]
impl AuditStore for Faulty {
    async fn append_audit(&self, event: &AuditEvent) -> Result<(), StoreError> {
        self.inner.append_audit(event).await
    }
    async fn audit_for_task(&self, task: TaskId) -> Result<Vec<AuditEvent>, StoreError> {
        self.inner.audit_for_task(task).await
    }
    async fn audit_chain(
        &self,
        after: u64,
        upto: u64,
        limit: u32,
    ) -> Result<Vec<mayfly::audit::chain::Sealed>, StoreError> {
        self.inner.audit_chain(after, upto, limit).await
    }
    async fn audit_head(&self) -> Result<AuditHead, StoreError> {
        self.inner.audit_head().await
    }
    async fn seal_audit(&self, batch: u32) -> Result<u32, StoreError> {
        self.inner.seal_audit(batch).await
    }
    async fn query_audit(
        &self,
        filter: &AuditFilter,
    ) -> Result<Vec<(u64, AuditEvent)>, StoreError> {
        self.inner.query_audit(filter).await
    }
    async fn token_access(
        &self,
        audience: &str,
        since: Option<OffsetDateTime>,
        until: Option<OffsetDateTime>,
    ) -> Result<Vec<Access>, StoreError> {
        self.inner.token_access(audience, since, until).await
    }
}

#[async_trait]
impl Store for Faulty {
    async fn ping(&self) -> Result<(), StoreError> {
        self.inner.ping().await
    }
}
