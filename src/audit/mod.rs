//! Audit events: one per decision, written in the same transaction as the state
//! change it records.
use crate::domain::TaskId;
use time::OffsetDateTime;
use uuid::Uuid;

/// What was decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    TaskOpened,
    TaskOpenDenied,
    TaskCompleted,
    TaskExpired,
    TaskDeviated,
    TaskRevoked,
    TokenMinted,
    MintDenied,
    Revocation,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::TaskOpened => "task_opened",
            Action::TaskOpenDenied => "task_open_denied",
            Action::TaskCompleted => "task_completed",
            Action::TaskExpired => "task_expired",
            Action::TaskDeviated => "task_deviated",
            Action::TaskRevoked => "task_revoked",
            Action::TokenMinted => "token_minted",
            Action::MintDenied => "mint_denied",
            Action::Revocation => "revocation",
        }
    }

    pub fn outcome(self) -> &'static str {
        match self {
            Action::TaskOpenDenied | Action::MintDenied | Action::TaskDeviated => "deny",
            _ => "permit",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct AuditEvent {
    pub at: OffsetDateTime,
    /// SPIFFE ID of whoever caused it, or `mayfly` for the broker itself.
    pub actor: String,
    pub action: Action,
    pub task: Option<TaskId>,
    pub agent: Option<String>,
    pub jti: Option<Uuid>,
    pub reason: Option<String>,
    pub detail: serde_json::Value,
}

impl AuditEvent {
    pub fn new(at: OffsetDateTime, actor: impl Into<String>, action: Action) -> Self {
        AuditEvent {
            at,
            actor: actor.into(),
            action,
            task: None,
            agent: None,
            jti: None,
            reason: None,
            detail: serde_json::Value::Object(Default::default()),
        }
    }
    pub fn task(mut self, id: TaskId) -> Self {
        self.task = Some(id);
        self
    }
    pub fn agent(mut self, agent: impl Into<String>) -> Self {
        self.agent = Some(agent.into());
        self
    }
    pub fn jti(mut self, jti: Uuid) -> Self {
        self.jti = Some(jti);
        self
    }
    pub fn reason(mut self, reason: impl Into<String>) -> Self {
        self.reason = Some(reason.into());
        self
    }
    pub fn detail(mut self, detail: serde_json::Value) -> Self {
        self.detail = detail;
        self
    }
}
