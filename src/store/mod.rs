//! Persistence behind one trait grouped by aggregate (tasks, tokens, delegations,
//! approvals, freezes, revocations, keys, audit), implemented once in `sql` for
//! PostgreSQL (production; replicas share it) and SQLite (`mayfly dev`, a single
//! broker). Both pass the same conformance suite (tests/api/store_conformance/).
//! List limits are clamped to 1..=1000. What is no longer needed is pruned in
//! small batches (`RetentionStore`). The audit trail's trait and types are in
//! `audit`.
mod audit;
pub mod gate;
mod sql;
mod url;

pub use audit::{Access, Anchoring, AuditFilter, AuditHead, AuditStore};
pub use gate::Health;
pub use sql::{FaultHook, GroupCommits, SqlStore, Write};
pub use url::{DATABASE_URL_FORMS, DatabaseUrl, redacted};

use crate::domain::audit::AuditEvent;
use crate::domain::retention::Prunable;
use crate::domain::{
    Approval, ApprovalState, Delegation, Event, Freeze, FreezeTarget, KeyRecord, Revocation, Scope,
    SpiffeId, Task, TaskId, TaskState, TokenRecord,
};
use async_trait::async_trait;
use time::OffsetDateTime;
use uuid::Uuid;

#[derive(Debug, Clone, thiserror::Error)]
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

/// Why a write that records a token (a mint, a redemption, a spent approval)
/// refused it, judged on the task's row as the write found it: nothing was
/// written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    NoTask,
    /// The task is another agent's.
    NotOwner,
    /// A freeze covers the token (its holder, the task's agent or workflow).
    Frozen,
    /// The task is not active: its state now.
    NotActive(TaskState),
    PastDeadline,
    /// The task has recorded its budget of tokens.
    OutOfBudget,
}

/// A token recorded, or why not.
pub type Recorded = Result<(), Refusal>;

/// Redeeming a delegation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Redeem {
    /// The child token is recorded and counted against the task's budget.
    Redeemed,
    NotFound,
    AlreadyRedeemed,
    /// The offer lapsed.
    Expired,
    /// The parent token was revoked (directly or through an ancestor).
    ParentRevoked,
    /// The task refused the child token: nothing written.
    Refused(Refusal),
}

#[derive(Debug, Clone)]
pub struct ApprovalFilter {
    pub task: Option<TaskId>,
    /// Only approvals still pending at this time, of tasks still active.
    pub pending_at: Option<OffsetDateTime>,
    pub limit: u32,
}

/// Deciding an approval.
#[derive(Debug, Clone, PartialEq)]
pub enum Decide {
    Decided(Approval),
    /// Already decided, used or expired: as it stands.
    NotPending(Approval),
    NotFound,
}

/// Spending an approval on its token.
#[derive(Debug, Clone, PartialEq)]
pub enum Spend {
    /// The token is recorded, the approval used.
    Spent,
    /// Not approved (any more): as it stands.
    NotApproved(Box<Approval>),
    /// The task refused the token: nothing written.
    Refused(Refusal),
}

/// What introspection needs besides the signature.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenStatus {
    pub revoked: bool,
    pub task_state: TaskState,
}

#[derive(Debug, Clone, Default)]
pub struct TaskFilter {
    pub agent: Option<SpiffeId>,
    pub state: Option<TaskState>,
    pub limit: u32,
}

#[derive(Debug, Clone)]
pub struct TokenFilter {
    pub task: Option<TaskId>,
    pub agent: Option<SpiffeId>,
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
    /// The target was revoked before and nothing it covers was live: `event` is
    /// the original one, and nothing was added to the stream.
    pub repeated: bool,
}

/// The result of a quarantine.
#[derive(Debug, Clone, PartialEq)]
pub struct Quarantined {
    pub revoked: Revoked,
    /// The freeze in force: this quarantine's, or one that stood already.
    pub freeze: Freeze,
    pub newly_frozen: bool,
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
    /// Active tasks, all replicas'.
    async fn count_active_tasks(&self) -> Result<u64, StoreError>;
    /// Moves an active task to `to`, revokes all its tokens with one revocation event
    /// and records `audit`, all in one transaction. `to` must be a final state
    /// (`TaskState::transition`); anything else is an error and writes nothing.
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
    /// Records a token and its audit event, counting it against the task's
    /// budget, unless the task refuses it (then nothing is written and the
    /// refusal says why): it must be active, owned by the token's agent, before
    /// its deadline and under `budget`, and no freeze may cover the token.
    async fn insert_token(
        &self,
        token: &TokenRecord,
        budget: u32,
        audit: &AuditEvent,
    ) -> Result<Recorded, StoreError>;
    async fn token_status(&self, jti: Uuid) -> Result<Option<TokenStatus>, StoreError>;
    async fn get_token(&self, jti: Uuid) -> Result<Option<TokenRecord>, StoreError>;
    async fn list_tokens(&self, filter: &TokenFilter) -> Result<Vec<TokenRecord>, StoreError>;
}

