//! Step-up approvals: a security-team decision on one mint of a high-impact
//! action, the state it stands in, and the step-up rules: what a repeated
//! request meets, who may decide and wait, how many refused repeats a workflow
//! allows.
use super::refusal::Refusal;
use super::{Scope, SpiffeId, Task, TaskId};
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
    pub requester: SpiffeId,
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
    pub decided_by: Option<SpiffeId>,
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

/// What a step-up request meets in the approval that stands for its scope.
#[derive(Debug, Clone, PartialEq)]
pub enum Standing {
    /// Approved: the request spends it on its one token.
    Spend,
    /// Pending or denied: the request is refused (and counted), opening nothing.
    Repeat(Refusal),
    /// In a state that cannot stand (used or lapsed): a store that answered so
    /// is wrong.
    Impossible(ApprovalState),
}

impl Approval {
    /// A pending approval, asked for at `now` by `requester`, for a token of
    /// `scope` of at most `ttl`; it waits `wait` for a decision, never past the
    /// task's deadline.
    pub fn ask(
        task: &Task,
        requester: &SpiffeId,
        scope: &Scope,
        ttl: std::time::Duration,
        wait: std::time::Duration,
        now: OffsetDateTime,
    ) -> Approval {
        Approval {
            id: Uuid::new_v4(),
            task: task.id,
            requester: requester.clone(),
            workflow: task.workflow.clone(),
            objective: task.objective.clone(),
            scope: scope.clone(),
            ttl,
            state: ApprovalState::Pending,
            created_at: now,
            expires_at: (now + wait).min(task.expires_at),
            decided_by: None,
            decided_at: None,
            decision_reason: None,
            used_jti: None,
        }
    }

    /// What a new request for this approval's scope meets at `now`.
    pub fn standing(&self, now: OffsetDateTime) -> Standing {
        match self.state_at(now) {
            ApprovalState::Approved => Standing::Spend,
            ApprovalState::Pending => Standing::Repeat(Refusal::ApprovalPending {
                approval: self.id,
                scope: self.scope.clone(),
            }),
            ApprovalState::Denied => Standing::Repeat(Refusal::ApprovalDenied {
                approval: self.id,
                scope: Box::new(self.scope.clone()),
                by: self.decided_by.clone(),
                reason: self.decision_reason.clone(),
            }),
            other => Standing::Impossible(other),
        }
    }

    /// The lifetime of the one token the approval is spent on: never longer than
    /// the security team saw asked for.
    pub fn spent_ttl(&self, granted: std::time::Duration) -> std::time::Duration {
        granted.min(self.ttl)
    }

    /// Whether `decider` may decide the approval of `task` at `now`: never an
    /// agent, never the requester, and only while the task can still use it.
    pub fn decidable(
        &self,
        decider: &SpiffeId,
        decider_is_agent: bool,
        task: &Task,
        now: OffsetDateTime,
    ) -> Result<(), Refusal> {
        if decider_is_agent {
            return Err(Refusal::AgentDecides {
                decider: decider.clone(),
            });
        }
        if self.requester == *decider {
            return Err(Refusal::OwnApproval {
                decider: decider.clone(),
                approval: self.id,
            });
        }
        task.mintable(now)
            .map_err(|why| Refusal::ApprovalsUnusable { why })
    }

    /// Why a decision at `now` found the approval no longer pending.
    pub fn not_pending(&self, now: OffsetDateTime) -> Refusal {
        match self.state_at(now) {
            ApprovalState::Expired => Refusal::ApprovalLapsed {
                approval: self.id,
                at: self.expires_at,
            },
            state => Refusal::ApprovalDecided {
                approval: self.id,
                state,
                by: self.decided_by.clone(),
                at: self.decided_at,
            },
        }
    }

    /// Whether `waiter` may wait for the decision: only its requester.
    pub fn awaitable_by(&self, waiter: &SpiffeId) -> Result<(), Refusal> {
        if self.requester != *waiter {
            return Err(Refusal::NotTheRequester { approval: self.id });
        }
        Ok(())
    }

    /// Whether a pending approval can still be of use to `task` at `now`.
    pub fn usable(&self, task: &Task, now: OffsetDateTime) -> Result<(), Refusal> {
        task.mintable(now).map_err(|why| Refusal::ApprovalUnusable {
            approval: self.id,
            why,
        })
    }
}

