//! Delegation (RFC 8693): an offer of a narrower token to a named sub-agent, and
//! the rules of offering and redeeming one.
use super::refusal::Refusal;
use super::{Freeze, Limits, Scope, SpiffeId, Task, TaskId, TokenRecord, Widening};
use std::time::Duration;
use time::OffsetDateTime;
use uuid::Uuid;

/// An offer from a token's holder of a narrower token to a named sub-agent,
/// redeemable once, by that sub-agent only (RFC 8693 delegation).
#[derive(Debug, Clone, PartialEq)]
pub struct Delegation {
    pub id: Uuid,
    pub task: TaskId,
    pub parent_jti: Uuid,
    /// The parent token's holder.
    pub delegator: SpiffeId,
    pub sub_agent: SpiffeId,
    pub scope: Scope,
    pub depth: u32,
    /// The child token's RFC 8693 `act` claim: the sub-agent, then every earlier
    /// actor nested inside.
    pub act: serde_json::Value,
    /// The jtis of every ancestor of the child token, root first.
    pub ancestors: Vec<Uuid>,
    pub created_at: OffsetDateTime,
    /// The child token expires then, at the latest; unredeemed, the offer lapses.
    pub expires_at: OffsetDateTime,
    pub redeemed_at: Option<OffsetDateTime>,
    pub child_jti: Option<Uuid>,
}

/// What a token's holder asks to offer a sub-agent.
#[derive(Debug, Clone, Copy)]
pub struct OfferAsk<'a> {
    pub delegator: &'a SpiffeId,
    /// The thumbprint of the certificate the delegator calls with.
    pub thumbprint: &'a str,
    pub sub_agent: &'a SpiffeId,
    /// Whether the sub-agent holds the agent role (only agents redeem).
    pub sub_agent_is_agent: bool,
    pub scope: &'a Scope,
    pub ttl: Duration,
}

/// The token delegated from: its record, and the identities of its chain (its
/// subject and every actor).
#[derive(Debug, Clone, Copy)]
pub struct Parent<'a> {
    pub record: &'a TokenRecord,
    pub chain: &'a [&'a str],
}

/// An offer the rules allow (policy decides next).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Offered {
    pub depth: u32,
    pub expires_at: OffsetDateTime,
}

/// The offer rules, in the order a request learns what is wrong with it: the
/// parent token is the delegator's own (another agent's is a deviation), bound to
/// the certificate it calls with, not revoked; the task mints and no freeze
/// (`frozen`) covers it; the sub-agent is another agent, not yet in the chain;
/// the scope is no wider than the parent's (outside the task's declared scopes
/// that is a deviation) and the offer does not outlive it; the workflow
/// (`limits`, `None` once it is no longer defined) allows a chain that deep and
/// does not make the action a step-up one.
pub fn offer(
    parent: Parent<'_>,
    task: &Task,
    frozen: Option<&Freeze>,
    ask: OfferAsk<'_>,
    limits: Option<&Limits<'_>>,
    now: OffsetDateTime,
) -> Result<Offered, Refusal> {
    let record = parent.record;
    if record.agent != *ask.delegator {
        return Err(Refusal::ForeignToken {
            presenter: ask.delegator.clone(),
            holder: record.agent.clone(),
        });
    }
    if record.cert_thumbprint != ask.thumbprint {
        return Err(Refusal::OtherCertificate);
    }
    if record.revoked_at.is_some() {
        return Err(Refusal::ParentRevoked { jti: record.jti });
    }
    task.issuable(frozen, now)?;
    if ask.sub_agent == ask.delegator {
        return Err(Refusal::SelfDelegation);
    }
    if parent.chain.contains(&ask.sub_agent.as_str()) {
        return Err(Refusal::InChain {
            sub_agent: ask.sub_agent.clone(),
        });
    }
    if !ask.sub_agent_is_agent {
        return Err(Refusal::NotAnAgent {
            sub_agent: ask.sub_agent.clone(),
        });
    }
    if let Some(widening) = Widening::of(&record.scope, ask.scope) {
        if task.covering_scope(ask.scope).is_none() {
            return Err(Refusal::OutOfScope {
                task: task.id,
                scope: ask.scope.clone(),
                delegated: true,
            });
        }
        return Err(widening.into());
    }
    let expires_at = now + ask.ttl;
    if expires_at > record.expires_at {
        return Err(Refusal::OutlivesParent {
            ttl_seconds: ask.ttl.as_secs(),
            parent_left: (record.expires_at - now).whole_seconds(),
        });
    }
    let Some(limits) = limits else {
        return Err(Refusal::WorkflowUndefined {
            workflow: task.workflow.clone(),
        });
    };
    let depth = record.depth + 1;
    delegable(limits, &task.workflow, ask.scope, depth)?;
    Ok(Offered { depth, expires_at })
}

/// Whether a token of `scope` at `depth` may be delegated in `workflow`: no
/// deeper than it allows, and never a step-up action.
pub fn delegable(
    limits: &Limits<'_>,
    workflow: &str,
    scope: &Scope,
    depth: u32,
) -> Result<(), Refusal> {
    if depth > limits.max_delegation_depth {
        return Err(Refusal::TooDeep {
            depth,
            workflow: workflow.to_string(),
            max: limits.max_delegation_depth,
        });
    }
    if limits.needs_step_up(scope) {
        return Err(Refusal::StepUpNotDelegated {
            action: scope.action.clone(),
            workflow: workflow.to_string(),
        });
    }
    Ok(())
}

impl Delegation {
    /// Whether `redeemer` may redeem the offer at `now`: it is the named
    /// sub-agent, and the offer is neither redeemed nor lapsed. (The task is
    /// judged next, once read.)
    pub fn redeemable(&self, redeemer: &SpiffeId, now: OffsetDateTime) -> Result<(), Refusal> {
        if self.sub_agent != *redeemer {
            return Err(Refusal::NotTheSubAgent {
                delegation: self.id,
            });
        }
        if let Some(at) = self.redeemed_at {
            return Err(Refusal::AlreadyRedeemed {
                delegation: self.id,
                at: Some(at),
            });
        }
        if self.expires_at <= now {
            return Err(Refusal::OfferLapsed {
                delegation: self.id,
                at: Some(self.expires_at),
            });
        }
        Ok(())
    }

    /// When the child token expires, after the policy decision permitted it with
    /// `limits`: the workflow (perhaps tightened since the offer) still allows
    /// the delegation, the task's budget has room (beyond it a deviation), and
    /// at least a second is left of the least of the offer (itself within the
    /// parent's life), the workflow's longest TTL, the task and the sub-agent's
    /// certificate (valid until `cert_valid_until`, Unix seconds).
    pub fn redemption(
        &self,
        task: &Task,
        limits: &Limits<'_>,
        cert_valid_until: i64,
        now: OffsetDateTime,
    ) -> Result<OffsetDateTime, Refusal> {
        delegable(limits, &task.workflow, &self.scope, self.depth)?;
        task.within_budget(limits.max_tokens)?;
        let expires_at = self
            .expires_at
            .min(now + limits.max_token_ttl)
            .min(task.expires_at)
            .min(OffsetDateTime::from_unix_timestamp(cert_valid_until).unwrap_or(now));
        if expires_at - now < time::Duration::SECOND {
            return Err(Refusal::OfferNoTimeLeft {
                delegation: self.id,
            });
        }
        Ok(expires_at)
    }
}

#[cfg(test)]
mod tests;
