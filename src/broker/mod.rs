//! The use cases: open, complete and read tasks; mint; revoke; introspect; sweep
//! expired tasks. Callers arrive authenticated and role-checked; requests arrive
//! parsed into domain types.
use crate::audit::{Action, AuditEvent};
use crate::clock::{Clock, to_micros};
use crate::domain::SpiffeId;
use crate::domain::text::quote;
use crate::domain::{Approval, Delegation, TokenRecord};
use crate::domain::{Event, Revocation, Target, Trigger};
use crate::domain::{Scope, Task, TaskId, TaskState, grant_ttl};
use crate::identity::{Caller, Role};
use crate::policy::{
    Denied, DeviationResponse, MintInput, Permit, Policy, StartInput, WorkflowLimits,
};
use crate::revocation::Hub;
use crate::store::{EndOutcome, Refusal, Revoked, Store, StoreError, TaskFilter, TokenFilter};
use crate::token::{Claims, Confirmation, KeyError, Keyring, Signed};
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;
use time::OffsetDateTime;
use tracing::{error, warn};
use uuid::Uuid;

mod audit;
mod freeze;
mod handoffs;
mod keys;
mod step_up;
mod watch;

pub use audit::{AgentAccess, AuditCheck};
pub use handoffs::{DelegateRequest, Delegated, MAX_OPEN_OFFERS};

/// How long after its expiry a token can still be reported as misused.
const MISUSE_REPORT_WINDOW: i64 = 3600;

/// What a verifier saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MisuseKind {
    /// Presented by a client certificate other than the one it is bound to.
    BindingMismatch,
    /// Used for something its scope does not cover.
    OutOfScope,
}

impl MisuseKind {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "binding_mismatch" => Some(MisuseKind::BindingMismatch),
            "out_of_scope" => Some(MisuseKind::OutOfScope),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            MisuseKind::BindingMismatch => "binding_mismatch",
            MisuseKind::OutOfScope => "out_of_scope",
        }
    }
}

/// A time as people and tools read it in messages: RFC 3339, UTC.
fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| t.unix_timestamp().to_string())
}

/// The actor named when the broker itself acts (the expiry sweeper).
pub const SYSTEM_ACTOR: &str = "mayfly";

