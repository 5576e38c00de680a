//! Realistic values for the cases, built as the broker builds them: tasks, tokens,
//! offers, approvals, freezes, revocations and their audit events. Times are whole
//! seconds after a fixed instant, so every backend stores them exactly.
use mayfly::domain::SpiffeId;
use mayfly::domain::audit::{Action, AuditEvent};
use mayfly::domain::*;
use mayfly::domain::{Revocation, Target, Trigger};
use mayfly::domain::{Scope, Task, TaskId, TaskState};
use mayfly::store::*;
use serde_json::json;
use time::OffsetDateTime;
use uuid::Uuid;

pub const AGENT: &str = "spiffe://example.org/agent/a1";
pub const AGENT2: &str = "spiffe://example.org/agent/a2";
pub const SUB: &str = "spiffe://example.org/agent/sub1";
pub const SUB2: &str = "spiffe://example.org/agent/sub2";
pub const ORCH: &str = "spiffe://example.org/orchestrator/o1";
pub const ADMIN: &str = "spiffe://example.org/admin/s1";
pub const ADMIN2: &str = "spiffe://example.org/admin/s2";
pub const WORKFLOW: &str = "support";
pub const OTHER_WORKFLOW: &str = "billing";
/// A budget no case reaches unless it means to.
pub const BUDGET: u32 = 10;
pub const OPEN_LIMIT: u32 = 4;

/// 2026-11-23 10:00:00 UTC.
const T0: i64 = 1_795_428_000;

/// `secs` seconds after the suite's fixed start.
pub fn at(secs: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(T0 + secs).unwrap()
}

pub fn agent_id(s: &str) -> SpiffeId {
    SpiffeId::parse(s).unwrap()
}

pub fn read_scope() -> Scope {
    Scope::requested("crm-api", "customers/eu/1", "read").unwrap()
}

/// A high-impact action a workflow sends to step-up approval.
pub fn delete_scope() -> Scope {
    Scope::requested("crm-api", "customers/eu/1", "delete").unwrap()
}

// ---- tasks -------------------------------------------------------------------

/// An active support task of `agent`, opened at `secs` for `lasts` seconds.
pub fn task(agent: &str, secs: i64, lasts: i64) -> Task {
    task_in(agent, WORKFLOW, secs, lasts)
}

pub fn task_in(agent: &str, workflow: &str, secs: i64, lasts: i64) -> Task {
    Task {
        id: TaskId::new(),
        agent: agent_id(agent),
        workflow: workflow.into(),
        objective: "answer ticket 4711".into(),
        scopes: vec![Scope::declared("crm-api", "customers/eu/*", "*").unwrap()],
        state: TaskState::Active,
        opened_by: agent_id(ORCH),
        created_at: at(secs),
        expires_at: at(secs + lasts),
        ended_at: None,
        end_reason: None,
        tokens_minted: 0,
    }
}

pub fn opened(t: &Task) -> AuditEvent {
    AuditEvent::new(t.created_at, ORCH, Action::TaskOpened)
        .task(t.id)
        .agent(&t.agent)
        .detail(json!({
            "workflow": t.workflow,
            "objective": t.objective,
            "scopes": t.scopes,
            "duration_seconds": (t.expires_at - t.created_at).whole_seconds(),
        }))
}

/// Inserts `t` with its audit event and returns it.
pub async fn open<S: Store>(s: &S, t: Task) -> Task {
    s.insert_task(&t, &opened(&t)).await.unwrap();
    t
}

pub async fn reread<S: Store>(s: &S, t: &Task) -> Task {
    s.get_task(t.id).await.unwrap().expect("the task exists")
}

