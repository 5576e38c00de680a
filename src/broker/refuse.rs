//! The one place where a refusal becomes what it leaves behind: its audit event
//! (written on its own; a failed write is logged, and the caller is refused all
//! the same), its count in the metrics, and for a deviation the workflow's
//! response: deny only, or deny, mark the task `deviated` and revoke all its
//! tokens in one transaction with the refusal's event.
use super::{Broker, BrokerError};
use crate::domain::audit::{Action, AuditEvent};
use crate::domain::refusal::Refusal;
use crate::domain::repeats_allowed;
use crate::domain::{Approval, Missing, Revocation, Target, Task, TaskClosed, TaskState, Trigger};
use crate::identity::{Caller, Role};
use crate::policy::{Denied, DeviationResponse};
use crate::store::{self, EndOutcome};
use serde_json::json;
use tracing::warn;

/// Who is refused, what the refusal is recorded as, and what a deviation ends.
pub(super) struct Refusing<'a> {
    pub(super) caller: &'a Caller,
    /// The refusal's audit event, less its reason; built only when refused.
    event: &'a (dyn Fn() -> AuditEvent + Sync),
    /// The task a deviation deviates; without one, a deviation is only denied.
    task: Option<&'a Task>,
    respond: Respond,
}

/// How the response to a deviation is found.
#[derive(Debug, Clone, Copy)]
pub(super) enum Respond {
    /// The limits of the policy snapshot that decided say it.
    As(DeviationResponse),
    /// The workflow as now defined says it; a workflow no longer defined
    /// refuses the request outright. (Before the policy decision, so that a
    /// covered mint reads the workflow only once, in its decision.)
    Workflow,
}

impl<'a> Refusing<'a> {
    pub(super) fn new(caller: &'a Caller, event: &'a (dyn Fn() -> AuditEvent + Sync)) -> Self {
        Refusing {
            caller,
            event,
            task: None,
            respond: Respond::As(DeviationResponse::Deny),
        }
    }

    /// Refusals in `task`, whose deviations are answered as `respond` finds.
    pub(super) fn in_task(self, task: &'a Task, respond: Respond) -> Self {
        Refusing {
            task: Some(task),
            respond,
            ..self
        }
    }

    /// From the policy decision on, deviations are answered as it saw the
    /// workflow.
    pub(super) fn responding(&mut self, response: DeviationResponse) {
        self.respond = Respond::As(response);
    }

    /// The audit event recording `refusal`.
    fn event(&self, refusal: &Refusal) -> AuditEvent {
        let mut event = (self.event)();
        event.reason = Some(refusal.to_string());
        if let Refusal::Policy { policies, .. } = refusal {
            event.detail["policies"] = json!(policies);
        }
        event
    }
}

/// A policy denial as a refusal; `sub_agent` when it was about a sub-agent's
/// token, so that the reason names it.
pub(super) fn denied(d: Denied, sub_agent: Option<&crate::domain::SpiffeId>) -> Refusal {
    Refusal::Policy {
        reason: d.reason,
        policies: d.policies,
        sub_agent: sub_agent.cloned(),
    }
}

impl Broker {
    /// Refuses: records the refusal and counts it, or, for a deviation whose
    /// workflow revokes, deviates the task with it.
    pub(super) async fn refuse(&self, ctx: &Refusing<'_>, refusal: Refusal) -> BrokerError {
        if let (true, Some(task)) = (refusal.is_deviation(), ctx.task) {
            let response = match ctx.respond {
                Respond::As(r) => Some(r),
                Respond::Workflow => self.policy.workflow(&task.workflow).map(|w| w.deviation),
            };
            match response {
                Some(DeviationResponse::RevokeTask) => {
                    return match self.deviate(ctx.caller, task, ctx.event(&refusal)).await {
                        Ok(_) => BrokerError::Deviated(refusal),
                        Err(e) => e,
                    };
                }
                Some(DeviationResponse::Deny) => {}
                None => {
                    let undefined = Refusal::WorkflowUndefined {
                        workflow: task.workflow.clone(),
                    };
                    self.record(ctx.event(&undefined)).await;
                    return undefined.into();
                }
            }
        }
        self.record(ctx.event(&refusal)).await;
        refusal.into()
    }

    /// `judged` as is, or refused.
    pub(super) async fn judged<T>(
        &self,
        ctx: &Refusing<'_>,
        judged: Result<T, Refusal>,
    ) -> Result<T, BrokerError> {
        match judged {
            Ok(v) => Ok(v),
            Err(refusal) => Err(self.refuse(ctx, refusal).await),
        }
    }

    /// Records a refusal (or a misuse report whose task had ended) in one write,
    /// and counts it. A failed write is logged and otherwise ignored: the caller
    /// is refused either way, so the refusal never turns into success or into a
    /// different error because the trail could not be written.
    pub(super) async fn record(&self, event: AuditEvent) {
        self.metrics.denied(event.action.as_str());
        if let Err(error) = self.store.append_audit(&event).await {
            warn!(%error, action = event.action.as_str(), "could not record a denial in the audit trail");
        }
    }

