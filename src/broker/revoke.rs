//! Revocation by the security team: a token, a task, an agent, a workflow or
//! everything, committed with its audit event and then published.
use super::refuse::Refusing;
use super::{Broker, BrokerError};
use crate::domain::audit::{Action, AuditEvent};
use crate::domain::refusal::Refusal;
use crate::domain::{Missing, Revocation, Target, Trigger};
use crate::identity::Caller;
use crate::store::Revoked;
use serde_json::json;
use tracing::{info, warn};

impl Broker {
    pub async fn revoke(
        &self,
        caller: &Caller,
        target: Target,
        reason: String,
    ) -> Result<Revoked, BrokerError> {
        let now = self.now();
        let revocation = Revocation {
            target: target.clone(),
            reason: reason.clone(),
            actor: caller.id.to_string(),
            trigger: Trigger::Admin,
            at: now,
        };
        let audit = about(
            &target,
            AuditEvent::new(now, caller.id.as_str(), Action::Revocation)
                .reason(&reason)
                .detail(
                    json!({"target": target.kind(), "value": target.value(), "trigger": "admin"}),
                ),
        );
        let Some(revoked) = self.store.revoke(&revocation, &audit).await? else {
            let event = || {
                about(
                    &target,
                    AuditEvent::new(now, caller.id.as_str(), Action::RevocationDenied).detail(
                        json!({
                            "target": target.kind(),
                            "value": target.value(),
                            "requested_reason": reason,
                        }),
                    ),
                )
            };
            let refusal = Refusal::NotFound(Missing::Target(target.clone()));
            return Err(self.refuse(&Refusing::new(caller, &event), refusal).await);
        };
        if revoked.repeated {
            info!(caller = %caller.id, target = %target, %reason, seq = revoked.event.seq, "already revoked; nothing added to the stream");
            return Ok(revoked);
        }
        self.hub.committed(revoked.event.seq);
        self.metrics.revoked(Trigger::Admin.as_str());
        warn!(caller = %caller.id, target = %target, %reason, seq = revoked.event.seq, "revoked");
        Ok(revoked)
    }
}

/// Files an event under the target, so that a query by task, agent or token
/// finds both a revocation and its refusal.
fn about(target: &Target, event: AuditEvent) -> AuditEvent {
    match target {
        Target::Task(t) => event.task(*t),
        Target::Agent(a) => event.agent(a.as_str()),
        Target::Token(j) => event.jti(*j),
        Target::Workflow(_) | Target::All => event,
    }
}