/// The revocation and audit events with which the broker ends `t` at `secs`.
pub fn ending(t: &Task, to: TaskState, secs: i64) -> (Revocation, Vec<AuditEvent>) {
    let (trigger, action) = match to {
        TaskState::Completed => (Trigger::TaskCompleted, Action::TaskCompleted),
        TaskState::Expired => (Trigger::TaskExpired, Action::TaskExpired),
        TaskState::Deviated => (Trigger::Deviation, Action::TaskDeviated),
        _ => (Trigger::Admin, Action::TaskRevoked),
    };
    let reason = format!("task {to}");
    let revocation = Revocation {
        target: Target::Task(t.id),
        reason: reason.clone(),
        actor: ORCH.into(),
        trigger,
        at: at(secs),
    };
    let audit = vec![
        AuditEvent::new(at(secs), ORCH, action)
            .task(t.id)
            .reason(&reason),
        AuditEvent::new(at(secs), ORCH, Action::Revocation)
            .task(t.id)
            .reason(&reason)
            .detail(json!({"target": "task", "trigger": trigger.as_str()})),
    ];
    (revocation, audit)
}

pub async fn end<S: Store>(s: &S, t: &Task, to: TaskState, secs: i64) -> EndOutcome {
    let (revocation, audit) = ending(t, to, secs);
    s.end_task(t.id, to, &revocation, &audit).await.unwrap()
}

/// Completes `t` at `secs`, which must succeed.
pub async fn complete<S: Store>(s: &S, t: &Task, secs: i64) -> Revoked {
    match end(s, t, TaskState::Completed, secs).await {
        EndOutcome::Ended { revoked, .. } => revoked,
        other => panic!("completing task {}: {other:?}", t.id),
    }
}

// ---- tokens ------------------------------------------------------------------

/// A token of `t`'s agent for reading one customer, issued at `secs` for 5 minutes.
pub fn token(t: &Task, secs: i64) -> TokenRecord {
    token_for(t, read_scope(), secs)
}

pub fn token_for(t: &Task, scope: Scope, secs: i64) -> TokenRecord {
    TokenRecord {
        jti: Uuid::new_v4(),
        task: t.id,
        agent: t.agent.clone(),
        workflow: t.workflow.clone(),
        scope,
        kid: "mayfly-2026-11-23".into(),
        cert_thumbprint: "dGh1bWJwcmludC1vZi10aGUtYWdlbnQtY2VydGlmaWNhdGU".into(),
        issued_at: at(secs),
        expires_at: at(secs + 300),
        revoked_at: None,
        parent: None,
        depth: 0,
    }
}

/// The audit event the broker records with a token.
pub fn minted(tok: &TokenRecord) -> AuditEvent {
    AuditEvent::new(tok.issued_at, &tok.agent, Action::TokenMinted)
        .task(tok.task)
        .agent(&tok.agent)
        .jti(tok.jti)
        .detail(json!({
            "scope": tok.scope,
            "ttl_seconds": (tok.expires_at - tok.issued_at).whole_seconds(),
            "kid": tok.kid,
            "depth": tok.depth,
        }))
}

/// Records a token of `t` issued at `secs`, which must be accepted.
pub async fn mint<S: Store>(s: &S, t: &Task, secs: i64) -> TokenRecord {
    let tok = token(t, secs);
    assert_eq!(
        s.insert_token(&tok, BUDGET, &minted(&tok)).await.unwrap(),
        Ok(()),
        "token of task {} at {secs} refused",
        t.id
    );
    tok
}

/// `tok` is refused with `budget` for the reason `why`, and nothing is written:
/// no token, no count against the task's budget, no audit event.
pub async fn assert_refused<S: Store>(s: &S, tok: &TokenRecord, budget: u32, why: Refusal) {
    let before = s.get_task(tok.task).await.unwrap();
    let events = s.audit_for_task(tok.task).await.unwrap().len();
    assert_eq!(
        s.insert_token(tok, budget, &minted(tok)).await.unwrap(),
        Err(why),
        "token {} was not refused as expected",
        tok.jti
    );
    assert_eq!(s.get_token(tok.jti).await.unwrap(), None, "token written");
    let after = s.get_task(tok.task).await.unwrap();
    assert_eq!(
        after.map(|t| t.tokens_minted),
        before.map(|t| t.tokens_minted),
        "the refused token counted against the budget"
    );
    assert_eq!(
        s.audit_for_task(tok.task).await.unwrap().len(),
        events,
        "the refused token was audited as minted"
    );
}

