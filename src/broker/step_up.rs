//! Step-up approval: a mint of a high-impact action waits for a security team's
//! decision. One approval is good for one token; asking again while an approval
//! is pending or after it was denied is refused without a new approval, and more
//! than the workflow allows is a deviation.
use super::*;
use crate::domain::ApprovalState;
use crate::store::{ApprovalFilter, Decide, Spend};

impl Broker {
    /// The step-up branch of a permitted mint: spend a standing approval, refuse a
    /// repeat of a pending or denied one, or open a new one.
    pub(super) async fn step_up(
        &self,
        caller: &Caller,
        task: &Task,
        req: &MintRequest,
        ttl: Duration,
        permit: &Permit,
        deny: impl Fn(&str) -> AuditEvent,
    ) -> Result<Mint, BrokerError> {
        // No approval is opened, nor spent, for a frozen agent or workflow.
        let holders = [caller.id.as_str(), task.agent.as_str()];
        self.refuse_if_frozen(&holders, &task.workflow, &deny)
            .await?;
        // Twice at most: a decision made while a repeat was being counted sends
        // the request round again, to spend or to be refused as it now stands.
        for _ in 0..2 {
            let now = self.now();
            let approval = match self
                .store
                .standing_approval(task.id, caller.id.as_str(), &req.scope, now)
                .await?
            {
                Some(a) => a,
                None => match self.open_approval(caller, task, req, ttl, permit).await? {
                    Some(opened) => return Ok(Mint::Pending(Box::new(opened))),
                    // A concurrent request opened one first: this one meets it.
                    None => continue,
                },
            };
            match approval.state_at(now) {
                ApprovalState::Approved => {
                    return self
                        .spend(caller, task, req, ttl, permit, &approval, &deny)
                        .await;
                }
                ApprovalState::Pending | ApprovalState::Denied => {
                    if let Some(err) = self
                        .refuse_repeat(caller, task, &permit.limits, &approval, &deny)
                        .await
                    {
                        return Err(err);
                    }
                }
                other => {
                    return Err(BrokerError::Internal(format!(
                        "approval {} is {other}, which cannot stand",
                        approval.id
                    )));
                }
            }
        }
        Err(BrokerError::FailedPrecondition(format!(
            "the step-up approval for {} changed while it was asked for; ask again",
            req.scope
        )))
    }

    /// Opens a pending approval, unless one stands already (`None`).
    async fn open_approval(
        &self,
        caller: &Caller,
        task: &Task,
        req: &MintRequest,
        ttl: Duration,
        permit: &Permit,
    ) -> Result<Option<Approval>, BrokerError> {
        let now = self.now();
        let approval = Approval {
            id: Uuid::new_v4(),
            task: task.id,
            requester: caller.id.to_string(),
            workflow: task.workflow.clone(),
            objective: task.objective.clone(),
            scope: req.scope.clone(),
            ttl,
            state: ApprovalState::Pending,
            created_at: now,
            expires_at: (now + self.approval_ttl).min(task.expires_at),
            decided_by: None,
            decided_at: None,
            decision_reason: None,
            used_jti: None,
        };
        let audit = AuditEvent::new(now, caller.id.as_str(), Action::ApprovalRequested)
            .task(task.id)
            .agent(caller.id.as_str())
            .detail(json!({
                "approval": approval.id,
                "scope": req.scope,
                "ttl_seconds": ttl.as_secs(),
                "workflow": task.workflow,
                "objective": task.objective,
                "expires_at": approval.expires_at.unix_timestamp(),
                "policies": permit.policies,
            }));
        if !self.store.insert_approval(&approval, &audit).await? {
            return Ok(None);
        }
        tracing::info!(caller = %caller.id, task = %task.id, approval = %approval.id, scope = %req.scope, "step-up approval requested");
        Ok(Some(approval))
    }