#[async_trait]
pub trait DelegationStore {
    /// Records a delegation offer and its audit event in one transaction, unless
    /// its parent token already has `open_limit` unredeemed, unexpired offers
    /// (then false, nothing written).
    async fn insert_delegation(
        &self,
        delegation: &Delegation,
        open_limit: u32,
        audit: &AuditEvent,
    ) -> Result<bool, StoreError>;
    async fn get_delegation(&self, id: Uuid) -> Result<Option<Delegation>, StoreError>;
    /// In one transaction: the offer is unredeemed and unexpired at
    /// `child.issued_at`, the task active, before its deadline and under `budget`,
    /// and no ancestor token revoked; then the child token, the offer's
    /// redemption and `audit` are written. Anything else writes nothing.
    async fn redeem_delegation(
        &self,
        id: Uuid,
        child: &TokenRecord,
        budget: u32,
        audit: &AuditEvent,
    ) -> Result<Redeem, StoreError>;
}

#[async_trait]
pub trait ApprovalStore {
    /// The approval a new request for `scope` by `requester` in `task` meets at
    /// `now`: one pending, approved-and-unused or denied, if there is one.
    async fn standing_approval(
        &self,
        task: TaskId,
        requester: &SpiffeId,
        scope: &Scope,
        now: OffsetDateTime,
    ) -> Result<Option<Approval>, StoreError>;
    /// Records a new pending approval and its audit event, unless one stands for
    /// the same task, requester and scope (then false, nothing written).
    async fn insert_approval(
        &self,
        approval: &Approval,
        audit: &AuditEvent,
    ) -> Result<bool, StoreError>;
    async fn get_approval(&self, id: Uuid) -> Result<Option<Approval>, StoreError>;
    /// Newest first.
    async fn list_approvals(&self, filter: &ApprovalFilter) -> Result<Vec<Approval>, StoreError>;
    /// Approves or denies a pending, unexpired approval, with its audit event, in
    /// one statement: of two deciders racing, exactly one wins.
    async fn decide_approval(
        &self,
        id: Uuid,
        approve: bool,
        by: &SpiffeId,
        reason: &str,
        now: OffsetDateTime,
        audit: &AuditEvent,
    ) -> Result<Decide, StoreError>;
    /// In one transaction: the approval is approved, unused and unexpired at
    /// `token.issued_at`; the token is recorded as [`TokenStore::insert_token`]
    /// does; the approval becomes used by it.
    async fn spend_approval(
        &self,
        id: Uuid,
        token: &TokenRecord,
        budget: u32,
        audit: &AuditEvent,
    ) -> Result<Spend, StoreError>;
    /// Counts one refused step-up request against the task and records `audit`,
    /// if `approval` is still pending or denied at `now`; returns the task's
    /// refusals so far, or `None` (nothing written) when it was decided meanwhile.
    async fn count_step_up_refusal(
        &self,
        task: TaskId,
        approval: Uuid,
        now: OffsetDateTime,
        audit: &AuditEvent,
    ) -> Result<Option<u32>, StoreError>;
}

#[async_trait]
pub trait FreezeStore {
    /// Records a freeze and its audit event; an existing freeze of the same
    /// target stands as it is and is returned instead (nothing written).
    async fn freeze(&self, freeze: &Freeze, audit: &AuditEvent) -> Result<Freeze, StoreError>;
    /// Lifts a freeze, with its audit event; `None` if the target was not frozen.
    async fn unfreeze(
        &self,
        target: &FreezeTarget,
        audit: &AuditEvent,
    ) -> Result<Option<Freeze>, StoreError>;
    async fn list_freezes(&self) -> Result<Vec<Freeze>, StoreError>;
    /// A freeze covering a token for `agents` (holder and task agent) in
    /// `workflow`, if one stands.
    async fn freeze_covering(
        &self,
        agents: &[&SpiffeId],
        workflow: &str,
    ) -> Result<Option<Freeze>, StoreError>;
}

