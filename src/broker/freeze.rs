//! The kill switch: a security team stops all new issuance to an agent, a workflow
//! or everything, until it lifts the freeze. Both are audited; tokens already
//! issued live on (revoke them to end them).
use super::*;
use crate::domain::{Freeze, FreezeTarget};

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
            None => Err(BrokerError::NotFound(format!("{target} is not frozen"))),
        }
    }

    pub async fn list_freezes(&self) -> Result<Vec<Freeze>, BrokerError> {
        Ok(self.store.list_freezes().await?)
    }

    /// Refuses, with an audited reason, issuance a freeze covers: to any of
    /// `agents` (the holder, the task's agent, a delegator) or in `workflow`.
    pub(super) async fn refuse_if_frozen(
        &self,
        agents: &[&str],
        workflow: &str,
        deny: impl Fn(&str) -> AuditEvent,
    ) -> Result<(), BrokerError> {
        let Some(f) = self.store.freeze_covering(agents, workflow).await? else {
            return Ok(());
        };
        let reason = format!(
            "issuance is frozen for {} by {} since {}: {}",
            f.target,
            f.actor,
            rfc3339(f.at),
            f.reason
        );
        self.audit_denial(deny(&reason)).await;
        Err(BrokerError::PermissionDenied(reason))
    }
}

/// Files a freeze's audit event under its agent, when it has one.
fn about(target: &FreezeTarget, event: AuditEvent) -> AuditEvent {
    match target {
        FreezeTarget::Agent(a) => event.agent(a.as_str()),
        _ => event,
    }
}
