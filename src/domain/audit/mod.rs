//! Audit events: one per decision, written in the same transaction as the state
//! change it records.
pub mod archive;
pub mod chain;

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
    /// A caller was refused a call its roles do not allow.
    CallDenied,
    /// An orchestrator was refused completing a task it did not open.
    TaskCompleteDenied,
    /// An orchestrator was refused reporting a deviation of a task it did not open.
    TaskDeviateDenied,
    /// An administrative revocation was refused (its target does not exist).
    RevocationDenied,
    /// A verifier reported a token misused (replayed by another certificate, or
    /// used outside its scope).
    MisuseReported,
    /// A token's holder offered a narrower token to a sub-agent.
    DelegationOffered,
    /// A delegation was refused (widening, depth, policy, binding).
    DelegationDenied,
    /// A sub-agent was refused redeeming a delegation.
    RedeemDenied,
    /// A mint of a step-up action is waiting for a security team's decision.
    ApprovalRequested,
    /// A security team approved a step-up request.
    ApprovalGranted,
    /// A security team denied a step-up request.
    ApprovalRejected,
    /// A decision on an approval was refused (self-approval, an agent, already
    /// decided, expired).
    ApprovalDecisionDenied,
    /// A step-up request repeated while its approval was pending or denied.
    StepUpRefused,
    /// The kill switch: issuance to an agent, a workflow or everything stopped.
    IssuanceFrozen,
    /// A freeze lifted.
    IssuanceUnfrozen,
    /// A compromised agent: every token and active task of it revoked and its
    /// issuance frozen, in one transaction.
    AgentQuarantined,
    /// The broker pruned what stopped mattering (expired tokens, lapsed offers
    /// and approvals, ended tasks, old revocation events), after its retention.
    RecordsPruned,
    /// The oldest sealed events were exported and the store's chain anchored
    /// after them, so that they could be removed.
    AuditArchived,
}

impl Action {
    /// Every action, so that stored names parse back without a second list to keep
    /// in step.
    pub const ALL: [Action; 27] = [
        Action::TaskOpened,
        Action::TaskOpenDenied,
        Action::TaskCompleted,
        Action::TaskExpired,
        Action::TaskDeviated,
        Action::TaskRevoked,
        Action::TokenMinted,
        Action::MintDenied,
        Action::Revocation,
        Action::CallDenied,
        Action::TaskCompleteDenied,
        Action::TaskDeviateDenied,
        Action::RevocationDenied,
        Action::MisuseReported,
        Action::DelegationOffered,
        Action::DelegationDenied,
        Action::RedeemDenied,
        Action::ApprovalRequested,
        Action::ApprovalGranted,
        Action::ApprovalRejected,
        Action::ApprovalDecisionDenied,
        Action::StepUpRefused,
        Action::IssuanceFrozen,
        Action::IssuanceUnfrozen,
        Action::AgentQuarantined,
        Action::RecordsPruned,
        Action::AuditArchived,
    ];

    /// The action stored as `name`, if there is one.
    pub fn parse(name: &str) -> Option<Action> {
        Action::ALL.into_iter().find(|a| a.as_str() == name)
    }

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
            Action::CallDenied => "call_denied",
            Action::TaskCompleteDenied => "task_complete_denied",
            Action::TaskDeviateDenied => "task_deviate_denied",
            Action::RevocationDenied => "revocation_denied",
            Action::MisuseReported => "misuse_reported",
            Action::DelegationOffered => "delegation_offered",
            Action::DelegationDenied => "delegation_denied",
            Action::RedeemDenied => "redeem_denied",
            Action::ApprovalRequested => "approval_requested",
            Action::ApprovalGranted => "approval_granted",
            Action::ApprovalRejected => "approval_rejected",
            Action::ApprovalDecisionDenied => "approval_decision_denied",
            Action::StepUpRefused => "step_up_refused",
            Action::IssuanceFrozen => "issuance_frozen",
            Action::IssuanceUnfrozen => "issuance_unfrozen",
            Action::AgentQuarantined => "agent_quarantined",
            Action::RecordsPruned => "records_pruned",
            Action::AuditArchived => "audit_archived",
        }
    }

    pub fn outcome(self) -> &'static str {
        match self {
            Action::TaskOpenDenied
            | Action::MintDenied
            | Action::TaskDeviated
            | Action::CallDenied
            | Action::TaskCompleteDenied
            | Action::TaskDeviateDenied
            | Action::RevocationDenied
            | Action::MisuseReported
            | Action::DelegationDenied
            | Action::RedeemDenied
            | Action::ApprovalRejected
            | Action::ApprovalDecisionDenied
            | Action::StepUpRefused => "deny",
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_action_parses_back_from_its_stored_name() {
        for a in Action::ALL {
            assert_eq!(Action::parse(a.as_str()), Some(a));
        }
        assert_eq!(Action::parse("no_such_action"), None);
    }

    #[test]
    fn refusals_are_recorded_with_a_deny_outcome() {
        for a in [
            Action::CallDenied,
            Action::TaskCompleteDenied,
            Action::TaskDeviateDenied,
            Action::RevocationDenied,
            Action::DelegationDenied,
            Action::RedeemDenied,
            Action::ApprovalDecisionDenied,
            Action::StepUpRefused,
        ] {
            assert_eq!(a.outcome(), "deny", "{a:?}");
        }
    }
}
