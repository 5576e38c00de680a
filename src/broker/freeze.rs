//! The kill switch: a security team stops all new issuance to an agent, a workflow
//! or everything, until it lifts the freeze. Both are audited; tokens already
//! issued live on (revoke them to end them). Issuance judges freezes: the token
//! writes in the same statement, delegation, redemption and step-up before.
use super::{Broker, BrokerError};
use crate::domain::audit::{Action, AuditEvent};
use crate::domain::refusal::Refusal;
use crate::domain::{Freeze, FreezeTarget, Missing};
use crate::identity::Caller;
use serde_json::json;
use tracing::warn;

impl Broker {
    /// Freezes `target`; a freeze already standing is returned as it is (the
    /// second value is false then).
    pub async fn freeze(
        &self,
        caller: &Caller,
        target: FreezeTarget,
        reason: String,
    ) -> Result<(Freeze, bool), BrokerError> {
        let now = self.now();
        let freeze = Freeze {
            target: target.clone(),
            reason: reason.clone(),
            actor: caller.id.to_string(),
            at: now,
        };
        let audit = about(
            &target,
            AuditEvent::new(now, caller.id.as_str(), Action::IssuanceFrozen)
                .reason(&reason)
                .detail(json!({"target": target.kind(), "value": target.value()})),
        );
        let stands = self.store.freeze(&freeze, &audit).await?;
        let new = stands == freeze;
        if new {
            warn!(caller = %caller.id, %target, %reason, "issuance frozen");
        }
        Ok((stands, new))
    }

    /// Lifts the freeze of `target`.
    pub async fn unfreeze(
        &self,
        caller: &Caller,
        target: FreezeTarget,
        reason: String,
    ) -> Result<Freeze, BrokerError> {
        let now = self.now();
        let audit = about(
            &target,
            AuditEvent::new(now, caller.id.as_str(), Action::IssuanceUnfrozen)
                .reason(&reason)
                .detail(json!({"target": target.kind(), "value": target.value()})),
        );
        match self.store.unfreeze(&target, &audit).await? {
            Some(lifted) => {
                warn!(caller = %caller.id, %target, %reason, "issuance unfrozen");
                Ok(lifted)
            }
            None => Err(Refusal::NotFound(Missing::Freeze(target)).into()),
        }
    }

    pub async fn list_freezes(&self) -> Result<Vec<Freeze>, BrokerError> {
        Ok(self.store.list_freezes().await?)
    }
}

/// Files a freeze's audit event under its agent, when it has one.
fn about(target: &FreezeTarget, event: AuditEvent) -> AuditEvent {
    match target {
        FreezeTarget::Agent(a) => event.agent(a),
        _ => event,
    }
}