    /// A token write the store refused, judged on the task's row in the same
    /// statement: the task changed after it was read, or a freeze came in
    /// between. Refused as the rules before the write refuse it (out of budget is
    /// a deviation), without reading the task again; a freeze is named.
    pub(super) async fn written(
        &self,
        ctx: &Refusing<'_>,
        task: &Task,
        refusal: store::Refusal,
        max_tokens: u32,
    ) -> BrokerError {
        let refusal = match refusal {
            store::Refusal::OutOfBudget => Refusal::OutOfBudget {
                task: task.id,
                max: max_tokens,
            },
            store::Refusal::Frozen => {
                let holders = [&ctx.caller.id, &task.agent];
                match self.store.freeze_covering(&holders, &task.workflow).await {
                    Ok(Some(freeze)) => Refusal::Frozen(freeze),
                    // Lifted again since the write.
                    Ok(None) => Refusal::ChangedWhileMinting { task: task.id },
                    Err(e) => return e.into(),
                }
            }
            store::Refusal::NotActive(state) => TaskClosed::NotActive {
                task: task.id,
                state,
            }
            .into(),
            store::Refusal::PastDeadline => TaskClosed::PastDeadline { task: task.id }.into(),
            store::Refusal::NotOwner => Refusal::NotOwner { task: task.id },
            store::Refusal::NoTask => return Refusal::NotFound(Missing::Task(task.id)).into(),
        };
        self.refuse(ctx, refusal).await
    }

    /// Refuses a repeated step-up request that met a pending or denied
    /// `approval`, counting the repeat with its audit event in one write; past
    /// the workflow's `allowed` repeats the repeat is a deviation. `None` when
    /// the approval was decided meanwhile (nothing is counted).
    pub(super) async fn refuse_repeat(
        &self,
        ctx: &Refusing<'_>,
        task: &Task,
        approval: &Approval,
        refusal: Refusal,
        allowed: u32,
    ) -> Option<BrokerError> {
        let mut event = ctx.event(&refusal);
        event.action = Action::StepUpRefused;
        event.detail["approval"] = json!(approval.id);
        let refusals = match self
            .store
            .count_step_up_refusal(task.id, approval.id, self.now(), &event)
            .await
        {
            Ok(Some(n)) => {
                // Written with its count, not through `record`.
                self.metrics.denied(Action::StepUpRefused.as_str());
                n
            }
            Ok(None) => return None,
            Err(e) => return Some(e.into()),
        };
        if let Err(deviation) = repeats_allowed(task, refusals, allowed) {
            return Some(self.refuse(ctx, deviation).await);
        }
        Some(refusal.into())
    }

    /// Deviates `task`: marks it `deviated` and revokes all its tokens, in one
    /// transaction with `event` (the refusal or report that caused it) and the
    /// deviation's own events. Returns the revocation's sequence number; a task
    /// that ended meanwhile is refused as not active.
    pub(super) async fn deviate(
        &self,
        caller: &Caller,
        task: &Task,
        event: AuditEvent,
    ) -> Result<u64, BrokerError> {
        let now = self.now();
        let reason = event.reason.clone().unwrap_or_default();
        let revocation = Revocation {
            target: Target::Task(task.id),
            reason: reason.clone(),
            actor: caller.id.to_string(),
            trigger: Trigger::Deviation,
            at: now,
        };
        let action = event.action;
        let audit = [
            event,
            AuditEvent::new(now, caller.id.as_str(), Action::TaskDeviated)
                .task(task.id)
                .agent(&task.agent)
                .reason(&reason),
            AuditEvent::new(now, caller.id.as_str(), Action::Revocation)
                .task(task.id)
                .reason(&reason)
                .detail(json!({"target": "task", "trigger": Trigger::Deviation.as_str()})),
        ];
        let ended = self
            .store
            .end_task(task.id, TaskState::Deviated, &revocation, &audit)
            .await;
        self.facts.forget(task.id);
        match ended? {
            EndOutcome::Ended { revoked, .. } => {
                self.hub.committed(revoked.event.seq);
                self.metrics.revoked(Trigger::Deviation.as_str());
                self.metrics.deviated();
                // The refusal was recorded with the deviation, in its transaction.
                self.metrics.denied(action.as_str());
                warn!(caller = %caller.id, task = %task.id, %reason, "task deviated; its tokens are revoked");
                Ok(revoked.event.seq)
            }
            EndOutcome::NotActive(state) => Err(Refusal::from(TaskClosed::NotActive {
                task: task.id,
                state,
            })
            .into()),
            EndOutcome::NotFound => Err(Refusal::NotFound(Missing::Task(task.id)).into()),
        }
    }

    /// Refuses `caller` the call `method` (its full gRPC name) because it holds
    /// none of the roles in `required`, and records the refusal: an identity probing
    /// calls it may not make is exactly what the security team needs to see.
    pub async fn refuse_role(
        &self,
        caller: &Caller,
        method: &'static str,
        required: &[Role],
    ) -> BrokerError {
        let roles: Vec<String> = required.iter().map(|r| r.to_string()).collect();
        let now = self.now();
        let event = || {
            AuditEvent::new(now, caller.id.as_str(), Action::CallDenied)
                .detail(json!({"method": method, "required_roles": roles}))
        };
        let refusal = Refusal::MissingRole {
            caller: caller.id.clone(),
            roles: roles.clone(),
        };
        self.refuse(&Refusing::new(caller, &event), refusal).await
    }
}
