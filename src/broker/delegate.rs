//! Delegation offers (RFC 8693 semantics): a token's holder offers a sub-agent a
//! token no wider than its own; the sub-agent redeems the offer over its own
//! mTLS connection (`redeem.rs`), so the child token is bound to the
//! sub-agent's certificate. Revoking an ancestor token, the task or any agent of
//! the chain revokes it.
use super::mint::limits;
use super::refuse::{Refusing, Respond};
use super::{BadToken, Broker, BrokerError};
use crate::domain::audit::{Action, AuditEvent};
use crate::domain::delegation::{self, OfferAsk, Parent};
use crate::domain::refusal::Refusal;
use crate::domain::{Delegation, Scope, SpiffeId};
use crate::identity::Caller;
use crate::policy::{DeviationResponse, MintInput};
use serde_json::json;
use std::time::Duration;
use time::OffsetDateTime;
use uuid::Uuid;

/// Unredeemed, unexpired offers one parent token may have at a time.
pub const MAX_OPEN_OFFERS: u32 = 16;

pub struct DelegateRequest {
    /// The caller's own token, to delegate from.
    pub parent_token: String,
    pub sub_agent: SpiffeId,
    pub scope: Scope,
    pub ttl: Duration,
    /// Whether `sub_agent` holds the agent role (only agents redeem).
    pub sub_agent_is_agent: bool,
}

pub struct Delegated {
    pub id: Uuid,
    pub expires_at: OffsetDateTime,
    pub depth: u32,
}

impl Broker {
    /// Records an offer of a narrower token to a sub-agent, as the offer rules
    /// (`domain::delegation::offer`) and then policy allow; each refusal is
    /// audited, and presenting another agent's token or delegating a scope the
    /// task does not declare is a deviation.
    pub async fn delegate(
        &self,
        caller: &Caller,
        req: DelegateRequest,
    ) -> Result<Delegated, BrokerError> {
        let now = self.now();
        let parent = self
            .our_token(
                ("parent_token", &req.parent_token),
                now.unix_timestamp(),
                0,
                "is not a valid, unexpired Mayfly token",
            )
            .await?;
        let record = match Uuid::parse_str(&parent.jti) {
            Ok(jti) => self.store.get_token(jti).await?,
            Err(_) => None,
        }
        .ok_or(BrokerError::BadToken {
            field: "parent_token",
            why: BadToken::NotRecorded,
        })?;
        let task = self.get_task(record.task).await?;
        let workflow = self.policy.workflow(&task.workflow);
        let frozen = self
            .store
            .freeze_covering(&[&caller.id, &task.agent, &req.sub_agent], &task.workflow)
            .await?;
        let event = || {
            AuditEvent::new(now, caller.id.as_str(), Action::DelegationDenied)
                .task(task.id)
                .agent(caller.id.as_str())
                .jti(record.jti)
                .detail(json!({
                    "sub_agent": req.sub_agent.as_str(),
                    "scope": req.scope,
                    "requested_ttl_seconds": req.ttl.as_secs(),
                }))
        };
        // A workflow that is gone revokes the deviating task: fail closed.
        let response = workflow
            .as_ref()
            .map_or(DeviationResponse::RevokeTask, |w| w.deviation);
        let refusing = Refusing::new(caller, &event).in_task(&task, Respond::As(response));
        let chain: Vec<&str> = std::iter::once(parent.sub.as_str())
            .chain(parent.actors())
            .collect();
        let offered = delegation::offer(
            Parent {
                record: &record,
                chain: &chain,
            },
            &task,
            frozen.as_ref(),
            OfferAsk {
                delegator: &caller.id,
                thumbprint: &caller.thumbprint,
                sub_agent: &req.sub_agent,
                sub_agent_is_agent: req.sub_agent_is_agent,
                scope: &req.scope,
                ttl: req.ttl,
            },
            workflow.as_ref().map(limits).as_ref(),
            now,
        );
        let offered = self.judged(&refusing, offered).await?;
        let input = MintInput {
            agent: &req.sub_agent,
            task: &task,
            scope: &req.scope,
            requested_ttl: req.ttl,
            delegation_depth: offered.depth,
            now,
        };
        let permit = self.permit_mint(&refusing, &input).await?;
        // RFC 8693: the newest actor outermost, earlier ones nested inside.
        let mut act = json!({ "sub": req.sub_agent.as_str() });
        if let Some(earlier) = &parent.act {
            act["act"] = earlier.clone();
        }
        let mut ancestors = parent
            .ancestors
            .iter()
            .map(|j| Uuid::parse_str(j))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| {
                BrokerError::Internal("a signed token carries an invalid ancestor".into())
            })?;
        ancestors.push(record.jti);
        let delegation = Delegation {
            id: Uuid::new_v4(),
            task: task.id,
            parent_jti: record.jti,
            delegator: caller.id.clone(),
            sub_agent: req.sub_agent.clone(),
            scope: req.scope.clone(),
            depth: offered.depth,
            act,
            ancestors,
            created_at: now,
            expires_at: offered.expires_at,
            redeemed_at: None,
            child_jti: None,
        };
        let audit = AuditEvent::new(now, caller.id.as_str(), Action::DelegationOffered)
            .task(task.id)
            .agent(caller.id.as_str())
            .jti(record.jti)
            .detail(json!({
                "delegation": delegation.id,
                "sub_agent": delegation.sub_agent,
                "scope": delegation.scope,
                "depth": offered.depth,
                "expires_at": offered.expires_at.unix_timestamp(),
                "policies": permit.policies,
            }));
        if !self
            .store
            .insert_delegation(&delegation, MAX_OPEN_OFFERS, &audit)
            .await?
        {
            let refusal = Refusal::TooManyOffers {
                parent: record.jti,
                max: MAX_OPEN_OFFERS,
            };
            return Err(self.refuse(&refusing, refusal).await);
        }
        Ok(Delegated {
            id: delegation.id,
            expires_at: offered.expires_at,
            depth: offered.depth,
        })
    }
}
