//! Step-up, the branch of a permitted mint whose action needs a security team's
//! approval: one approval is good for one token. A request spends the approval
//! that stands for its scope, or opens one; asking again while it is pending or
//! after it was denied is refused without a new approval, and more repeats than
//! the workflow allows are a deviation.
use super::mint::{Mint, MintRequest, Minted, minted_audit};
use super::refuse::Refusing;
use super::{Broker, BrokerError};
use crate::domain::audit::{Action, AuditEvent};
use crate::domain::refusal::Refusal;
use crate::domain::{Approval, Standing, Task};
use crate::policy::Permit;
use crate::store::Spend;
use serde_json::json;
use std::time::Duration;

impl Broker {
    /// Spends a standing approval, refuses a repeat of a pending or denied one,
    /// or opens a new one, for a mint of `ttl` that policy permitted.
    pub(super) async fn step_up(
        &self,
        refusing: &Refusing<'_>,
        task: &Task,
        req: &MintRequest,
        ttl: Duration,
        permit: &Permit,
    ) -> Result<Mint, BrokerError> {
        let caller = refusing.caller;
        // No approval is opened, nor spent, for a frozen agent or workflow.
        let holders = [&caller.id, &task.agent];
        if let Some(f) = self.store.freeze_covering(&holders, &task.workflow).await? {
            return Err(self.refuse(refusing, Refusal::Frozen(f)).await);
        }
        // Twice at most: a decision made while a repeat was being counted sends
        // the request round again, to spend or to be refused as it now stands.
        for _ in 0..2 {
            let now = self.now();
            let standing = self
                .store
                .standing_approval(task.id, &caller.id, &req.scope, now)
                .await?;
            let Some(approval) = standing else {
                match self.open_approval(refusing, task, req, ttl, permit).await? {
                    Some(opened) => return Ok(Mint::Pending(Box::new(opened))),
                    // A concurrent request opened one first: this one meets it.
                    None => continue,
                }
            };
            match approval.standing(now) {
                Standing::Spend => {
                    return self
                        .spend(refusing, task, req, ttl, permit, &approval)
                        .await;
                }
                Standing::Repeat(refusal) => {
                    let allowed = permit.limits.step_up_retries;
                    if let Some(err) = self
                        .refuse_repeat(refusing, task, &approval, refusal, allowed)
                        .await
                    {
                        return Err(err);
                    }
                }
                Standing::Impossible(state) => {
                    return Err(BrokerError::Internal(format!(
                        "approval {} is {state}, which cannot stand",
                        approval.id
                    )));
                }
            }
        }
        Err(Refusal::ApprovalChanged {
            scope: req.scope.clone(),
        }
        .into())
    }

    /// Opens a pending approval, unless one stands already (`None`).
    async fn open_approval(
        &self,
        refusing: &Refusing<'_>,
        task: &Task,
        req: &MintRequest,
        ttl: Duration,
        permit: &Permit,
    ) -> Result<Option<Approval>, BrokerError> {
        let caller = refusing.caller;
        let now = self.now();
        let approval = Approval::ask(task, &caller.id, &req.scope, ttl, self.approval_ttl, now);
        let audit = AuditEvent::new(now, caller.id.as_str(), Action::ApprovalRequested)
            .task(task.id)
            .agent(caller.id.as_str())
            .detail(json!({
                "approval": approval.id,
                "scope": req.scope,
                "ttl_seconds": ttl.as_secs(),
                "workflow": task.workflow,
                "objective": task.objective,
                "expires_at": approval.expires_at.unix_timestamp(),
                "policies": permit.policies,
            }));
        if !self.store.insert_approval(&approval, &audit).await? {
            return Ok(None);
        }
        tracing::info!(caller = %caller.id, task = %task.id, approval = %approval.id, scope = %req.scope, "step-up approval requested");
        Ok(Some(approval))
    }

    /// Mints the one token an approval is good for.
    async fn spend(
        &self,
        refusing: &Refusing<'_>,
        task: &Task,
        req: &MintRequest,
        ttl: Duration,
        permit: &Permit,
        approval: &Approval,
    ) -> Result<Mint, BrokerError> {
        let caller = refusing.caller;
        let now = self.now();
        let ttl = approval.spent_ttl(ttl);
        let (token, record) = self.sign(caller, task, &req.scope, now, now + ttl, None)?;
        let mut audit = minted_audit(caller, task, &record, req, &permit.policies);
        audit.detail["approval"] = json!(approval.id);
        audit.detail["approved_by"] = json!(approval.decided_by);
        let max_tokens = permit.limits.max_tokens;
        match self
            .store
            .spend_approval(approval.id, &record, max_tokens, &audit)
            .await?
        {
            Spend::Spent => {
                self.metrics.token_issued("approved");
                Ok(Mint::Minted(Minted {
                    token,
                    jti: record.jti,
                    expires_at: record.expires_at,
                    ttl,
                    scope: record.scope,
                }))
            }
            Spend::NotApproved(a) => {
                let refusal = Refusal::ApprovalSpent {
                    approval: a.id,
                    state: a.state_at(now),
                };
                Err(self.refuse(refusing, refusal).await)
            }
            Spend::Refused(refusal) => Err(self.written(refusing, task, refusal, max_tokens).await),
        }
    }
}
