//! Ending tasks: the orchestrator that opened a task completes it (or reports it
//! deviated, `deviate.rs`); the sweeper expires every task past its deadline.
//! Either way all the task's tokens are revoked in the same transaction, and the
//! revocation published.
use super::refuse::Refusing;
use super::{Broker, BrokerError, SYSTEM_ACTOR};
use crate::domain::audit::{Action, AuditEvent};
use crate::domain::refusal::Refusal;
use crate::domain::{
    Event, Missing, Revocation, Target, Task, TaskClosed, TaskId, TaskState, Trigger,
};
use crate::identity::Caller;
use crate::store::{EndOutcome, StoreError};
use serde_json::json;
use tracing::error;

/// Overdue tasks read per page by the expiry sweep.
const SWEEP_PAGE: u32 = 100;

/// What one expiry sweep did.
#[derive(Debug, Default)]
pub struct Sweep {
    /// Tasks moved to `expired`, their tokens revoked.
    pub ended: usize,
    /// Tasks that could not be ended (each logged with its id); still active.
    pub failed: usize,
    /// Why the sweep stopped before the end (the store is unavailable), if it did.
    pub stopped: Option<BrokerError>,
}

/// How the orchestrator that opened a task ends it.
#[derive(Debug, Clone, Copy)]
pub(super) enum Ending {
    Complete,
    /// Reported deviated (`deviate.rs`).
    Deviate,
}

impl Ending {
    fn state(self) -> TaskState {
        match self {
            Ending::Complete => TaskState::Completed,
            Ending::Deviate => TaskState::Deviated,
        }
    }

    fn trigger(self) -> Trigger {
        match self {
            Ending::Complete => Trigger::TaskCompleted,
            Ending::Deviate => Trigger::Deviation,
        }
    }

    /// What another orchestrator's attempt is recorded as.
    fn denied(self) -> Action {
        match self {
            Ending::Complete => Action::TaskCompleteDenied,
            Ending::Deviate => Action::TaskDeviateDenied,
        }
    }
}

impl Broker {
    pub async fn complete_task(
        &self,
        caller: &Caller,
        id: TaskId,
    ) -> Result<(Task, Event), BrokerError> {
        self.end_as_opener(caller, id, Ending::Complete, "task completed".into())
            .await
    }

    /// Ends an active task as `ending` says, for the orchestrator that opened
    /// it (another is refused, and the refusal audited); `reason` is the
    /// revocation's. The ended task and its revocation event.
    pub(super) async fn end_as_opener(
        &self,
        caller: &Caller,
        id: TaskId,
        ending: Ending,
        reason: String,
    ) -> Result<(Task, Event), BrokerError> {
        let task = self.get_task(id).await?;
        let now = self.now();
        let event = || {
            AuditEvent::new(now, caller.id.as_str(), ending.denied())
                .task(id)
                .agent(&task.agent)
                .detail(json!({"opened_by": task.opened_by}))
        };
        self.judged(
            &Refusing::new(caller, &event),
            task.endable_by(&caller.id, ending.state()),
        )
        .await?;
        let outcome = self
            .end_task(
                id,
                ending.state(),
                ending.trigger(),
                caller.id.as_str(),
                reason,
            )
            .await?;
        match outcome {
            EndOutcome::Ended { task, revoked } => Ok((*task, revoked.event)),
            EndOutcome::NotActive(state) => {
                Err(Refusal::from(TaskClosed::NotActive { task: id, state }).into())
            }
            EndOutcome::NotFound => Err(Refusal::NotFound(Missing::Task(id)).into()),
        }
    }

    /// Ends an active task and revokes its tokens, publishing the revocation.
    async fn end_task(
        &self,
        id: TaskId,
        to: TaskState,
        trigger: Trigger,
        actor: &str,
        reason: String,
    ) -> Result<EndOutcome, BrokerError> {
        let now = self.now();
        let action = match to {
            TaskState::Completed => Action::TaskCompleted,
            TaskState::Expired => Action::TaskExpired,
            TaskState::Deviated => Action::TaskDeviated,
            _ => Action::TaskRevoked,
        };
        let revocation = Revocation {
            target: Target::Task(id),
            reason: reason.clone(),
            actor: actor.to_string(),
            trigger,
            at: now,
        };
        let audit = [
            AuditEvent::new(now, actor, action).task(id).reason(&reason),
            AuditEvent::new(now, actor, Action::Revocation)
                .task(id)
                .reason(&reason)
                .detail(json!({"target": "task", "trigger": trigger.as_str()})),
        ];
        let outcome = self.store.end_task(id, to, &revocation, &audit).await;
        self.facts.forget(id);
        let outcome = outcome?;
        if let EndOutcome::Ended { revoked, .. } = &outcome {
            self.hub.committed(revoked.event.seq);
            self.metrics.revoked(trigger.as_str());
            if to == TaskState::Deviated {
                self.metrics.deviated();
            }
        }
        Ok(outcome)
    }

    /// Ends every task past its deadline. One task that cannot be ended (a bad row,
    /// a constraint) is logged with its id and skipped, so it does not shield the
    /// others from expiry; an unavailable store stops the sweep at once, since every
    /// other task would fail the same way. Tasks left active are retried next sweep.
    pub async fn sweep_expired(&self) -> Sweep {
        let now = self.now();
        let mut sweep = Sweep::default();
        let mut after = None;
        loop {
            let page = match self.store.overdue_tasks(now, after, SWEEP_PAGE).await {
                Ok(page) => page,
                Err(e) => {
                    sweep.stopped = Some(e.into());
                    return sweep;
                }
            };
            for &(deadline, id) in &page {
                after = Some((deadline, id));
                let ended = self
                    .end_task(
                        id,
                        TaskState::Expired,
                        Trigger::TaskExpired,
                        SYSTEM_ACTOR,
                        "task passed its deadline".into(),
                    )
                    .await;
                match ended {
                    Ok(EndOutcome::Ended { .. }) => sweep.ended += 1,
                    // Completed, revoked or deviated since it was listed: nothing to do.
                    Ok(EndOutcome::NotActive(_) | EndOutcome::NotFound) => {}
                    Err(e @ BrokerError::Store(StoreError::Unavailable(_))) => {
                        sweep.stopped = Some(e);
                        return sweep;
                    }
                    Err(error) => {
                        error!(task = %id, %error, "could not expire a task past its deadline; it stays active until the next sweep");
                        sweep.failed += 1;
                    }
                }
            }
            if page.len() < SWEEP_PAGE as usize {
                return sweep;
            }
        }
    }
}