    /// Mints the one token an approval is good for.
    #[allow(clippy::too_many_arguments)]
    async fn spend(
        &self,
        caller: &Caller,
        task: &Task,
        req: &MintRequest,
        ttl: Duration,
        permit: &Permit,
        approval: &Approval,
        deny: impl Fn(&str) -> AuditEvent,
    ) -> Result<Mint, BrokerError> {
        let now = self.now();
        // No longer than the security team saw asked for.
        let ttl = ttl.min(approval.ttl);
        let (token, record) = self.sign(caller, task, &req.scope, now, now + ttl, None)?;
        let mut audit = self.minted_audit(caller, task, &record, req, &permit.policies);
        audit.detail["approval"] = json!(approval.id);
        audit.detail["approved_by"] = json!(approval.decided_by);
        match self
            .store
            .spend_approval(approval.id, &record, permit.limits.max_tokens, &audit)
            .await?
        {
            Spend::Spent => {
                self.metrics.token_issued("approved");
                Ok(Mint::Minted(Minted {
                    token,
                    jti: record.jti,
                    expires_at: record.expires_at,
                    ttl,
                }))
            }
            Spend::NotApproved(a) => {
                let reason = format!(
                    "approval {} is {} now; it was spent or lapsed while this request was made",
                    a.id,
                    a.state_at(now)
                );
                self.audit_denial(deny(&reason)).await;
                Err(BrokerError::FailedPrecondition(reason))
            }
            Spend::Refused(refusal) => Err(self
                .task_refused(caller, task, refusal, &permit.limits, deny)
                .await),
        }
    }

    /// Refuses a step-up request whose approval is pending or denied, counting it;
    /// past the workflow's allowance the repeat is a deviation. `None` when the
    /// approval was decided meanwhile (nothing counted).
    async fn refuse_repeat(
        &self,
        caller: &Caller,
        task: &Task,
        limits: &WorkflowLimits,
        approval: &Approval,
        deny: impl Fn(&str) -> AuditEvent,
    ) -> Option<BrokerError> {
        let pending = approval.state == ApprovalState::Pending;
        let why = if pending {
            format!(
                "approval {} for {} is still pending; wait for the decision with AwaitApproval instead of asking again",
                approval.id, approval.scope
            )
        } else {
            format!(
                "approval {} for {} was denied by {}: {}; asking again does not reopen it",
                approval.id,
                approval.scope,
                approval.decided_by.as_deref().unwrap_or("?"),
                approval.decision_reason.as_deref().unwrap_or("")
            )
        };
        let mut event = deny(&why);
        event.action = Action::StepUpRefused;
        event.detail["approval"] = json!(approval.id);
        let refusals = match self
            .store
            .count_step_up_refusal(task.id, approval.id, self.now(), &event)
            .await
        {
            Ok(Some(n)) => {
                // Written with its count, not through `audit_denial`.
                self.metrics.denied(Action::StepUpRefused.as_str());
                n
            }
            Ok(None) => return None,
            Err(e) => return Some(e.into()),
        };
        if refusals > limits.step_up_retries {
            let reason = format!(
                "deviation: task {} repeated refused step-up requests {refusals} times; workflow {} allows {}",
                task.id,
                quote(&task.workflow),
                limits.step_up_retries
            );
            return Some(
                self.respond_to_deviation(caller, task, limits.deviation, reason, deny)
                    .await,
            );
        }
        Some(if pending {
            BrokerError::FailedPrecondition(why)
        } else {
            BrokerError::PermissionDenied(why)
        })
    }

