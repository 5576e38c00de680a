//! A compromised agent, in one call: every token of it (and everything delegated
//! from them) revoked, every active task of it ended as revoked, and its issuance
//! frozen until a security team lifts the freeze; one transaction, one revocation
//! event, one audit event.
use super::{Broker, BrokerError};
use crate::domain::audit::{Action, AuditEvent};
use crate::domain::{Freeze, FreezeTarget, Revocation, SpiffeId, Target, Trigger};
use crate::identity::Caller;
use crate::store::Quarantined;
use serde_json::json;
use tracing::warn;

impl Broker {
    pub async fn quarantine(
        &self,
        caller: &Caller,
        agent: SpiffeId,
        reason: String,
    ) -> Result<Quarantined, BrokerError> {
        let now = self.now();
        let revocation = Revocation {
            target: Target::Agent(agent.clone()),
            reason: reason.clone(),
            actor: caller.id.to_string(),
            trigger: Trigger::Admin,
            at: now,
        };
        let freeze = Freeze {
            target: FreezeTarget::Agent(agent.clone()),
            reason: reason.clone(),
            actor: caller.id.to_string(),
            at: now,
        };
        let audit = AuditEvent::new(now, caller.id.as_str(), Action::AgentQuarantined)
            .agent(agent.as_str())
            .reason(&reason)
            .detail(json!({"target": "agent", "value": agent.as_str(), "trigger": "admin"}));
        let q = self.store.quarantine(&revocation, &freeze, &audit).await?;
        if !q.revoked.repeated {
            self.hub.committed(q.revoked.event.seq);
            self.metrics.revoked(Trigger::Admin.as_str());
        }
        warn!(
            caller = %caller.id, %agent, %reason, seq = q.revoked.event.seq,
            tokens = q.revoked.tokens_revoked, tasks = q.revoked.tasks_stopped,
            "agent quarantined: revoked and frozen"
        );
        Ok(q)
    }
}
