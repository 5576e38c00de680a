//! Persistence behind one trait grouped by aggregate (tasks, tokens, revocations,
//! keys, audit). `postgres` is the production backend.
mod postgres;

pub use postgres::PgStore;

use crate::audit::AuditEvent;
use crate::domain::{Scope, Task, TaskId, TaskState};
use crate::revocation::{Event, Revocation};
use crate::token::KeyRecord;
use async_trait::async_trait;
use time::OffsetDateTime;
use uuid::Uuid;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store cannot be reached or did not answer in time: fail closed.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// A stored row does not decode into a valid value.
    #[error("stored data is invalid: {0}")]
    Corrupt(String),
    #[error("store error: {0}")]
    Other(String),
}

/// A token as recorded (never the token string itself).
#[derive(Debug, Clone, PartialEq)]
pub struct TokenRecord {
    pub jti: Uuid,
    pub task: TaskId,
    pub agent: String,
    pub workflow: String,
    pub scope: Scope,
    pub kid: String,
    pub cert_thumbprint: String,
    pub issued_at: OffsetDateTime,
    pub expires_at: OffsetDateTime,
    pub revoked_at: Option<OffsetDateTime>,
}

/// What introspection needs besides the signature.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenStatus {
    pub revoked: bool,
    pub task_state: TaskState,
}

#[derive(Debug, Clone, Default)]
pub struct TaskFilter {
    pub agent: Option<String>,
    pub state: Option<TaskState>,
    pub limit: u32,
}

#[derive(Debug, Clone)]
pub struct TokenFilter {
    pub task: Option<TaskId>,
    pub agent: Option<String>,
    /// Only tokens neither revoked nor expired at `now`.
    pub active_at: Option<OffsetDateTime>,
    pub limit: u32,
}

/// The result of a revocation.
#[derive(Debug, Clone, PartialEq)]
pub struct Revoked {
    pub event: Event,
    pub tokens_revoked: u64,
    pub tasks_stopped: u64,
}

/// Ending an active task.
#[derive(Debug, Clone, PartialEq)]
pub enum EndOutcome {
    Ended { task: Box<Task>, revoked: Revoked },
    NotActive(TaskState),
    NotFound,
}

#[async_trait]
pub trait TaskStore {
    /// Inserts a new task with its audit event, in one transaction.
    async fn insert_task(&self, task: &Task, audit: &AuditEvent) -> Result<(), StoreError>;
    async fn get_task(&self, id: TaskId) -> Result<Option<Task>, StoreError>;
    async fn list_tasks(&self, filter: &TaskFilter) -> Result<Vec<Task>, StoreError>;
    /// Moves an active task to `to`, revokes all its tokens with one revocation event
    /// and records `audit`, all in one transaction.
    async fn end_task(
        &self,
        id: TaskId,
        to: TaskState,
        revocation: &Revocation,
        audit: &[AuditEvent],
    ) -> Result<EndOutcome, StoreError>;
    /// Active tasks whose deadline is at or before `now`, as (deadline, id), in that
    /// order, starting after `after` (the last pair of the previous page). The cursor
    /// lets a sweep page past tasks it failed to end instead of reading them again.
    async fn overdue_tasks(
        &self,
        now: OffsetDateTime,
        after: Option<(OffsetDateTime, TaskId)>,
        limit: u32,
    ) -> Result<Vec<(OffsetDateTime, TaskId)>, StoreError>;
}

#[async_trait]
pub trait TokenStore {
    /// Records a token and its audit event in one statement, counting it against the
    /// task's budget. Returns false (and writes nothing) unless the task is still
    /// active, owned by the token's agent, before its deadline and under `budget`.
    async fn insert_token(
        &self,
        token: &TokenRecord,
        budget: u32,
        audit: &AuditEvent,
    ) -> Result<bool, StoreError>;
    async fn token_status(&self, jti: Uuid) -> Result<Option<TokenStatus>, StoreError>;
    async fn list_tokens(&self, filter: &TokenFilter) -> Result<Vec<TokenRecord>, StoreError>;
}

#[async_trait]
pub trait RevocationStore {
    /// Records an administrative revocation: tokens die, and for a task, agent or
    /// all, active tasks in scope become `revoked`. `None` if a named token or task
    /// does not exist.
    async fn revoke(
        &self,
        revocation: &Revocation,
        audit: &AuditEvent,
    ) -> Result<Option<Revoked>, StoreError>;
    /// Events with a sequence number above `after`, in order.
    async fn revocations_after(&self, after: u64, limit: u32) -> Result<Vec<Event>, StoreError>;
    async fn last_revocation_seq(&self) -> Result<u64, StoreError>;
    /// Starts listening for revocations committed by any broker on this store.
    async fn revocation_feed(&self) -> Result<Box<dyn RevocationFeed>, StoreError>;
}

/// Notices of committed revocations, from every broker on one store.
#[async_trait]
pub trait RevocationFeed: Send {
    /// The sequence number of the next revocation committed anywhere; `Ok(None)`
    /// when the feed lost its connection and reconnected, so notices may have been
    /// missed and the caller must catch up by reading the store.
    async fn next(&mut self) -> Result<Option<u64>, StoreError>;
}

#[async_trait]
pub trait KeyStore {
    /// Registers a public key or extends its `not_after`.
    async fn register_key(&self, key: &KeyRecord) -> Result<(), StoreError>;
    /// Keys whose `not_after` is after `now`.
    async fn live_keys(&self, now: OffsetDateTime) -> Result<Vec<KeyRecord>, StoreError>;
}

#[async_trait]
pub trait AuditStore {
    async fn append_audit(&self, event: &AuditEvent) -> Result<(), StoreError>;
    /// Events for a task, oldest first.
    async fn audit_for_task(&self, task: TaskId) -> Result<Vec<AuditEvent>, StoreError>;
}

/// Everything the broker needs from persistence.
#[async_trait]
pub trait Store:
    TaskStore + TokenStore + RevocationStore + KeyStore + AuditStore + Send + Sync + 'static
{
    /// Answers when the store is reachable.
    async fn ping(&self) -> Result<(), StoreError>;
}