pub async fn is_revoked<S: Store>(s: &S, tok: &TokenRecord) -> bool {
    let stored = s.get_token(tok.jti).await.unwrap().expect("token exists");
    stored.revoked_at.is_some()
}

// ---- delegations -------------------------------------------------------------

/// An offer by `parent`'s holder to `sub_agent` at `secs`, for two minutes at
/// most; `above` are the parent's own ancestors (root first).
pub fn offer(parent: &TokenRecord, above: &[Uuid], sub_agent: &str, secs: i64) -> Delegation {
    let mut ancestors = above.to_vec();
    ancestors.push(parent.jti);
    let mut act = json!({ "sub": sub_agent });
    if parent.depth > 0 {
        act["act"] = json!({ "sub": parent.agent });
    }
    Delegation {
        id: Uuid::new_v4(),
        task: parent.task,
        parent_jti: parent.jti,
        delegator: parent.agent.clone(),
        sub_agent: agent_id(sub_agent),
        scope: parent.scope.clone(),
        depth: parent.depth + 1,
        act,
        ancestors,
        created_at: at(secs),
        expires_at: at(secs + 120).min(parent.expires_at),
        redeemed_at: None,
        child_jti: None,
    }
}

pub fn offered(d: &Delegation) -> AuditEvent {
    AuditEvent::new(d.created_at, &d.delegator, Action::DelegationOffered)
        .task(d.task)
        .agent(&d.delegator)
        .jti(d.parent_jti)
        .detail(json!({
            "delegation": d.id,
            "sub_agent": d.sub_agent,
            "scope": d.scope,
            "depth": d.depth,
        }))
}

/// Records an offer (which must be accepted) and returns it.
pub async fn delegate<S: Store>(
    s: &S,
    parent: &TokenRecord,
    above: &[Uuid],
    sub_agent: &str,
    secs: i64,
) -> Delegation {
    let d = offer(parent, above, sub_agent, secs);
    assert!(
        s.insert_delegation(&d, OPEN_LIMIT, &offered(&d))
            .await
            .unwrap(),
        "offer from {} refused",
        parent.jti
    );
    d
}

/// The child token redeeming `d` at `secs` would record, in a task of `workflow`.
pub fn child(d: &Delegation, workflow: &str, secs: i64) -> TokenRecord {
    TokenRecord {
        jti: Uuid::new_v4(),
        task: d.task,
        agent: d.sub_agent.clone(),
        workflow: workflow.into(),
        scope: d.scope.clone(),
        kid: "mayfly-2026-11-23".into(),
        cert_thumbprint: "dGh1bWJwcmludC1vZi10aGUtc3ViLWFnZW50LWNlcnQ".into(),
        issued_at: at(secs),
        expires_at: d.expires_at,
        revoked_at: None,
        parent: Some(d.parent_jti),
        depth: d.depth,
    }
}

pub fn redeemed(c: &TokenRecord, d: &Delegation) -> AuditEvent {
    let mut e = minted(c);
    e.detail["delegation"] = json!(d.id);
    e.detail["parent_jti"] = json!(d.parent_jti);
    e.detail["act"] = d.act.clone();
    e
}

pub async fn redeem<S: Store>(s: &S, d: &Delegation, c: &TokenRecord, budget: u32) -> Redeem {
    s.redeem_delegation(d.id, c, budget, &redeemed(c, d))
        .await
        .unwrap()
}

/// Redeems `d` at `secs` (which must succeed) and returns the child token.
pub async fn redeem_ok<S: Store>(s: &S, d: &Delegation, secs: i64) -> TokenRecord {
    let workflow = s.get_task(d.task).await.unwrap().unwrap().workflow;
    let c = child(d, &workflow, secs);
    assert_eq!(redeem(s, d, &c, BUDGET).await, Redeem::Redeemed);
    c
}

