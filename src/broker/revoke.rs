//! Revocation: by the security team (a token, a task, an agent, a workflow or
//! everything), or of one token given back by its holder (RFC 7009); committed
//! with its audit event and then published.
use super::refuse::Refusing;
use super::{Broker, BrokerError};
use crate::domain::audit::{Action, AuditEvent};
use crate::domain::refusal::Refusal;
use crate::domain::{Missing, Revocation, Target, Trigger};
use crate::identity::Caller;
use crate::store::Revoked;
use serde_json::json;
use tracing::{debug, warn};
use uuid::Uuid;

/// Who gives a token back: its holder, or the security team (which may end any).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GivenBy {
    Holder,
    Admin,
}

impl Broker {
    pub async fn revoke(
        &self,
        caller: &Caller,
        target: Target,
        reason: String,
    ) -> Result<Revoked, BrokerError> {
        if let Some(revoked) = self
            .record_revocation(caller, &target, &reason, Trigger::Admin)
            .await?
        {
            return Ok(revoked);
        }
        let now = self.now();
        let event = || {
            about(
                &target,
                AuditEvent::new(now, caller.id.as_str(), Action::RevocationDenied).detail(json!({
                    "target": target.kind(),
                    "value": target.value(),
                    "requested_reason": reason,
                })),
            )
        };
        let refusal = Refusal::NotFound(Missing::Target(target.clone()));
        Err(self.refuse(&Refusing::new(caller, &event), refusal).await)
    }

    /// Revokes `token` at the request of `caller` (RFC 7009). `Ok(None)` when
    /// there is nothing to revoke: not a token this broker signed and recorded,
    /// or expired already; RFC 7009 answers such a request as a success, and it
    /// leaves nothing behind (anyone with an SVID may send garbage). A holder may
    /// give back only its own token (`client_id` is the holder); the security team
    /// any.
    pub async fn give_back(
        &self,
        caller: &Caller,
        token: &str,
        by: GivenBy,
    ) -> Result<Option<Revoked>, BrokerError> {
        let now = self.now();
        // Any time window: a token a verifier may still accept (its leeway, a
        // replica's clock ahead of this one's) must die when given back; the
        // store leaves alone what expired past the clock margin.
        let margin = crate::domain::retention::CLOCK_MARGIN.as_secs() as i64;
        let claims = match self
            .verify_signature(token, now.unix_timestamp(), margin)
            .await?
        {
            Ok(c) if c.iss == self.issuer => c,
            Ok(_) => return Ok(None),
            Err(why) => {
                debug!(%why, "token given back: not a valid token; nothing to revoke");
                return Ok(None);
            }
        };
        let Ok(jti) = Uuid::parse_str(&claims.jti) else {
            return Ok(None);
        };
        // Already dead (revoked, or its task ended and took it along): nothing
        // to write. A holder giving the same token back in a loop costs a read,
        // never the revocation sequence's lock or an audit row.
        match self.store.token_status(jti).await? {
            Some(s) if !s.revoked && s.task_state == crate::domain::TaskState::Active => {}
            _ => {
                debug!("token given back: already revoked or its task ended");
                return Ok(None);
            }
        }
        let (trigger, reason) = if claims.client_id == caller.id.as_str() {
            (Trigger::Returned, "given back by its holder (RFC 7009)")
        } else if by == GivenBy::Admin {
            (
                Trigger::Admin,
                "revoked at the OAuth revocation endpoint (RFC 7009)",
            )
        } else {
            let event = || {
                AuditEvent::new(now, caller.id.as_str(), Action::RevocationDenied)
                    .jti(jti)
                    .detail(json!({"target": "token", "value": jti, "holder": claims.client_id}))
            };
            let refusal = Refusal::NotTheHolder {
                jti,
                presenter: caller.id.clone(),
                holder: claims.client_id.clone(),
            };
            return Err(self.refuse(&Refusing::new(caller, &event), refusal).await);
        };
        self.record_revocation(caller, &Target::Token(jti), reason, trigger)
            .await
    }

    /// Commits a revocation with its audit event, then publishes it. `None`: the
    /// target does not exist.
    async fn record_revocation(
        &self,
        caller: &Caller,
        target: &Target,
        reason: &str,
        trigger: Trigger,
    ) -> Result<Option<Revoked>, BrokerError> {
        let now = self.now();
        let revocation = Revocation {
            target: target.clone(),
            reason: reason.to_string(),
            actor: caller.id.to_string(),
            trigger,
            at: now,
        };
        let audit = about(
            target,
            AuditEvent::new(now, caller.id.as_str(), Action::Revocation)
                .reason(reason)
                .detail(json!({"target": target.kind(), "value": target.value(), "trigger": trigger.as_str()})),
        );
        let Some(revoked) = self.store.revoke(&revocation, &audit).await? else {
            return Ok(None);
        };
        if revoked.repeated {
            debug!(caller = %caller.id, target = %target, %reason, seq = revoked.event.seq, "already revoked; nothing added to the stream");
            return Ok(Some(revoked));
        }
        self.hub.committed(revoked.event.seq);
        self.metrics.revoked(trigger.as_str());
        warn!(caller = %caller.id, target = %target, %reason, seq = revoked.event.seq, "revoked");
        Ok(Some(revoked))
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
