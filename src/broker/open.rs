//! Opening a task: an orchestrator opens one for an agent under a workflow, with
//! an objective and declared scopes, as policy permits.
use super::refuse::{Refusing, denied};
use super::{Broker, BrokerError};
use crate::domain::audit::{Action, AuditEvent};
use crate::domain::{Scope, SpiffeId, Task, TaskId, TaskState};
use crate::identity::Caller;
use crate::policy::StartInput;
use serde_json::json;
use std::time::Duration;

pub struct StartTask {
    pub agent: SpiffeId,
    pub workflow: String,
    pub objective: String,
    pub scopes: Vec<Scope>,
    pub duration: Duration,
}

impl Broker {
    pub async fn start_task(&self, caller: &Caller, req: StartTask) -> Result<Task, BrokerError> {
        let now = self.now();
        let decision = self.policy.decide_start(&StartInput {
            orchestrator: &caller.id,
            agent: &req.agent,
            workflow: &req.workflow,
            objective: &req.objective,
            scopes: &req.scopes,
            duration: req.duration,
            now,
        });
        let permit = match decision {
            Ok(p) => p,
            Err(d) => {
                let event = || {
                    AuditEvent::new(now, caller.id.as_str(), Action::TaskOpenDenied)
                        .agent(req.agent.as_str())
                        .detail(json!({
                            "workflow": req.workflow,
                            "scopes": req.scopes,
                            "objective": req.objective,
                        }))
                };
                return Err(self
                    .refuse(&Refusing::new(caller, &event), denied(d, None))
                    .await);
            }
        };
        let task = Task {
            id: TaskId::new(),
            agent: req.agent,
            workflow: req.workflow,
            objective: req.objective,
            scopes: req.scopes,
            state: TaskState::Active,
            opened_by: caller.id.clone(),
            created_at: now,
            expires_at: now + req.duration,
            ended_at: None,
            end_reason: None,
            tokens_minted: 0,
        };
        let audit = AuditEvent::new(now, caller.id.as_str(), Action::TaskOpened)
            .task(task.id)
            .agent(&task.agent)
            .detail(json!({
                "workflow": task.workflow,
                "objective": task.objective,
                "scopes": task.scopes,
                "duration_seconds": req.duration.as_secs(),
                "policies": permit.policies,
            }));
        self.store.insert_task(&task, &audit).await?;
        Ok(task)
    }
}