// ---- approvals ---------------------------------------------------------------

/// A pending request by `t`'s agent for `scope` at `secs`, open for five minutes
/// (never past the task).
pub fn approval(t: &Task, scope: Scope, secs: i64) -> Approval {
    Approval {
        id: Uuid::new_v4(),
        task: t.id,
        requester: t.agent.clone(),
        workflow: t.workflow.clone(),
        objective: t.objective.clone(),
        scope,
        ttl: std::time::Duration::from_secs(60),
        state: ApprovalState::Pending,
        created_at: at(secs),
        expires_at: at(secs + 300).min(t.expires_at),
        decided_by: None,
        decided_at: None,
        decision_reason: None,
        used_jti: None,
    }
}

pub fn requested(a: &Approval) -> AuditEvent {
    AuditEvent::new(a.created_at, &a.requester, Action::ApprovalRequested)
        .task(a.task)
        .agent(&a.requester)
        .detail(json!({"approval": a.id, "scope": a.scope, "ttl_seconds": a.ttl.as_secs()}))
}

/// Records a pending approval (which must be accepted) and returns it.
pub async fn request<S: Store>(s: &S, a: Approval) -> Approval {
    assert!(
        s.insert_approval(&a, &requested(&a)).await.unwrap(),
        "approval refused"
    );
    a
}

pub fn decision(a: &Approval, approve: bool, by: &str, secs: i64) -> AuditEvent {
    let action = if approve {
        Action::ApprovalGranted
    } else {
        Action::ApprovalRejected
    };
    AuditEvent::new(at(secs), by, action)
        .task(a.task)
        .agent(&a.requester)
        .reason(decision_reason(approve))
        .detail(json!({"approval": a.id, "scope": a.scope}))
}

pub fn decision_reason(approve: bool) -> &'static str {
    if approve {
        "change ticket CHG-1207 approved"
    } else {
        "no change ticket"
    }
}

pub async fn decide<S: Store>(s: &S, a: &Approval, approve: bool, by: &str, secs: i64) -> Decide {
    s.decide_approval(
        a.id,
        approve,
        &agent_id(by),
        decision_reason(approve),
        at(secs),
        &decision(a, approve, by, secs),
    )
    .await
    .unwrap()
}

/// Decides `a` (which must succeed) and returns it as decided.
pub async fn decide_ok<S: Store>(s: &S, a: &Approval, approve: bool, secs: i64) -> Approval {
    match decide(s, a, approve, ADMIN, secs).await {
        Decide::Decided(a) => a,
        other => panic!("deciding approval {}: {other:?}", a.id),
    }
}

/// The audit event of a token spent from approval `a`.
pub fn spent(tok: &TokenRecord, a: &Approval) -> AuditEvent {
    let mut e = minted(tok);
    e.detail["approval"] = json!(a.id);
    e
}

pub fn refused_step_up(a: &Approval, secs: i64) -> AuditEvent {
    AuditEvent::new(at(secs), &a.requester, Action::StepUpRefused)
        .task(a.task)
        .agent(&a.requester)
        .reason(format!("approval {} is pending or denied", a.id))
        .detail(json!({"approval": a.id, "scope": a.scope}))
}

// ---- freezes -----------------------------------------------------------------

pub fn freeze_of(target: FreezeTarget, secs: i64) -> Freeze {
    Freeze {
        target,
        reason: "incident INC-42: agent exfiltrating".into(),
        actor: ADMIN.into(),
        at: at(secs),
    }
}

pub fn frozen(f: &Freeze) -> AuditEvent {
    let e = AuditEvent::new(f.at, &f.actor, Action::IssuanceFrozen)
        .reason(&f.reason)
        .detail(json!({"target": f.target.kind(), "value": f.target.value()}));
    match &f.target {
        FreezeTarget::Agent(a) => e.agent(a),
        _ => e,
    }
}