    /// Waits up to `wait` for a decision on the caller's approval. Approved, it
    /// mints the approval's one token (through the whole mint path, so policy,
    /// task and budget are checked again) and returns it with the approval.
    pub async fn await_approval(
        &self,
        caller: &Caller,
        id: Uuid,
        wait: Duration,
    ) -> Result<(Approval, Option<Minted>), BrokerError> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            // Registered before the read, so a decision between the read and the
            // wait still wakes it.
            let decided = self.hub.approvals().notified();
            tokio::pin!(decided);
            decided.as_mut().enable();
            let approval = self
                .store
                .get_approval(id)
                .await?
                .ok_or_else(|| BrokerError::NotFound(format!("approval {id} not found")))?;
            if approval.requester != caller.id.as_str() {
                let why = format!("approval {id} was requested by another agent");
                self.audit_denial(
                    AuditEvent::new(self.now(), caller.id.as_str(), Action::CallDenied)
                        .task(approval.task)
                        .agent(caller.id.as_str())
                        .reason(&why)
                        .detail(json!({"method": "mayfly.v1.TokenService/AwaitApproval", "approval": id})),
                )
                .await;
                return Err(BrokerError::PermissionDenied(why));
            }
            let now = self.now();
            match approval.state_at(now) {
                ApprovalState::Pending => {
                    // A decision can no longer help a task that ended.
                    let task = self.get_task(approval.task).await?;
                    if let Some(err) = self.not_mintable(&task, now) {
                        return Err(BrokerError::FailedPrecondition(format!(
                            "{err}; approval {id} can no longer be used"
                        )));
                    }
                    let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                    if left.is_zero() {
                        return Ok((approval, None));
                    }
                    let lapses = Duration::try_from(approval.expires_at - now).unwrap_or_default();
                    tokio::select! {
                        _ = decided => {}
                        _ = tokio::time::sleep(self.notice_poll.min(left).min(lapses.max(Duration::from_millis(1)))) => {}
                    }
                }
                ApprovalState::Approved => {
                    let req = MintRequest {
                        task: approval.task,
                        scope: approval.scope.clone(),
                        ttl: approval.ttl,
                    };
                    return match self.mint(caller, req).await? {
                        Mint::Minted(m) => {
                            let spent = Approval {
                                state: ApprovalState::Used,
                                used_jti: Some(m.jti),
                                ..approval
                            };
                            Ok((spent, Some(m)))
                        }
                        Mint::Pending(a) => Ok((*a, None)),
                    };
                }
                _ => return Ok((approval, None)),
            }
        }
    }

    /// A security-team principal approves or denies a pending approval. Never the
    /// requester, never an identity that holds the agent role; of two deciders
    /// racing, exactly one wins and the other is told who did.
    pub async fn decide_approval(
        &self,
        caller: &Caller,
        caller_is_agent: bool,
        id: Uuid,
        approve: bool,
        reason: String,
    ) -> Result<Approval, BrokerError> {
        let now = self.now();
        let approval = self
            .store
            .get_approval(id)
            .await?
            .ok_or_else(|| BrokerError::NotFound(format!("approval {id} not found")))?;
        let refuse = |why: &str| {
            AuditEvent::new(now, caller.id.as_str(), Action::ApprovalDecisionDenied)
                .task(approval.task)
                .agent(&approval.requester)
                .reason(why)
                .detail(json!({"approval": id, "approve": approve, "requested_reason": reason}))
        };
        let task = self.get_task(approval.task).await?;
        let refused = if caller_is_agent {
            Some(format!(
                "{} holds the agent role; agents never decide step-up approvals",
                caller.id
            ))
        } else if approval.requester == caller.id.as_str() {
            Some(format!(
                "{} requested approval {id}; nobody decides their own request",
                caller.id
            ))
        } else {
            None
        };
        if let Some(why) = refused {
            self.audit_denial(refuse(&why)).await;
            return Err(BrokerError::PermissionDenied(why));
        }
        if let Some(err) = self.not_mintable(&task, now) {
            let why = format!("{err}; its approvals can no longer be used");
            self.audit_denial(refuse(&why)).await;
            return Err(BrokerError::FailedPrecondition(why));
        }
        let action = if approve {
            Action::ApprovalGranted
        } else {
            Action::ApprovalRejected
        };
        let audit = AuditEvent::new(now, caller.id.as_str(), action)
            .task(approval.task)
            .agent(&approval.requester)
            .reason(&reason)
            .detail(json!({"approval": id, "scope": approval.scope}));
        match self
            .store
            .decide_approval(id, approve, caller.id.as_str(), &reason, now, &audit)
            .await?
        {
            Decide::Decided(a) => {
                self.hub.approval_decided();
                tracing::warn!(caller = %caller.id, approval = %id, task = %a.task, state = %a.state, "step-up approval decided");
                Ok(a)
            }
            Decide::NotPending(a) => {
                let why = match a.state_at(now) {
                    ApprovalState::Expired => format!(
                        "approval {id} lapsed at {} without a decision",
                        rfc3339(a.expires_at)
                    ),
                    state => format!(
                        "approval {id} was already {state} by {} at {}",
                        a.decided_by.as_deref().unwrap_or("?"),
                        a.decided_at.map(rfc3339).unwrap_or_default()
                    ),
                };
                self.audit_denial(refuse(&why)).await;
                Err(BrokerError::FailedPrecondition(why))
            }
            Decide::NotFound => Err(BrokerError::NotFound(format!("approval {id} not found"))),
        }
    }

    pub async fn list_approvals(
        &self,
        filter: &ApprovalFilter,
    ) -> Result<Vec<Approval>, BrokerError> {
        Ok(self.store.list_approvals(filter).await?)
    }
}
