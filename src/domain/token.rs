//! A token as the broker records it (never the token string itself).
use super::{Scope, SpiffeId, TaskId};
use time::OffsetDateTime;
use uuid::Uuid;

/// A token as recorded (never the token string itself).
#[derive(Debug, Clone, PartialEq)]
pub struct TokenRecord {
    pub jti: Uuid,
    pub task: TaskId,
    pub agent: SpiffeId,
    pub workflow: String,
    pub scope: Scope,
    pub kid: String,
    pub cert_thumbprint: String,
    pub issued_at: OffsetDateTime,
    pub expires_at: OffsetDateTime,
    pub revoked_at: Option<OffsetDateTime>,
    /// The token it was delegated from; `None` for a token minted directly.
    pub parent: Option<Uuid>,
    /// 0 for a token minted directly; a delegated token is its parent's plus one.
    pub depth: u32,
}
