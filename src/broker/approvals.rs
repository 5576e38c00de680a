//! Step-up approvals once asked for: the requester waits for the decision (and,
//! approved, gets its one token); a security-team principal decides; the
//! security team lists them.
use super::mint::{Mint, MintRequest, Minted};
use super::refuse::Refusing;
use super::{Broker, BrokerError};
use crate::domain::audit::{Action, AuditEvent};
use crate::domain::refusal::Refusal;
use crate::domain::{Approval, ApprovalState, Missing};
use crate::identity::Caller;
use crate::store::{ApprovalFilter, Decide};
use serde_json::json;
use std::time::Duration;
use uuid::Uuid;

impl Broker {
    /// Waits up to `wait` for a decision on the caller's approval. Approved, it
    /// mints the approval's one token (through the whole mint path, so policy,
    /// task and budget are checked again) and returns it with the approval.
    pub async fn await_approval(
        &self,
        caller: &Caller,
        id: Uuid,
        wait: Duration,
    ) -> Result<(Approval, Option<Minted>), BrokerError> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            // Registered before the read, so a decision between the read and the
            // wait still wakes it.
            let decided = self.hub.approvals().notified();
            tokio::pin!(decided);
            decided.as_mut().enable();
            let approval = self.get_approval(id).await?;
            if let Err(refusal) = approval.awaitable_by(&caller.id) {
                let event = || {
                    AuditEvent::new(self.now(), caller.id.as_str(), Action::CallDenied)
                        .task(approval.task)
                        .agent(caller.id.as_str())
                        .detail(json!({"method": "mayfly.v1.TokenService/AwaitApproval", "approval": id}))
                };
                return Err(self.refuse(&Refusing::new(caller, &event), refusal).await);
            }
            let now = self.now();
            match approval.state_at(now) {
                ApprovalState::Pending => {
                    // A decision can no longer help a task that ended.
                    let task = self.get_task(approval.task).await?;
                    approval.usable(&task, now)?;
                    let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                    if left.is_zero() {
                        return Ok((approval, None));
                    }
                    let lapses = Duration::try_from(approval.expires_at - now).unwrap_or_default();
                    tokio::select! {
                        _ = decided => {}
                        _ = tokio::time::sleep(self.notice_poll.min(left).min(lapses.max(Duration::from_millis(1)))) => {}
                    }
                }
                ApprovalState::Approved => {
                    let req = MintRequest {
                        task: approval.task,
                        scope: approval.scope.clone(),
                        ttl: approval.ttl,
                    };
                    return match self.mint(caller, req).await? {
                        Mint::Minted(m) => {
                            let spent = Approval {
                                state: ApprovalState::Used,
                                used_jti: Some(m.jti),
                                ..approval
                            };
                            Ok((spent, Some(m)))
                        }
                        Mint::Pending(a) => Ok((*a, None)),
                    };
                }
                _ => return Ok((approval, None)),
            }
        }
    }

    /// A security-team principal approves or denies a pending approval. Never the
    /// requester, never an identity that holds the agent role; of two deciders
    /// racing, exactly one wins and the other is told who did.
    pub async fn decide_approval(
        &self,
        caller: &Caller,
        caller_is_agent: bool,
        id: Uuid,
        approve: bool,
        reason: String,
    ) -> Result<Approval, BrokerError> {
        let now = self.now();
        let approval = self.get_approval(id).await?;
        let event = || {
            AuditEvent::new(now, caller.id.as_str(), Action::ApprovalDecisionDenied)
                .task(approval.task)
                .agent(&approval.requester)
                .detail(json!({"approval": id, "approve": approve, "requested_reason": reason}))
        };
        let refusing = Refusing::new(caller, &event);
        let task = self.get_task(approval.task).await?;
        let decidable = approval.decidable(&caller.id, caller_is_agent, &task, now);
        self.judged(&refusing, decidable).await?;
        let action = if approve {
            Action::ApprovalGranted
        } else {
            Action::ApprovalRejected
        };
        let audit = AuditEvent::new(now, caller.id.as_str(), action)
            .task(approval.task)
            .agent(&approval.requester)
            .reason(&reason)
            .detail(json!({"approval": id, "scope": approval.scope}));
        match self
            .store
            .decide_approval(id, approve, &caller.id, &reason, now, &audit)
            .await?
        {
            Decide::Decided(a) => {
                self.hub.approval_decided();
                tracing::warn!(caller = %caller.id, approval = %id, task = %a.task, state = %a.state, "step-up approval decided");
                Ok(a)
            }
            Decide::NotPending(a) => Err(self.refuse(&refusing, a.not_pending(now)).await),
            Decide::NotFound => Err(Refusal::NotFound(Missing::Approval(id)).into()),
        }
    }

    pub async fn list_approvals(
        &self,
        filter: &ApprovalFilter,
    ) -> Result<Vec<Approval>, BrokerError> {
        Ok(self.store.list_approvals(filter).await?)
    }

    async fn get_approval(&self, id: Uuid) -> Result<Approval, BrokerError> {
        self.store
            .get_approval(id)
            .await?
            .ok_or_else(|| Refusal::NotFound(Missing::Approval(id)).into())
    }
}