#[async_trait]
pub trait RevocationStore {
    /// Records an administrative revocation: tokens die (a token's or an agent's
    /// with every token delegated from them), and for a task, agent, workflow or
    /// all, active tasks in scope become `revoked`; a revoked agent's unredeemed
    /// offers lapse. `None` if a named token or task does not exist (then nothing
    /// is written and no sequence number is taken). Idempotent: a target revoked
    /// before, of which nothing is live (no unrevoked, unexpired token, no active
    /// task, no open offer to the agent), is not revoked again: the original
    /// event comes back (`repeated`), nothing is added to the stream, and only
    /// `audit` is recorded.
    async fn revoke(
        &self,
        revocation: &Revocation,
        audit: &AuditEvent,
    ) -> Result<Option<Revoked>, StoreError>;
    /// Quarantines an agent in one transaction: revokes it as [`revoke`] does
    /// (`revocation` targets the agent; one event, or the original one when it
    /// only repeats) and freezes its issuance (`freeze`, of the same agent; a
    /// freeze standing stays as it is), with `audit` recording both.
    ///
    /// [`revoke`]: RevocationStore::revoke
    async fn quarantine(
        &self,
        revocation: &Revocation,
        freeze: &Freeze,
        audit: &AuditEvent,
    ) -> Result<Quarantined, StoreError>;
    /// Events with a sequence number above `after`, in order.
    async fn revocations_after(&self, after: u64, limit: u32) -> Result<Vec<Event>, StoreError>;
    async fn last_revocation_seq(&self) -> Result<u64, StoreError>;
    /// Starts listening for revocations committed by any broker on this store.
    async fn revocation_feed(&self) -> Result<Box<dyn RevocationFeed>, StoreError>;
}

/// What another broker (or this one) committed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Notice {
    /// A revocation with this sequence number.
    Revocation(u64),
    /// A decision on a step-up approval.
    ApprovalDecided,
    /// A new signing key was registered (another replica started): the JWKS
    /// served from memory must include it.
    KeysChanged,
}

/// Notices of committed revocations and approval decisions, from every broker on
/// one store.
#[async_trait]
pub trait RevocationFeed: Send {
    /// The next notice committed anywhere; `Ok(None)` when the feed lost its
    /// connection and reconnected, so notices may have been missed and the caller
    /// must catch up by reading the store.
    async fn next(&mut self) -> Result<Option<Notice>, StoreError>;
}

#[async_trait]
pub trait KeyStore {
    /// Registers a public key or extends its `not_after`.
    async fn register_key(&self, key: &KeyRecord) -> Result<(), StoreError>;
    /// Keys whose `not_after` is after `now`.
    async fn live_keys(&self, now: OffsetDateTime) -> Result<Vec<KeyRecord>, StoreError>;
}

/// Where the revocation history a store holds begins and ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RevocationBounds {
    /// The oldest event kept (0: none is).
    pub first: u64,
    /// The last event committed (0: none ever was).
    pub head: u64,
}

#[async_trait]
pub trait RetentionStore {
    /// Deletes up to `batch` rows of `kind` that stopped mattering before
    /// `before`, in one short transaction, and says how many (fewer than
    /// `batch`: none is left). While another broker on the store prunes, 0.
    /// - Tokens expired before it (revoked or not), with the records of their
    ///   redeemed offers and spent approvals; a token whose delegated child is
    ///   kept is kept.
    /// - Offers never redeemed, and approvals never used, lapsed before it.
    /// - Tasks ended before it, once none of their tokens, offers or approvals
    ///   is left.
    /// - Revocation events that happened before it, except the newest of them,
    ///   where the kept history starts: a watch cursor standing on it still
    ///   anchors, and nothing after it is missing.
    async fn prune(
        &self,
        kind: Prunable,
        before: OffsetDateTime,
        batch: u32,
    ) -> Result<u64, StoreError>;
    async fn revocation_bounds(&self) -> Result<RevocationBounds, StoreError>;
}

/// Everything the broker needs from persistence.
#[async_trait]
pub trait Store:
    TaskStore
    + TokenStore
    + DelegationStore
    + ApprovalStore
    + FreezeStore
    + RevocationStore
    + KeyStore
    + AuditStore
    + RetentionStore
    + Send
    + Sync
    + 'static
{
    /// Answers when the store is reachable.
    async fn ping(&self) -> Result<(), StoreError>;
}
