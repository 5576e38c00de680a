//! Delegation (RFC 8693 semantics): a token's holder offers a sub-agent a token no
//! wider than its own; the sub-agent redeems the offer over its own mTLS
//! connection, so the child token is bound to the sub-agent's certificate.
//! Revoking an ancestor token, the task or any agent of the chain revokes it.
use super::*;
use crate::store::Redeem;

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
    /// Records an offer of a narrower token to a sub-agent. Refused, each with its
    /// reason and an audit record: a parent token that is not the caller's own
    /// (another agent's is a deviation), revoked or expired; any widening of
    /// audience, action, resource or lifetime (outside the task's declared scopes
    /// it is a deviation); a chain deeper than the workflow allows; a step-up
    /// action; a sub-agent that policy does not permit for this workflow.
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
        .ok_or_else(|| BrokerError::InvalidArgument {
            field: "parent_token",
            why: "is not recorded by this broker".into(),
        })?;
        let task = self.get_task(record.task).await?;
        let deny = |reason: &str| {
            AuditEvent::new(now, caller.id.as_str(), Action::DelegationDenied)
                .task(task.id)
                .agent(caller.id.as_str())
                .jti(record.jti)
                .reason(reason)
                .detail(json!({
                    "sub_agent": req.sub_agent.as_str(),
                    "scope": req.scope,
                    "requested_ttl_seconds": req.ttl.as_secs(),
                }))
        };
        let refuse = |err: BrokerError| async {
            self.audit_denial(deny(&err.to_string())).await;
            err
        };
        // The workflow's response to a deviation (revoking the task when the
        // workflow is gone: fail closed).
        let deviation_response = || {
            self.policy
                .workflow(&task.workflow)
                .map_or(DeviationResponse::RevokeTask, |w| w.deviation)
        };
        if record.agent != caller.id.as_str() {
            // Someone else's token: stolen or replayed. A deviation of its task.
            let reason = format!(
                "deviation: {} presented a token bound to {} to delegate it",
                caller.id, record.agent
            );
            return Err(self
                .respond_to_deviation(caller, &task, deviation_response(), reason, &deny)
                .await);
        }
        if record.cert_thumbprint != caller.thumbprint {
            return Err(refuse(BrokerError::PermissionDenied(
                "parent_token is bound to another certificate of yours; mint a new token with the current one".into(),
            ))
            .await);
        }
        if record.revoked_at.is_some() {
            return Err(refuse(BrokerError::FailedPrecondition(format!(
                "parent token {} was revoked",
                record.jti
            )))
            .await);
        }
        if let Some(err) = self.not_mintable(&task, now) {
            return Err(refuse(err).await);
        }
        let agents = [
            caller.id.as_str(),
            task.agent.as_str(),
            req.sub_agent.as_str(),
        ];
        self.refuse_if_frozen(&agents, &task.workflow, &deny)
            .await?;
        if req.sub_agent == caller.id {
            return Err(refuse(BrokerError::InvalidArgument {
                field: "sub_agent",
                why: "is the caller; a token is not delegated to its own holder".into(),
            })
            .await);
        }
        let in_chain = req.sub_agent.as_str() == parent.sub
            || parent.actors().any(|a| a == req.sub_agent.as_str());
        if in_chain {
            return Err(refuse(BrokerError::PermissionDenied(format!(
                "{} is already in this token's delegation chain",
                req.sub_agent
            )))
            .await);
        }
        if !req.sub_agent_is_agent {
            return Err(refuse(BrokerError::PermissionDenied(format!(
                "{} does not hold the agent role, so it could never redeem a delegation",
                req.sub_agent
            )))
            .await);
        }
        if let Some(widening) = widening(&record.scope, &req.scope) {
            if task.covering_scope(&req.scope).is_none() {
                let reason = format!(
                    "deviation: delegated scope {} is not covered by the scopes declared for task {}",
                    req.scope, task.id
                );
                return Err(self
                    .respond_to_deviation(caller, &task, deviation_response(), reason, &deny)
                    .await);
            }
            return Err(refuse(BrokerError::PermissionDenied(widening)).await);
        }
        let expires_at = now + req.ttl;
        if expires_at > record.expires_at {
            return Err(refuse(BrokerError::PermissionDenied(format!(
                "ttl_seconds: {} s would outlive the parent token, which expires in {} s",
                req.ttl.as_secs(),
                (record.expires_at - now).whole_seconds()
            )))
            .await);
        }
        let Some(limits) = self.policy.workflow(&task.workflow) else {
            let reason = format!("workflow {} is no longer defined", quote(&task.workflow));
            return Err(refuse(BrokerError::PermissionDenied(reason)).await);
        };
        let depth = record.depth + 1;
        if let Some(why) = not_delegable(&limits, &task.workflow, &req.scope, depth) {
            return Err(refuse(BrokerError::PermissionDenied(why)).await);
        }
        let input = MintInput {
            agent: &req.sub_agent,
            task: &task,
            scope: &req.scope,
            requested_ttl: req.ttl,
            delegation_depth: depth,
            now,
        };
        let permit = self.permit_mint(&input, &deny).await?;
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
            delegator: caller.id.to_string(),
            sub_agent: req.sub_agent.to_string(),
            scope: req.scope.clone(),
            depth,
            act,
            ancestors,
            created_at: now,
            expires_at,
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
                "depth": depth,
                "expires_at": expires_at.unix_timestamp(),
                "policies": permit.policies,
            }));
        if !self
            .store
            .insert_delegation(&delegation, MAX_OPEN_OFFERS, &audit)
            .await?
        {
            return Err(refuse(BrokerError::ResourceExhausted(format!(
                "parent token {} already has {MAX_OPEN_OFFERS} open delegations; wait until they are redeemed or lapse",
                record.jti
            )))
            .await);
        }
        Ok(Delegated {
            id: delegation.id,
            expires_at,
            depth,
        })
    }

    /// The named sub-agent redeems a delegation: once, while the offer stands, no
    /// ancestor token is revoked (checked in the redemption's transaction) and the
    /// task is active and within budget. The child token is bound to the caller's
    /// certificate.
    pub async fn redeem(&self, caller: &Caller, id: Uuid) -> Result<Minted, BrokerError> {
        let now = self.now();
        let offer = self
            .store
            .get_delegation(id)
            .await?
            .ok_or_else(|| BrokerError::NotFound(format!("delegation {id} not found")))?;
        let deny = |reason: &str| {
            AuditEvent::new(now, caller.id.as_str(), Action::RedeemDenied)
                .task(offer.task)
                .agent(caller.id.as_str())
                .jti(offer.parent_jti)
                .reason(reason)
                .detail(
                    json!({"delegation": id, "sub_agent": offer.sub_agent, "scope": offer.scope}),
                )
        };
        let refuse = |err: BrokerError| async {
            self.audit_denial(deny(&err.to_string())).await;
            err
        };
        if offer.sub_agent != caller.id.as_str() {
            return Err(refuse(BrokerError::PermissionDenied(format!(
                "delegation {id} names another sub-agent; only it may redeem it"
            )))
            .await);
        }
        if let Some(at) = offer.redeemed_at {
            return Err(refuse(BrokerError::FailedPrecondition(format!(
                "delegation {id} was already redeemed at {}",
                rfc3339(at)
            )))
            .await);
        }
        if offer.expires_at <= now {
            return Err(refuse(BrokerError::FailedPrecondition(format!(
                "delegation {id} lapsed at {}",
                rfc3339(offer.expires_at)
            )))
            .await);
        }
        let task = self.get_task(offer.task).await?;
        if let Some(err) = self.not_mintable(&task, now) {
            return Err(refuse(err).await);
        }
        let agents = [
            caller.id.as_str(),
            task.agent.as_str(),
            offer.delegator.as_str(),
        ];
        self.refuse_if_frozen(&agents, &task.workflow, &deny)
            .await?;
        let requested = Duration::try_from(offer.expires_at - now).unwrap_or_default();
        // Policy decides again: it may have changed since the offer.
        let input = MintInput {
            agent: &caller.id,
            task: &task,
            scope: &offer.scope,
            requested_ttl: requested,
            delegation_depth: offer.depth,
            now,
        };
        let permit = self.permit_mint(&input, &deny).await?;
        let limits = &permit.limits;
        // The workflow may have been tightened since the offer.
        if let Some(why) = not_delegable(limits, &task.workflow, &offer.scope, offer.depth) {
            return Err(refuse(BrokerError::PermissionDenied(why)).await);
        }
        if task.tokens_minted >= limits.max_tokens {
            return Err(self.over_budget(caller, &task, limits, deny).await);
        }
        // Never past the offer (itself within the parent's life), the
        // workflow's longest TTL, the task, nor the sub-agent's certificate.
        let expires_at = offer
            .expires_at
            .min(now + limits.max_token_ttl)
            .min(task.expires_at)
            .min(OffsetDateTime::from_unix_timestamp(caller.valid_until).unwrap_or(now));
        if expires_at - now < time::Duration::SECOND {
            return Err(refuse(BrokerError::FailedPrecondition(format!(
                "delegation {id} or the caller's certificate has less than a second left"
            )))
            .await);
        }
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
        let outcome = self
            .store
            .redeem_delegation(id, &record, limits.max_tokens, &audit)
            .await?;
        let err = match outcome {
            Redeem::Redeemed => {
                self.metrics.token_issued("delegated");
                return Ok(Minted {
                    token,
                    jti: record.jti,
                    expires_at,
                    ttl: Duration::try_from(expires_at - now).unwrap_or_default(),
                });
            }
            Redeem::NotFound => BrokerError::NotFound(format!("delegation {id} not found")),
            Redeem::AlreadyRedeemed => {
                BrokerError::FailedPrecondition(format!("delegation {id} was already redeemed"))
            }
            Redeem::Expired => BrokerError::FailedPrecondition(format!("delegation {id} lapsed")),
            Redeem::ParentRevoked => BrokerError::FailedPrecondition(format!(
                "the parent token {} of delegation {id} (or a token above it) was revoked",
                offer.parent_jti
            )),
            Redeem::Refused(refusal) => {
                return Err(self
                    .task_refused(caller, &task, refusal, limits, deny)
                    .await);
            }
        };
        Err(refuse(err).await)
    }
}