pub fn unfrozen(target: &FreezeTarget, secs: i64) -> AuditEvent {
    let e = AuditEvent::new(at(secs), ADMIN, Action::IssuanceUnfrozen)
        .reason("incident INC-42 closed")
        .detail(json!({"target": target.kind(), "value": target.value()}));
    match target {
        FreezeTarget::Agent(a) => e.agent(a),
        _ => e,
    }
}

/// Freezes `target` at `secs` and returns the freeze that stands.
pub async fn freeze<S: Store>(s: &S, target: FreezeTarget, secs: i64) -> Freeze {
    let f = freeze_of(target, secs);
    s.freeze(&f, &frozen(&f)).await.unwrap()
}

pub async fn unfreeze<S: Store>(s: &S, target: &FreezeTarget, secs: i64) -> Option<Freeze> {
    s.unfreeze(target, &unfrozen(target, secs)).await.unwrap()
}

// ---- revocations -------------------------------------------------------------

/// An administrator's revocation of `target` at `secs`, with its audit event
/// filed under the target as the broker files it.
pub fn admin_revocation(target: Target, secs: i64) -> (Revocation, AuditEvent) {
    let reason = "suspected prompt injection";
    let e = AuditEvent::new(at(secs), ADMIN, Action::Revocation)
        .reason(reason)
        .detail(json!({"target": target.kind(), "value": target.value(), "trigger": "admin"}));
    let e = match &target {
        Target::Task(t) => e.task(*t),
        Target::Agent(a) => e.agent(a.as_str()),
        Target::Token(j) => e.jti(*j),
        Target::Workflow(_) | Target::All => e,
    };
    let r = Revocation {
        target,
        reason: reason.into(),
        actor: ADMIN.into(),
        trigger: Trigger::Admin,
        at: at(secs),
    };
    (r, e)
}

pub async fn revoke<S: Store>(s: &S, target: Target, secs: i64) -> Option<Revoked> {
    let (r, e) = admin_revocation(target, secs);
    s.revoke(&r, &e).await.unwrap()
}

/// Revokes `target` at `secs`, which must exist.
pub async fn revoke_ok<S: Store>(s: &S, target: Target, secs: i64) -> Revoked {
    let what = target.to_string();
    revoke(s, target, secs)
        .await
        .unwrap_or_else(|| panic!("{what} not found"))
}

// ---- audit -------------------------------------------------------------------

/// Seals everything committed and returns every sealed event with its position.
pub async fn sealed<S: Store>(s: &S) -> Vec<(u64, AuditEvent)> {
    while s.seal_audit(1000).await.unwrap() > 0 {}
    s.query_audit(&AuditFilter {
        limit: 1000,
        ..Default::default()
    })
    .await
    .unwrap()
}

/// Every event committed so far, in chain order.
pub async fn all_events<S: Store>(s: &S) -> Vec<AuditEvent> {
    sealed(s).await.into_iter().map(|(_, e)| e).collect()
}

/// `expected` is among `events`: the same event, though the store may have added
/// to its detail (a revocation's sequence number, a refusal's count).
pub fn assert_recorded(events: &[AuditEvent], expected: &AuditEvent) {
    assert!(
        events.iter().any(|e| same_event(e, expected)),
        "{expected:#?}\nis not among the recorded events\n{events:#?}"
    );
}

fn same_event(e: &AuditEvent, x: &AuditEvent) -> bool {
    let detail = match &x.detail {
        serde_json::Value::Object(want) => want.iter().all(|(k, v)| e.detail.get(k) == Some(v)),
        want => &e.detail == want,
    };
    detail
        && e.at == x.at
        && e.actor == x.actor
        && e.action == x.action
        && e.task == x.task
        && e.agent == x.agent
        && e.jti == x.jti
        && e.reason == x.reason
}

/// How many events of `action` are recorded.
pub fn count(events: &[AuditEvent], action: Action) -> usize {
    events.iter().filter(|e| e.action == action).count()
}