/// Whether `refusals` refused repeats of a step-up request in `task` are within
/// the workflow's allowance of `allowed`; past it, the repeat is a deviation.
pub fn repeats_allowed(task: &Task, refusals: u32, allowed: u32) -> Result<(), Refusal> {
    if refusals > allowed {
        return Err(Refusal::RepeatedStepUp {
            task: task.id,
            workflow: task.workflow.clone(),
            refusals,
            allowed,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::fixture::{ADMIN, AGENT, at, task};
    use crate::domain::{TaskClosed, TaskState};
    use std::time::Duration;

    fn delete() -> Scope {
        Scope::requested("crm-api", "customers/eu/42", "delete").unwrap()
    }

    /// The agent asks in `t` at 0 to delete, for 120 s, deciders given 900 s.
    fn ask_in(t: &Task) -> Approval {
        Approval::ask(
            t,
            &AGENT,
            &delete(),
            Duration::from_secs(120),
            Duration::from_secs(900),
            at(0),
        )
    }

    fn asked() -> (Task, Approval) {
        let t = task();
        let a = ask_in(&t);
        (t, a)
    }

    #[test]
    fn an_approval_waits_for_its_decision_no_longer_than_the_task_lasts() {
        let (mut t, a) = asked();
        assert_eq!(a.state, ApprovalState::Pending);
        assert_eq!(a.expires_at, at(900));
        t.expires_at = at(300);
        assert_eq!(ask_in(&t).expires_at, at(300));
    }

    #[test]
    fn a_repeat_meets_a_pending_or_denied_approval_as_a_refusal_and_spends_an_approved_one() {
        let (_, mut a) = asked();
        assert!(matches!(
            a.standing(at(10)),
            Standing::Repeat(Refusal::ApprovalPending { .. })
        ));
        a.state = ApprovalState::Denied;
        a.decided_by = Some(ADMIN.clone());
        a.decision_reason = Some("not today".into());
        let Standing::Repeat(denied) = a.standing(at(10)) else {
            panic!("denied stands as a refusal")
        };
        assert!(
            denied
                .to_string()
                .contains("was denied by spiffe://example.org/admin: not today")
        );
        a.state = ApprovalState::Approved;
        assert_eq!(a.standing(at(10)), Standing::Spend);
        assert_eq!(
            a.standing(at(900)),
            Standing::Impossible(ApprovalState::Expired)
        );
    }

    #[test]
    fn the_spent_token_lives_no_longer_than_the_approver_saw_asked_for() {
        let (_, a) = asked();
        assert_eq!(
            a.spent_ttl(Duration::from_secs(600)),
            Duration::from_secs(120)
        );
        assert_eq!(
            a.spent_ttl(Duration::from_secs(60)),
            Duration::from_secs(60)
        );
    }

    #[test]
    fn nobody_decides_their_own_request_and_agents_decide_none() {
        let (t, a) = asked();
        assert_eq!(a.decidable(&ADMIN, false, &t, at(10)), Ok(()));
        assert!(matches!(
            a.decidable(&ADMIN, true, &t, at(10)),
            Err(Refusal::AgentDecides { .. })
        ));
        assert!(matches!(
            a.decidable(&AGENT, false, &t, at(10)),
            Err(Refusal::OwnApproval { .. })
        ));
    }

    #[test]
    fn the_approvals_of_a_closed_task_can_no_longer_be_decided_or_used() {
        let (mut t, a) = asked();
        t.state = TaskState::Completed;
        let closed = TaskClosed::NotActive {
            task: t.id,
            state: TaskState::Completed,
        };
        assert_eq!(
            a.decidable(&ADMIN, false, &t, at(10)),
            Err(Refusal::ApprovalsUnusable {
                why: closed.clone()
            })
        );
        assert_eq!(
            a.usable(&t, at(10)),
            Err(Refusal::ApprovalUnusable {
                approval: a.id,
                why: closed
            })
        );
    }

    #[test]
    fn a_decision_on_a_decided_or_lapsed_approval_says_which() {
        let (_, mut a) = asked();
        assert!(matches!(
            a.not_pending(at(900)),
            Refusal::ApprovalLapsed { .. }
        ));
        a.state = ApprovalState::Approved;
        a.decided_by = Some(ADMIN.clone());
        a.decided_at = Some(at(5));
        let refused = a.not_pending(at(10)).to_string();
        assert!(
            refused.contains("was already approved by spiffe://example.org/admin at "),
            "{refused}"
        );
    }

    #[test]
    fn only_the_requester_waits_for_a_decision() {
        let (_, a) = asked();
        assert_eq!(a.awaitable_by(&AGENT), Ok(()));
        assert_eq!(
            a.awaitable_by(&ADMIN),
            Err(Refusal::NotTheRequester { approval: a.id })
        );
    }

    #[test]
    fn refused_repeats_beyond_the_workflows_allowance_are_a_deviation() {
        let t = task();
        assert_eq!(repeats_allowed(&t, 3, 3), Ok(()));
        let refused = repeats_allowed(&t, 4, 3).unwrap_err();
        assert!(refused.is_deviation());
        assert!(refused.to_string().starts_with("deviation: task "));
    }
}
