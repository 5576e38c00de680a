//! The audit trail's part of the store: appending (sealed as written), sealing
//! what arrived unsealed, reading and archiving the hash-chained events.
use super::StoreError;
use crate::domain::audit::AuditEvent;
use crate::domain::audit::chain::{Checkpoint, Sealed};
use crate::domain::{SpiffeId, TaskId};
use async_trait::async_trait;
use time::OffsetDateTime;

/// Which audit events to read.
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    /// Events by (actor) or about (agent) this agent.
    pub agent: Option<SpiffeId>,
    pub task: Option<TaskId>,
    pub action: Option<String>,
    pub since: Option<OffsetDateTime>,
    pub until: Option<OffsetDateTime>,
    /// Only events sealed after this position.
    pub after: u64,
    pub limit: u32,
}

/// Tokens of one agent for one resource pattern of an audience.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Access {
    pub agent: SpiffeId,
    pub resource: String,
    pub tokens: u64,
    pub first: OffsetDateTime,
    pub last: OffsetDateTime,
}

/// The end of the audit chain, as the store keeps it, and where the stored
/// chain starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditHead {
    pub seq: u64,
    pub hash: Vec<u8>,
    /// The highest position stored (above `seq` only if the head was rewound).
    pub max_seq: u64,
    /// The last event archived (removable from the store, or removed): the
    /// stored chain starts after it. [`Checkpoint::genesis`] before any archive.
    pub anchor: Checkpoint,
}

/// Moving the audit chain's anchor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Anchoring {
    /// The anchor moved to the event asked for, and the audit event was recorded.
    Moved,
    /// The anchor is not where the caller read it (another archive moved it):
    /// where it is now.
    AnchorMoved(Checkpoint),
    /// The event is at or before the anchor: archived already.
    Archived(Checkpoint),
    /// The event is past the chain's head.
    NotSealed { head: u64 },
    /// No stored event at that position (within the chain: it was deleted past
    /// the store's triggers).
    Missing,
    /// The stored event has another hash.
    HashDiffers,
}

#[async_trait]
pub trait AuditStore {
    /// Writes an event on its own, sealed: in the chain when this returns.
    async fn append_audit(&self, event: &AuditEvent) -> Result<(), StoreError>;
    /// Events for a task, oldest first.
    async fn audit_for_task(&self, task: TaskId) -> Result<Vec<AuditEvent>, StoreError>;
    /// Sealed events after position `after` and up to `upto`, in chain order.
    async fn audit_chain(
        &self,
        after: u64,
        upto: u64,
        limit: u32,
    ) -> Result<Vec<Sealed>, StoreError>;
    /// The head, the highest position and the anchor, read together.
    async fn audit_head(&self) -> Result<AuditHead, StoreError>;
    /// The last position of the run of sealed events after `after`, up to
    /// `upto`, that are all dated before `before` (`after` when the first is
    /// not): where an archive of the events before a time ends.
    async fn audit_dated_before(
        &self,
        after: u64,
        upto: u64,
        before: OffsetDateTime,
    ) -> Result<u64, StoreError>;
    /// In one transaction, moves the chain's anchor from `from` (where the
    /// caller read it) to `through`, which must be a sealed event after it, with
    /// exactly that hash, and records `audit`; anything else writes nothing and
    /// says why. The events up to the anchor may then be removed.
    async fn anchor_audit(
        &self,
        from: &Checkpoint,
        through: &Checkpoint,
        audit: &AuditEvent,
    ) -> Result<Anchoring, StoreError>;
    /// Removes up to `limit` archived events (at or below the anchor), oldest
    /// first; returns how many. Callers loop in small batches until it returns
    /// less than `limit`.
    async fn remove_archived_audit(&self, limit: u32) -> Result<u64, StoreError>;
    /// Seals up to `batch` committed events that arrived unsealed (written by an
    /// older broker, during a rolling upgrade) into the
    /// chain, oldest first, after every event sealed before; returns how many.
    /// Events written sealed are in the chain from their commit.
    async fn seal_audit(&self, batch: u32) -> Result<u32, StoreError>;
    /// Sealed events matching the filter, in chain order, with their positions.
    async fn query_audit(&self, filter: &AuditFilter)
    -> Result<Vec<(u64, AuditEvent)>, StoreError>;
    /// Tokens issued for `audience` in the window, per agent and resource,
    /// ordered by agent, then resource.
    async fn token_access(
        &self,
        audience: &str,
        since: Option<OffsetDateTime>,
        until: Option<OffsetDateTime>,
    ) -> Result<Vec<Access>, StoreError>;
}
