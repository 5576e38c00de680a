//! Minting: an agent asks for a token of one of its tasks for one scope. The
//! path, top to bottom: load the task; the domain's checks before policy (owner,
//! state, deadline, coverage); the policy decision; the checks after it, with
//! the limits it decided with (budget, lifetime, step-up); sign; write the token
//! with its audit event, the write judging the task's row again (and freezes)
//! in the same statement; reply. A step-up action takes the branch in
//! `step_up.rs` instead of being signed.
use super::refuse::{Refusing, Respond, denied};
use super::{Broker, BrokerError};
use crate::domain::audit::{Action, AuditEvent};
use crate::domain::mint::{self, Ask};
use crate::domain::{Approval, Limits, Scope, Task, TaskId, TokenRecord};
use crate::identity::Caller;
use crate::policy::{MintInput, Permit, WorkflowLimits};
use crate::store::Refusal;
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;
use time::OffsetDateTime;
use uuid::Uuid;

pub struct MintRequest {
    pub task: TaskId,
    pub scope: Scope,
    pub ttl: Duration,
}

pub struct Minted {
    pub token: String,
    pub jti: Uuid,
    pub expires_at: OffsetDateTime,
    pub ttl: Duration,
    /// What the token is for (its `aud` and `scope` claims).
    pub scope: Scope,
}

/// What a mint request gets.
pub enum Mint {
    Minted(Minted),
    /// The action needs a security team's approval: this one is pending.
    Pending(Box<Approval>),
}

impl Broker {
    /// Mints a token, or for a step-up action opens (or spends) an approval.
    pub async fn mint(&self, caller: &Caller, req: MintRequest) -> Result<Mint, BrokerError> {
        let started = std::time::Instant::now();
        let minted = self.mint_inner(caller, req).await;
        if let Ok(Mint::Minted(_)) = &minted {
            self.metrics.mint_took(started.elapsed());
        }
        minted
    }

    async fn mint_inner(&self, caller: &Caller, req: MintRequest) -> Result<Mint, BrokerError> {
        let now = self.now();
        let task = self.task_to_mint_in(req.task, now).await?;
        let task = &*task;
        let event = || {
            AuditEvent::new(now, caller.id.as_str(), Action::MintDenied)
                .task(task.id)
                .agent(caller.id.as_str())
                .detail(json!({"scope": req.scope, "requested_ttl_seconds": req.ttl.as_secs()}))
        };
        // The workflow's limits are read for a deviation before the decision
        // only: a covered request takes them from its decision's snapshot, so a
        // mint reads them once.
        let mut refusing = Refusing::new(caller, &event).in_task(task, Respond::Workflow);
        let ask = Ask {
            holder: &caller.id,
            scope: &req.scope,
            ttl: req.ttl,
            cert_valid_until: caller.valid_until,
        };
        // A freeze is judged by the token's write itself (and named then): no
        // extra round trip on the hot path.
        let admitted = self.judged(&refusing, mint::admit(task, ask, now)).await?;
        let permit = self
            .permit_mint(
                &refusing,
                &MintInput {
                    agent: &caller.id,
                    task,
                    scope: &req.scope,
                    requested_ttl: req.ttl,
                    delegation_depth: 0,
                    now,
                },
            )
            .await?;
        // The limits of the snapshot that decided: a reload cannot mix two policy
        // sets into one mint.
        refusing.responding(permit.limits.deviation);
        let grant = self
            .judged(&refusing, admitted.grant(&limits(&permit.limits)))
            .await?;
        if grant.step_up {
            return self
                .step_up(&refusing, task, &req, grant.ttl, &permit)
                .await;
        }
        let (token, record) = self.sign(caller, task, &req.scope, now, now + grant.ttl, None)?;
        let audit = minted_audit(caller, task, &record, &req, &permit.policies);
        let max_tokens = permit.limits.max_tokens;
        if let Err(refusal) = self.store.insert_token(&record, max_tokens, &audit).await? {
            if !matches!(refusal, Refusal::OutOfBudget | Refusal::Frozen) {
                // Gone, closed or past its deadline: read again next time.
                self.facts.forget(task.id);
            }
            return Err(self.written(&refusing, task, refusal, max_tokens).await);
        }
        self.metrics.token_issued("direct");
        Ok(Mint::Minted(Minted {
            token,
            jti: record.jti,
            expires_at: record.expires_at,
            ttl: grant.ttl,
            scope: record.scope,
        }))
    }

    /// The task a mint is for: its facts as first read (`facts`), unless the
    /// policy reads its count of tokens, which only the store knows now.
    async fn task_to_mint_in(
        &self,
        id: TaskId,
        now: OffsetDateTime,
    ) -> Result<Arc<Task>, BrokerError> {
        if !self.policy.reads_token_count()
            && let Some(task) = self.facts.get(id, now)
        {
            return Ok(task);
        }
        let task = Arc::new(self.get_task(id).await?);
        self.facts.hold(Arc::clone(&task), now);
        Ok(task)
    }

    /// The policy decision on a token for `input.agent`; a denial is refused,
    /// naming the sub-agent when the token would be delegated.
    pub(super) async fn permit_mint(
        &self,
        refusing: &Refusing<'_>,
        input: &MintInput<'_>,
    ) -> Result<Permit, BrokerError> {
        match self.policy.decide_mint(input) {
            Ok(permit) => Ok(permit),
            Err(d) => {
                let sub_agent = (input.delegation_depth > 0).then_some(input.agent);
                Err(self.refuse(refusing, denied(d, sub_agent)).await)
            }
        }
    }
}

/// The domain's view of a workflow's limits.
pub(super) fn limits(l: &WorkflowLimits) -> Limits<'_> {
    Limits {
        max_token_ttl: l.max_token_ttl,
        max_tokens: l.max_tokens,
        max_delegation_depth: l.max_delegation_depth,
        step_up_actions: &l.step_up_actions,
    }
}

/// The audit event of a token about to be recorded.
pub(super) fn minted_audit(
    caller: &Caller,
    task: &Task,
    record: &TokenRecord,
    req: &MintRequest,
    policies: &[String],
) -> AuditEvent {
    let ttl = (record.expires_at - record.issued_at).whole_seconds();
    AuditEvent::new(record.issued_at, caller.id.as_str(), Action::TokenMinted)
        .task(task.id)
        .agent(caller.id.as_str())
        .jti(record.jti)
        .detail(json!({
            "scope": req.scope,
            "requested_ttl_seconds": req.ttl.as_secs(),
            "ttl_seconds": ttl,
            "kid": record.kid,
            "policies": policies,
        }))
}