/// Why a token of `scope` at `depth` cannot be delegated in a workflow with
/// `limits`, if it cannot.
fn not_delegable(
    limits: &WorkflowLimits,
    workflow: &str,
    scope: &Scope,
    depth: u32,
) -> Option<String> {
    if depth > limits.max_delegation_depth {
        return Some(format!(
            "delegation depth {depth} exceeds workflow {}'s limit of {}",
            quote(workflow),
            limits.max_delegation_depth
        ));
    }
    if limits.step_up_actions.contains(&scope.action) {
        return Some(format!(
            "action {} needs step-up approval in workflow {}; step-up actions are not delegated",
            quote(&scope.action),
            quote(workflow)
        ));
    }
    None
}

/// How `asked` is wider than `held`, if it is.
fn widening(held: &Scope, asked: &Scope) -> Option<String> {
    if asked.audience != held.audience {
        return Some(format!(
            "scope.audience: {} is not the parent token's audience {}",
            quote(&asked.audience),
            quote(&held.audience)
        ));
    }
    if asked.action != held.action {
        return Some(format!(
            "scope.action: {} is not the parent token's action {}",
            quote(&asked.action),
            quote(&held.action)
        ));
    }
    if !held.covers(asked) {
        return Some(format!(
            "scope.resource: {} is not within the parent token's resource {}",
            quote(&asked.resource),
            quote(&held.resource)
        ));
    }
    None
}