/// Why a use case refused; `error.rs` turns each into a gRPC status.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("{field}: {why}")]
    InvalidArgument { field: &'static str, why: String },
    #[error("{0}")]
    PermissionDenied(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    ResourceExhausted(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Keys(#[from] KeyError),
    #[error("{0}")]
    Internal(String),
}

/// Overdue tasks read per page by the expiry sweep.
const SWEEP_PAGE: u32 = 100;

/// What one expiry sweep did.
#[derive(Debug, Default)]
pub struct Sweep {
    /// Tasks moved to `expired`, their tokens revoked.
    pub ended: usize,
    /// Tasks that could not be ended (each logged with its id); still active.
    pub failed: usize,
    /// Why the sweep stopped before the end (the store is unavailable), if it did.
    pub stopped: Option<BrokerError>,
}

pub struct StartTask {
    pub agent: SpiffeId,
    pub workflow: String,
    pub objective: String,
    pub scopes: Vec<Scope>,
    pub duration: Duration,
}

pub struct MintRequest {
    pub task: TaskId,
    pub scope: Scope,
    pub ttl: Duration,
}

pub struct Minted {
    pub token: String,
    pub jti: Uuid,
    pub expires_at: OffsetDateTime,
    pub ttl: Duration,
}

/// What a mint request gets.
pub enum Mint {
    Minted(Minted),
    /// The action needs a security team's approval: this one is pending.
    Pending(Box<Approval>),
}

pub struct Broker {
    store: Arc<dyn Store>,
    policy: Arc<dyn Policy>,
    clock: Arc<dyn Clock>,
    hub: Hub,
    keys: Keyring,
    issuer: String,
    key_heartbeat: Duration,
    metrics: Arc<crate::metrics::Metrics>,
    /// How long a step-up approval stands.
    approval_ttl: Duration,
    /// How often a wait for an approval decision re-reads the store regardless.
    /// Decisions wake waiters at once (on this replica directly, on others
    /// through the store's notices); this bounds the wait when notices are lost.
    notice_poll: Duration,
}

impl Broker {
    /// Generates this process's signing key and registers its public half.
    pub async fn new(
        store: Arc<dyn Store>,
        policy: Arc<dyn Policy>,
        clock: Arc<dyn Clock>,
        issuer: String,
        key_heartbeat: Duration,
    ) -> Result<Self, BrokerError> {
        let keys = Keyring::generate(clock.now())?;
        let latest = store.last_revocation_seq().await?;
        let broker = Broker {
            keys,
            store,
            policy,
            clock,
            hub: Hub::new(latest),
            issuer,
            key_heartbeat,
            metrics: Arc::new(crate::metrics::Metrics::new()),
            approval_ttl: crate::domain::DEFAULT_APPROVAL_TTL,
            notice_poll: Duration::from_secs(2),
        };
        broker.renew_key().await?;
        broker.refresh_keys().await?;
        Ok(broker)
    }

    /// Sets how long a step-up approval stands (`tasks.approval_ttl`).
    pub fn with_approval_ttl(mut self, ttl: Duration) -> Self {
        self.approval_ttl = ttl;
        self
    }

    /// Sets the safety-net re-read of approval waits (`revocation.poll_interval`).
    pub fn with_notice_poll(mut self, poll: Duration) -> Self {
        self.notice_poll = poll;
        self
    }

    /// The time, at the precision the store keeps.
    fn now(&self) -> OffsetDateTime {
        to_micros(self.clock.now())
    }

    pub fn metrics(&self) -> &crate::metrics::Metrics {
        &self.metrics
    }

    pub fn hub(&self) -> &Hub {
        &self.hub
    }

    pub fn kid(&self) -> String {
        self.keys.kid()
    }

    /// Records a refusal in one write. A failed write is logged and otherwise
    /// ignored: the caller is refused either way, so the refusal never turns into
    /// success or into a different error because the trail could not be written.
    async fn audit_denial(&self, event: AuditEvent) {
        self.metrics.denied(event.action.as_str());
        if let Err(error) = self.store.append_audit(&event).await {
            warn!(%error, action = event.action.as_str(), "could not record a denial in the audit trail");
        }
    }

    /// Refuses `caller` the call `method` (its full gRPC name) because it holds
    /// none of the roles in `required`, and records the refusal: an identity probing
    /// calls it may not make is exactly what the security team needs to see.
    pub async fn refuse_role(
        &self,
        caller: &Caller,
        method: &'static str,
        required: &[Role],
    ) -> BrokerError {
        let names: Vec<String> = required.iter().map(|r| r.to_string()).collect();
        let reason = format!(
            "{} does not hold the {} role this call requires",
            caller.id,
            names.join(" or ")
        );
        self.audit_denial(
            AuditEvent::new(self.now(), caller.id.as_str(), Action::CallDenied)
                .reason(&reason)
                .detail(json!({"method": method, "required_roles": names})),
        )
        .await;
        BrokerError::PermissionDenied(reason)
    }

    // ---- tasks -------------------------------------------------------------------

    pub async fn start_task(&self, caller: &Caller, req: StartTask) -> Result<Task, BrokerError> {
        let now = self.now();
        let decision = self.policy.decide_start(&StartInput {
            orchestrator: &caller.id,
            agent: &req.agent,
            workflow: &req.workflow,
            objective: &req.objective,
            scopes: &req.scopes,
            duration: req.duration,
            now,
        });
        let permit = match decision {
            Ok(p) => p,
            Err(Denied { reason, policies }) => {
                self.audit_denial(
                    AuditEvent::new(now, caller.id.as_str(), Action::TaskOpenDenied)
                        .agent(req.agent.as_str())
                        .reason(&reason)
                        .detail(json!({
                            "workflow": req.workflow,
                            "scopes": req.scopes,
                            "objective": req.objective,
                            "policies": policies,
                        })),
                )
                .await;
                return Err(BrokerError::PermissionDenied(reason));
            }
        };
        let task = Task {
            id: TaskId::new(),
            agent: req.agent.to_string(),
            workflow: req.workflow,
            objective: req.objective,
            scopes: req.scopes,
            state: TaskState::Active,
            opened_by: caller.id.to_string(),
            created_at: now,
            expires_at: now + req.duration,
            ended_at: None,
            end_reason: None,
            tokens_minted: 0,
        };
        let audit = AuditEvent::new(now, caller.id.as_str(), Action::TaskOpened)
            .task(task.id)
            .agent(&task.agent)
            .detail(json!({
                "workflow": task.workflow,
                "objective": task.objective,
                "scopes": task.scopes,
                "duration_seconds": req.duration.as_secs(),
                "policies": permit.policies,
            }));
        self.store.insert_task(&task, &audit).await?;
        Ok(task)
    }

    pub async fn complete_task(
        &self,
        caller: &Caller,
        id: TaskId,
    ) -> Result<(Task, Event), BrokerError> {
        let task = self.get_task(id).await?;
        if task.opened_by != caller.id.as_str() {
            let reason = format!(
                "task {id} was opened by {}; only that orchestrator may complete it",
                task.opened_by
            );
            self.audit_denial(
                AuditEvent::new(self.now(), caller.id.as_str(), Action::TaskCompleteDenied)
                    .task(id)
                    .agent(&task.agent)
                    .reason(&reason)
                    .detail(json!({"opened_by": task.opened_by})),
            )
            .await;
            return Err(BrokerError::PermissionDenied(reason));
        }
        self.end_task(
            id,
            TaskState::Completed,
            Trigger::TaskCompleted,
            caller.id.as_str(),
            "task completed".into(),
        )
        .await
        .and_then(|r| match r {
            EndOutcome::Ended { task, revoked } => Ok((*task, revoked.event)),
            EndOutcome::NotActive(state) => Err(BrokerError::FailedPrecondition(format!(
                "task {id} is {state}, not active"
            ))),
            EndOutcome::NotFound => Err(BrokerError::NotFound(format!("task {id} not found"))),
        })
    }

    /// Ends an active task and revokes its tokens, publishing the revocation.
    async fn end_task(
        &self,
        id: TaskId,
        to: TaskState,
        trigger: Trigger,
        actor: &str,
        reason: String,
    ) -> Result<EndOutcome, BrokerError> {
        let now = self.now();
        let action = match to {
            TaskState::Completed => Action::TaskCompleted,
            TaskState::Expired => Action::TaskExpired,
            TaskState::Deviated => Action::TaskDeviated,
            _ => Action::TaskRevoked,
        };
        let revocation = Revocation {
            target: Target::Task(id),
            reason: reason.clone(),
            actor: actor.to_string(),
            trigger,
            at: now,
        };
        let audit = [
            AuditEvent::new(now, actor, action).task(id).reason(&reason),
            AuditEvent::new(now, actor, Action::Revocation)
                .task(id)
                .reason(&reason)
                .detail(json!({"target": "task", "trigger": trigger.as_str()})),
        ];
        let outcome = self.store.end_task(id, to, &revocation, &audit).await?;
        if let EndOutcome::Ended { revoked, .. } = &outcome {
            self.hub.committed(revoked.event.seq);
            self.metrics.revoked(trigger.as_str());
        }
        Ok(outcome)
    }

    pub async fn get_task(&self, id: TaskId) -> Result<Task, BrokerError> {
        self.store
            .get_task(id)
            .await?
            .ok_or_else(|| BrokerError::NotFound(format!("task {id} not found")))
    }

    pub async fn list_tasks(&self, filter: &TaskFilter) -> Result<Vec<Task>, BrokerError> {
        Ok(self.store.list_tasks(filter).await?)
    }

    /// Ends every task past its deadline. One task that cannot be ended (a bad row,
    /// a constraint) is logged with its id and skipped, so it does not shield the
    /// others from expiry; an unavailable store stops the sweep at once, since every
    /// other task would fail the same way. Tasks left active are retried next sweep.
    pub async fn sweep_expired(&self) -> Sweep {
        let now = self.now();
        let mut sweep = Sweep::default();
        let mut after = None;
        loop {
            let page = match self.store.overdue_tasks(now, after, SWEEP_PAGE).await {
                Ok(page) => page,
                Err(e) => {
                    sweep.stopped = Some(e.into());
                    return sweep;
                }
            };
            for &(deadline, id) in &page {
                after = Some((deadline, id));
                let ended = self
                    .end_task(
                        id,
                        TaskState::Expired,
                        Trigger::TaskExpired,
                        SYSTEM_ACTOR,
                        "task passed its deadline".into(),
                    )
                    .await;
                match ended {
                    Ok(EndOutcome::Ended { .. }) => sweep.ended += 1,
                    // Completed, revoked or deviated since it was listed: nothing to do.
                    Ok(EndOutcome::NotActive(_) | EndOutcome::NotFound) => {}
                    Err(e @ BrokerError::Store(StoreError::Unavailable(_))) => {
                        sweep.stopped = Some(e);
                        return sweep;
                    }
                    Err(error) => {
                        error!(task = %id, %error, "could not expire a task past its deadline; it stays active until the next sweep");
                        sweep.failed += 1;
                    }
                }
            }
            if page.len() < SWEEP_PAGE as usize {
                return sweep;
            }
        }
    }

    // ---- tokens ------------------------------------------------------------------

    /// Mints a token, or for a step-up action opens (or spends) an approval.
    pub async fn mint(&self, caller: &Caller, req: MintRequest) -> Result<Mint, BrokerError> {
        let started = std::time::Instant::now();
        let minted = self.mint_inner(caller, req).await;
        if let Ok(Mint::Minted(_)) = &minted {
            self.metrics.mint_took(started.elapsed());
        }
        minted
    }

    async fn mint_inner(&self, caller: &Caller, req: MintRequest) -> Result<Mint, BrokerError> {
        let now = self.now();
        let task = self.get_task(req.task).await?;
        let deny = |reason: &str| {
            AuditEvent::new(now, caller.id.as_str(), Action::MintDenied)
                .task(task.id)
                .agent(caller.id.as_str())
                .reason(reason)
                .detail(json!({"scope": req.scope, "requested_ttl_seconds": req.ttl.as_secs()}))
        };
        if task.agent != caller.id.as_str() {
            let reason = format!("task {} belongs to another agent", task.id);
            self.audit_denial(deny(&reason)).await;
            return Err(BrokerError::PermissionDenied(reason));
        }
        if let Some(err) = self.not_mintable(&task, now) {
            self.audit_denial(deny(&err.to_string())).await;
            return Err(err);
        }
        // A freeze is checked by the token's write itself (and named then, in
        // `task_refused`): no extra round trip on the hot path.
        if task.covering_scope(&req.scope).is_none() {
            // The workflow's limits are read here only: a covered request takes
            // them from its decision's snapshot below, so a mint reads them once.
            let Some(limits) = self.policy.workflow(&task.workflow) else {
                let reason = format!("workflow {} is no longer defined", quote(&task.workflow));
                self.audit_denial(deny(&reason)).await;
                return Err(BrokerError::PermissionDenied(reason));
            };
            let reason = format!(
                "deviation: scope {} is not covered by the scopes declared for task {}",
                req.scope, task.id
            );
            return Err(self
                .respond_to_deviation(caller, &task, limits.deviation, reason, deny)
                .await);
        }
        let input = MintInput {
            agent: &caller.id,
            task: &task,
            scope: &req.scope,
            requested_ttl: req.ttl,
            delegation_depth: 0,
            now,
        };
        let permit = self.permit_mint(&input, &deny).await?;
        // The limits of the snapshot that decided: a reload cannot mix two policy
        // sets into one mint.
        let limits = &permit.limits;
        if task.tokens_minted >= limits.max_tokens {
            return Err(self.over_budget(caller, &task, limits, deny).await);
        }
        // A token bound to a certificate never outlives the certificate.
        let cert_left = Duration::from_secs(
            u64::try_from(caller.valid_until - now.unix_timestamp()).unwrap_or(0),
        );
        let Some(ttl) = grant_ttl(
            req.ttl,
            limits.max_token_ttl,
            task.remaining(now).min(cert_left),
        ) else {
            let reason = format!(
                "task {} or the caller's certificate has less than a second left",
                task.id
            );
            self.audit_denial(deny(&reason)).await;
            return Err(BrokerError::FailedPrecondition(reason));
        };
        if limits.step_up_actions.contains(&req.scope.action) {
            return self.step_up(caller, &task, &req, ttl, &permit, deny).await;
        }
        let (token, record) = self.sign(caller, &task, &req.scope, now, now + ttl, None)?;
        let audit = self.minted_audit(caller, &task, &record, &req, &permit.policies);
        if let Err(refusal) = self
            .store
            .insert_token(&record, limits.max_tokens, &audit)
            .await?
        {
            return Err(self
                .task_refused(caller, &task, refusal, limits, deny)
                .await);
        }
        self.metrics.token_issued("direct");
        Ok(Mint::Minted(Minted {
            token,
            jti: record.jti,
            expires_at: record.expires_at,
            ttl,
        }))
    }

    /// The audit event of a token about to be recorded.
    fn minted_audit(
        &self,
        caller: &Caller,
        task: &Task,
        record: &TokenRecord,
        req: &MintRequest,
        policies: &[String],
    ) -> AuditEvent {
        let ttl = (record.expires_at - record.issued_at).whole_seconds();
        AuditEvent::new(record.issued_at, caller.id.as_str(), Action::TokenMinted)
            .task(task.id)
            .agent(caller.id.as_str())
            .jti(record.jti)
            .detail(json!({
                "scope": req.scope,
                "requested_ttl_seconds": req.ttl.as_secs(),
                "ttl_seconds": ttl,
                "kid": record.kid,
                "policies": policies,
            }))
    }

    /// Signs a token for `holder` (bound to its certificate) in `task`, and the
    /// record to persist before it is returned. A delegated token carries its
    /// chain: `sub` stays the task's agent, `act` names the holder and every
    /// earlier delegate (RFC 8693).
    fn sign(
        &self,
        holder: &Caller,
        task: &Task,
        scope: &Scope,
        now: OffsetDateTime,
        expires_at: OffsetDateTime,
        delegation: Option<&Delegation>,
    ) -> Result<(String, TokenRecord), BrokerError> {
        let jti = Uuid::new_v4();
        let claims = Claims {
            iss: self.issuer.clone(),
            sub: task.agent.clone(),
            aud: scope.audience.clone(),
            exp: expires_at.unix_timestamp(),
            iat: now.unix_timestamp(),
            nbf: now.unix_timestamp(),
            jti: jti.to_string(),
            scope: scope.claim(),
            task: task.id.to_string(),
            wf: task.workflow.clone(),
            cnf: Confirmation {
                x5t_s256: holder.thumbprint.clone(),
            },
            act: delegation.map(|d| d.act.clone()),
            client_id: holder.id.to_string(),
            depth: delegation.map_or(0, |d| d.depth),
            ancestors: delegation.map_or_else(Vec::new, |d| {
                d.ancestors.iter().map(Uuid::to_string).collect()
            }),
        };
        let Signed { token, kid } = self.keys.sign(&claims)?;
        Ok((
            token,
            TokenRecord {
                jti,
                task: task.id,
                agent: holder.id.to_string(),
                workflow: task.workflow.clone(),
                scope: scope.clone(),
                kid,
                cert_thumbprint: holder.thumbprint.clone(),
                issued_at: now,
                expires_at,
                revoked_at: None,
                parent: delegation.map(|d| d.parent_jti),
                depth: delegation.map_or(0, |d| d.depth),
            },
        ))
    }

    /// A token write the store refused: the task changed after it was read, or a
    /// freeze came in between. Out of budget is a deviation; anything else is
    /// refused as the checks before the write refuse it.
    async fn task_refused(
        &self,
        caller: &Caller,
        task: &Task,
        refusal: Refusal,
        limits: &WorkflowLimits,
        deny: impl Fn(&str) -> AuditEvent,
    ) -> BrokerError {
        let err = match refusal {
            Refusal::OutOfBudget => return self.over_budget(caller, task, limits, deny).await,
            Refusal::Frozen => {
                let holders = [caller.id.as_str(), task.agent.as_str()];
                if let Err(e) = self.refuse_if_frozen(&holders, &task.workflow, &deny).await {
                    return e;
                }
                // Lifted again since the write.
                BrokerError::FailedPrecondition(format!(
                    "task {} changed while minting; retry",
                    task.id
                ))
            }
            Refusal::NotActive(state) => {
                BrokerError::FailedPrecondition(format!("task {} is {state}, not active", task.id))
            }
            Refusal::PastDeadline => {
                BrokerError::FailedPrecondition(format!("task {} passed its deadline", task.id))
            }
            Refusal::NotOwner => {
                BrokerError::PermissionDenied(format!("task {} belongs to another agent", task.id))
            }
            Refusal::NoTask => return BrokerError::NotFound(format!("task {} not found", task.id)),
        };
        self.audit_denial(deny(&err.to_string())).await;
        err
    }

    /// The policy decision on a token for `input.agent`; a denial is audited with
    /// the policies that decided it. For a sub-agent the reason names it.
    async fn permit_mint(
        &self,
        input: &MintInput<'_>,
        deny: impl Fn(&str) -> AuditEvent,
    ) -> Result<Permit, BrokerError> {
        let Denied { reason, policies } = match self.policy.decide_mint(input) {
            Ok(p) => return Ok(p),
            Err(d) => d,
        };
        let reason = match input.delegation_depth {
            0 => reason,
            _ => format!("sub-agent {}: {reason}", input.agent),
        };
        let mut event = deny(&reason);
        event.detail["policies"] = json!(policies);
        self.audit_denial(event).await;
        Err(BrokerError::PermissionDenied(reason))
    }

    fn not_mintable(&self, task: &Task, now: OffsetDateTime) -> Option<BrokerError> {
        if task.state != TaskState::Active {
            return Some(BrokerError::FailedPrecondition(format!(
                "task {} is {}, not active",
                task.id, task.state
            )));
        }
        if task.expires_at <= now {
            return Some(BrokerError::FailedPrecondition(format!(
                "task {} passed its deadline",
                task.id
            )));
        }
        None
    }

    async fn over_budget(
        &self,
        caller: &Caller,
        task: &Task,
        limits: &WorkflowLimits,
        deny: impl Fn(&str) -> AuditEvent,
    ) -> BrokerError {
        let reason = format!(
            "deviation: task {} exceeded its budget of {} tokens",
            task.id, limits.max_tokens
        );
        if limits.deviation == DeviationResponse::Deny {
            self.audit_denial(deny(&reason)).await;
            return BrokerError::ResourceExhausted(reason);
        }
        match self.deviate(caller, task, reason, deny).await {
            Deviation::Done(reason, _) => BrokerError::ResourceExhausted(reason),
            Deviation::Failed(e) => e,
        }
    }

    /// The workflow's response to a deviation, refused as PERMISSION_DENIED: deny
    /// only, or deny, mark the task deviated and revoke all its tokens.
    async fn respond_to_deviation(
        &self,
        caller: &Caller,
        task: &Task,
        respond: DeviationResponse,
        reason: String,
        deny: impl Fn(&str) -> AuditEvent,
    ) -> BrokerError {
        if respond == DeviationResponse::Deny {
            self.audit_denial(deny(&reason)).await;
            return BrokerError::PermissionDenied(reason);
        }
        self.deviate(caller, task, reason, deny)
            .await
            .into_permission_denied()
    }

    /// The default response to a deviation: deny, mark the task `deviated` and
    /// revoke all its tokens, in one transaction, with the reason.
    async fn deviate(
        &self,
        caller: &Caller,
        task: &Task,
        reason: String,
        deny: impl Fn(&str) -> AuditEvent,
    ) -> Deviation {
        let now = self.now();
        let revocation = Revocation {
            target: Target::Task(task.id),
            reason: reason.clone(),
            actor: caller.id.to_string(),
            trigger: Trigger::Deviation,
            at: now,
        };
        let audit = [
            deny(&reason),
            AuditEvent::new(now, caller.id.as_str(), Action::TaskDeviated)
                .task(task.id)
                .agent(&task.agent)
                .reason(&reason),
            AuditEvent::new(now, caller.id.as_str(), Action::Revocation)
                .task(task.id)
                .reason(&reason)
                .detail(json!({"target": "task", "trigger": Trigger::Deviation.as_str()})),
        ];
        match self
            .store
            .end_task(task.id, TaskState::Deviated, &revocation, &audit)
            .await
        {
            Ok(EndOutcome::Ended { revoked, .. }) => {
                self.hub.committed(revoked.event.seq);
                self.metrics.revoked(Trigger::Deviation.as_str());
                self.metrics.deviated();
                // The refusal was recorded with the deviation, in its transaction.
                self.metrics.denied(audit[0].action.as_str());
                warn!(caller = %caller.id, task = %task.id, %reason, "task deviated; its tokens are revoked");
                Deviation::Done(
                    format!("{reason}; the task is now deviated and its tokens are revoked"),
                    revoked.event.seq,
                )
            }
            Ok(EndOutcome::NotActive(state)) => Deviation::Failed(BrokerError::FailedPrecondition(
                format!("task {} is {state}, not active", task.id),
            )),
            Ok(EndOutcome::NotFound) => {
                Deviation::Failed(BrokerError::NotFound(format!("task {} not found", task.id)))
            }
            Err(e) => Deviation::Failed(e.into()),
        }
    }

    pub async fn list_tokens(&self, filter: &TokenFilter) -> Result<Vec<TokenRecord>, BrokerError> {
        Ok(self.store.list_tokens(filter).await?)
    }

    // ---- revocation --------------------------------------------------------------

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
        // Both the revocation and its refusal are filed under the target, so a
        // query by task, agent or token finds either.
        let about = |event: AuditEvent| match &target {
            Target::Task(t) => event.task(*t),
            Target::Agent(a) => event.agent(a.as_str()),
            Target::Token(j) => event.jti(*j),
            Target::Workflow(_) | Target::All => event,
        };
        let audit = about(
            AuditEvent::new(now, caller.id.as_str(), Action::Revocation)
                .reason(&reason)
                .detail(
                    json!({"target": target.kind(), "value": target.value(), "trigger": "admin"}),
                ),
        );
        let Some(revoked) = self.store.revoke(&revocation, &audit).await? else {
            let why = format!("{target} not found");
            self.audit_denial(about(
                AuditEvent::new(now, caller.id.as_str(), Action::RevocationDenied)
                    .reason(&why)
                    .detail(json!({
                        "target": target.kind(),
                        "value": target.value(),
                        "requested_reason": reason,
                    })),
            ))
            .await;
            return Err(BrokerError::NotFound(why));
        };
        self.hub.committed(revoked.event.seq);
        self.metrics.revoked(Trigger::Admin.as_str());
        warn!(caller = %caller.id, target = %target, %reason, seq = revoked.event.seq, "revoked");
        Ok(revoked)
    }

    // ---- verification ------------------------------------------------------------

    /// RFC 7662: `Some(claims)` when the token is active, `None` for anything else.
    /// A store that cannot answer is an error, never "active".
    pub async fn introspect(&self, token: &str) -> Result<Option<Claims>, BrokerError> {
        let now = self.now().unix_timestamp();
        let claims = match self.verify_signature(token, now, 0).await? {
            Ok(c) => c,
            Err(why) => {
                tracing::debug!(%why, "introspection: inactive token");
                return Ok(None);
            }
        };
        if claims.iss != self.issuer {
            return Ok(None);
        }
        let Ok(jti) = Uuid::parse_str(&claims.jti) else {
            return Ok(None);
        };
        match self.store.token_status(jti).await? {
            Some(s) if !s.revoked && s.task_state == TaskState::Active => Ok(Some(claims)),
            _ => Ok(None),
        }
    }

    /// A verifier reports a token misused. The token must be one of ours (its
    /// signature verifies; it may have expired within the last hour); its task is
    /// then treated as deviated, whatever the workflow's deviation response, since
    /// a stolen or abused credential is never "deny only": the task is revoked,
    /// and the report audited with the verifier's identity and evidence. Returns
    /// the task and the revocation's sequence (`None` when the task had already
    /// ended; the report is audited all the same).
    pub async fn report_misuse(
        &self,
        caller: &Caller,
        token: &str,
        kind: MisuseKind,
        evidence: &str,
    ) -> Result<(TaskId, Option<u64>), BrokerError> {
        let now = self.now();
        let claims = self
            .our_token(
                ("token", token),
                now.unix_timestamp(),
                MISUSE_REPORT_WINDOW,
                "is not a Mayfly token that can be reported",
            )
            .await?;
        let task_id: TaskId = claims
            .task
            .parse()
            .map_err(|_| BrokerError::InvalidArgument {
                field: "token",
                why: "carries no valid task id".into(),
            })?;
        let task = self.get_task(task_id).await?;
        let reason = format!(
            "misuse reported by {}: {}: {}",
            caller.id,
            kind.as_str(),
            evidence
        );
        let report = |r: &str| {
            AuditEvent::new(now, caller.id.as_str(), Action::MisuseReported)
                .task(task.id)
                .agent(&task.agent)
                .reason(r)
                .detail(json!({
                    "kind": kind.as_str(),
                    "evidence": evidence,
                    "jti": claims.jti,
                    "verifier": caller.id.as_str(),
                }))
        };
        if task.state != TaskState::Active {
            self.audit_denial(report(&reason)).await;
            return Ok((task.id, None));
        }
        match self.deviate(caller, &task, reason.clone(), report).await {
            Deviation::Done(_, seq) => Ok((task.id, Some(seq))),
            // Ended by someone else meanwhile: the report still goes on record.
            Deviation::Failed(BrokerError::FailedPrecondition(_)) => {
                self.audit_denial(report(&reason)).await;
                Ok((task.id, None))
            }
            Deviation::Failed(e) => Err(e),
        }
    }
}

enum Deviation {
    /// The task is deviated: the reason for the caller, and the revocation's
    /// sequence number.
    Done(String, u64),
    Failed(BrokerError),
}

impl Deviation {
    fn into_permission_denied(self) -> BrokerError {
        match self {
            Deviation::Done(reason, _) => BrokerError::PermissionDenied(reason),
            Deviation::Failed(e) => e,
        }
    }
}
