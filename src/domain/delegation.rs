//! Delegation (RFC 8693): an offer of a narrower token to a named sub-agent.
use super::{Scope, TaskId};
use time::OffsetDateTime;
use uuid::Uuid;

/// An offer from a token's holder of a narrower token to a named sub-agent,
/// redeemable once, by that sub-agent only (RFC 8693 delegation).
#[derive(Debug, Clone, PartialEq)]
pub struct Delegation {
    pub id: Uuid,
    pub task: TaskId,
    pub parent_jti: Uuid,
    /// The parent token's holder.
    pub delegator: String,
    pub sub_agent: String,
    pub scope: Scope,
    pub depth: u32,
    /// The child token's RFC 8693 `act` claim: the sub-agent, then every earlier
    /// actor nested inside.
    pub act: serde_json::Value,
    /// The jtis of every ancestor of the child token, root first.
    pub ancestors: Vec<Uuid>,
    pub created_at: OffsetDateTime,
    /// The child token expires then, at the latest; unredeemed, the offer lapses.
    pub expires_at: OffsetDateTime,
    pub redeemed_at: Option<OffsetDateTime>,
    pub child_jti: Option<Uuid>,
}
