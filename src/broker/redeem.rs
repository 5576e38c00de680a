//! Redeeming a delegation: the named sub-agent, over its own mTLS connection,
//! gets the offered token bound to its own certificate: once, while the offer
//! stands, no ancestor token is revoked (judged in the redemption's
//! transaction) and the task is active and within budget.
use super::mint::{Minted, limits};
use super::refuse::{Refusing, Respond};
use super::{Broker, BrokerError};
use crate::domain::audit::{Action, AuditEvent};
use crate::domain::refusal::Refusal;
use crate::domain::{Delegation, Missing};
use crate::identity::Caller;
use crate::policy::MintInput;
use crate::store::Redeem;
use serde_json::json;
use std::time::Duration;
use uuid::Uuid;

impl Broker {
    pub async fn redeem(&self, caller: &Caller, id: Uuid) -> Result<Minted, BrokerError> {
        let now = self.now();
        let offer = self.get_delegation(id).await?;
        let event = || {
            AuditEvent::new(now, caller.id.as_str(), Action::RedeemDenied)
                .task(offer.task)
                .agent(caller.id.as_str())
                .jti(offer.parent_jti)
                .detail(
                    json!({"delegation": id, "sub_agent": offer.sub_agent, "scope": offer.scope}),
                )
        };
        let refusing = Refusing::new(caller, &event);
        self.judged(&refusing, offer.redeemable(&caller.id, now))
            .await?;
        let task = self.get_task(offer.task).await?;
        let agents = [&caller.id, &task.agent, &offer.delegator];
        let frozen = self.store.freeze_covering(&agents, &task.workflow).await?;
        self.judged(&refusing, task.issuable(frozen.as_ref(), now))
            .await?;
        // Policy decides again: it may have changed since the offer.
        let input = MintInput {
            agent: &caller.id,
            task: &task,
            scope: &offer.scope,
            requested_ttl: Duration::try_from(offer.expires_at - now).unwrap_or_default(),
            delegation_depth: offer.depth,
            now,
        };
        let permit = self.permit_mint(&refusing, &input).await?;
        let max_tokens = permit.limits.max_tokens;
        let refusing =
            Refusing::new(caller, &event).in_task(&task, Respond::As(permit.limits.deviation));
        let expires_at = offer.redemption(&task, &limits(&permit.limits), caller.valid_until, now);
        let expires_at = self.judged(&refusing, expires_at).await?;
        let (token, record) =
            self.sign(caller, &task, &offer.scope, now, expires_at, Some(&offer))?;
        let audit = AuditEvent::new(now, caller.id.as_str(), Action::TokenMinted)
            .task(task.id)
            .agent(caller.id.as_str())
            .jti(record.jti)
            .detail(json!({
                "scope": offer.scope,
                "ttl_seconds": (expires_at - now).whole_seconds(),
                "kid": record.kid,
                "policies": permit.policies,
                "delegation": id,
                "parent_jti": offer.parent_jti,
                "delegator": offer.delegator,
                "depth": offer.depth,
                "act": offer.act,
            }));
        let refusal = match self
            .store
            .redeem_delegation(id, &record, max_tokens, &audit)
            .await?
        {
            Redeem::Redeemed => {
                self.metrics.token_issued("delegated");
                return Ok(Minted {
                    token,
                    jti: record.jti,
                    expires_at,
                    ttl: Duration::try_from(expires_at - now).unwrap_or_default(),
                    scope: record.scope,
                });
            }
            Redeem::Refused(refusal) => {
                return Err(self.written(&refusing, &task, refusal, max_tokens).await);
            }
            Redeem::NotFound => Refusal::NotFound(Missing::Delegation(id)),
            Redeem::AlreadyRedeemed => Refusal::AlreadyRedeemed {
                delegation: id,
                at: None,
            },
            Redeem::Expired => Refusal::OfferLapsed {
                delegation: id,
                at: None,
            },
            Redeem::ParentRevoked => Refusal::AncestorRevoked {
                delegation: id,
                parent: offer.parent_jti,
            },
        };
        Err(self.refuse(&refusing, refusal).await)
    }

    async fn get_delegation(&self, id: Uuid) -> Result<Delegation, BrokerError> {
        self.store
            .get_delegation(id)
            .await?
            .ok_or_else(|| Refusal::NotFound(Missing::Delegation(id)).into())
    }
}
