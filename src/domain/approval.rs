//! Step-up approvals: a security-team decision on one mint of a high-impact
//! action, and the state it stands in.
use super::{Scope, TaskId};
use time::OffsetDateTime;
use uuid::Uuid;

/// How long a step-up approval waits for a decision (and, approved, for its one
/// token) unless `tasks.approval_ttl` says otherwise.
pub const DEFAULT_APPROVAL_TTL: std::time::Duration = std::time::Duration::from_secs(15 * 60);

/// A step-up approval's state as stored; [`Approval::state_at`] adds expiry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ApprovalState {
    Pending,
    Approved,
    Denied,
    /// Approved and spent on its one token.
    Used,
    /// Not decided, or approved and not used, before its deadline.
    Expired,
}

impl ApprovalState {
    pub const ALL: [ApprovalState; 5] = [
        ApprovalState::Pending,
        ApprovalState::Approved,
        ApprovalState::Denied,
        ApprovalState::Used,
        ApprovalState::Expired,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ApprovalState::Pending => "pending",
            ApprovalState::Approved => "approved",
            ApprovalState::Denied => "denied",
            ApprovalState::Used => "used",
            ApprovalState::Expired => "expired",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.as_str() == s)
    }
}

impl std::fmt::Display for ApprovalState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A request for a security-team decision on one mint of a high-impact action.
#[derive(Debug, Clone, PartialEq)]
pub struct Approval {
    pub id: Uuid,
    pub task: TaskId,
    /// The agent that asked.
    pub requester: String,
    /// The task's workflow and objective, as the approver saw them.
    pub workflow: String,
    pub objective: String,
    pub scope: Scope,
    /// The lifetime the agent asked for its token.
    pub ttl: std::time::Duration,
    pub state: ApprovalState,
    pub created_at: OffsetDateTime,
    /// Undecided or unused by then, it lapses.
    pub expires_at: OffsetDateTime,
    pub decided_by: Option<String>,
    pub decided_at: Option<OffsetDateTime>,
    pub decision_reason: Option<String>,
    /// The token it was spent on.
    pub used_jti: Option<Uuid>,
}

impl Approval {
    /// The state at `now`: pending or approved past the deadline is expired.
    pub fn state_at(&self, now: OffsetDateTime) -> ApprovalState {
        match self.state {
            ApprovalState::Pending | ApprovalState::Approved if self.expires_at <= now => {
                ApprovalState::Expired
            }
            s => s,
        }
    }
}
